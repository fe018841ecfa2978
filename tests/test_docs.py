"""The README's walkthrough runs as written, and the config reference is current."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

# Output lines worth asserting (the rest carry timings, dates and paths that vary, or the last digits of
# float32 training, which differ between machines).
CHECKED = re.compile(r"^(y = |price_k = |error: |solved: |linear; |free direction|runs/|size_m2,|120,|80,|wrote |next: |b1 |b2 |regularization path: "
                     r"|\d+ +model\.penalty\.l1="  # (a sweep's ranking of exact float64 fits)
                     r"|\d+ +model\.degree=\d+ +\d|\d+ +\d+ +\d+ +\d|mean +\d|sd +\d"  # (cv and a grid sweep, float64)
                     r"|VW,|Fiat,|Toyota,)")  # (predict on new rows of the mixed-type table)
TIMING = re.compile(r"\d s\b")  # "in 0.04 s": never asserted, whatever the prefix

# In the lines asserted, the text must be the same and the numbers close: other BLAS builds of numpy and
# torch sum in other orders and print other last digits. A number token stands apart from words
# ("b1", "x^2" and "poly2" keep their digits as text).
NUMBER = r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])"
ROUNDING = 1e-10  # |x| below this is rounding noise (a max |residual|, an exact gap): any other noise matches
RTOL = 1e-6  # other numbers agree to this, relative; integers (counts, ranks, exit codes) exactly


def numbers_match(expected: str, actual: str) -> bool:
    """Two number tokens as the README and a run print them: the same number, up to rounding."""
    e, a = float(expected), float(actual)
    if abs(e) < ROUNDING:
        return abs(a) < ROUNDING
    if re.fullmatch(r"[-+]?\d+", expected) and re.fullmatch(r"[-+]?\d+", actual):
        return int(expected) == int(actual)
    return math.isclose(a, e, rel_tol=RTOL)


def line_in_output(expected: str, output: str) -> bool:
    """Is the README's line ``expected`` in ``output``: its text exactly, its numbers by numbers_match?

    Whitespace runs count as one space (tables align, long lines wrap at the terminal's width)."""
    flat = re.sub(r"\s+", " ", output)
    parts = re.split(f"({NUMBER})", re.sub(r"\s+", " ", expected.strip()))
    texts, numbers = parts[0::2], parts[1::2]
    pattern = "".join(re.escape(t) + (f"({NUMBER})" if i < len(numbers) else "") for i, t in enumerate(texts))
    for m in re.finditer(f"(?=({pattern}))", flat):  # overlapping candidates: any one may be the match
        if all(numbers_match(e, a) for e, a in zip(numbers, m.groups()[1:])):
            return True
    return False


def walkthrough() -> list[tuple[str, int, list[str]]]:
    """(command, expected exit code, output lines to find) for every command of a docs-test block."""
    text = (ROOT / "README.md").read_text()
    steps = []
    for block in re.findall(r"<!-- docs-test -->\s*```console\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                cmd = line[2:]
                code = 0
                m = re.search(r"\s+#\s*exit (\d+)\s*$", cmd)
                if m:
                    code = int(m.group(1))
                    cmd = cmd[: m.start()]
                steps.append((cmd, code, []))
            elif steps and CHECKED.match(line.strip()) and not TIMING.search(line):
                steps[-1][2].append(line.strip())
    return steps


def _commands() -> set[str]:
    from gradfit.cli import app

    return {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}


def test_walkthrough_has_steps():
    steps = walkthrough()
    assert len(steps) >= 8
    assert any(cmd.startswith("gradfit train configs/quadratic.yaml") for cmd, _, _ in steps)


def test_output_lines_match_up_to_rounding_and_no_further():
    out = ("free direction: (A, B, C, D) + t * (0.5, -0.5, -0.5, -0.5)\n"
           "linear; rank 3 of 4 unknowns; max |residual| 4.44e-16 (tol 1e-09); 8\niterations\n"
           "b1               238.9421292       2.707         [233.044, 244.841]\n"
           "120,10,4,5.0,354.88180988232335\ny = 3 + 2*x + 1*x^2\n")
    same = ["linear; rank 3 of 4 unknowns; max |residual| 1.11e-16 (tol 1e-09); 8 iterations",  # noise: any noise
            "linear; rank 3 of 4 unknowns; max |residual| 0 (tol 1e-09); 8 iterations",
            "linear; rank 3 of 4 unknowns; max |residual| -2.2e-17 (tol 1e-9); 8 iterations",
            "b1 238.94213 2.707 [233.044, 244.841]",  # another rounding of the same value
            "120,10,4,5.0,354.8818098823237",  # other last digits
            "free direction: (A, B, C, D) + t * (0.5, -0.5, -0.5, -0.5)",
            "y = 3 + 2*x + 1*x^2",
            "4,5.0,354.88180988"]  # a part of a line, as before
    for line in same:
        assert line_in_output(line, out), line
    different = ["linear; rank 3 of 4 unknowns; max |residual| 1.11e-06 (tol 1e-09); 8 iterations",  # not noise
                 "linear; rank 2 of 4 unknowns; max |residual| 1.11e-16 (tol 1e-09); 8 iterations",  # a count
                 "linear; rank 3 of 4 unknowns; max |residual| 1.11e-16 (tol 1e-08); 8 iterations",
                 "linear; rank 3 of 4 unknowns; max |residual| 1.11e-16 (tol 1e-09); 9 iterations",
                 "linear; rank 3 of 4 unknowns; max |residual| 1.11e-16 (tol 1e-09); 8 steps",  # a word
                 "nonlinear; rank 3 of 4 unknowns; max |residual| 1.11e-16 (tol 1e-09); 8 iterations",
                 "linear; rank 3 of 4 unknowns; max residual 1.11e-16 (tol 1e-09); 8 iterations",
                 "b1 238.9431292 2.707 [233.044, 244.841]",  # a wrong coefficient (4e-6 off)
                 "b1 238.9421292 2.708 [233.044, 244.841]",
                 "b2 238.9421292 2.707 [233.044, 244.841]",  # digits in a name are text
                 "120,10,4,5.0,354.8828098823233",
                 "120,10,4,5.0,-354.88180988232335",
                 "20,10,4,5.0,354.88180988232335",  # a number's digits are all of it, not a part
                 "free direction: (A, B, C, D) + t * (0.5, 0.5, -0.5, -0.5)",
                 "y = 3 + 2*x + 2*x^2",
                 "y = 3 + 2*x + 1*x^3"]
    for line in different:
        assert not line_in_output(line, out), line
    assert numbers_match("1e-300", "0.0") and not numbers_match("1e-9", "1e-12") and not numbers_match("0", "1e-3")


def test_walkthrough_runs_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "configs", work / "configs")
    shutil.copytree(ROOT / "data", work / "data")
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1", MPLBACKEND="Agg")
    known = _commands()
    for cmd, code, expect in walkthrough():
        args = shlex.split(cmd)
        assert args[0] == "gradfit", cmd
        if args[1] not in known:
            continue  # a command the README documents ahead of this checkout
        r = subprocess.run([sys.executable, "-m", "gradfit", *args[1:]], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == code, f"{cmd}: exit {r.returncode}\n{out}"
        assert "Traceback" not in out, cmd
        for line in expect:
            assert line_in_output(line, out), f"{cmd}: expected {line!r} (numbers up to rounding) in\n{out}"


def test_config_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_config_reference.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, "docs/config.md is stale: run python docs/gen_config_reference.py"


@pytest.mark.parametrize("name", ["config.md", "errors.md", "formula.md", "distributed.md", "loss.png", "fit.png"])
def test_linked_docs_exist(name):
    assert (ROOT / "docs" / name).exists()
    assert f"docs/{name}" in (ROOT / "README.md").read_text()
