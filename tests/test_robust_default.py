"""Robust losses by default: Huber is statsmodels' RLM(HuberT) with its MAD scale, mae reaches the LP optimum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
import torch

from gradfit.config.loading import config_from_dict
from gradfit.data.split import split_rows
from gradfit.errors import ConfigError
from gradfit.models import losses
from gradfit.optim.huber_irls import huber_irls
from gradfit.train.run import train


def dataset(name: str):
    """(frame of the features, target column name) of a dataset that ships with statsmodels."""
    if name == "stackloss":
        d = sm.datasets.stackloss.load_pandas()
        return d.exog.assign(y=d.endog), "y"
    if name == "engel":
        return sm.datasets.engel.load_pandas().data.rename(columns={"foodexp": "y"}), "y"
    if name == "statecrime":
        d = sm.datasets.statecrime.load_pandas()
        return d.exog.assign(y=d.endog).reset_index(drop=True), "y"
    if name == "longley":
        d = sm.datasets.longley.load_pandas()
        return d.exog.assign(y=d.endog), "y"
    raise KeyError(name)


def write(tmp_path: Path, name: str):
    frame, target = dataset(name)
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    X = frame.drop(columns=[target]).to_numpy(dtype=np.float64)
    return path, X, frame[target].to_numpy(dtype=np.float64)


def run(path: Path, model: dict, loss: dict, **over):
    cfg = {"data": {"path": str(path), "split": {"val": 0}}, "model": model, "loss": loss, **over}
    return train(config_from_dict(cfg), write=False)


def coefs(r) -> np.ndarray:
    c = r.coefficients
    return np.array([c["intercept"], *c["coefficients"].values()])


def std_errors(r) -> np.ndarray:
    se = r.coefficients["std_errors"]
    return np.array([se["intercept"], *(se[k] for k in r.coefficients["coefficients"])])


# ---------------------------------------------------------------- huber


@pytest.mark.parametrize("name", ["stackloss", "engel", "statecrime"])
def test_default_huber_equals_statsmodels_rlm(tmp_path, name):
    path, X, y = write(tmp_path, name)
    r = run(path, {"kind": "linear"}, {"kind": "huber"})
    assert r.config.optimizer.kind == "exact" and r.config.dtype == "float64" and r.config.loss.delta is None
    ref = sm.RLM(y, sm.add_constant(X), M=sm.robust.norms.HuberT()).fit()
    m = r.metrics
    assert m["converged"] is True, m["warnings"]
    np.testing.assert_allclose(coefs(r), ref.params, rtol=1e-6)
    np.testing.assert_allclose(std_errors(r), ref.bse, rtol=1e-6)  # (RLM's default covariance, H1)
    assert r.coefficients["std_errors_reliable"] is True
    assert m["exact"]["scale"] == pytest.approx(ref.scale, rel=1e-6)
    assert m["exact"]["delta"] == pytest.approx(1.345 * ref.scale, rel=1e-6)
    # the reported loss is the Huber loss at that delta (F.huber_loss is rho(r / s) * s^2)
    rho = sm.robust.norms.HuberT().rho(ref.resid / ref.scale) * ref.scale**2
    assert m["train"]["loss"] == pytest.approx(rho.mean(), rel=1e-6)


def test_huber_is_the_fixed_point_where_rlm_stops_early(tmp_path):
    # longley: RLM's default stop (a deviance change below 1e-8) leaves it 4e-5 from its own fixed
    # point; iterated to the end, statsmodels agrees with gradfit to 1e-9
    path, X, y = write(tmp_path, "longley")
    r = run(path, {"kind": "linear"}, {"kind": "huber"})
    A = sm.add_constant(X)
    tight = sm.RLM(y, A, M=sm.robust.norms.HuberT()).fit(tol=1e-15, maxiter=5000)
    loose = sm.RLM(y, A, M=sm.robust.norms.HuberT()).fit()
    assert r.metrics["converged"] is True
    np.testing.assert_allclose(coefs(r), tight.params, rtol=1e-8)
    np.testing.assert_allclose(std_errors(r), tight.bse, rtol=1e-8)
    assert np.max(np.abs(coefs(r) / loose.params - 1)) > 1e-6  # (the early stop is not the estimate)


def test_default_huber_polynomial_and_default_split(tmp_path):
    path, X, y = write(tmp_path, "engel")
    cfg = config_from_dict({"data": {"path": str(path)}, "model": {"kind": "polynomial", "degree": 2},
                            "loss": {"kind": "huber"}})
    r = train(cfg, write=False)
    tr = split_rows(len(y), 0.2, 0.0, 0).train.numpy()  # (the default split: 80% trains)
    x = X[tr, 0]
    ref = sm.RLM(y[tr], np.c_[np.ones(len(x)), x, x**2], M=sm.robust.norms.HuberT()).fit(tol=1e-15, maxiter=5000)
    c = r.coefficients
    got = [c["intercept"], c["coefficients"]["income"], c["coefficients"]["income^2"]]
    np.testing.assert_allclose(got, ref.params, rtol=1e-7)
    assert r.metrics["exact"]["scale"] == pytest.approx(ref.scale, rel=1e-8)


def test_numeric_delta_keeps_its_meaning(tmp_path):
    # a loss.delta in target units: lbfgs (auto) and the IRLS at that delta (exact) reach the same minimizer
    path, X, y = write(tmp_path, "stackloss")
    r_lbfgs = run(path, {"kind": "linear"}, {"kind": "huber", "delta": 2.0})
    r_exact = run(path, {"kind": "linear"}, {"kind": "huber", "delta": 2.0}, optimizer={"kind": "exact"})
    assert r_lbfgs.config.optimizer.kind == "lbfgs" and r_exact.metrics["exact"]["delta"] == 2.0
    assert r_exact.metrics["exact"]["scale_estimated"] is False and r_exact.metrics["converged"] is True
    np.testing.assert_allclose(coefs(r_lbfgs), coefs(r_exact), rtol=1e-6)
    from scipy.optimize import minimize

    A = sm.add_constant(X)

    def f(b):
        res = np.abs(y - A @ b)
        return np.where(res <= 2.0, 0.5 * res**2, 2.0 * (res - 1.0)).mean()

    ref = minimize(f, np.linalg.lstsq(A, y, rcond=None)[0], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 40000, "maxfev": 40000})
    assert r_exact.metrics["train"]["loss"] <= ref.fun * (1 + 1e-9)


def test_irls_says_when_the_scale_collapses():
    # 15 of 20 rows on a line exactly: the MAD of the residuals goes to 0 and the Huber weights are undefined
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 20)
    y = 1 + 2 * x
    y[15:] += rng.normal(size=5) * 5
    fit = huber_irls(np.c_[x, np.ones(20)], y)
    assert not fit.converged and "MAD scale is 0" in fit.why


def test_mlp_default_delta_is_the_target_mad():
    # where the IRLS does not apply: 1.345 * the target's MAD about its median (statsmodels' scale.mad)
    frame, _ = dataset("engel")
    y = frame["y"].to_numpy()
    cfg = config_from_dict({"data": {"path": "a.csv"}, "model": {"kind": "mlp"}, "loss": {"kind": "huber"}})
    loss = losses.from_config(cfg, torch.tensor(y))
    assert cfg.optimizer.kind == "adam"
    assert loss.delta == pytest.approx(1.345 * sm.robust.scale.mad(y), rel=1e-12)
    assert losses.robust_delta(np.r_[np.zeros(9), 1.0, 2.0]) == pytest.approx(1.345 * (3 / 11) * np.sqrt(np.pi / 2))


def test_mlp_huber_trains_on_the_robust_delta(tmp_path):
    path, X, y = write(tmp_path, "stackloss")
    r = run(path, {"kind": "mlp", "hidden": [8]}, {"kind": "huber"}, train={"epochs": 5})
    pred = r.model.predict(torch.as_tensor(X)).numpy().ravel()
    delta = 1.345 * sm.robust.scale.mad(y)
    res = np.abs(y - pred)
    expect = np.where(res <= delta, 0.5 * res**2, delta * (res - 0.5 * delta)).mean()
    assert r.metrics["train"]["loss"] == pytest.approx(expect, rel=1e-5)


# ---------------------------------------------------------------- the delta check


def test_absurd_delta_is_refused(tmp_path, cli):
    path, _, _ = write(tmp_path, "stackloss")
    with pytest.raises(ConfigError, match="loss.delta 1e-300 is below 1e-12 of the target's robust scale"):
        run(path, {"kind": "linear"}, {"kind": "huber", "delta": 1e-300})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{path: {path}}}\nmodel: {{kind: mlp}}\nloss: {{kind: huber, delta: 1.0e-300}}\n")
    out = cli("train", cfg, "--out", tmp_path / "run")
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "loss.delta" in out.output and "leave loss.delta out" in out.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_tiny_delta_does_not_report_converged(tmp_path):
    # above the refusal, still all-linear in practice: lbfgs stops, and the optimality test says it is not a minimum
    path, _, y = write(tmp_path, "stackloss")
    r = run(path, {"kind": "linear"}, {"kind": "huber", "delta": 1e-9})
    assert r.config.optimizer.kind == "lbfgs"
    assert r.metrics["converged"] is False and any("not converged" in w for w in r.metrics["warnings"])


# ---------------------------------------------------------------- mae


def lp_mae(A: np.ndarray, y: np.ndarray) -> float:
    """The smallest mean absolute residual: scipy's HiGHS on the dense LP of the raw design."""
    from scipy.optimize import linprog

    n, k = A.shape
    eye = np.eye(n)
    res = linprog(np.r_[np.zeros(k), np.ones(2 * n)], A_eq=np.hstack([A, eye, -eye]), b_eq=y,
                  bounds=[(None, None)] * k + [(0, None)] * (2 * n), method="highs")
    assert res.status == 0
    return res.fun / n


