"""Distributed training under torchrun (gloo on CPU): N processes compute what one process does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from gradfit import parallel
from gradfit.config.loading import load_config
from gradfit.data import shards as data_shards
from gradfit.data.moments import Moments
from gradfit.data.shards import assign_groups, shard_range
from gradfit.train import run as api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, timeout: int = 120, env=None) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node N -m gradfit ARGS`` on 127.0.0.1 (a free port)."""
    e = dict(os.environ, OMP_NUM_THREADS="1", GRADFIT_DIST_TIMEOUT="60", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "gradfit", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)


def write_config(path, **cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


def linear_csv(path, n=1001, seed=0, bad_line=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 3.0, 0.5] + [0.0, 10.0, -2.0]
    y = 4.0 + X @ [1.5, -2.0, 0.5] + 0.3 * rng.normal(size=n)
    frame = pd.DataFrame({"x1": X[:, 0], "x2": X[:, 1], "x3": X[:, 2], "y": y})
    if bad_line is not None:
        frame = frame.astype({"x2": object})
        frame.loc[bad_line - 2, "x2"] = "oops"  # line 1 is the header
    frame.to_csv(path, index=False, float_format="%.17g")


def test_full_batch_on_two_processes_gives_the_single_process_coefficients(tmp_path):
    linear_csv(tmp_path / "d.csv")
    cfg = write_config(
        tmp_path / "lin.yaml", name="lin", seed=3, device="cpu", dtype="float64",
        data={"path": "d.csv", "split": {"val": 0.2, "test": 0.1}},
        model={"kind": "linear"}, optimizer={"kind": "sgd", "lr": "auto"}, train={"epochs": 60, "tol": 0.0},
    )
    one = api.train(load_config(cfg), out=tmp_path / "one")
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)  # one JSON document: only rank 0 prints
    assert "rank 1" not in proc.stderr and "Traceback" not in proc.stderr
    coef_two = json.loads((tmp_path / "two" / "coefficients.json").read_text())
    np.testing.assert_allclose([coef_two["intercept"], *coef_two["coefficients"].values()],
                               [one.coefficients["intercept"], *one.coefficients["coefficients"].values()], rtol=1e-6)
    # Standard errors from the Gram matrix summed over both ranks: the single process's.
    assert coef_two["std_errors"].keys() == one.coefficients["std_errors"].keys()
    for name, v in one.coefficients["std_errors"].items():
        assert coef_two["std_errors"][name] == pytest.approx(v, rel=1e-6), name
    assert coef_two["dof"] == one.coefficients["dof"]
    # The same rows in each set, the same step size, the same metrics over all rows.
    assert two["lr"] == pytest.approx(one.metrics["lr"], rel=1e-12)
    assert two["epochs"] == one.metrics["epochs"] == 60
    for s in ("train", "val", "test"):
        for k in ("mse", "mae", "r2"):
            assert two[s][k] == pytest.approx(one.metrics[s][k], rel=1e-9), (s, k)
    assert two["exact"]["loss"] == pytest.approx(one.metrics["exact"]["loss"], rel=1e-12)
    hist = pd.read_csv(tmp_path / "two" / "history.csv")
    np.testing.assert_allclose(hist["train_loss"], [r.train_loss for r in one.result.history], rtol=1e-9)
    from gradfit.results.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / "two").data["n_rows"] == 1001


