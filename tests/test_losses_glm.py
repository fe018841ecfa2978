"""Losses for real targets: quantile (the linear program's optimum), log_cosh; their metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gradfit.config.loading import config_from_dict
from gradfit.errors import GradfitError
from gradfit.models.losses import Loss, log_cosh, pinball
from gradfit.train.run import train

N = 250


def data(tmp_path: Path, seed: int = 0, heavy: bool = True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 3)) * [1.0, 3.0, 0.5] + [2.0, -1.0, 0.0]
    noise = rng.standard_t(3, size=N) if heavy else rng.normal(size=N)
    y = 4 + X @ np.array([1.0, -0.5, 2.0]) + noise * (1 + 0.5 * np.abs(X[:, 0]))
    p = tmp_path / "d.csv"
    p.write_text("x1,x2,x3,y\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in np.c_[X, y]) + "\n")
    return p, X, y


def run(path: Path, model: dict, loss: dict, **over):
    cfg = {"data": {"path": str(path), "split": {"val": 0}}, "model": model, "loss": loss, **over}
    return train(config_from_dict(cfg), write=False)


def lp_optimum(A: np.ndarray, y: np.ndarray, q: float) -> float:
    """The mean pinball loss at the optimum: scipy's HiGHS on the dense LP of the raw design."""
    from scipy.optimize import linprog

    n, k = A.shape
    eye = np.eye(n)
    res = linprog(np.r_[np.zeros(k), np.full(n, q), np.full(n, 1 - q)], A_eq=np.hstack([A, eye, -eye]), b_eq=y,
                  bounds=[(None, None)] * k + [(0, None)] * (2 * n), method="highs")
    assert res.status == 0
    return res.fun / n


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_linear_quantile_reaches_the_lp_optimum(tmp_path, q):
    import statsmodels.api as sm

    path, X, y = data(tmp_path)
    r = run(path, {"kind": "linear"}, {"kind": "quantile", "q": q})
    A = sm.add_constant(X)
    best = lp_optimum(A, y, q)
    m = r.metrics
    assert r.config.optimizer.kind == "exact" and m["converged"] is True
    assert m["train"]["pinball"] == pytest.approx(best, rel=1e-7)
    assert m["train"]["loss"] == pytest.approx(best, rel=1e-7)
    # statsmodels' QuantReg (iteratively reweighted) gets no lower, and its coefficients are close
    ref = sm.QuantReg(y, A).fit(q=q, max_iter=5000, p_tol=1e-12)
    res = y - ref.predict(A)
    assert m["train"]["pinball"] <= np.maximum(q * res, (q - 1) * res).mean() * (1 + 1e-9)
    c = r.coefficients
    np.testing.assert_allclose([c["intercept"], *c["coefficients"].values()], ref.params, rtol=1e-3, atol=1e-3)


def test_median_is_half_the_absolute_error(tmp_path):
    path, X, y = data(tmp_path, seed=1)
    r = run(path, {"kind": "linear"}, {"kind": "quantile", "q": 0.5})
    assert r.metrics["train"]["pinball"] == pytest.approx(r.metrics["train"]["mae"] / 2, rel=1e-12)


def test_polynomial_quantile(tmp_path):
    path, X, y = data(tmp_path, seed=2)
    r = run(path, {"kind": "polynomial", "degree": 2}, {"kind": "quantile", "q": 0.75})
    A = r.model.features(torch.as_tensor(X)).numpy()
    best = lp_optimum(np.c_[A, np.ones(N)], y, 0.75)
    assert r.metrics["train"]["pinball"] == pytest.approx(best, rel=1e-7)


def test_pinball_and_log_cosh_functions():
    from sklearn.metrics import mean_pinball_loss

    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(100, generator=g, dtype=torch.float64) * 30, torch.randn(100, generator=g, dtype=torch.float64)
    assert float(pinball(p, t, 0.3)) == pytest.approx(mean_pinball_loss(t.numpy(), p.numpy(), alpha=0.3), rel=1e-12)
    ref = np.log(np.cosh((p - t).numpy().clip(-300, 300))).mean()
    assert float(log_cosh(p, t)) == pytest.approx(ref, rel=1e-12)
    assert float(log_cosh(torch.tensor([1e4], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))) == pytest.approx(1e4 - np.log(2), rel=1e-12)
    # in scaled units: the loss in original units comes back with unit_power
    loss = Loss("log_cosh")
    s = 7.0
    assert float(loss.scaled(s)(p / s, t / s)) * s ** loss.unit_power == pytest.approx(float(log_cosh(p, t)), rel=1e-12)
    lq = Loss("quantile", q=0.3)
    assert float(lq.scaled(s)(p / s, t / s)) * s ** lq.unit_power == pytest.approx(float(pinball(p, t, 0.3)), rel=1e-12)


def test_log_cosh_fit_equals_scipy_minimum(tmp_path):
    from scipy.optimize import minimize

    path, X, y = data(tmp_path, seed=3)
    r = run(path, {"kind": "linear"}, {"kind": "log_cosh"})
    A = np.c_[np.ones(N), X]

    def f(b):
        d = A @ b - y
        a = np.abs(d)
        return np.mean(a + np.log1p(np.exp(-2 * a)) - np.log(2)), A.T @ np.tanh(d) / N

    ref = minimize(f, np.zeros(4), jac=True, method="BFGS", options={"gtol": 1e-13, "maxiter": 10000})
    c = r.coefficients
    np.testing.assert_allclose([c["intercept"], *c["coefficients"].values()], ref.x, rtol=1e-6, atol=1e-7)
    assert r.metrics["train"]["log_cosh"] == pytest.approx(ref.fun, rel=1e-10)
    assert r.config.optimizer.kind == "lbfgs" and r.metrics["converged"] is True