@pytest.mark.parametrize("name", ["stackloss", "engel", "statecrime"])
def test_default_mae_reaches_the_lp_optimum(tmp_path, name):
    path, X, y = write(tmp_path, name)
    r = run(path, {"kind": "linear"}, {"kind": "mae"})
    A = sm.add_constant(X)
    assert r.config.optimizer.kind == "exact" and r.metrics["converged"] is True
    assert r.metrics["train"]["mae"] == pytest.approx(lp_mae(A, y), rel=1e-8)
    ref = sm.QuantReg(y, A).fit(q=0.5, max_iter=5000, p_tol=1e-12)
    assert r.metrics["train"]["mae"] <= np.abs(y - ref.predict(A)).mean() * (1 + 1e-8)


def test_default_mae_polynomial(tmp_path):
    path, X, y = write(tmp_path, "engel")
    r = run(path, {"kind": "polynomial", "degree": 3}, {"kind": "mae"})
    x = X[:, 0] / 1000  # (the LP's answer does not depend on the columns' units)
    assert r.config.optimizer.kind == "exact"
    assert r.metrics["train"]["mae"] == pytest.approx(lp_mae(np.c_[np.ones(len(x)), x, x**2, x**3], y), rel=1e-8)


def test_mlp_mae_says_its_optimum_is_not_certified(tmp_path):
    path, _, _ = write(tmp_path, "stackloss")
    r = run(path, {"kind": "mlp", "hidden": [8]}, {"kind": "mae"}, train={"epochs": 5})
    assert r.config.optimizer.kind == "adam"
    assert any("mae optimum is not certified" in w for w in r.metrics["warnings"]), r.metrics["warnings"]
    exact = run(path, {"kind": "linear"}, {"kind": "mae"})
    assert not any("not certified" in w for w in exact.metrics["warnings"])


def test_console_shows_scale_and_delta(tmp_path, cli):
    path, _, _ = write(tmp_path, "stackloss")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{path: {path}, split: {{val: 0}}}}\nmodel: {{kind: linear}}\nloss: {{kind: huber}}\n")
    out = cli("train", cfg, "--out", tmp_path / "run")
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "scale 2.44054 (MAD, estimated), delta 3.28252" in text, text


def test_evaluate_reports_the_huber_loss_at_the_fits_delta(tmp_path):
    from gradfit.results.evaluate import evaluate

    path, _, _ = write(tmp_path, "stackloss")
    for model in ({"kind": "linear"}, {"kind": "mlp", "hidden": [8]}):
        cfg = {"data": {"path": str(path), "split": {"val": 0}}, "model": model, "loss": {"kind": "huber"},
               "train": {"epochs": 5}}
        out = tmp_path / model["kind"]
        r = train(config_from_dict(cfg), out=out)
        ev = evaluate(out, data=path)  # (the same rows: the same loss, at the delta the fit used)
        assert ev.metrics["data"]["loss"] == pytest.approx(r.metrics["train"]["loss"], rel=1e-6)
