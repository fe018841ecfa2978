"""gradfit solve-equations: exit codes, the JSON contract, messages on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import CONFIGS, run_gradfit

PUZZLE = ["A + B = 9", "C - D = 1", "A + C = 8", "B - D = 2"]


def solve_json(cli, *args):
    result = cli("solve-equations", *args, "--json")
    return result, json.loads(result.stdout)


def test_puzzle_json(cli):
    result, out = solve_json(cli, *PUZZLE)
    assert result.exit_code == 0, result.stderr
    assert list(out)[:10] == [
        "solution", "residuals", "max_abs_residual", "converged", "iterations",
        "linear", "rank", "unknowns", "unique", "note",
    ]  # fmt: skip
    assert out["solution"] == pytest.approx({"A": 6.0, "B": 3.0, "C": 2.0, "D": 1.0}, abs=1e-9)
    assert max(abs(r) for r in out["residuals"]) <= 1e-9
    assert (out["rank"], out["unknowns"], out["unique"], out["linear"]) == (3, 4, False, True)
    assert out["note"] == "underdetermined: one free direction; this is the minimum-norm solution"
    assert len(out["free_directions"]) == 1
    assert result.stderr == ""


def test_puzzle_from_the_example_file_prints_tables(cli):
    result = cli("solve-equations", "--file", CONFIGS / "puzzle.txt")
    assert result.exit_code == 0, result.stderr
    for text in ("Solution", "A + B = 9", "minimum-norm", "rank 3 of 4", "free direction"):
        assert text in result.stdout


def test_unique_3x3(cli):
    result, out = solve_json(cli, "2*x + y - z = 8", "-3*x - y + 2*z = -11", "-2*x + y + 2*z = -3")
    assert result.exit_code == 0
    assert out["solution"] == pytest.approx({"x": 2.0, "y": 3.0, "z": -1.0}, abs=1e-9)
    assert out["unique"] is True


def test_circle_with_starts_lists_both_solutions(cli):
    result, out = solve_json(cli, "x**2 + y**2 = 25", "x - y = 1", "--starts", "10")
    assert result.exit_code == 0
    found = sorted((round(s["x"], 9), round(s["y"], 9)) for s in out["solutions"])
    assert found == [(-3.0, -4.0), (4.0, 3.0)]
    x, y = out["solution"]["x"], out["solution"]["y"]
    assert abs(x**2 + y**2 - 25) <= 1e-9 and abs(x - y - 1) <= 1e-9


def test_inconsistent_exits_1_with_the_least_squares_point(cli):
    result, out = solve_json(cli, "x + y = 1", "x + y = 2")
    assert result.exit_code == 1
    assert out["solution"] == pytest.approx({"x": 0.75, "y": 0.75}, abs=1e-9)
    assert out["note"].startswith("inconsistent")
    assert "inconsistent" in result.stderr


def test_inconsistent_table_output_still_shows_the_point(cli):
    result = cli("solve-equations", "x + y = 1", "x + y = 2")
    assert result.exit_code == 1
    assert "0.75" in result.stdout and "least-squares" in result.stderr


def test_not_converged_says_what_to_try(cli):
    result = cli("solve-equations", "10*(y - x**2) = 0", "1 - x = 0", "--max-iter", "2")
    assert result.exit_code == 1
    assert "not converged" in result.stderr and "--max-iter" in result.stderr


def test_initial_values_from_the_command_line(cli):
    result, out = solve_json(
        cli, "x**2 + y**2 = 25", "x - y = 1", "--initial", "x=-1", "--initial", "y=-1"
    )
    assert result.exit_code == 0
    assert out["solution"] == pytest.approx({"x": -3.0, "y": -4.0}, abs=1e-9)


def test_a_misspelled_option_is_a_usage_error_not_an_equation(cli):
    result = cli("solve-equations", "x = 1", "--max-iters=5")
    assert result.exit_code == 2
    assert "--max-iters" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "no equations given"),
        (("x = 1", "--initial", "x"), "NAME=VALUE"),
        (("x = 1", "--initial", "y=2"), "not an unknown"),
        (("x = 1", "--file", "missing.txt"), "no such file"),
        (("x = 1 = 2",), "exactly one '='"),
        (("y = 1", "x / 0 = 1"), "no starting point gives finite values"),
    ],
)
def test_user_errors_exit_1_with_a_message(cli, args, message):
    result = cli("solve-equations", *args)
    assert result.exit_code == 1
    assert message in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "template",
    [
        "__import__('os').system('touch {marker}') = 0",
        "x.__class__ = 1",
        "(lambda: __import__('os').system('touch {marker}'))() = 1",
    ],
)
def test_code_is_refused_and_never_runs(cli, tmp_path, template):
    marker = tmp_path / "pwned"
    result = cli("solve-equations", template.format(marker=marker), "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "not allowed" in result.stderr and "^" in result.stderr
    assert not marker.exists()


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    marker = tmp_path / "pwned"
    out = run_gradfit("solve-equations", f"__import__('os').system('touch {marker}') = 0")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "attribute access is not allowed" in out.stderr
    assert "column 1" in out.stderr
    assert not marker.exists()


def test_importing_the_command_does_not_import_torch():
    code = "import sys, gradfit.cli.solve; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_bad_range_is_refused(cli):
    result = cli("solve-equations", "x**2 = 4", "--starts", "5", "--range", "3", "1")
    assert result.exit_code == 1
    assert "range must be two finite numbers LOW < HIGH" in result.stderr


def test_the_gradient_optimizers_remain_available(cli):
    result, out = solve_json(cli, *PUZZLE, "--optimizer", "lbfgs")
    assert result.exit_code == 0, result.stderr
    assert out["solution"] == pytest.approx({"A": 6.0, "B": 3.0, "C": 2.0, "D": 1.0}, abs=1e-9)