def test_resume_under_torchrun_continues_as_one_process_would(tmp_path):
    """A run trained on two processes for 25 epochs, resumed on two processes to 60: the weights of
    60 epochs straight on two processes, and the one process's up to the ranks' rounding (Adam
    divides by the gradient's size, so their last-digit differences show); a bad --resume is
    reported once, by rank 0."""
    linear_csv(tmp_path / "d.csv")
    cfg = write_config(
        tmp_path / "lin.yaml", name="lin", seed=3, device="cpu", dtype="float64",
        data={"path": "d.csv", "split": {"val": 0.2, "test": 0.0}},
        model={"kind": "linear"}, optimizer={"kind": "adam", "lr": 0.05}, train={"epochs": 60, "tol": 0.0},
    )
    one = api.train(load_config(cfg), out=tmp_path / "one")
    first = torchrun("train", cfg, "--out", tmp_path / "two", "-q", "--set", "train.epochs=25")
    assert first.returncode == 0, first.stderr[-3000:]
    proc = torchrun("train", "--resume", tmp_path / "two", "--set", "train.epochs=60", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    assert two["epochs"] == 60 and two["stop_reason"] == "max_epochs"
    straight = torchrun("train", cfg, "--out", tmp_path / "straight", "-q")
    assert straight.returncode == 0, straight.stderr[-3000:]

    def coefs(d):
        c = json.loads((d / "coefficients.json").read_text())
        return [c["intercept"], *c["coefficients"].values()]

    np.testing.assert_allclose(coefs(tmp_path / "two"), coefs(tmp_path / "straight"), rtol=1e-12)
    np.testing.assert_allclose(coefs(tmp_path / "two"), [one.coefficients["intercept"], *one.coefficients["coefficients"].values()],
                               rtol=1e-3)
    hist, hist_straight = pd.read_csv(tmp_path / "two" / "history.csv"), pd.read_csv(tmp_path / "straight" / "history.csv")
    assert list(hist["epoch"]) == list(range(1, 61))
    np.testing.assert_allclose(hist["train_loss"], hist_straight["train_loss"], rtol=1e-12)

    bad = torchrun("train", "--resume", tmp_path / "two", "--set", "model.degree=3")
    assert bad.returncode == 1
    assert bad.stderr.count("only train.* settings can change") == 1 and "Traceback" not in bad.stderr.split("error:")[0]


def _exp_data(path, n=401, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 5, n)
    y = 2.0 * np.exp(0.3 * x) + 0.05 * rng.normal(size=n)
    pd.DataFrame({"x": x, "y": y}).to_csv(path, index=False, float_format="%.17g")


@pytest.mark.parametrize("optimizer", ["lm", "adam"])
def test_formula_models_on_two_processes_give_the_single_process_fit(tmp_path, optimizer):
    """Levenberg-Marquardt on two processes takes the one-process steps (sums and stacked QR factors
    over the ranks, rank 0's step sent to both); the standard errors come from every rank's rows."""
    _exp_data(tmp_path / "e.csv")
    over = {"optimizer": {"kind": "adam", "lr": 0.05}, "train": {"epochs": 150}} if optimizer == "adam" else {}
    cfg = write_config(tmp_path / "f.yaml", name="f", device="cpu", dtype="float64", seed=1,
                       data={"path": "e.csv", "split": {"val": 0.2, "test": 0.1}},
                       model={"kind": "formula", "formula": "y = a * exp(b * x)", "start": {"a": 1.0, "b": 0.1}},
                       **over)
    one = api.train(load_config(cfg), out=tmp_path / "one")
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    assert "Traceback" not in proc.stderr and "rank 1" not in proc.stderr
    coef = json.loads((tmp_path / "two" / "coefficients.json").read_text())
    assert two["epochs"] == one.metrics["epochs"] and two["stop_reason"] == one.metrics["stop_reason"]
    if optimizer == "lm":
        assert two["stop_reason"] == "tolerance"
    for name, v in one.coefficients["parameters"].items():
        assert coef["parameters"][name] == pytest.approx(v, rel=1e-9), name
        assert coef["std_errors"][name] == pytest.approx(one.coefficients["std_errors"][name], rel=1e-9), name
    assert coef["dof"] == one.coefficients["dof"] > 200  # rows over both ranks, less the 2 parameters
    assert coef["residual_sd"] == pytest.approx(one.coefficients["residual_sd"], rel=1e-12)
    for s in ("train", "val", "test"):
        assert two[s]["mse"] == pytest.approx(one.metrics[s]["mse"], rel=1e-9), s
    hist = pd.read_csv(tmp_path / "two" / "history.csv")
    np.testing.assert_allclose(hist["train_loss"], [r.train_loss for r in one.result.history], rtol=1e-9)


def test_a_formula_start_that_fails_on_one_shard_is_reported_once(tmp_path):
    """sqrt(x - c) at the start is finite on the first half of the rows only: rank 1's error, told once."""
    x = np.linspace(0, 10, 200)
    pd.DataFrame({"x": x, "y": np.sqrt(np.abs(x - 5)) + 1}).to_csv(tmp_path / "s.csv", index=False)
    cfg = write_config(tmp_path / "s.yaml", name="s", device="cpu", dtype="float64", data={"path": "s.csv", "split": {"val": 0.0}},
                       model={"kind": "formula", "formula": "y = a * sqrt(c - x) + d", "start": {"a": 1.0, "c": 5.2, "d": 0.0}})
    proc = torchrun("train", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("the formula is not finite at the start point") == 1, proc.stderr[-3000:]
    assert "error: rank 1: the formula is not finite" in proc.stderr
    # (torchrun itself prints a traceback for its failed child after gradfit's message)
    assert "Traceback" not in proc.stderr.split("error:")[0] and not (tmp_path / "out").exists()


def test_an_error_before_the_ranks_connect_is_reported_once_by_rank_0(tmp_path):
    """device: cuda on a machine without one fails on every rank before they connect: rank 0 says so."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    linear_csv(tmp_path / "d.csv")
    cfg = write_config(tmp_path / "c.yaml", name="c", device="cuda", data={"path": "d.csv"}, model={"kind": "linear"})
    proc = torchrun("train", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.count("error:") == 1 and "rank 1" not in proc.stderr.split("error:")[1].split("\n")[0], proc.stderr[-2000:]
    assert "cuda" in proc.stderr.split("error:")[1]


def test_mini_batch_ddp_reaches_the_single_process_validation_loss(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, size=2_000)
    y = 1.0 - 2.0 * x + 0.7 * x**3 + 0.2 * rng.normal(size=x.size)
    pq.write_table(pa.table({"x": x, "y": y}), tmp_path / "d.parquet", row_group_size=150)  # 14 row groups
    cfg = write_config(
        tmp_path / "poly.yaml", name="poly", seed=0, device="cpu", dtype="float64",
        data={"path": "d.parquet", "split": {"val": 0.2}},
        model={"kind": "polynomial", "degree": 3}, optimizer={"kind": "sgd", "lr": 0.02},
        train={"batch_size": 64, "epochs": 40, "tol": 0.0},
    )
    one = api.train(load_config(cfg), write=False)
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    assert two["val"]["loss"] == pytest.approx(one.metrics["val"]["loss"], rel=0.01)
    assert two["val"]["loss"] == pytest.approx(0.04, rel=0.25)  # the noise variance: both fit the curve


def test_a_bad_row_in_one_shard_fails_every_rank_with_one_message(tmp_path):
    linear_csv(tmp_path / "d.csv", n=400, bad_line=351)  # in rank 1's half of the file
    cfg = write_config(tmp_path / "c.yaml", name="c", device="cpu", data={"path": "d.csv"}, model={"kind": "linear"})
    proc = torchrun("train", cfg, "--out", tmp_path / "run", timeout=90)
    assert proc.returncode == 1  # torchrun passes the ranks' exit code on
    err = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "error: rank 1: " in err
    assert "column 'x2' is not numeric: row 351 holds 'oops'" in err
    assert err.count("is not numeric") == 1  # rank 0 reports it, rank 1 stays quiet
    # gradfit prints no traceback (the one that follows is torchrun's report that its workers exited 1)
    for tb in proc.stderr.split("Traceback")[1:]:
        assert "torch/distributed/run.py" in tb.split("\n\n")[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_streaming_on_two_processes_equals_one(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6_000, 2))
    y = 1.0 + X @ [2.0, -1.0] + 0.1 * rng.normal(size=6_000)
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "y": y}), tmp_path / "d.parquet", row_group_size=500)
    cfg = write_config(
        tmp_path / "s.yaml", name="s", device="cpu", dtype="float64",
        data={"path": "d.parquet", "streaming": True, "split": {"val": 0.2}},
        model={"kind": "linear"}, optimizer={"kind": "sgd", "lr": 0.3}, train={"epochs": 20, "tol": 0.0},
    )
    one = api.train(load_config(cfg), write=False)
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    coef = json.loads((tmp_path / "two" / "coefficients.json").read_text())
    np.testing.assert_allclose([coef["intercept"], *coef["coefficients"].values()],
                               [one.coefficients["intercept"], *one.coefficients["coefficients"].values()], rtol=1e-9)
    assert two["val"]["mse"] == pytest.approx(one.metrics["val"]["mse"], rel=1e-9)


@pytest.mark.slow
def test_mini_batch_streaming_ddp(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5_000, 2))
    y = 1.0 + X @ [2.0, -1.0]
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "y": y}), tmp_path / "d.parquet", row_group_size=700)
    cfg = write_config(
        tmp_path / "s.yaml", name="s", device="cpu", dtype="float64",
        data={"path": "d.parquet", "streaming": True, "split": {"val": 0.1}},
        model={"kind": "linear"}, optimizer={"kind": "sgd", "lr": 0.2}, train={"epochs": 15, "batch_size": 128, "tol": 0.0},
    )
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    coef = json.loads((tmp_path / "two" / "coefficients.json").read_text())
    np.testing.assert_allclose([coef["intercept"], *coef["coefficients"].values()], [1.0, 2.0, -1.0], rtol=1e-8)


# ---------------------------------------------------------------- pieces, in one process


def test_one_process_is_the_identity():
    d = parallel.SINGLE
    assert not d.enabled and d.is_main
    t = torch.arange(3.0)
    assert d.sum(t) is t and d.sum(5) == 5 and d.gather("x") == ["x"]
    assert d.agree(lambda: 7) == 7
    head = torch.nn.Linear(2, 1)
    assert d.wrap(head) is head and d.wrap_loss(torch.nn.functional.mse_loss) is torch.nn.functional.mse_loss


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (1, 4), (1_000_003, 5)])
def test_shards_cover_the_rows_once(n, world):
    ranges = [shard_range(n, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_row_groups_are_assigned_once_and_in_order():
    sizes = [100, 5, 300, 40, 40, 200, 1]
    groups = [assign_groups(sizes, r, 3) for r in range(3)]
    assert sum(groups, []) == list(range(len(sizes)))
    assert assign_groups([10], 1, 2) == []  # fewer row groups than ranks: a rank may read none


def test_csv_byte_ranges_split_the_lines_exactly(tmp_path):
    path = tmp_path / "d.csv"
    linear_csv(path, n=997)
    whole = pd.read_csv(path)
    for world in (2, 3, 7):
        parts = [data_shards._read_csv_shard(path, list(whole.columns), r, world) for r in range(world)]
        pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)


def test_moments_merged_over_chunks_equal_the_whole():
    torch.manual_seed(0)
    A = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 1e3, 1e-3]) + 1e4
    m = Moments()
    for chunk in torch.split(A, 77):
        m.add(chunk)
    s = m.reduce(parallel.SINGLE)
    assert s["n"] == 1000
    torch.testing.assert_close(s["mean"], A.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(s["std"], A.std(0, unbiased=False), rtol=1e-8, atol=0)
    torch.testing.assert_close(s["min"], A.min(0).values)
    torch.testing.assert_close(s["max"], A.max(0).values)
    torch.testing.assert_close(s["rms"], A.pow(2).mean(0).sqrt(), rtol=1e-14, atol=0)


def test_a_rank_without_rows_trains_mini_batches_with_the_others(tmp_path):
    """One Parquet row group on two ranks: rank 1 holds no rows, and still takes every step (empty slices)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 5, 300)
    pq.write_table(pa.table({"x": x, "y": 2.0 * np.exp(0.3 * x) + 0.05 * rng.normal(size=300)}), tmp_path / "one.parquet")
    for model, optimizer in (({"kind": "formula", "formula": "y = a * exp(b * x)", "start": {"a": 1.0, "b": 0.1}},
                              {"kind": "adam", "lr": 0.02}),
                             ({"kind": "linear"}, {"kind": "adam", "lr": 0.02})):
        cfg = write_config(tmp_path / "m.yaml", name="m", device="cpu", dtype="float64", seed=0,
                           data={"path": "one.parquet", "split": {"val": 0.2}}, model=model, optimizer=optimizer,
                           train={"epochs": 5, "batch_size": 16})
        one = api.train(load_config(cfg), write=False)
        proc = torchrun("train", cfg, "--out", tmp_path / model["kind"], "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        two = json.loads(proc.stdout)
        assert "Traceback" not in proc.stderr
        # Every row on rank 0, in the single-process order: the single process's run.
        assert two["train"]["mse"] == pytest.approx(one.metrics["train"]["mse"], rel=1e-9)
        assert two["val"]["mse"] == pytest.approx(one.metrics["val"]["mse"], rel=1e-9)


@pytest.mark.parametrize("optimizer", [{"kind": "lbfgs"}, {"kind": "sgd", "lr": "auto"}], ids=["lbfgs", "sgd"])
def test_the_gram_route_on_two_processes_gives_the_single_process_fit(tmp_path, optimizer):
    """40,000 rows: full-batch training from the Gram matrix (models.gram), summed over the ranks once per
    pass; the coefficients and the history are the single process's to 1e-10."""
    linear_csv(tmp_path / "d.csv", n=40_000)
    cfg = write_config(
        tmp_path / "lin.yaml", name="lin", seed=3, device="cpu", dtype="float64",
        data={"path": "d.csv", "split": {"val": 0.2, "test": 0.1}},
        model={"kind": "linear"}, optimizer=optimizer, train={"epochs": 3000, "tol": 1e-12},
    )
    one = api.train(load_config(cfg), out=tmp_path / "one")
    proc = torchrun("train", cfg, "--out", tmp_path / "two", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    coef_two = json.loads((tmp_path / "two" / "coefficients.json").read_text())
    np.testing.assert_allclose([coef_two["intercept"], *coef_two["coefficients"].values()],
                               [one.coefficients["intercept"], *one.coefficients["coefficients"].values()], rtol=1e-10)
    assert two["epochs"] == one.metrics["epochs"]
    hist = pd.read_csv(tmp_path / "two" / "history.csv")
    np.testing.assert_allclose(hist["train_loss"], [r.train_loss for r in one.result.history], rtol=1e-9)
    np.testing.assert_allclose(hist["val_loss"], [r.val_loss for r in one.result.history], rtol=1e-9)
