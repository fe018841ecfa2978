"""The equation solver against known answers: closed-form least squares, planted solutions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gradfit.equations.files import read_equation_file
from gradfit.equations.solver import solve
from gradfit.errors import EquationError, SolveError

PUZZLE = ["A + B = 9", "C - D = 1", "A + C = 8", "B - D = 2"]
# the puzzle as A x = b, unknowns in order A, B, C, D
PUZZLE_A = np.array([[1, 1, 0, 0], [0, 0, 1, -1], [1, 0, 1, 0], [0, 1, 0, -1]], dtype=float)
PUZZLE_B = np.array([9, 1, 8, 2], dtype=float)
CIRCLE = ["x**2 + y**2 = 25", "x - y = 1"]


def values(result) -> np.ndarray:
    return np.array(list(result.solution.values()))


def test_puzzle_gives_the_minimum_norm_solution():
    result = solve(PUZZLE)
    assert result.status == "solved" and result.solved and result.converged
    assert result.unknowns == ["A", "B", "C", "D"]
    assert result.max_abs_residual <= 1e-9
    assert all(abs(r) <= 1e-9 for r in result.residuals)
    np.testing.assert_allclose(values(result), [6, 3, 2, 1], atol=1e-9)
    np.testing.assert_allclose(values(result), np.linalg.pinv(PUZZLE_A) @ PUZZLE_B, atol=1e-9)
    assert result.linear and result.rank == 3 and not result.unique
    assert result.note == "underdetermined: one free direction; this is the minimum-norm solution"
    # the free direction spans the null space of A
    (direction,) = result.free_directions
    v = np.array(list(direction.values()))
    np.testing.assert_allclose(PUZZLE_A @ v, 0, atol=1e-12)
    assert np.linalg.norm(v) == pytest.approx(1.0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_other_optimizers_reach_the_same_minimum_norm_solution(optimizer):
    result = solve(PUZZLE, optimizer=optimizer)
    assert result.solved
    np.testing.assert_allclose(values(result), [6, 3, 2, 1], atol=1e-9)


def test_from_another_start_a_linear_system_gives_the_solution_nearest_it():
    x0 = np.array([1.0, -2.0, 0.5, 3.0])
    result = solve(PUZZLE, initial=dict(zip("ABCD", x0)))
    nearest = x0 + np.linalg.pinv(PUZZLE_A) @ (PUZZLE_B - PUZZLE_A @ x0)
    np.testing.assert_allclose(values(result), nearest, atol=1e-9)
    assert "nearest the starting point" in result.note


def test_a_unique_3x3_solution():
    eqs = ["2*x + y - z = 8", "-3*x - y + 2*z = -11", "-2*x + y + 2*z = -3"]
    result = solve(eqs)
    a = np.array([[2, 1, -1], [-3, -1, 2], [-2, 1, 2]], dtype=float)
    np.testing.assert_allclose(values(result), np.linalg.solve(a, [8, -11, -3]), atol=1e-9)
    np.testing.assert_allclose(values(result), [2, 3, -1], atol=1e-9)
    assert result.unique and result.rank == 3 and result.linear
    assert result.max_abs_residual <= 1e-9 and result.free_directions == []


def test_circle_and_line_gives_a_true_solution():
    result = solve(CIRCLE)
    x, y = values(result)
    assert result.solved and not result.linear and result.unique
    assert abs(x**2 + y**2 - 25) <= 1e-9 and abs(x - y - 1) <= 1e-9


def test_circle_and_line_with_ten_starts_finds_both_solutions():
    result = solve(CIRCLE, starts=10)
    found = sorted(tuple(round(v, 9) for v in s.values()) for s in result.solutions)
    assert found == [(-3.0, -4.0), (4.0, 3.0)]
    assert "two distinct solutions found in 10 starts" in result.note
    assert "solutions" in result.to_dict()


def test_inconsistent_system_reports_the_least_squares_point():
    result = solve(["x + y = 1", "x + y = 2"])
    assert result.status == "inconsistent" and not result.solved
    assert result.note.startswith("inconsistent")
    np.testing.assert_allclose(values(result), [0.75, 0.75], atol=1e-9)
    np.testing.assert_allclose(result.residuals, [0.5, -0.5], atol=1e-9)
    assert result.rank == 1 and result.converged


def test_overdetermined_consistent_system_is_solved():
    result = solve(["x = 1", "y = 2", "x + y = 3"])
    assert result.solved and result.unique
    np.testing.assert_allclose(values(result), [1, 2], atol=1e-9)


def test_linearity_is_decided_symbolically():
    result = solve(["x * y = 1"])
    assert not result.linear
    assert result.solved  # the zero start is a saddle: another start is drawn
    x, y = values(result)
    assert x * y == pytest.approx(1.0, abs=1e-9)
    assert result.rank == 1 and not result.unique
    assert "may not be isolated" in result.note and "random start" in result.note
    assert solve(["2*x/4 = 1"]).linear


def test_a_domain_problem_at_the_start_is_recovered():
    result = solve(["log(x) = 1", "sqrt(y) = 2"])
    assert result.solved
    np.testing.assert_allclose(values(result), [math.e, 4.0], atol=1e-9)
    assert "non-finite" in result.note


def test_no_finite_start_is_a_solve_error_naming_the_equation():
    with pytest.raises(SolveError, match=r"equation 2 \(x / 0 = 1\)"):
        solve(["y = 1", "x / 0 = 1"])


def test_no_real_solution_is_reported_with_a_finite_point():
    result = solve(["x**2 = -1"])
    assert result.status == "no_solution_found" and not result.solved
    assert all(math.isfinite(v) for v in result.solution.values())
    json.dumps(result.to_dict(), allow_nan=False)


def test_the_iteration_cap_is_reported_not_hidden():
    result = solve(["10*(y - x**2) = 0", "1 - x = 0"], max_iter=3)
    assert result.status == "not_converged" and not result.converged
    assert result.iterations == 3
    assert "--max-iter" in result.hint


def test_json_object_has_the_contract_keys():
    d = solve(PUZZLE).to_dict()
    contract = {
        "solution", "residuals", "max_abs_residual", "converged", "iterations",
        "linear", "rank", "unknowns", "unique", "note",
    }  # fmt: skip
    assert contract <= set(d) and "solutions" not in d
    assert d["unknowns"] == 4 and d["rank"] == 3 and d["unique"] is False
    json.dumps(d, allow_nan=False)


def test_parse_errors_name_the_equation():
    with pytest.raises(EquationError, match=r"^equation 2: attribute access"):
        solve(["x = 1", "x.real = 2"])
    with pytest.raises(EquationError, match=r"^eq\.txt line 3: "):
        solve(["x = 1", "x ^ 2 = 1"], labels=["eq.txt line 1", "eq.txt line 3"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"initial": {"z": 1}}, "'z', which is not an unknown"),
        ({"initial": {"x": float("nan")}}, "finite number"),
        ({"optimizer": "adamw"}, "optimizer must be one of"),
        ({"tol": 0}, "tol must be a positive number"),
        ({"starts": 0}, "starts must be an integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"init": "ones"}, "init must be"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises((EquationError, SolveError), match=message):
        solve(["x + y = 1"], **kwargs)


def test_no_equations_or_no_unknowns_are_refused():
    with pytest.raises(EquationError, match="no equations"):
        solve([])
    with pytest.raises(EquationError, match="no unknowns"):
        solve(["1 + 1 = 2"])


def test_random_init_is_seeded():
    a = solve(["x * y = 1"], init="random", seed=3)
    b = solve(["x * y = 1"], init="random", seed=3)
    assert a.solution == b.solution


def test_read_a_text_file_with_comments(tmp_path):
    path = tmp_path / "eqs.txt"
    path.write_text("# the puzzle\nA + B = 9  # first\n\nC - D = 1\n")
    loaded = read_equation_file(path)
    assert loaded.equations == ["A + B = 9", "C - D = 1"]
    assert loaded.labels == ["eqs.txt line 2", "eqs.txt line 4"]


def test_read_a_yaml_file_with_initial_values(tmp_path):
    path = tmp_path / "eqs.yaml"
    path.write_text("equations:\n  - x**2 + y**2 = 25\n  - x - y = 1\ninitial: {x: -1, y: -1}\n")
    loaded = read_equation_file(path)
    result = solve(loaded.equations, initial=loaded.initial)
    np.testing.assert_allclose(values(result), [-3, -4], atol=1e-9)


@pytest.mark.parametrize(
    "text, message",
    [
        ("equations: [x = 1]\ninitail: {x: 1}\n", "unknown key 'initail'"),
        ("equations: []\n", "non-empty list"),
        ("equations:\n  - {x: 1}\n", r"equations\[0\] must be a string"),
        ("equations: [x = 1\n", "not valid YAML"),
        ("- x = 1\n", "expected a mapping"),
    ],
)
def test_bad_yaml_files_are_refused(tmp_path, text, message):
    path = tmp_path / "eqs.yaml"
    path.write_text(text)
    with pytest.raises(EquationError, match=message):
        read_equation_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(EquationError, match="no such file"):
        read_equation_file(tmp_path / "nope.txt")


def test_the_solver_does_not_use_torch_optim(monkeypatch):
    # torch.optim imports torch._dynamo on first use (over a second); gradfit's optimizers
    # (optim/) avoid it
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("torch.optim was used")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", refuse)
    for optimizer in ("lbfgs", "adam", "sgd"):
        assert solve(PUZZLE, optimizer=optimizer).solved


def test_the_solver_drives_gradfits_optimizers(monkeypatch):
    # one L-BFGS, Adam and SGD in the project: solve-equations runs those of optim/
    from gradfit.optim import first_order, lbfgs

    calls = []
    for cls in (lbfgs.LBFGS, first_order.Adam, first_order.SGD):

        def step(self, *args, _step=cls.step, _name=cls.__name__, **kwargs):
            calls.append(_name)
            return _step(self, *args, **kwargs)

        monkeypatch.setattr(cls, "step", step)
    for optimizer in ("lbfgs", "adam", "sgd"):
        assert solve(PUZZLE, optimizer=optimizer).solved
    assert set(calls) == {"LBFGS", "Adam", "SGD"}
