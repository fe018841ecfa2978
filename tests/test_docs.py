"""The README's walkthrough runs as written, and the config reference is current."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

# Output lines worth asserting (the rest carry timings and paths that vary).
CHECKED = re.compile(r"^(y = |price_k = |error: |solved: |linear; |free direction|runs/|size_m2,|120,|80,|wrote |next: )")


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
            elif steps and CHECKED.match(line.strip()) and "s\n" not in line:
                steps[-1][2].append(line.strip())
    return steps


def _commands() -> set[str]:
    from gradfit.cli import app

    return {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}


def test_walkthrough_has_steps():
    steps = walkthrough()
    assert len(steps) >= 8
    assert any(cmd.startswith("gradfit train configs/quadratic.yaml") for cmd, _, _ in steps)


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
        flat = re.sub(r"\s+", " ", out)
        for line in expect:
            assert re.sub(r"\s+", " ", line) in flat, f"{cmd}: expected {line!r} in\n{out}"


def test_config_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_config_reference.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, "docs/config.md is stale: run python docs/gen_config_reference.py"


@pytest.mark.parametrize("name", ["config.md", "errors.md", "formula.md", "distributed.md", "loss.png", "fit.png"])
def test_linked_docs_exist(name):
    assert (ROOT / "docs" / name).exists()
    assert f"docs/{name}" in (ROOT / "README.md").read_text()
