"""Nothing lost: interrupts, periodic checkpoints, atomic files, and --resume.

The signal tests run a real ``gradfit train`` process, wait for its first periodic
checkpoint (so training is under way), send the signal and inspect the run directory.
The resume tests check the contract that matters: for a full-batch run, stopping and
resuming gives the same weights as never stopping (exactly, in float64).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import sigint_default, small_config
from gradfit.config.loading import config_from_dict
from gradfit.errors import CheckpointError, ConfigError, DataError
from gradfit.optim import first_order
from gradfit.train import run as api
from gradfit.train.resume import RESUME_NAME, load_state


def _cfg(tmp_path, **train):
    c = small_config(dtype="float64", train={"epochs": 120, "tol": 0.0, **train})
    c["output"] = {"dir": str(tmp_path / "runs")}
    return c


def read_history(d: Path) -> list[list[str]]:
    return [line.split(",") for line in (d / "history.csv").read_text().splitlines()[1:]]


def assert_consistent(d: Path, epochs: int, stop_reason: str) -> dict:
    """A complete run directory whose files agree with each other."""
    m = json.loads((d / "metrics.json").read_text())
    assert m["stop_reason"] == stop_reason
    assert m["epochs"] == epochs
    rows = read_history(d)
    assert [int(r[0]) for r in rows] == list(range(1, epochs + 1))
    assert load_state(d / RESUME_NAME).epoch == epochs
    from gradfit.results.checkpoint import load_model

    model = load_model(d)
    assert torch.isfinite(torch.as_tensor(model.predict([[0.5]]))).all()
    assert json.loads((d / "coefficients.json").read_text())["model"] == "polynomial"
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    return m


class StopAfter:
    """should_stop that says yes once ``k`` epochs have been recorded."""

    def __init__(self, k: int):
        self.k, self.seen = k, 0

    def on_epoch(self, rec) -> None:
        self.seen = rec.epoch

    def __call__(self) -> bool:
        return self.seen >= self.k


def head_state(run) -> dict:
    return {k: v.clone() for k, v in run.model.head.state_dict().items()}


# ---------------------------------------------------------------- in-process: should_stop, resume


def test_should_stop_writes_a_consistent_interrupted_run(tmp_path):
    stop = StopAfter(37)
    run = api.train(config_from_dict(_cfg(tmp_path)), out=tmp_path / "r", on_epoch=stop.on_epoch, should_stop=stop)
    assert run.metrics["stop_reason"] == "interrupted"
    assert run.metrics["converged"] is False
    assert_consistent(tmp_path / "r", 37, "interrupted")


@pytest.mark.parametrize("batch_size", [None, 16], ids=["full-batch", "mini-batch"])
def test_resume_gives_the_same_weights_as_never_stopping(tmp_path, batch_size):
    cfg = _cfg(tmp_path, batch_size=batch_size)
    straight = api.train(config_from_dict(cfg), out=tmp_path / "straight")

    stop = StopAfter(45)
    first = api.train(config_from_dict(cfg), out=tmp_path / "resumed", on_epoch=stop.on_epoch, should_stop=stop)
    assert first.metrics["stop_reason"] == "interrupted" and first.metrics["epochs"] == 45
    resumed = api.resume(tmp_path / "resumed")
    assert resumed.metrics["epochs"] == 120 and resumed.metrics["stop_reason"] == "max_epochs"

    a, b = head_state(straight), head_state(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-12)
    ca, cb = straight.coefficients, resumed.coefficients
    assert cb["intercept"] == pytest.approx(ca["intercept"], rel=1e-12, abs=1e-12)
    for k in ca["coefficients"]:
        assert cb["coefficients"][k] == pytest.approx(ca["coefficients"][k], rel=1e-12, abs=1e-12)
    # The history continues: the same losses, epoch by epoch.
    ha = [float(r[1]) for r in read_history(tmp_path / "straight")]
    hb = [float(r[1]) for r in read_history(tmp_path / "resumed")]
    assert len(hb) == 120
    assert hb == pytest.approx(ha, rel=1e-12, abs=1e-15)
    assert_consistent(tmp_path / "resumed", 120, "max_epochs")


def _stop_where_straight(tmp_path, cfg, k):
    """Train straight, and stopped after k epochs then resumed: (straight, resumed)."""
    straight = api.train(config_from_dict(cfg), out=tmp_path / "straight")
    stop = StopAfter(k)
    first = api.train(config_from_dict(cfg), out=tmp_path / "resumed", on_epoch=stop.on_epoch, should_stop=stop)
    assert first.metrics["stop_reason"] == "interrupted" and first.metrics["epochs"] == k
    return straight, api.resume(tmp_path / "resumed")


def test_resumed_early_stopping_stops_where_it_would_have(tmp_path):
    """Early stopping's memory (best loss, its epoch and weights, the epochs since) is saved with the
    training state: a run interrupted after its best epoch stops at the same epoch with the same weights."""
    cfg = small_config(dtype="float64", data={"synthetic": {"kind": "polynomial", "coefficients": [3, 2, 1],
                                                            "n_samples": 60, "noise": 2.0}},
                       model={"kind": "polynomial", "degree": 9}, optimizer={"kind": "adam", "lr": 0.05},
                       train={"epochs": 3000, "tol": 0.0, "early_stopping": {"patience": 40}})
    cfg["output"] = {"dir": str(tmp_path / "runs")}
    probe = api.train(config_from_dict(cfg), write=False)
    assert probe.metrics["stop_reason"] == "early_stopping"
    best, end = probe.metrics["best_epoch"], probe.metrics["epochs"]
    assert end - best == 40
    straight, resumed = _stop_where_straight(tmp_path, cfg, best + 10)  # between the best epoch and the stop
    assert resumed.metrics["stop_reason"] == "early_stopping"
    assert resumed.metrics["epochs"] == straight.metrics["epochs"] == end
    assert resumed.metrics["best_epoch"] == straight.metrics["best_epoch"] == best
    a, b = head_state(straight), head_state(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resumed_lbfgs_stops_where_it_would_have(tmp_path, dtype):
    """L-BFGS's stop rule also watches its gradient record, and each step starts from where the last
    ended (its loss and gradient known): both are saved, so every interrupted epoch resumes exactly."""
    cfg = small_config(dtype=dtype, data={"synthetic": {"kind": "polynomial", "coefficients": [3, 2, 1, 0.5, 0.1, 0.01],
                                                          "n_samples": 500, "noise": 0.1}},
                       model={"kind": "polynomial", "degree": 9}, optimizer={"kind": "lbfgs"}, train={"epochs": 200, "tol": 1e-9})
    cfg["output"] = {"dir": str(tmp_path / "runs")}
    straight = api.train(config_from_dict(cfg), out=tmp_path / "straight")
    assert straight.metrics["stop_reason"] == "tolerance" and straight.metrics["epochs"] >= 3
    for k in range(1, straight.metrics["epochs"]):
        stop = StopAfter(k)
        api.train(config_from_dict(cfg), out=tmp_path / f"r{k}", on_epoch=stop.on_epoch, should_stop=stop)
        resumed = api.resume(tmp_path / f"r{k}")
        assert (resumed.metrics["epochs"], resumed.metrics["stop_reason"]) == (straight.metrics["epochs"], "tolerance"), k
        a, b = head_state(straight), head_state(resumed)
        for name in a:
            assert torch.equal(a[name], b[name]), (k, name)


def test_resume_without_early_stopping_forgets_its_best_weights(tmp_path):
    """Early stopping turned off on resume: the run trains on and keeps its last weights."""
    cfg = _cfg(tmp_path, epochs=60, early_stopping={"patience": 1000})
    cfg["data"] = {"synthetic": {"kind": "polynomial", "coefficients": [3, 2, 1], "n_samples": 200, "noise": 0.5}, "split": {"val": 0.3}}
    api.train(config_from_dict(cfg), out=tmp_path / "a")
    resumed = api.resume(tmp_path / "a", ["train.epochs=150", "train.early_stopping=null"])
    straight = api.train(config_from_dict({**cfg, "train": {"epochs": 150, "tol": 0.0}}), out=tmp_path / "b")
    assert resumed.metrics.get("best_epoch") is None and resumed.metrics["epochs"] == 150
    assert resumed.metrics["train"]["mse"] == pytest.approx(straight.metrics["train"]["mse"], rel=1e-9)


def test_resume_a_finished_run_with_more_epochs(tmp_path, cli):
    cfg = _cfg(tmp_path)
    api.train(config_from_dict(cfg), out=tmp_path / "r")
    result = cli("train", "--resume", tmp_path / "r")
    assert result.exit_code == 1
    assert "already trained 120 epochs" in " ".join(result.stderr.split())
    result = cli("train", "--resume", tmp_path / "r", "--set", "train.epochs=150", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert_consistent(tmp_path / "r", 150, "max_epochs")
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["epochs"] == 150


def test_checkpoint_every_saves_and_a_crashed_run_resumes(tmp_path):
    cfg = _cfg(tmp_path, checkpoint_every=20)
    straight = api.train(config_from_dict(cfg), out=tmp_path / "straight")

    class Crash(Exception):
        pass

    def crash_at_55(rec):
        if rec.epoch == 55:
            raise Crash  # a crash (not an interrupt): no final save

    with pytest.raises(Crash):
        api.train(config_from_dict(cfg), out=tmp_path / "crashed", on_epoch=crash_at_55)
    d = tmp_path / "crashed"
    # The directory survives with the last periodic checkpoint (epoch 40), and no metrics.json:
    # that file marks a complete run.
    assert not (d / "metrics.json").exists()
    assert load_state(d / RESUME_NAME).epoch == 40
    assert len(read_history(d)) == 40
    from gradfit.results.checkpoint import read_checkpoint

    assert read_checkpoint(d).extra["epochs"] == 40
    resumed = api.resume(d)
    assert resumed.metrics["epochs"] == 120
    a, b = head_state(straight), head_state(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-12)


def test_failed_run_without_checkpoint_leaves_nothing(tmp_path):
    cfg = small_config(optimizer={"kind": "sgd", "lr": 50.0}, train={"epochs": 200})
    with pytest.raises(Exception, match="diverged"):
        api.train(config_from_dict(cfg), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_resume_refuses_what_it_cannot_continue(tmp_path, cli):
    cfg = _cfg(tmp_path)
    stop = StopAfter(10)
    api.train(config_from_dict(cfg), out=tmp_path / "r", on_epoch=stop.on_epoch, should_stop=stop)
    with pytest.raises(ConfigError, match="only train.\\* settings can change"):
        api.resume(tmp_path / "r", ["model.degree=3"])
    with pytest.raises(CheckpointError, match="not a directory"):
        api.resume(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.yaml"):
        api.resume(tmp_path / "empty")
    # A pickle in place of the training state is refused unread.
    state = tmp_path / "r" / RESUME_NAME
    saved = state.read_bytes()
    import pickle

    state.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        api.resume(tmp_path / "r")
    state.write_bytes(saved[: len(saved) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        api.resume(tmp_path / "r")
    state.unlink()
    result = cli("train", "--resume", tmp_path / "r")
    assert result.exit_code == 1
    assert "not a run that can be resumed" in " ".join(result.stderr.split())


def test_resume_refuses_changed_data(tmp_path):
    import numpy as np
    import pandas as pd

    x = np.linspace(-1, 1, 40)
    pd.DataFrame({"x": x, "y": 1 + x}).to_csv(tmp_path / "d.csv", index=False)
    cfg = _cfg(tmp_path)
    cfg["data"] = {"path": str(tmp_path / "d.csv")}
    stop = StopAfter(5)
    api.train(config_from_dict(cfg), out=tmp_path / "r", on_epoch=stop.on_epoch, should_stop=stop)
    pd.DataFrame({"x": x, "y": 2 + x}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match="the data changed"):
        api.resume(tmp_path / "r")


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path):
    from gradfit.results.rundir import atomic_path, write_json

    p = tmp_path / "metrics.json"
    write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text('{"half')
            raise RuntimeError("crash while writing")
    assert json.loads(p.read_text()) == {"a": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["metrics.json"]


# ---------------------------------------------------------------- a real process and a real signal


def _start(tmp_path: Path, out: Path) -> subprocess.Popen:
    # Noisy data in mini-batches: the loss never settles, so only the signal can stop it.
    cfg = small_config(train={"epochs": 10_000_000, "tol": 0.0, "checkpoint_every": 50, "batch_size": 16})
    cfg["data"]["synthetic"]["noise"] = 0.5
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.Popen(
        [sys.executable, "-m", "gradfit", "train", str(tmp_path / "long.yaml"), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=dict(os.environ, COLUMNS="200"), preexec_fn=sigint_default,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"gradfit exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("training did not start in time")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_training_saves_the_run_and_exits_130(tmp_path, sig):
    out = tmp_path / "run"
    proc = _start(tmp_path, out)
    _wait_for(out / RESUME_NAME, proc)  # the first periodic checkpoint: training is under way
    time.sleep(0.3)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    name = signal.Signals(sig).name
    assert f"interrupted by {name} after" in stderr
    assert f"gradfit train --resume {out}" in " ".join(stderr.split())
    m = json.loads((out / "metrics.json").read_text())
    assert 50 <= m["epochs"] < 10_000_000
    assert_consistent(out, m["epochs"], "interrupted")

    # And it continues from there.
    from typer.testing import CliRunner

    from gradfit.cli import app

    result = CliRunner().invoke(app, ["train", "--resume", str(out), "--set", f"train.epochs={m['epochs'] + 30}", "-q"])
    assert result.exit_code == 0, result.stderr
    assert_consistent(out, m["epochs"] + 30, "max_epochs")


@pytest.mark.slow
def test_second_signal_aborts_at_once(tmp_path):
    out = tmp_path / "run"
    proc = _start(tmp_path, out)
    _wait_for(out / RESUME_NAME, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    # Whatever happened, the last periodic checkpoint is still there to resume from.
    assert load_state(out / RESUME_NAME).epoch >= 50


def test_best_weights_saved_under_ddp_names_load_into_a_plain_head():
    """States written by a torchrun run on 2026-11-22 named early stopping's best weights module.*."""
    import torch.nn.functional as F

    from gradfit.config.schema import EarlyStopping
    from gradfit.models.heads import LinearHead
    from gradfit.train.loop import LoopSettings, StartFrom, StopState, TrainData, TrainRows, fit

    g = torch.Generator().manual_seed(0)
    Z, y = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    head = LinearHead(3, True, torch.float64)
    best = {"module.weight": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), "module.bias": torch.tensor(4.0, dtype=torch.float64)}
    state = StopState(best_val=0.0, best_epoch=7, best_state=best)  # no epoch can beat a loss of 0
    settings = LoopSettings(kind="sgd", epochs=9, batch_size=None, tol=0.0, loss_scale=1.0, lr=0.1,
                            generator=torch.Generator().manual_seed(0), early_stopping=EarlyStopping(patience=100))
    res = fit(head, TrainRows(TrainData(Z, y, Z[:10], y[:10])), F.mse_loss, first_order.SGD(head.parameters(), lr=0.1),
              settings, start=StartFrom(epoch=7, stop_state=state))
    assert res.best_epoch == 7
    assert torch.equal(head.weight.detach(), best["module.weight"]) and float(head.bias.detach()) == 4.0
