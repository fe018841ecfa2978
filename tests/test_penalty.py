"""model.penalty (ridge, lasso, elastic net) against scikit-learn on the same standardized data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gradfit.config.loading import config_from_dict
from gradfit.errors import GradfitError
from gradfit.optim.coordinate import penalized_least_squares
from gradfit.train.run import train

sklearn = pytest.importorskip("sklearn.linear_model")

N = 300
SCALES = np.array([1.0, 2.0, 3.0, 0.5, 1.0, 4.0])
TRUE = np.array([1.5, 0.0, -0.7, 0.0, 0.2, 0.05])


def data(tmp_path: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 6)) * SCALES + np.array([1.0, 0, 5, 0, 0, 2])
    y = 13 + X @ TRUE + rng.normal(size=N) * 0.5
    p = tmp_path / "d.csv"
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in np.c_[X, y])
    p.write_text("x1,x2,x3,x4,x5,x6,y\n" + rows + "\n")
    return p, X, y


def run(path: Path, model: dict, **over):
    cfg = {"data": {"path": str(path), "split": {"val": 0}}, "model": model, **over}
    return train(config_from_dict(cfg), write=False)


def standardized(X, y):
    # gradfit's standardization: population SD (ddof 0), as scikit-learn's StandardScaler
    return (X - X.mean(0)) / X.std(0), y - y.mean()


def sk(estimator, **kw):
    return getattr(sklearn, estimator)(tol=1e-14, max_iter=1_000_000, **kw) if estimator != "Ridge" else sklearn.Ridge(**kw)


@pytest.mark.parametrize("penalty, estimator, kw", [
    ({"l1": 0.1}, "Lasso", {"alpha": 0.1}),
    ({"l1": 0.05, "l2": 0.15}, "ElasticNet", {"alpha": 0.2, "l1_ratio": 0.25}),
    ({"l2": 5.0 / N}, "Ridge", {"alpha": 5.0}),  # Ridge's alpha = l2 * n
])
def test_linear_penalties_equal_sklearn(tmp_path, penalty, estimator, kw):
    path, X, y = data(tmp_path)
    r = run(path, {"kind": "linear", "penalty": penalty})
    Z, yc = standardized(X, y)
    ref = sk(estimator, **kw).fit(Z, yc)
    c = r.coefficients
    w = np.array(list(c["coefficients"].values())) * X.std(0)  # raw coefficients -> standardized ones
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-8, atol=1e-10)
    assert [v == 0.0 for v in c["coefficients"].values()] == [v == 0.0 for v in ref.coef_]
    # the intercept is not penalized: the fitted values' mean is y's
    assert c["intercept"] == pytest.approx(y.mean() - float((w / X.std(0)) @ X.mean(0)), rel=1e-10)
    m = r.metrics
    assert m["converged"] is True and m["exact"]["kkt"] <= m["exact"]["kkt_limit"]
    assert r.config.optimizer.kind == "exact" and r.config.dtype == "float64"
    assert "std_errors" not in c
    assert any("not reported for a penalized fit" in w for w in m["warnings"])


def test_lasso_gives_exact_zeros(tmp_path):
    path, X, y = data(tmp_path, seed=1)
    r = run(path, {"kind": "linear", "penalty": {"l1": 0.3}})
    zeros = [k for k, v in r.coefficients["coefficients"].items() if v == 0.0]
    assert {"x2", "x4"} <= set(zeros)
    assert r.metrics["exact"]["zeros"] == len(zeros)
    # a large enough l1 leaves the intercept alone: every coefficient exactly 0, prediction mean(y)
    big = run(path, {"kind": "linear", "penalty": {"l1": 100.0}})
    assert all(v == 0.0 for v in big.coefficients["coefficients"].values())
    assert big.coefficients["intercept"] == pytest.approx(y.mean(), rel=1e-12)


def test_polynomial_penalty_on_the_standardized_design(tmp_path):
    path, X, y = data(tmp_path, seed=2)
    r = run(path, {"kind": "polynomial", "degree": 2, "penalty": {"l1": 0.02, "l2": 0.01}})
    model = r.model
    Z = model.features(torch.as_tensor(X)).numpy()  # the standardized terms (mean 0, SD 1)
    assert np.abs(Z.mean(0)).max() < 1e-12 and np.abs(Z.std(0) - 1).max() < 1e-12
    ref = sk("ElasticNet", alpha=0.03, l1_ratio=2 / 3).fit(Z, y - y.mean())
    w = model.head.weight.detach().double().numpy() * float(model.y_scale)
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-8, atol=1e-10)
    assert ((w == 0) == (ref.coef_ == 0)).all() and (w == 0).any()
    np.testing.assert_allclose(model.predict(X).numpy(), ref.predict(Z) + y.mean(), rtol=1e-9)


def test_no_intercept(tmp_path):
    path, X, y = data(tmp_path, seed=3)
    r = run(path, {"kind": "linear", "intercept": False, "penalty": {"l1": 0.05}})
    # without an intercept gradfit scales by the root mean square and does not centre
    rms = np.sqrt((X ** 2).mean(0))
    ref = sk("Lasso", alpha=0.05, fit_intercept=False).fit(X / rms, y)
    w = np.array(list(r.coefficients["coefficients"].values())) * rms
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-8, atol=1e-10)


def test_coordinate_descent_kkt_on_random_gram():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 8, generator=g, dtype=torch.float64)
    y = torch.randn(50, generator=g, dtype=torch.float64)
    fit = penalized_least_squares(A.T @ A, A.T @ y, 50, 0.1, 0.0, False, float(y @ y))
    ref = sk("Lasso", alpha=0.1, fit_intercept=False).fit(A.numpy(), y.numpy())
    np.testing.assert_allclose(fit.coef.numpy(), ref.coef_, rtol=1e-8, atol=1e-10)
    assert fit.converged and fit.objective == pytest.approx(
        float(((y - A @ fit.coef) ** 2).sum()) / 100 + 0.1 * float(fit.coef.abs().sum()), rel=1e-10)


@pytest.mark.parametrize("over, words", [
    ({"optimizer": {"kind": "lbfgs"}}, "optimizer.kind: exact"),
    ({"loss": {"kind": "mae"}}, "loss kind 'mse' only"),
    ({"train": {"batch_size": 10}}, "train.batch_size"),
])
def test_penalty_combinations_refused(tmp_path, over, words):
    path, _, _ = data(tmp_path)
    with pytest.raises((GradfitError, ValueError), match=words):
        run(path, {"kind": "linear", "penalty": {"l1": 0.1}}, **over)


def test_exact_needs_a_penalty(tmp_path):
    path, _, _ = data(tmp_path)
    with pytest.raises((GradfitError, ValueError), match="penalized fits"):
        run(path, {"kind": "linear"}, optimizer={"kind": "exact"})
    with pytest.raises((GradfitError, ValueError), match="greater than or equal to 0"):
        run(path, {"kind": "linear", "penalty": {"l1": -1}})
