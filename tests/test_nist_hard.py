"""NIST StRD nonlinear, higher difficulty (data/nist/: MGH09, MGH10, Thurber, BoxBOD, Rat42, Rat43,
Eckerle4, Bennett5, and Roszman1 of average difficulty), with default settings from NIST's two
starts: Levenberg-Marquardt's own stopping test (optim.lm), stuck fits reported, train.starts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from gradfit.config.loading import config_from_dict
from gradfit.errors import GradfitError
from gradfit.train.run import train
from gradfit.train.starts import perturbed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
_spec = importlib.util.spec_from_file_location("nist_nonlinear", ROOT / "bench" / "accuracy_nonlinear.py")
an = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(an)

FAST = [("Rat42", "start1"), ("Rat42", "start2"), ("Eckerle4", "start1"), ("Eckerle4", "start2"),
        ("Roszman1", "start1"), ("Roszman1", "start2"), ("Thurber", "start1"), ("Thurber", "start2"),
        ("BoxBOD", "start2"), ("Rat43", "start1"), ("Rat43", "start2"), ("MGH09", "start2")]
SLOW = [("MGH09", "start1"), ("MGH10", "start2"), ("Bennett5", "start1"), ("Bennett5", "start2")]


def _fit(name, start, overrides=()):
    run = train(config_from_dict(an.plain_formula_config(name, start), list(overrides)), write=False)
    params = [run.coefficients["parameters"][k] for k in an.parameter_names(name)]
    return run, an.lre(params, an.certified(name))


def _check_certified(name, start):
    run, lre = _fit(name, start)
    m = run.metrics
    assert lre >= 7, f"{name} {start}: LRE {lre:.1f}"
    assert m["converged"] is True and m["stop_reason"] == "tolerance", m["warnings"]
    assert not any("not converged" in w for w in m["warnings"])
    # the certified residual sum of squares, to 9 digits
    rss = m["train"]["mse"] * an.meta(name)["observations"]
    assert rss == pytest.approx(an.meta(name)["residual_sum_of_squares"], rel=1e-9)


@pytest.mark.parametrize("name,start", FAST)
def test_certified_digits_with_default_settings(name, start):
    _check_certified(name, start)


@pytest.mark.slow
@pytest.mark.parametrize("name,start", SLOW)
def test_certified_digits_with_default_settings_slow(name, start):
    _check_certified(name, start)


def test_stop_rule_does_not_depend_on_train_tol():
    # A loss tolerance meant for SGD stopped Thurber at 5.5 digits (issue 16); LM has its own test.
    run, lre = _fit("Thurber", "start1", ["train.tol=1e-3"])
    assert lre >= 7 and run.metrics["converged"] is True


def test_as_accurate_as_minpack_lm():
    # scipy's least_squares(method="lm") (MINPACK) with tight tolerances, same formula and start.
    from scipy.optimize import least_squares

    from gradfit.expr.parser import parse_equation

    name, start = "Thurber", "start2"
    expr = parse_equation(an.nist_formula(name)).right
    import torch

    d = np.loadtxt(an.NIST_DIR / f"{name}.csv", delimiter=",", skiprows=1, ndmin=2)
    x, y = torch.from_numpy(d[:, 1].copy()), d[:, 0]
    names = an.parameter_names(name)

    def res(b):
        return expr.to_torch({"x": x, **{k: float(v) for k, v in zip(names, b)}}).numpy() - y

    ref = least_squares(res, [an.meta(name)[start][k] for k in names], method="lm", x_scale="jac",
                        xtol=1e-15, ftol=1e-15, gtol=1e-15)
    _, lre = _fit(name, start)
    assert lre >= an.lre(list(ref.x), an.certified(name)) - 0.5


def test_a_stuck_start_says_so():
    # BoxBOD from start 1: the first steps send b2 to a plateau (exp(-b2 x) = 0 on every row);
    # it used to report converged: true with a sum of squares of 9771 (certified 1168).
    run, lre = _fit("BoxBOD", "start1")
    m = run.metrics
    assert lre < 1
    assert m["converged"] is False and m["stop_reason"] == "stalled"
    assert any("stuck" in w and "train.starts" in w for w in m["warnings"])
    assert any("unreliable" in w for w in m["warnings"])


def test_multi_starts_rescue_a_stuck_start():
    run, lre = _fit("BoxBOD", "start1", ["train.starts=8"])
    m = run.metrics
    assert lre >= 7 and m["converged"] is True
    s = m["starts"]
    assert s["n"] == 8 and 0 < s["best"] < 8 and 1 <= s["converged"] <= 8
    assert len(s["train_mse"]) == 8
    assert s["train_mse"][s["best"]] == pytest.approx(min(s["train_mse"]), rel=1e-9)
    assert s["train_mse"][0] > 5 * s["train_mse"][s["best"]]  # the given start is the stuck one


@pytest.mark.slow
def test_a_runaway_start_is_not_reported_as_converged():
    # MGH10 from start 1: b1 -> 0 and b2, b3 -> infinity along a valley.
    run, lre = _fit("MGH10", "start1")
    assert lre < 7
    assert run.metrics["converged"] is False
    assert any("not converged" in w for w in run.metrics["warnings"])


def test_perturbed_starts_are_seeded_log_uniform_and_bounded():
    start = {"a": 2.0, "b": -0.5, "c": 0.0, "d": {"value": 1.0, "min": 0.5, "max": 3.0}, "e": {"value": 4.0, "vary": False}}
    assert perturbed(start, 0, 7) == start
    p1, again, other = perturbed(start, 1, 7), perturbed(start, 1, 7), perturbed(start, 2, 7)
    assert p1 == again and p1 != other
    for k in range(1, 50):
        p = perturbed(start, k, 0)
        assert 0.2 <= p["a"] <= 20 and -5 <= p["b"] <= -0.05 and -1 <= p["c"] <= 1
        assert 0.5 <= p["d"]["value"] <= 3.0 and p["e"] == {"value": 4.0, "vary": False}


def test_starts_is_for_formula_models_only():
    with pytest.raises((GradfitError, ValueError), match="train.starts"):
        config_from_dict({"data": {"path": str(ROOT / "data" / "quadratic.csv")}, "model": {"kind": "linear"},
                          "train": {"starts": 3}})


# ---------------------------------------------------------------- identifiability (results.identify)


def test_a_parameter_without_effect_is_named():
    run, _ = _fit("BoxBOD", "start1")
    assert any("parameter b2 has no effect" in w for w in run.metrics["warnings"])


def test_aliased_formula_parameters_are_named_and_their_errors_withheld(tmp_path):
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 30)
    y = 2.0 * x + 0.01 * rng.standard_normal(30)
    path = tmp_path / "d.csv"
    path.write_text("y,x\n" + "".join(f"{a},{b}\n" for a, b in zip(y, x)))
    cfg = config_from_dict({"dtype": "float64", "data": {"path": str(path), "split": {"val": 0}},
                            "model": {"kind": "formula", "formula": "y = a * b * x", "start": {"a": 1.0, "b": 1.5}}})
    run = train(cfg, write=False)
    c = run.coefficients["parameters"]
    assert c["a"] * c["b"] == pytest.approx(float(x @ y / (x @ x)), rel=1e-9)  # least squares through 0
    w = [w for w in run.metrics["warnings"] if "not identifiable" in w]
    assert w and "rank 1 of 2" in w[0] and "a" in w[0] and "b" in w[0]
    assert "std_errors" not in run.coefficients


def test_badly_conditioned_jacobian_is_reported():
    import torch

    from gradfit.results.identify import jacobian_warnings

    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    J = torch.stack([t, t + 1e-11 * t**2, torch.ones_like(t)], 1)
    w = jacobian_warnings(["p", "q", "r"], J, torch.ones(3, dtype=torch.float64), t + 1)
    assert len(w) == 1 and "poorly determined" in w[0] and "p" in w[0] and "q" in w[0]
    good = torch.stack([t, torch.ones_like(t)], 1)
    assert jacobian_warnings(["p", "r"], good, torch.ones(2, dtype=torch.float64), t + 1) == []
