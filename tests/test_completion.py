"""Shell completion: the script gradfit prints completes its commands and options in a real bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def _complete(words: list[str], cword: int) -> list[str]:
    """Source `gradfit --show-completion bash` in bash, complete `words`, return COMPREPLY."""
    script = (
        'source <(gradfit --show-completion bash)\n'
        f'COMP_WORDS=({" ".join(words)}); COMP_CWORD={cword}\n'
        '_gradfit_completion gradfit\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


@needs_bash
@pytest.mark.skipif(shutil.which("gradfit", path=str(BIN)) is None, reason="the gradfit console script is not installed")
def test_bash_completes_commands_and_options():
    assert _complete(["gradfit", "tr"], 1) == ["train"]
    assert "eval" in _complete(["gradfit", "e"], 1)
    assert "--out" in _complete(["gradfit", "train", "--o"], 2)


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F _gradfit_completion gradfit"),
                                           ("zsh", "compdef _gradfit_completion gradfit"),
                                           ("fish", "complete --command gradfit")])
def test_completion_scripts_for_each_shell(shell, marker, cli, monkeypatch):
    """--show-completion prints the script of the shell it runs in (typer detects it from the parent
    processes, whatever follows the flag): each shell's script, with that detection pinned."""
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: shell)
    r = cli("--show-completion")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "_GRADFIT_COMPLETE" in r.stdout and marker in r.stdout, r.stdout
