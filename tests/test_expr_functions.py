"""The grammar's functions against numpy/scipy, their derivatives against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from gradfit.expr.nodes import FUNCTIONS
from gradfit.expr.parser import parse_expression

REFERENCE = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
    "tanh": np.tanh, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "arcsin": np.arcsin,
    "arccos": np.arccos, "arctan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "log10": np.log10,
    "log2": np.log2, "erf": special.erf,
}
POINTS = np.array([0.05, 0.3, 0.7, 0.95])  # inside every function's domain


def test_every_function_has_a_reference():
    assert set(FUNCTIONS) == set(REFERENCE)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_value_and_derivative(name):
    expr = parse_expression(f"{name}(2 * x) / 2")
    x = torch.tensor(POINTS / 2, dtype=torch.float64, requires_grad=True)
    value = expr.to_torch({"x": x})
    np.testing.assert_allclose(value.detach().numpy(), REFERENCE[name](POINTS) / 2, rtol=1e-13)
    (grad,) = torch.autograd.grad(value.sum(), x)
    h = 1e-6
    fd = (REFERENCE[name](POINTS + 2 * h) - REFERENCE[name](POINTS - 2 * h)) / (4 * h)
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-7)


def test_a_formula_with_arctan_fits_like_roszman1(tmp_path):
    """NIST's Roszman1 model, y = b1 - b2*x - arctan(b3/(x-b4))/pi, now writable."""
    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    x = np.linspace(-4000, -400, 25)
    b = (0.2, -6e-6, 1200.0, -180.0)
    y = b[0] - b[1] * x - np.arctan(b[2] / (x - b[3])) / math.pi
    path = tmp_path / "r.csv"
    path.write_text("x,y\n" + "".join(f"{float(a)!r},{float(c)!r}\n" for a, c in zip(x, y)))
    cfg = config_from_dict({
        "name": "r", "dtype": "float64", "data": {"path": str(path), "split": {"val": 0.0, "test": 0.0}},
        "model": {"kind": "formula", "formula": "y = b1 - b2*x - arctan(b3/(x-b4))/pi",
                  "start": {"b1": 0.1, "b2": -1e-5, "b3": 1000, "b4": -100}},
        "train": {"epochs": 200, "tol": 1e-15}, "output": {"dir": str(tmp_path)},
    })
    run = train(cfg, write=False)
    got = run.coefficients["parameters"]
    for name, want in zip(("b1", "b2", "b3", "b4"), b):
        assert got[name] == pytest.approx(want, rel=1e-6)
