"""Faults, round two (issue 21): SIGTERM at any moment, out-of-memory and interrupts in words.

Each subprocess test slows one step of ``gradfit train`` down (a wrapper around the real function,
which then runs), signals the process while it is inside that step, and checks the exit code, the
message, and what is on disk afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import typer
import yaml

from conftest import sigint_default, small_config
from gradfit.cli.common import user_errors
from gradfit.errors import Aborted, signal_name
from gradfit.results.rundir import RUN_MARKER
from gradfit.train.resume import RESUME_NAME

# Runs gradfit with MODULE.NAME slowed down: it touches MARK, then sleeps 3 s (the signal lands
# there), then does its real work.
WRAPPER = textwrap.dedent('''
    import importlib, sys, time
    module, name, mark = sys.argv[1:4]
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    def slow(*a, **k):
        open(mark, "w").close()
        for _ in range(300):
            time.sleep(0.01)
        return real(*a, **k)
    setattr(mod, name, slow)
    sys.argv = ["gradfit"] + sys.argv[4:]
    from gradfit.__main__ import main
    main()
''')


def _start(tmp_path: Path, module: str, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(small_config(train={"epochs": 20})))
    (tmp_path / "wrap.py").write_text(WRAPPER)
    mark = tmp_path / "mark"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "wrap.py"), module, name, str(mark), "train", str(tmp_path / "c.yaml"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=dict(os.environ, COLUMNS="300"),
        preexec_fn=sigint_default,
    )
    deadline = time.monotonic() + 90
    while not mark.exists():
        if proc.poll() is not None:
            raise AssertionError(f"gradfit exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the slowed step was not reached in time")
        time.sleep(0.02)
    return proc, mark


def _signal(proc: subprocess.Popen, times: int = 1) -> tuple[int, str]:
    for _ in range(times):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=90)
    assert "Traceback" not in stdout + stderr, stderr
    return proc.returncode, " ".join(stderr.split())


def test_sigterm_while_the_data_loads_exits_130_and_writes_nothing(tmp_path):
    proc, _ = _start(tmp_path, "gradfit.train.run", "load_dataset", "--out", str(tmp_path / "run"))
    code, err = _signal(proc)
    assert code == 130
    assert "aborted by SIGTERM before training started; nothing was written" in err
    assert not (tmp_path / "run").exists()


def test_sigterm_while_a_finished_run_is_written_completes_it_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc, _ = _start(tmp_path, "gradfit.train.run", "save_checkpoint", "--out", str(out))
    code, err = _signal(proc)
    assert code == 130
    assert f"SIGTERM arrived after training had ended; the run finished and is saved complete in {out}" in err
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / RUN_MARKER).exists()


def test_two_sigterms_while_a_run_is_written_say_what_is_kept(tmp_path):
    out = tmp_path / "run"
    proc, _ = _start(tmp_path, "gradfit.train.run", "save_checkpoint", "--out", str(out))
    code, err = _signal(proc, 2)
    assert code == 130
    assert f"aborted by SIGTERM: {out} keeps" in err and f"continue it with: gradfit train --resume {out}" in err
    assert {"config.yaml", "history.csv", RESUME_NAME} <= {p.name for p in out.iterdir()}
    assert not (out / "metrics.json").exists() and not (out / RUN_MARKER).exists()


@pytest.mark.slow
def test_two_sigterms_before_anything_is_saved_say_the_directory_went(tmp_path):
    """The old message ("the run directory keeps only what was saved") was wrong here: it is removed."""
    proc, _ = _start(tmp_path, "gradfit.results.plots", "prepare")
    code, err = _signal(proc, 2)
    assert code == 130
    assert "aborted by SIGTERM: nothing had been saved;" in err and "was removed (this run had made it)" in err
    assert not (tmp_path / "runs" / "t").exists()


@pytest.mark.slow
def test_two_sigterms_in_a_users_out_directory_keep_it_and_its_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc, _ = _start(tmp_path, "gradfit.results.plots", "prepare", "--out", str(out), "--force")
    code, err = _signal(proc, 2)
    assert code == 130
    assert "this run's files were removed from" in err and "(the directory was there before)" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- the CLI's translation, in process


def _exit_code(fn) -> int:
    with pytest.raises(typer.Exit) as e:
        user_errors(fn)()
    return e.value.exit_code


def test_memory_error_anywhere_is_a_message_and_exit_1(capsys):
    def big():
        raise MemoryError()

    assert _exit_code(big) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "error: out of memory" in err and "model.hidden" in err and "data.n_samples" in err


def test_an_interrupt_of_any_command_is_a_message_and_exit_130(capsys):
    def stopped():
        raise KeyboardInterrupt("SIGTERM")

    assert _exit_code(stopped) == 130
    assert "aborted by SIGTERM: the command stopped before it finished" in capsys.readouterr().err

    def aborted():
        raise Aborted("runs/x keeps config.yaml", "SIGINT")

    assert _exit_code(aborted) == 130
    assert "aborted by SIGINT: runs/x keeps config.yaml" in capsys.readouterr().err


def test_signal_names():
    assert signal_name(KeyboardInterrupt()) == "Ctrl-C"
    assert signal_name(KeyboardInterrupt("SIGTERM")) == "SIGTERM"
    assert signal_name(Aborted("SIGHUP is not a name here")) == "Ctrl-C"


# ---------------------------------------------------------------- memory estimates before allocation


def _cfg(**over):
    from gradfit.config.loading import config_from_dict

    return config_from_dict(small_config(**over))


@pytest.mark.parametrize("over, key", [
    ({"model": {"kind": "mlp", "hidden": [65536, 65536]}}, "model.hidden"),
    ({"data": {"synthetic": {"kind": "linear", "n_features": 10_000, "n_samples": 100_000_000}},
      "model": {"kind": "linear"}}, "data.synthetic.n_samples"),
    ({"data": {"synthetic": {"kind": "linear", "n_features": 200, "n_samples": 100_000}},
      "model": {"kind": "polynomial", "degree": 4}}, "model.degree"),
])
def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(over, key):
    from gradfit.errors import ConfigError
    from gradfit.train.resources import check_memory

    with pytest.raises(ConfigError) as e:
        check_memory(_cfg(**over), available=8 * 2**30)
    msg = str(e.value)
    assert key in msg and "GiB of memory, more than the 8 GiB this machine has free" in msg


def test_the_estimates_match_the_sizes():
    from gradfit.train.resources import check_memory, estimates

    parts = {key: (size, what) for key, size, what in estimates(_cfg(model={"kind": "mlp", "hidden": [65536, 65536]}))}
    params = 2 * 65536 + 65537 * 65536 + 65537
    size, what = parts["model.hidden"]
    assert f"{params:,} parameters" in what and size == 32 * params
    parts = {key: size for key, size, _ in estimates(_cfg(
        data={"synthetic": {"kind": "linear", "n_features": 3, "n_samples": 1000}}, model={"kind": "polynomial", "degree": 2}))}
    assert parts == {"data.synthetic.n_samples": 3 * 1000 * 4 * 8, "model.degree": 2 * 1000 * 10 * 8}  # C(3 + 2, 2) terms
    check_memory(_cfg(), available=2**30)  # a small run passes


def test_a_huge_mlp_is_refused_by_gradfit_train_at_once(tmp_path):
    from typer.testing import CliRunner

    from gradfit.cli import app

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(small_config(model={"kind": "mlp", "hidden": [65536, 65536]})))
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and time.monotonic() - t0 < 30
    err = " ".join(r.stderr.split())
    assert "model.hidden" in err and "4,295,229,441 parameters" in err and "lower model.hidden" in err
    assert not (tmp_path / "run").exists()
