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


# ---------------------------------------------------------------- the model interface (models/base.py)

KINDS = {
    "linear": {"kind": "linear"},
    "polynomial": {"kind": "polynomial", "degree": 2},
    "mlp": {"kind": "mlp", "hidden": [4]},
    "formula": {"kind": "formula", "formula": "y = a * u + b * v ** 2"},
}


def _model(kind):
    rng = np.random.default_rng(5)
    X = torch.tensor(rng.uniform(1, 2, size=(30, 2)))
    y = torch.tensor(rng.normal(size=30))
    cfg = config_from_dict(small_config(dtype="float64", data={"path": "x.csv"}, model=KINDS[kind]))
    return build_model(cfg, ["u", "v"], "y", X, y, torch.device("cpu")), X


@pytest.mark.parametrize("kind,capabilities", [
    ("linear", (True, True, True, True)),
    ("polynomial", (True, True, True, True)),
    ("mlp", (False, False, False, True)),
    ("formula", (False, True, False, False)),
])
def test_every_kind_declares_its_capabilities(kind, capabilities):
    from gradfit.models.base import Model

    model, _ = _model(kind)
    assert isinstance(model, Model)
    got = (model.linear_in_parameters, model.has_standard_errors, model.one_pass_gradient, model.standardizes)
    assert got == capabilities


@pytest.mark.parametrize("kind", list(KINDS))
def test_design_takes_the_same_arguments_for_every_kind(kind):
    """rows: the design of X[rows]; column_major: stored column by column, the same numbers."""
    from gradfit.data.batches import column_major

    model, X = _model(kind)
    rows = torch.tensor([3, 0, 7, 7, 12])
    Z = model.design(X[rows])
    assert torch.equal(model.design(X, rows=rows), Z)
    Zc = model.design(X, rows=rows, column_major=True)
    assert column_major(Zc) and torch.equal(Zc, Z)
    assert model.design(X, device=torch.device("cpu")).shape[0] == X.shape[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_parameter_names_and_rebuilding_from_the_spec(kind):
    from gradfit.models.build import model_from_spec

    model, X = _model(kind)
    names = model.parameter_names()
    assert names and all(isinstance(n, str) for n in names)
    if kind == "formula":
        assert names == ["a", "b"]
    elif kind == "linear":
        assert names == ["intercept", "u", "v"]
    again = model_from_spec(model.spec)
    assert type(again) is type(model)
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.predict(X), model.predict(X))


def test_an_unknown_kind_is_refused_by_the_spec_table():
    from gradfit.errors import CheckpointError
    from gradfit.models.build import model_from_spec

    with pytest.raises(CheckpointError, match="no model kind 'spline'"):
        model_from_spec({"kind": "spline"})
