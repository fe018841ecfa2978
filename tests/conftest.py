"""Shared fixtures: the repository's paths, a fast runner for the CLI, small configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DATA = ROOT / "data"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def cli():
    """Run the CLI in-process: cli(*args) -> click Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from gradfit.cli import app

    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run


def run_gradfit(*args, cwd=None, timeout=120, env=None) -> subprocess.CompletedProcess:
    """Run ``python -m gradfit`` in a subprocess (for exit codes and the absence of tracebacks)."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "gradfit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=e,
    )


@pytest.fixture
def gradfit_proc():
    return run_gradfit


def small_config(**overrides) -> dict:
    """A fast polynomial config on synthetic data, as a dict (override sections by keyword)."""
    cfg = {
        "name": "t",
        "seed": 0,
        "device": "cpu",
        "data": {"synthetic": {"kind": "polynomial", "coefficients": [3, 2, 1], "n_samples": 100}},
        "model": {"kind": "polynomial", "degree": 2},
        "optimizer": {"kind": "adam", "lr": 0.05},
        "train": {"epochs": 300},
    }
    cfg.update(overrides)
    return cfg


def table_config(data: dict, model: dict | None = None, *, epochs: int = 200, **over) -> dict:
    """A float64 MSE config on a data file (``data``: the data section without ``split``), no
    validation split, a linear model unless ``model`` names one (override sections by keyword)."""
    cfg = {
        "name": "t",
        "seed": 0,
        "dtype": "float64",
        "data": {"split": {"val": 0.0}, **data},
        "model": model or {"kind": "linear"},
        "loss": {"kind": "mse"},
        "train": {"epochs": epochs},
    }
    cfg.update(over)
    return cfg


def sigint_default() -> None:
    """``preexec_fn`` of a gradfit process that a test interrupts: SIGINT at its default action in the
    child, as from a terminal. A test runner started in the background by a non-interactive shell
    passes SIGINT down ignored, and Python then installs no KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
