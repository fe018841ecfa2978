"""Models: the feature map, the exact conversion to raw coefficients, predictions from raw inputs."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from conftest import small_config
from gradfit.config.loading import config_from_dict
from gradfit.models.build import build_model
from gradfit.models.features import _legendre_poly, polynomial_terms, term_name


def test_legendre_polynomials_exact():
    assert _legendre_poly(2) == [Fraction(-1, 2), 0, Fraction(3, 2)]
    assert _legendre_poly(3) == [0, Fraction(-3, 2), 0, Fraction(5, 2)]
    t = np.linspace(-1, 1, 7)
    for k in range(8):
        ours = sum(float(c) * t**i for i, c in enumerate(_legendre_poly(k)))
        assert np.allclose(ours, np.polynomial.legendre.legval(t, [0] * k + [1]))


def test_terms_and_names():
    terms = polynomial_terms(2, 2, True)
    assert [term_name(t, ["a", "b"]) for t in terms] == ["a", "b", "a^2", "a*b", "b^2"]
    assert [term_name(t, ["a", "b"]) for t in polynomial_terms(2, 2, False)] == ["a", "b", "a^2", "b^2"]


@pytest.mark.parametrize("kind,degree,intercept", [("polynomial", 3, True), ("linear", 1, True), ("linear", 1, False), ("polynomial", 4, True)])
def test_coefficients_reproduce_predictions_on_raw_inputs(kind, degree, intercept):
    """Whatever the weights, the raw polynomial in coefficients() computes what the model computes."""
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.uniform([-5, 100], [3, 300], size=(50, 2)))
    y = torch.tensor(rng.normal(size=50))
    model_cfg = {"kind": kind, "intercept": intercept} | ({"degree": degree} if kind == "polynomial" else {})
    cfg = config_from_dict(small_config(dtype="float64", data={"path": "x.csv"}, model=model_cfg))
    model = build_model(cfg, ["u", "v"], "y", X, y, torch.device("cpu"))
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.tensor(rng.normal(size=p.shape)))
    coef = model.coefficients()
    Xn = X.numpy()
    pred = np.full(len(Xn), coef.get("intercept", 0.0))
    for name, c in coef["coefficients"].items():
        term = np.ones(len(Xn))
        for factor in name.split("*"):
            base, _, power = factor.partition("^")
            term = term * Xn[:, ["u", "v"].index(base)] ** int(power or 1)
        pred += c * term
    assert np.allclose(pred, model.predict(X).numpy(), rtol=1e-9, atol=1e-9)
    assert ("intercept" in coef) == intercept


def test_constant_feature_is_refused():
    from gradfit.errors import DataError

    cfg = config_from_dict(small_config(data={"path": "x.csv"}, model={"kind": "linear"}))
    X = torch.ones(10, 1, dtype=torch.float64)
    with pytest.raises(DataError, match="single value"):
        build_model(cfg, ["c"], "y", X, torch.arange(10.0, dtype=torch.float64), torch.device("cpu"))


def test_autograd_gradient_matches_finite_differences():
    """The training loss's gradient (what every optimizer follows) against central differences."""
    from gradfit.models.losses import Loss

    rng = np.random.default_rng(3)
    X = torch.tensor(rng.uniform(-2, 2, size=(40, 1)))
    y = torch.tensor(rng.normal(size=40))
    cfg = config_from_dict(small_config(dtype="float64", data={"path": "x.csv"}, model={"kind": "polynomial", "degree": 3}))
    model = build_model(cfg, ["x"], "y", X, y, torch.device("cpu"))
    Z, yz = model.design(X), model.scaled_target(y)
    for kind in ("mse", "huber", "mae"):
        loss_fn = Loss(kind, 0.3 if kind == "huber" else None).scaled(float(model.y_scale))
        w = torch.tensor(rng.normal(size=Z.shape[1]), requires_grad=True)
        loss_fn(Z @ w, yz).backward()
        h = 1e-6
        fd = []
        for j in range(len(w)):
            e = torch.zeros_like(w)
            e[j] = h
            with torch.no_grad():
                fd.append(float(loss_fn(Z @ (w + e), yz) - loss_fn(Z @ (w - e), yz)) / (2 * h))
        assert np.allclose(w.grad.numpy(), fd, rtol=1e-5, atol=1e-7), kind
