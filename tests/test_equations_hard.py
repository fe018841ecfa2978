"""solve-equations on hard systems (issue 20): badly scaled, ill-conditioned, large, many roots.

References: numpy's LU solve, and exact rational arithmetic (fractions) for the solution of the
system exactly as written, so that "digits" are counted against the truth and not against
another floating-point answer.
"""

from __future__ import annotations

import json
import math
import time
from fractions import Fraction

import numpy as np
import pytest

from gradfit.equations.solver import solve
from gradfit.expr.parser import parse_equation


def equations_of(a: np.ndarray, b: np.ndarray) -> list[str]:
    """``sum_j a_ij * x<j> = b_i``, numbers written with repr (exact in float64)."""
    n = a.shape[1]
    return [
        " + ".join(f"{float(a[i, j])!r}*x{j}" for j in range(n) if a[i, j] != 0) + f" = {float(b[i])!r}"
        for i in range(a.shape[0])
    ]


def values(result, n: int) -> np.ndarray:
    return np.array([result.solution[f"x{j}"] for j in range(n)])


def exact_solution(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The solution of the square system as written (its floats taken exactly), by Gauss-Jordan in fractions."""
    n = len(b)
    m = [[Fraction(float(v)) for v in row] + [Fraction(float(bi))] for row, bi in zip(a, b)]
    for k in range(n):
        p = next(i for i in range(k, n) if m[i][k] != 0)
        m[k], m[p] = m[p], m[k]
        for i in range(n):
            if i != k and m[i][k] != 0:
                f = m[i][k] / m[k][k]
                m[i] = [u - f * v for u, v in zip(m[i], m[k])]
    return np.array([float(m[i][n] / m[i][i]) for i in range(n)])


def digits(x: np.ndarray, truth: np.ndarray) -> float:
    """Correct significant digits: -log10 of the largest error relative to the largest |truth|."""
    err = np.abs(x - truth).max() / np.abs(truth).max()
    return 16.0 if err == 0 else -math.log10(err)


def scaled_hilbert(n: int) -> np.ndarray:
    """L / (i + j + 1) with L = lcm(1..2n-1): the Hilbert matrix times L, exact integers."""
    lcm = 1
    for k in range(1, 2 * n):
        lcm = lcm * k // math.gcd(lcm, k)
    return np.array([[lcm // (i + j + 1) for j in range(n)] for i in range(n)], dtype=float)


# --------------------------------------------------------------------------- badly scaled


@pytest.mark.parametrize(
    "eqs, expected",
    [
        (["3e8*x + 1e8*y = 5e8", "1e8*x + 2e8*y = 5e8"], (1.0, 2.0)),
        (["1e8*x + 1e-8*y = 1e8", "1e-8*x + 1e8*y = 2e8"], (1.0, 2.0)),
    ],
)
def test_scaled_two_by_two_systems_are_solved(cli, eqs, expected):
    result = cli("solve-equations", *eqs, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "solved" and out["unique"] is True and out["rank"] == 2
    assert (out["solution"]["x"], out["solution"]["y"]) == pytest.approx(expected, rel=1e-12)


def test_rows_and_columns_scaled_from_1e_minus8_to_1e8():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(5, 5)) + 5 * np.eye(5)
    rows, cols = np.logspace(-8, 8, 5), np.logspace(8, -8, 5)[[2, 0, 4, 1, 3]]
    a = rows[:, None] * base * cols[None, :]
    b = a @ (rng.normal(size=5) / cols)
    truth = exact_solution(a, b)
    result = solve(equations_of(a, b))
    assert result.status == "solved" and result.rank == 5 and result.unique
    numpy_digits = digits(np.linalg.solve(a, b), truth)
    assert digits(values(result, 5), truth) >= min(numpy_digits, 15.0) - 1


@pytest.mark.parametrize("n, floor", [(6, 9.0), (10, None)])
def test_hilbert_systems_reach_numpys_accuracy(n, floor):
    a = scaled_hilbert(n)
    b = a @ np.ones(n)  # exact: integers below 2**53
    result = solve(equations_of(a, b))
    assert result.status == "solved" and result.rank == n
    ours, numpys = digits(values(result, n), np.ones(n)), digits(np.linalg.solve(a, b), np.ones(n))
    assert ours >= numpys - 1
    if floor is not None:
        assert ours >= floor


def test_small_and_huge_coefficients():
    assert solve(["x/1e6 = 5e-10"]).solution["x"] == pytest.approx(5e-4, rel=1e-12)
    result = solve(["1e200*x = 1e200"])
    assert result.solved and result.solution["x"] == pytest.approx(1.0, rel=1e-12)


def test_vandermonde_8x8_reaches_numpys_accuracy():
    a = np.vander(np.arange(1.0, 9.0), increasing=True)
    b = a @ np.ones(8)
    truth = exact_solution(a, b)
    result = solve(equations_of(a, b))
    assert result.status == "solved" and result.rank == 8
    assert digits(values(result, 8), truth) >= digits(np.linalg.solve(a, b), truth) - 1


def test_huge_and_tiny_nonlinear_equations():
    assert solve(["1e200*x**2 = 1e200"], initial={"x": 3}).solution["x"] == pytest.approx(1.0, rel=1e-12)
    result = solve(["x**2 = 1e-300*y", "y = 1e300"], initial={"x": 3})
    assert result.solved and result.unique
    assert (result.solution["x"], result.solution["y"]) == pytest.approx((1.0, 1e300), rel=1e-12)


def test_truly_inconsistent_scaled_system_is_still_inconsistent():
    result = solve(["1e8*x + 1e8*y = 1e8", "x + y = 2"])
    assert result.status == "inconsistent" and result.rank == 1


# --------------------------------------------------------------------------- large


def test_laplacian_100_to_10_digits_in_under_2_seconds():
    n = 100
    a = 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    truth = np.sin(np.linspace(0.1, 3.0, n)) * 10
    b = a @ truth
    result = solve(equations_of(a, b))
    assert result.solved and result.rank == n
    assert digits(values(result, n), exact_solution(a, b)) >= 10
    assert result.seconds < 2.0


def test_dense_100_by_100_to_10_digits_in_under_2_seconds():
    rng = np.random.default_rng(0)
    n = 100
    a = rng.normal(size=(n, n)) + 10 * np.eye(n)
    b = a @ rng.normal(size=n)
    result = solve(equations_of(a, b))
    assert result.solved and result.rank == n
    assert digits(values(result, n), np.linalg.solve(a, b)) >= 10
    assert result.seconds < 2.0


def test_ten_thousand_chained_equations_in_under_30_seconds():
    n = 10_000
    eqs = [f"x{i} - x{i + 1} = 1" for i in range(n - 1)] + ["x0 = 0"]
    t0 = time.perf_counter()
    result = solve(eqs)
    assert time.perf_counter() - t0 < 30.0
    assert result.solved and result.rank == n and result.unique
    np.testing.assert_allclose(values(result, n), -np.arange(n), rtol=0, atol=1e-9)


def test_a_ten_thousand_term_flat_sum_parses():
    text = " + ".join(f"x{i}" for i in range(10_000)) + " = 1"
    assert len(parse_equation(text).names) == 10_000


# --------------------------------------------------------------------------- roots


@pytest.mark.parametrize(
    "equation, roots",
    [
        ("x**3 - 6*x**2 + 11*x - 6 = 0", [1, 2, 3]),
        ("x**4 - 10*x**2 + 9 = 0", [-3, -1, 1, 3]),
        ("x**6 - 21*x**5 + 175*x**4 - 735*x**3 + 1624*x**2 - 1764*x + 720 = 0", [1, 2, 3, 4, 5, 6]),
    ],
)
def test_every_real_root_with_30_starts(equation, roots):
    result = solve([equation], starts=30)
    found = sorted(s["x"] for s in result.solutions)
    assert found == pytest.approx(roots, abs=1e-8)
    assert not any(result.multiple)


def test_a_double_root_is_listed_once_and_marked_multiple(cli):
    result = cli("solve-equations", "x**3 - 3*x + 2 = 0", "--starts", "30", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    found = sorted(zip((s["x"] for s in out["solutions"]), out["multiple"]))
    assert [x for x, _ in found] == pytest.approx([-2.0, 1.0], abs=1e-6)
    assert [flag for _, flag in found] == [False, True]


def test_range_option_places_the_starts(cli):
    result = cli("solve-equations", "(x - 20)*(x - 30) = 0", "--starts", "10", "--range", "15", "35", "--json")
    assert result.exit_code == 0, result.stderr
    found = sorted(s["x"] for s in json.loads(result.stdout)["solutions"])
    assert found == pytest.approx([20.0, 30.0], abs=1e-8)


def test_powell_singular_function_is_a_singular_solution():
    powell = ["x1 + 10*x2 = 0", "sqrt(5)*(x3 - x4) = 0", "(x2 - 2*x3)**2 = 0", "sqrt(10)*(x1 - x4)**2 = 0"]
    result = solve(powell, initial={"x1": 3, "x2": -1, "x3": 0, "x4": 1})
    assert result.solved and result.rank == 2 and not result.unique
    assert "singular solution" in result.note
    assert max(abs(v) for v in result.solution.values()) < 1e-6


# --------------------------------------------------------------------------- the affine coefficients


@pytest.mark.parametrize(
    "text",
    ["2*x - 3*(y + 1)/4 + x = 7", "-(x - y)*sqrt(4) + 2**3*y = exp(1)", "x/1e6 + 1e200*y = x**1 + y**0", "+x - -y = pi*x"],
)
def test_affine_coefficients_match_autograd(text):
    import torch

    from gradfit.expr.nodes import affine_coefficients

    eq = parse_equation(text)
    left, right = affine_coefficients(eq.left, ["x", "y"]), affine_coefficients(eq.right, ["x", "y"])
    coefs = [left[0].get(k, 0.0) - right[0].get(k, 0.0) for k in ("x", "y")]
    point = torch.tensor([0.3, -1.7], dtype=torch.float64, requires_grad=True)
    residual = eq.residual(dict(zip(("x", "y"), point.unbind())))
    (grad,) = torch.autograd.grad(residual, point)
    np.testing.assert_allclose(coefs, grad.numpy(), rtol=1e-14)
    at_zero = float(eq.residual({"x": torch.tensor(0.0, dtype=torch.float64), "y": torch.tensor(0.0, dtype=torch.float64)}))
    assert left[1] - right[1] == pytest.approx(at_zero, rel=1e-14, abs=1e-300)


def test_affine_coefficients_refuse_what_is_not_affine():
    from gradfit.expr.nodes import affine_coefficients

    for text in ("x*y = 1", "sin(x) = 0", "x**2 = 1", "x/y = 1", "x/0 = 1"):
        eq = parse_equation(text)
        assert affine_coefficients(eq.left, ["x", "y"]) is None