@pytest.mark.parametrize("loss, words", [
    ({"kind": "quantile"}, "needs loss.q"),
    ({"kind": "mse", "q": 0.5}, "q applies to loss kind 'quantile' only"),
    ({"kind": "quantile", "q": 1.0}, "less than 1"),
])
def test_loss_config_refused(tmp_path, loss, words):
    path, _, _ = data(tmp_path)
    with pytest.raises((GradfitError, ValueError), match=words):
        run(path, {"kind": "linear"}, loss)


def test_quantile_on_an_mlp_uses_adam(tmp_path):
    path, _, _ = data(tmp_path)
    r = run(path, {"kind": "mlp", "hidden": [8]}, {"kind": "quantile", "q": 0.9}, train={"epochs": 20})
    assert r.config.optimizer.kind == "adam" and "pinball" in r.metrics["train"]


# ---------------------------------------------------------------- poisson (log link)


def counts(tmp_path: Path, seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 0.5, 2.0] + [0.0, 1.0, 0.0]
    y = rng.poisson(np.exp(0.3 + X @ np.array([0.4, -0.6, 0.2]))).astype(float)
    p = tmp_path / "counts.csv"
    p.write_text("x1,x2,x3,y\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in np.c_[X, y]) + "\n")
    return p, X, y


def test_poisson_equals_statsmodels_glm(tmp_path):
    import statsmodels.api as sm

    path, X, y = counts(tmp_path)
    r = run(path, {"kind": "linear"}, {"kind": "poisson"})
    ref = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson()).fit(tol=1e-14)
    c = r.coefficients
    names = ["intercept", "x1", "x2", "x3"]
    np.testing.assert_allclose([c["intercept"], *c["coefficients"].values()], ref.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose([c["std_errors"][k] for k in names], ref.bse, rtol=1e-8)
    np.testing.assert_allclose([c["ci95"][k] for k in names], ref.conf_int(), rtol=1e-8)
    m = r.metrics
    assert m["converged"] is True and c["std_errors_reliable"] is True and c["link"] == "log"
    assert m["train"]["poisson_deviance"] == pytest.approx(ref.deviance / len(y), rel=1e-10)
    assert np.allclose(r.model.predict(X).numpy(), ref.predict(sm.add_constant(X)), rtol=1e-10)


def test_poisson_deviance_metric_equals_sklearn():
    from sklearn.metrics import mean_poisson_deviance

    from gradfit.models.losses import poisson_deviance

    g = torch.Generator().manual_seed(1)
    mu = torch.rand(50, generator=g, dtype=torch.float64) * 5 + 0.1
    y = torch.poisson(mu, generator=g)
    assert float(poisson_deviance(mu, y)) == pytest.approx(mean_poisson_deviance(y.numpy(), mu.numpy()), rel=1e-12)


def test_poisson_polynomial_and_refusals(tmp_path):
    import statsmodels.api as sm

    path, X, y = counts(tmp_path, seed=1)
    r = run(path, {"kind": "polynomial", "degree": 2, "interactions": False}, {"kind": "poisson"})
    A = np.c_[np.ones(len(y)), X, X ** 2]
    ref = sm.GLM(y, A, family=sm.families.Poisson()).fit(tol=1e-14)
    np.testing.assert_allclose(r.model.predict(X).numpy(), ref.predict(A), rtol=1e-9)
    bad = tmp_path / "neg.csv"
    bad.write_text("x,y\n1,2\n2,-1\n3,4\n4,0\n")
    with pytest.raises(GradfitError, match="counts y >= 0"):
        run(bad, {"kind": "linear"}, {"kind": "poisson"})
    with pytest.raises((GradfitError, ValueError), match="log link"):
        run(path, {"kind": "formula", "formula": "y = a * x1"}, {"kind": "poisson"})


def test_mae_exact_on_request(tmp_path):
    import statsmodels.api as sm

    path, X, y = data(tmp_path, seed=4)
    r = run(path, {"kind": "linear"}, {"kind": "mae"}, optimizer={"kind": "exact"})
    assert r.metrics["converged"] is True
    assert r.metrics["train"]["mae"] == pytest.approx(2 * lp_optimum(sm.add_constant(X), y, 0.5), rel=1e-7)
    auto = config_from_dict({"data": {"path": str(path)}, "model": {"kind": "linear"}, "loss": {"kind": "mae"}})
    assert auto.optimizer.kind == "exact"  # (auto solves mae's linear program too)


def test_gamma_equals_statsmodels_glm(tmp_path):
    import statsmodels.api as sm
    from sklearn.metrics import mean_gamma_deviance

    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 2))
    mu = np.exp(1.0 + X @ np.array([0.3, -0.5]))
    y = rng.gamma(shape=2.0, scale=mu / 2.0)
    p = tmp_path / "g.csv"
    p.write_text("x1,x2,y\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in np.c_[X, y]) + "\n")
    r = run(p, {"kind": "linear"}, {"kind": "gamma"})
    A = sm.add_constant(X)
    ref = sm.GLM(y, A, family=sm.families.Gamma(link=sm.families.links.Log())).fit(tol=1e-14)
    c = r.coefficients
    np.testing.assert_allclose([c["intercept"], *c["coefficients"].values()], ref.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose([c["std_errors"][k] for k in ("intercept", "x1", "x2")], ref.bse, rtol=1e-8)
    assert r.metrics["converged"] is True
    assert r.metrics["train"]["gamma_deviance"] == pytest.approx(mean_gamma_deviance(y, ref.predict(A)), rel=1e-9)
