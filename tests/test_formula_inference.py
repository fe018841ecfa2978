"""Formula models' inference (issue 18): bounds and fixed parameters, the summary, prediction bands.

Oracles: NIST's certified standard errors; an independent numpy computation of the covariance
from a central finite-difference Jacobian; scipy's ``least_squares(bounds=...)`` for an active bound;
the reduced model for a fixed parameter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats
from scipy.optimize import least_squares

from gradfit.config.loading import config_from_dict
from gradfit.results.checkpoint import load_model
from gradfit.results.inference import prediction_intervals, read_summary
from gradfit.train.run import train

NIST = Path(__file__).resolve().parents[1] / "data" / "nist"
MISRA = "y = b1*(1-exp(-b2*x))"
THURBER = "y = (b1 + b2*x + b3*x**2 + b4*x**3) / (1 + b5*x + b6*x**2 + b7*x**3)"


def _nist(name):
    meta = json.loads((NIST / f"{name}.json").read_text())
    frame = pd.read_csv(NIST / f"{name}.csv")
    return meta, frame["x"].to_numpy(float), frame["y"].to_numpy(float)


def _fit(tmp_path: Path, name: str, formula: str, start: dict, data: str | None = None, **over) -> Path:
    cfg = {"name": name, "dtype": "float64", "seed": 0, "device": "cpu",
           "data": {"path": data or str(NIST / f"{name}.csv"), "split": {"val": 0}},
           "model": {"kind": "formula", "formula": formula, "start": start}, **over}
    out = tmp_path / f"run_{name}_{len(list(tmp_path.iterdir()))}"
    train(config_from_dict(cfg), out=out)
    return out


def _fd_jacobian(f, beta: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of f (p,) -> (n,), each step relative to its parameter: (n, p)."""
    cols = []
    for j in range(beta.size):
        e = np.zeros_like(beta)
        e[j] = h * max(abs(beta[j]), 1e-300)
        cols.append((f(beta + e) - f(beta - e)) / (2 * e[j]))
    return np.stack(cols, axis=1)


def misra(b, x):
    return b[0] * (1 - np.exp(-b[1] * x))


def thurber(b, x):
    return (b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3) / (1 + b[4] * x + b[5] * x**2 + b[6] * x**3)


# ---------------------------------------------------------------- the summary against oracles


@pytest.mark.parametrize("name, formula, fn", [("Misra1a", MISRA, misra), ("Thurber", THURBER, thurber)])
def test_summary_matches_certified_values_and_finite_differences(tmp_path, name, formula, fn):
    meta, x, y = _nist(name)
    run = _fit(tmp_path, name, formula, meta["start1"])
    out = read_summary(run)
    names = list(meta["certified"])
    for k in names:  # NIST's certified standard errors (to their 10 digits, within our 6)
        assert out["coefficients"][k]["std_err"] == pytest.approx(meta["certified"][k]["sd"], rel=1e-6), k
    assert out["residual_sd"] == pytest.approx(meta["residual_sd"], rel=1e-6)
    assert out["df_resid"] == meta["degrees_of_freedom"] and out["df_model"] == len(names) and out["nobs"] == x.size

    # the independent computation: a finite-difference Jacobian, numpy's inverse
    beta = np.array([out["coefficients"][k]["coef"] for k in names])
    J = _fd_jacobian(lambda b: fn(b, x), beta)
    r = y - fn(beta, x)
    df = x.size - beta.size
    s2 = r @ r / df
    cov = s2 * np.linalg.inv(J.T @ J)
    se = np.sqrt(np.diag(cov))
    corr = cov / np.outer(se, se)
    got = np.array([[out["correlation"][a][b] for b in names] for a in names])
    np.testing.assert_allclose(got, corr, rtol=0, atol=1e-6)
    for i, k in enumerate(names):
        c = out["coefficients"][k]
        t = beta[i] / se[i]
        assert c["t"] == pytest.approx(t, rel=1e-6)
        assert c["p"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-5)
        q = stats.t.ppf(0.975, df)
        assert (c["ci_low"], c["ci_high"]) == pytest.approx((beta[i] - q * se[i], beta[i] + q * se[i]), rel=1e-6)
    r2 = 1 - (r @ r) / np.sum((y - y.mean()) ** 2)
    assert out["r2"] == pytest.approx(r2, rel=1e-9)
    assert out["adj_r2"] == pytest.approx(1 - (1 - r2) * (x.size - 1) / df, rel=1e-9)
    llf = -x.size / 2 * (math.log(2 * math.pi) + math.log(r @ r / x.size) + 1)
    assert out["log_likelihood"] == pytest.approx(llf, rel=1e-9)
    assert out["aic"] == pytest.approx(-2 * llf + 2 * beta.size, rel=1e-9)
    assert out["bic"] == pytest.approx(-2 * llf + beta.size * math.log(x.size), rel=1e-9)

    # the band of the curve: the delta method on a finite-difference gradient of the prediction
    new = np.linspace(x.min(), x.max(), 7)
    bands = prediction_intervals(run, torch.tensor(new[:, None]), 0.95)
    G = _fd_jacobian(lambda b: fn(b, new), beta)
    mean_se = np.sqrt(np.einsum("ij,jk,ik->i", G, cov, G))
    np.testing.assert_allclose(bands["mean_se"], mean_se, rtol=1e-6)
    q = stats.t.ppf(0.975, df)
    mean = fn(beta, new)
    np.testing.assert_allclose(bands["mean_ci_lower"], mean - q * mean_se, rtol=1e-9)
    np.testing.assert_allclose(bands["obs_ci_upper"], mean + q * np.sqrt(mean_se**2 + s2), rtol=1e-9)


