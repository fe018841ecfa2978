"""Standard errors, 95% intervals and residual SD: NIST certified values and closed forms."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from gradfit.config.loading import config_from_dict
from gradfit.results.distributions import t_ppf
from gradfit.train.run import train

NIST = Path(__file__).resolve().parents[1] / "data" / "nist"


def lre(est: float, ref: float) -> float:
    err = abs(est - ref) / abs(ref)
    return 15.0 if err == 0 else -math.log10(err)


def csv(tmp_path: Path, xs, ys, name="d.csv") -> Path:
    p = tmp_path / name
    p.write_text("x,y\n" + "\n".join(f"{float(x)!r},{float(y)!r}" for x, y in zip(xs, ys)) + "\n")
    return p


def fit(path: Path, model: dict, **over) -> dict:
    cfg = {"dtype": "float64", "data": {"path": str(path), "split": {"val": 0}}, "model": model,
           "optimizer": {"kind": "lbfgs"}, **over}
    return train(config_from_dict(cfg), write=False).coefficients


# ---------------------------------------------------------------- NIST


@pytest.mark.parametrize("name, model", [("Norris", {"kind": "linear"}), ("Pontius", {"kind": "polynomial", "degree": 2})])
def test_nist_certified_standard_deviations(name, model):
    meta = json.loads((NIST / f"{name}.json").read_text())
    c = fit(NIST / f"{name}.csv", model)
    keys = ["intercept", "x", "x^2"]
    for key, cert in zip(keys, [meta["certified"][k] for k in sorted(meta["certified"])]):
        assert lre(c["std_errors"][key], cert["sd"]) >= 8, key
    assert lre(c["residual_sd"], meta["residual_sd"]) >= 8
    assert c["dof"] == meta["observations"] - len(meta["certified"])
    tq = float(t_ppf(0.975, c["dof"]))
    for key in c["std_errors"]:
        value = c["intercept"] if key == "intercept" else c["coefficients"][key]
        lo, hi = c["ci95"][key]
        assert lo == pytest.approx(value - tq * c["std_errors"][key], rel=1e-12)
        assert hi == pytest.approx(value + tq * c["std_errors"][key], rel=1e-12)


# ---------------------------------------------------------------- closed forms (plain Python, exact arithmetic)


def _data(n=25):
    xs = [Fraction(i, 4) - 2 for i in range(n)]
    # a deterministic, non-trivial "noise"
    ys = [3 + Fraction(1, 2) * x - Fraction(3, 10) * x * x + Fraction((i * 7919) % 13 - 6, 50) for i, x in enumerate(xs)]
    return xs, ys


def _solve(A, b):
    """Gauss-Jordan in Fractions: A x = b."""
    n = len(A)
    M = [row[:] + [bi] for row, bi in zip(A, b)]
    for c in range(n):
        piv = next(r for r in range(c, n) if M[r][c] != 0)
        M[c], M[piv] = M[piv], M[c]
        M[c] = [v / M[c][c] for v in M[c]]
        for r in range(n):
            if r != c and M[r][c] != 0:
                M[r] = [a - M[r][c] * bb for a, bb in zip(M[r], M[c])]
    return [row[-1] for row in M]


def _exact_least_squares(X, y):
    """Coefficients, RSS and diag((X^T X)^-1) of least squares on rows X, exactly."""
    p = len(X[0])
    XtX = [[sum(r[i] * r[j] for r in X) for j in range(p)] for i in range(p)]
    Xty = [sum(r[i] * yi for r, yi in zip(X, y)) for i in range(p)]
    beta = _solve(XtX, Xty)
    rss = sum((yi - sum(b * v for b, v in zip(beta, r))) ** 2 for r, yi in zip(X, y))
    inv_diag = [_solve(XtX, [Fraction(int(i == k)) for i in range(p)])[k] for k in range(p)]
    return beta, rss, inv_diag


def test_line_closed_form(tmp_path):
    xs, ys = _data()
    c = fit(csv(tmp_path, xs, ys), {"kind": "linear"})
    n = len(xs)
    xbar = sum(xs) / n
    sxx = sum((x - xbar) ** 2 for x in xs)
    slope = sum((x - xbar) * y for x, y in zip(xs, ys)) / sxx
    icept = sum(ys) / n - slope * xbar
    s2 = sum((y - icept - slope * x) ** 2 for x, y in zip(xs, ys)) / (n - 2)
    assert c["std_errors"]["x"] == pytest.approx(math.sqrt(s2 / sxx), rel=1e-10)
    assert c["std_errors"]["intercept"] == pytest.approx(math.sqrt(s2 * (Fraction(1, n) + xbar**2 / sxx)), rel=1e-10)
    assert c["residual_sd"] == pytest.approx(math.sqrt(s2), rel=1e-10)
    assert c["dof"] == n - 2


@pytest.mark.parametrize("standardize", [True, False])
def test_quadratic_closed_form(tmp_path, standardize):
    """Legendre design (standardized) or raw powers: the same standard errors of the raw coefficients."""
    xs, ys = _data()
    cfg = {"dtype": "float64", "data": {"path": str(csv(tmp_path, xs, ys)), "split": {"val": 0}, "standardize": standardize},
           "model": {"kind": "polynomial", "degree": 2}, "optimizer": {"kind": "lbfgs"}, "train": {"epochs": 3000}}
    c = train(config_from_dict(cfg), write=False).coefficients
    beta, rss, inv = _exact_least_squares([[Fraction(1), x, x * x] for x in xs], ys)
    s2 = rss / (len(xs) - 3)
    assert [c["intercept"], c["coefficients"]["x"], c["coefficients"]["x^2"]] == pytest.approx([float(b) for b in beta], rel=1e-7)
    for key, d in zip(["intercept", "x", "x^2"], inv):
        assert c["std_errors"][key] == pytest.approx(math.sqrt(s2 * d), rel=1e-9 if standardize else 1e-6)


def test_no_intercept_closed_form(tmp_path):
    xs, ys = _data()
    xs = [x + 3 for x in xs]
    c = fit(csv(tmp_path, xs, ys), {"kind": "linear", "intercept": False})
    sxx = sum(x * x for x in xs)
    b = sum(x * y for x, y in zip(xs, ys)) / sxx
    s2 = sum((y - b * x) ** 2 for x, y in zip(xs, ys)) / (len(xs) - 1)
    assert set(c["std_errors"]) == {"x"}
    assert c["std_errors"]["x"] == pytest.approx(math.sqrt(s2 / sxx), rel=1e-10)


def test_formula_linear_in_its_parameters_equals_the_linear_model(tmp_path):
    xs, ys = _data()
    path = csv(tmp_path, xs, ys)
    poly = fit(path, {"kind": "polynomial", "degree": 2})
    cfg = {"dtype": "float64", "data": {"path": str(path), "split": {"val": 0}},
           "model": {"kind": "formula", "formula": "y = c0 + c1 * x + c2 * x**2"}}
    form = train(config_from_dict(cfg), write=False).coefficients
    for a, b in [("c0", "intercept"), ("c1", "x"), ("c2", "x^2")]:
        assert form["std_errors"][a] == pytest.approx(poly["std_errors"][b], rel=1e-9)
    assert form["residual_sd"] == pytest.approx(poly["residual_sd"], rel=1e-9)


def test_omitted_for_other_losses_and_mlps(tmp_path):
    xs, ys = _data()
    path = csv(tmp_path, xs, ys)
    assert "std_errors" not in fit(path, {"kind": "linear"}, loss={"kind": "mae"})
    c = train(config_from_dict({"data": {"path": str(path)}, "model": {"kind": "mlp", "hidden": [4]},
                                "train": {"epochs": 5}}), write=False).coefficients
    assert "std_errors" not in c and "ci95" not in c


def test_coefficients_json_and_the_checkpoint_carry_them(tmp_path):
    import gradfit

    xs, ys = _data()
    cfg = {"dtype": "float64", "data": {"path": str(csv(tmp_path, xs, ys)), "split": {"val": 0}},
           "model": {"kind": "linear"}, "optimizer": {"kind": "lbfgs"}}
    run = train(config_from_dict(cfg), out=tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "coefficients.json").read_text())
    assert set(on_disk) >= {"std_errors", "ci95", "residual_sd", "dof"}
    assert on_disk["std_errors"] == run.coefficients["std_errors"]
    assert gradfit.load_model(tmp_path / "run").coefficients() == on_disk
