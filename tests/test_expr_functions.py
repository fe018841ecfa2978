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


@pytest.mark.parametrize("n", [3, 250, 3000, 10_000])
def test_long_flat_sums_parse_and_evaluate(n):
    """A flat sum is as long as it likes (only nesting is limited), and sums left to right."""
    terms = [f"{i % 7 + 1}*x{i}" if i % 2 else f"{i}e-3*x{i}" for i in range(n)]
    text = terms[0] + "".join((" - " if i % 3 == 0 else " + ") + t for i, t in enumerate(terms[1:], 1))
    expr = parse_expression(text)
    values = {f"x{i}": 0.5 + (i % 5) / 10 for i in range(n)}
    want = 0.0
    for i in range(n):
        coef = (i % 7 + 1) if i % 2 else i * 1e-3
        want = want + coef * values[f"x{i}"] if i == 0 or i % 3 else want - coef * values[f"x{i}"]
    got = float(expr.to_torch({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}))
    assert got == pytest.approx(want, rel=1e-12)
    assert len(expr.names) == n
    again = parse_expression(str(expr)).to_torch({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()})
    assert float(again) == pytest.approx(got, rel=1e-12)  # prints to what re-parses


def test_signs_in_long_sums_keep_exponents_and_unary_minus():
    text = " + ".join(["2.5e-3*x", "-y", "x**-2", "(a - b)", "1E+2"] * 30)
    expr = parse_expression(text)
    env = {k: torch.tensor(v, dtype=torch.float64) for k, v in {"x": 2.0, "y": 3.0, "a": 5.0, "b": 1.0}.items()}
    assert float(expr.to_torch(env)) == pytest.approx(30 * (2.5e-3 * 2 - 3 + 0.25 + 4 + 100), rel=1e-12)


def test_deep_nesting_is_still_refused():
    from gradfit.errors import EquationError

    with pytest.raises(EquationError, match="nested"):
        parse_expression("(" * 300 + "x" + ")" * 300)