def test_predict_interval_from_the_command_line(tmp_path, cli):
    meta, x, _ = _nist("Misra1a")
    run = _fit(tmp_path, "Misra1a", MISRA, meta["start1"])
    new = tmp_path / "new.csv"
    new.write_text("x\n100\n300\n700\n")
    out = tmp_path / "pred.csv"
    r = cli("predict", run, "--data", new, "--interval", "0.9", "--out", out)
    assert r.exit_code == 0, r.output
    got = pd.read_csv(out)
    want = prediction_intervals(run, torch.tensor([[100.0], [300.0], [700.0]]), 0.9)
    assert list(got.columns) == ["x", "prediction", "mean_se", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"]
    for k, v in want.items():
        np.testing.assert_allclose(got[k].to_numpy(), v, rtol=1e-12)
    assert (got["obs_ci_lower"] < got["mean_ci_lower"]).all() and (got["mean_ci_upper"] < got["obs_ci_upper"]).all()


def test_summary_cli_prints_the_table_and_refuses_robust_covariance(tmp_path, cli):
    meta, _, _ = _nist("Misra1a")
    run = _fit(tmp_path, "Misra1a", MISRA, {"b1": {"value": 200, "max": 230}, "b2": 1e-4})
    r = cli("summary", run)
    assert r.exit_code == 0, r.output
    assert "Nonlinear least-squares summary" in r.stdout and "Correlation of the parameters" in r.stdout
    assert "at max" in r.stdout and "b1 sits at its upper bound (230)" in r.stderr
    r = cli("summary", run, "--json")
    out = json.loads(r.stdout)
    assert set(out["coefficients"]["b2"]) == {"coef", "std_err", "t", "p", "ci_low", "ci_high"}
    assert out["at_bound"] == {"b1": "max"} and out["bounds"] == {"b1": [None, 230.0]}
    r = cli("summary", run, "--cov", "HC1")
    assert r.exit_code == 1 and "--cov HC1 is for linear and polynomial runs" in r.stderr
    assert "Traceback" not in r.output


# ---------------------------------------------------------------- bounds


def test_active_bound_equals_scipy_least_squares_with_bounds(tmp_path):
    _, x, y = _nist("Misra1a")
    run = _fit(tmp_path, "Misra1a", MISRA, {"b1": {"value": 200, "min": 0, "max": 230}, "b2": {"value": 1e-4, "min": 0}})
    ref = least_squares(lambda b: misra(b, x) - y, [200, 1e-4], bounds=([0, 0], [230, np.inf]), method="trf",
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, x_scale="jac")
    assert ref.active_mask.tolist() == [1, 0]  # (the bound is active in the oracle too)
    lm = load_model(run)
    got = lm.model.parameters_dict()
    assert got["b1"] == pytest.approx(230.0, rel=1e-12)  # on the bound
    assert got["b2"] == pytest.approx(ref.x[1], rel=1e-6)
    assert lm.model.at_bounds() == {"b1": "max"}
    # held on the bound by design (its derivative 0 there): what an optimizer's plateau test must tell apart
    assert lm.model.head.on_bound(lm.model.head.free.detach()).tolist() == [True, False]
    # the checkpoint holds the parameters in external units
    from safetensors.torch import load_file

    assert load_file(run / "model.safetensors")["head.theta"].tolist() == pytest.approx([230.0, ref.x[1]], rel=1e-6)


def test_inactive_bounds_change_nothing_and_standard_errors_are_lmfits(tmp_path):
    # A bound that does not bind gives the unbounded fit; its standard error, lmfit's (the internal
    # covariance carried back by the transform's derivative), is the unbounded one.
    meta, _, _ = _nist("Misra1a")
    free = read_summary(_fit(tmp_path, "Misra1a", MISRA, meta["start1"]))
    bounded = read_summary(_fit(tmp_path, "Misra1a", MISRA, {"b1": {"value": 500, "min": 0, "max": 1000},
                                                              "b2": {"value": 1e-4, "min": 0}}))
    for k in ("b1", "b2"):
        for key in ("coef", "std_err", "t", "ci_low"):
            assert bounded["coefficients"][k][key] == pytest.approx(free["coefficients"][k][key], rel=1e-7), (k, key)
    assert bounded["at_bound"] == {} and bounded["notes"] == free["notes"]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_other_optimizers_respect_the_bounds(tmp_path, optimizer):
    _, x, y = _nist("Misra1a")
    over = {"optimizer": {"kind": optimizer, **({"lr": 0.05} if optimizer == "adam" else {})}, "train": {"epochs": 300}}
    run = _fit(tmp_path, "Misra1a", MISRA, {"b1": {"value": 220, "min": 200, "max": 230}, "b2": {"value": 5e-4, "min": 0, "max": 1e-3}},
               **over)
    got = load_model(run).model.parameters_dict()
    assert 200 <= got["b1"] <= 230 and 0 <= got["b2"] <= 1e-3


# ---------------------------------------------------------------- fixed parameters


def test_fixed_parameter_equals_the_reduced_model(tmp_path):
    meta, x, _ = _nist("Misra1a")
    fixed = read_summary(_fit(tmp_path, "Misra1a", MISRA + " + c", {**meta["start1"], "c": {"value": 0.25, "vary": False}}))
    reduced = read_summary(_fit(tmp_path, "Misra1a", MISRA + " + 0.25", meta["start1"]))
    for k in ("b1", "b2"):
        for key in ("coef", "std_err", "t", "p", "ci_low", "ci_high"):
            assert fixed["coefficients"][k][key] == pytest.approx(reduced["coefficients"][k][key], rel=1e-8), (k, key)
    for key in ("nobs", "df_model", "df_resid", "residual_sd", "log_likelihood", "aic", "bic"):
        assert fixed[key] == pytest.approx(reduced[key], rel=1e-9), key
    assert fixed["df_resid"] == x.size - 2
    assert fixed["coefficients"]["c"] == {"coef": 0.25, "std_err": None, "t": None, "p": None, "ci_low": None, "ci_high": None}
    assert set(fixed["correlation"]) == {"b1", "b2"}
    assert any("c is fixed at 0.25" in n for n in fixed["notes"])


def test_fixed_parameter_stays_put_through_checkpoint_and_coefficients(tmp_path):
    meta, x, _ = _nist("Misra1a")
    run = _fit(tmp_path, "Misra1a", MISRA + " + c", {**meta["start1"], "c": {"value": 0.25, "vary": False}})
    coef = json.loads((run / "coefficients.json").read_text())
    assert coef["parameters"]["c"] == 0.25 and "c" not in coef["std_errors"] and coef["dof"] == x.size - 2
    lm = load_model(run)
    b = lm.model.parameters_dict()
    np.testing.assert_allclose(lm.predict(x[:, None]), misra([b["b1"], b["b2"]], x) + 0.25, rtol=1e-14)


# ---------------------------------------------------------------- plain starts, config


def test_plain_starts_are_unchanged(tmp_path):
    meta, _, _ = _nist("Misra1a")
    plain = _fit(tmp_path, "Misra1a", MISRA, meta["start1"])
    mapping = _fit(tmp_path, "Misra1a", MISRA, {k: {"value": v} for k, v in meta["start1"].items()})
    a, b = load_model(plain), load_model(mapping)
    assert a.model.parameters_dict() == b.model.parameters_dict()  # the same fit, bit for bit
    assert set(a.model.state_dict()) == {"head.theta", "y_shift", "y_scale"}  # the checkpoint's layout of before
    assert "bounds" not in a.spec and "fixed" not in a.spec


@pytest.mark.parametrize(
    "start, expected",
    [
        ({"b1": {"value": 5, "min": 10}}, "start.b1.value 5 is outside [min, max] = [10, inf]"),
        ({"b1": {"min": 3, "max": 2}}, "start.b1: min (3) must be below max (2)"),
        ({"b1": {"value": 5, "lower": 0}}, "start.b1: unknown key 'lower'"),
        ({"b1": {"value": 5, "vary": "no"}}, "start.b1.vary must be true or false"),
        ({"b1": {"value": 5, "vary": False}, "b2": {"value": 1e-4, "vary": False}}, "fixes every parameter"),
    ],
)
def test_bad_starts_are_refused_in_words(tmp_path, cli, start, expected):
    cfg = {"name": "bad", "data": {"path": str(NIST / "Misra1a.csv"), "split": {"val": 0}},
           "model": {"kind": "formula", "formula": MISRA, "start": start}}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = cli("train", p, "--out", tmp_path / "run")
    assert r.exit_code == 1, r.output
    assert expected in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.output


def test_transforms_are_lmfits_and_a_start_on_a_bound_begins_just_inside_it():
    from gradfit.models.formula import FormulaHead

    head = FormulaHead("y = a * x + b + c + d", ["x"], ["a", "b", "c", "d"], torch.float64,
                       bounds={"a": [0.0, 10.0], "b": [1.0, None], "c": [None, 2.0]}, fixed=["d"])
    head.set_external(torch.tensor([2.5, 3.0, -1.0, 7.0], dtype=torch.float64))
    u = head.free.detach().numpy()
    # lmfit's "Bounds Implementation": internal values, and back
    np.testing.assert_allclose(u, [np.arcsin(2 * 2.5 / 10 - 1), np.sqrt((3.0 - 1 + 1) ** 2 - 1), np.sqrt((2.0 + 1 + 1) ** 2 - 1)])
    np.testing.assert_allclose(head.theta.detach().numpy(), [2.5, 3.0, -1.0, 7.0], rtol=1e-15)
    assert head.parameters_names == ["a", "b", "c"]
    head.set_external(torch.tensor([10.0, 1.0, 2.0, 7.0], dtype=torch.float64), nudge=True)
    theta = head.theta.detach().numpy()
    assert 10 - 1e-5 < theta[0] < 10 and 1 < theta[1] < 1 + 1e-5 and 2 - 1e-5 < theta[2] < 2
    free = head.free.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(head.varying_external(free).sum(), free)
    assert (g.abs() > 1e-4).all()  # the fit can move away from the bound


# ---------------------------------------------------------------- fit.png's band, train's short form, compare


def test_fit_band_of_a_linear_run_is_statsmodels_mean_interval(tmp_path):
    sm = pytest.importorskip("statsmodels.api")
    from gradfit.results.inference import confidence_band

    g = np.random.default_rng(3)
    x = np.sort(g.uniform(0, 10, 60))
    y = 1.5 + 0.7 * x + g.normal(0, 2, x.size)
    csv = tmp_path / "line.csv"
    pd.DataFrame({"x": x, "y": y}).to_csv(csv, index=False, float_format="%.17g")
    cfg = {"name": "line", "dtype": "float64", "seed": 0, "device": "cpu", "data": {"path": str(csv), "split": {"val": 0}},
           "model": {"kind": "linear"}}
    run = train(config_from_dict(cfg), write=False)
    grid = np.linspace(0, 10, 9)
    lo, hi = confidence_band(run.summary, run.model)(grid[:, None])
    frame = sm.OLS(y, sm.add_constant(x)).fit().get_prediction(sm.add_constant(grid)).summary_frame(alpha=0.05)
    np.testing.assert_allclose(lo, frame["mean_ci_lower"], rtol=1e-8)
    np.testing.assert_allclose(hi, frame["mean_ci_upper"], rtol=1e-8)


def test_train_prints_the_short_summary(tmp_path, cli):
    meta, _, _ = _nist("Misra1a")
    cfg = {"name": "misra", "dtype": "float64", "data": {"path": str(NIST / "Misra1a.csv"), "split": {"val": 0}},
           "model": {"kind": "formula", "formula": MISRA, "start": meta["start1"]}}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = cli("train", p, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    out = read_summary(tmp_path / "run")
    line = next(s for s in r.stdout.splitlines() if s.startswith("nonlinear least squares:"))
    assert f"AIC {out['aic']:.6g}, BIC {out['bic']:.6g}, 14 rows" in line
    assert f"the full table: gradfit summary {tmp_path / 'run'}" in r.stdout


def test_compare_of_formula_runs_gives_aic_and_refuses_the_f_test(tmp_path):
    from gradfit.results.nested import compare_runs

    meta, _, _ = _nist("Misra1a")
    a = _fit(tmp_path, "Misra1a", MISRA, meta["start1"])
    b = _fit(tmp_path, "Misra1a", MISRA + " + c", meta["start1"])
    out = compare_runs(a, b)
    assert out["nested"] is False and "F-test does not apply" in out["reason"]
    assert out["runs"][0]["aic"] == pytest.approx(read_summary(a)["aic"], rel=1e-12)


def test_two_processes_give_the_one_process_summary(tmp_path):
    """Under torchrun (2 processes, gloo) the formula summary, with a bound and a fixed parameter, is
    the one-process one: every number of it is a sum over the ranks' rows."""
    from gradfit.config.loading import load_config
    from test_distributed import torchrun

    g = np.random.default_rng(5)
    x = np.linspace(0, 5, 301)
    y = 2.0 * np.exp(0.3 * x) + 0.5 + 0.05 * g.normal(size=x.size)
    pd.DataFrame({"x": x, "y": y}).to_csv(tmp_path / "e.csv", index=False, float_format="%.17g")
    cfg = tmp_path / "f.yaml"
    cfg.write_text(yaml.safe_dump({"name": "f", "device": "cpu", "dtype": "float64", "seed": 1,
                                   "data": {"path": "e.csv", "split": {"val": 0.2}},
                                   "model": {"kind": "formula", "formula": "y = a * exp(b * x) + c",
                                             "start": {"a": {"value": 1.0, "min": 0, "max": 10}, "b": 0.1,
                                                       "c": {"value": 0.5, "vary": False}}}}))
    train(load_config(cfg), out=tmp_path / "one")
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_summary(tmp_path / "one"), read_summary(tmp_path / "two")
    for k in ("nobs", "df_model", "df_resid", "rss", "residual_sd", "log_likelihood", "aic", "bic"):
        assert two[k] == pytest.approx(one[k], rel=1e-8), k
    for name in ("a", "b"):
        for key in ("coef", "std_err", "t", "p", "ci_low", "ci_high"):
            assert two["coefficients"][name][key] == pytest.approx(one["coefficients"][name][key], rel=1e-8), (name, key)
    assert two["correlation"]["a"]["b"] == pytest.approx(one["correlation"]["a"]["b"], rel=1e-8)
    assert two["fixed"] == ["c"] and two["coefficients"]["c"]["coef"] == 0.5


@pytest.mark.parametrize("kind", ["linear", "formula"])
def test_fit_png_shades_the_band_the_summary_gives(tmp_path, monkeypatch, kind):
    """fit.png of a one-feature run is drawn with the mean's 95% band (the delta method for a formula
    model): what reaches the figure equals confidence_band on the figure's grid, around the curve."""
    from gradfit.results import plots
    from gradfit.results.inference import confidence_band

    drawn = {}
    monkeypatch.setattr(plots, "_submit", lambda k, path, args: drawn.setdefault(k, args))
    meta, _, _ = _nist("Misra1a")
    model = ({"kind": "formula", "formula": MISRA, "start": meta["start1"]} if kind == "formula" else {"kind": "linear"})
    cfg = {"name": kind, "dtype": "float64", "seed": 0, "device": "cpu",
           "data": {"path": str(NIST / "Misra1a.csv"), "split": {"val": 0}}, "model": model}
    run = train(config_from_dict(cfg), out=tmp_path / "run")
    args = drawn["fit"]
    assert args["band_lo"] is not None and args["band_hi"] is not None
    lo, hi = confidence_band(run.summary, run.model)(args["grid"][:, None])
    np.testing.assert_allclose(args["band_lo"], lo, rtol=1e-12)
    np.testing.assert_allclose(args["band_hi"], hi, rtol=1e-12)
    assert np.all(args["band_lo"] < args["grid_pred"]) and np.all(args["grid_pred"] < args["band_hi"])
