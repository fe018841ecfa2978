"""Faults, round three (issue 21): what a checkpoint's records ask eval/predict to build, outputs
never onto inputs or run files, strict CSV shape on every read path, messages with the true cause."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from conftest import DATA, small_config
from gradfit.config.loading import load_config
from gradfit.errors import CheckpointError
from gradfit.results.checkpoint import read_checkpoint
from gradfit.train.run import train


def flat(text: str) -> str:
    """A message as one line (the console wraps long ones)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def poly_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("runs") / "p"
    cfg = tmp_path_factory.mktemp("cfg") / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_config(train={"epochs": 20})))
    train(load_config(cfg), out=d)
    return d


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("runs") / "m"
    cfg = tmp_path_factory.mktemp("cfg") / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_config(model={"kind": "mlp", "hidden": [4]}, train={"epochs": 5})))
    train(load_config(cfg), out=d)
    return d


def recrafted(src: Path, dest: Path, edit) -> Path:
    """A copy of checkpoint ``src`` whose records (JSON in the header's metadata) ``edit`` changed."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header["__metadata__"]
    records = {k: json.loads(meta[k]) for k in ("spec", "config", "data")}
    edit(records)
    meta.update({k: json.dumps(v) for k, v in records.items()})
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dest


# ---------------------------------------------------------------- what a checkpoint's records ask to build


def test_a_crafted_huge_mlp_spec_is_refused_before_it_is_built(mlp_run, tmp_path, cli):
    def huge(r):
        r["spec"]["hidden"] = [65536, 65536]

    ck = recrafted(mlp_run / "model.safetensors", tmp_path / "bad" / "model.safetensors", huge)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(ck)
    msg = e.value.message
    assert "hidden sizes [65536, 65536]" in msg and "4,295,229,441 parameters" in msg and "GiB to build" in msg
    assert "the description does not match its weights" in msg
    r = cli("predict", ck, "--data", DATA / "quadratic.csv")
    assert r.exit_code == 1 and "does not match its weights" in flat(r.stderr) and "Traceback" not in r.stderr


@pytest.mark.parametrize("hidden", [[-3], "big", [1.5], []])
def test_a_crafted_mlp_spec_with_bad_sizes_is_refused(mlp_run, tmp_path, hidden):
    def bad(r):
        r["spec"]["hidden"] = hidden

    ck = recrafted(mlp_run / "model.safetensors", tmp_path / "model.safetensors", bad)
    with pytest.raises(CheckpointError, match="not a list of positive whole numbers"):
        read_checkpoint(ck)


def test_a_checkpoint_whose_weights_cannot_fit_is_refused_with_the_estimate(mlp_run, monkeypatch):
    from safetensors.torch import load_file

    from gradfit.config import resources

    held = sum(t.numel() for t in load_file(str(mlp_run / "model.safetensors")).values())
    params = (1 + 1) * 4 + (4 + 1) * 1  # one input, hidden [4], one output
    monkeypatch.setattr(resources, "available_memory", lambda: 64)  # bytes: less than this small MLP's
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(mlp_run)
    msg = e.value.message
    assert "loading the model of" in msg and "more than the 5.96e-08 GiB this machine has free" in msg
    assert f"needs about {(held + params) * 8 / 2**30:.3g} GiB" in msg and f"{held} numbers read from model.safetensors" in msg
    assert "load it on a machine with more free memory" in e.value.hint


def test_a_crafted_huge_synthetic_config_is_refused_by_eval_before_it_is_drawn(poly_run, tmp_path, cli):
    def huge(r):
        syn = {"kind": "linear", "n_features": 10_000, "n_samples": 100_000_000}
        r["config"]["data"]["synthetic"] = syn
        r["data"]["source"]["synthetic"] = syn

    ck = recrafted(poly_run / "model.safetensors", tmp_path / "bad" / "model.safetensors", huge)
    r = cli("eval", ck)
    err = flat(r.stderr)
    assert r.exit_code == 1 and "Traceback" not in r.stderr, err
    assert "rebuilding the training data that" in err and "data.synthetic.n_samples" in err
    assert "100000000 rows x 10001 columns" in err and "evaluate on a file with --data FILE" in err


# ---------------------------------------------------------------- outputs never onto inputs or run files


def test_one_guard_refuses_inputs_always_and_run_directories_without_force(poly_run, tmp_path):
    from gradfit.errors import GradfitError
    from gradfit.files import check_output, run_dir_holding

    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n")
    assert run_dir_holding(poly_run / "sub" / "p.csv") == poly_run.resolve() and run_dir_holding(tmp_path) is None
    with pytest.raises(GradfitError, match=r"is the input data file; refusing to overwrite it"):
        check_output(tmp_path / "." / "d.csv", inputs=((data, "the input data file"),), force=True)
    with pytest.raises(GradfitError, match="is inside the run directory"):
        check_output(poly_run / "metrics.json")
    check_output(poly_run / "metrics.json", force=True)
    check_output(poly_run / "model.onnx", own_runs=(poly_run,))  # a new file where the command writes by design
    with pytest.raises(GradfitError, match="is inside the run directory"):
        check_output(poly_run / "metrics.json", own_runs=(poly_run,))  # but never over a run's own file


def _writers(run: Path, tmp: Path) -> list[tuple[list, str]]:
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_config(train={"epochs": 5})))
    return [
        (["init", run / "gradfit.yaml"], f"{run / 'gradfit.yaml'} is inside the run directory"),
        (["init", run / "config.yaml", "--force"], None),  # (--force: below, with its own check)
        (["schema", "--out", run / "metrics.json"], f"--out {run / 'metrics.json'} is inside the run directory"),
        (["export", run, "--out", run / "metrics.json"], f"--out {run / 'metrics.json'} is inside the run directory"),
        (["export", run, "--out", run / "model.safetensors"], "is the checkpoint; refusing to overwrite it"),
        (["report", run, "--out", run / "history.csv"], f"--out {run / 'history.csv'} is inside the run directory"),
        (["cv", cfg, "--out", run / "cv"], f"--out {run / 'cv'} is inside the run directory"),
        (["cv", cfg, "--out", cfg], "is the config file; refusing to overwrite it"),
        (["sweep", cfg, "--grid", "train.epochs=2,3", "--out", run], f"--out {run} is inside the run directory"),
        (["predict", run, "--data", DATA / "quadratic.csv", "--out", run / "metrics.json"],
         f"--out {run / 'metrics.json'} is inside the run directory"),
    ]


def test_every_writer_refuses_a_run_directory_or_an_input(poly_run, tmp_path, cli):
    before = {p.name: p.read_bytes() for p in poly_run.iterdir() if p.is_file()}
    cases = [c for c in _writers(poly_run, tmp_path) if c[1] is not None]
    for args, words in cases:
        r = cli(*args)
        err = flat(r.stderr)
        assert r.exit_code == 1 and words in err and "Traceback" not in err, (args, err)
    assert {p.name: p.read_bytes() for p in poly_run.iterdir() if p.is_file()} == before  # nothing written or changed
    assert len(cases) == 9


def test_writers_write_inside_a_run_with_force(poly_run, tmp_path, cli):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(poly_run, run)
    assert cli("schema", "--out", run / "schema.json", "--force").exit_code == 0
    assert json.loads((run / "schema.json").read_text())["title"] == "gradfit config"
    assert cli("init", run / "example.yaml", "--force").exit_code == 0 and (run / "example.yaml").is_file()
    r = cli("schema", "--out", tmp_path / "s.json")  # outside any run: no --force needed
    assert r.exit_code == 0 and "wrote" in r.stderr


def test_train_refuses_a_new_run_inside_another_run(poly_run, tmp_path, cli):
    """A run among another run's files would be mistaken for them (eval, cv, sweep read a run
    directory whole): refused without --force, nothing written; with --force it is written."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(poly_run, run)
    before = sorted(p.name for p in run.iterdir())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_config(train={"epochs": 3})))
    r = cli("train", cfg, "--out", run / "inner" / "deeper")
    err = flat(r.stderr)
    assert r.exit_code == 1 and f"inside the run directory {run}" in err and "--force" in err, err
    assert sorted(p.name for p in run.iterdir()) == before
    assert cli("train", cfg, "--out", run / "inner", "--force").exit_code == 0
    assert (run / "inner" / "metrics.json").is_file()


# ---------------------------------------------------------------- strict CSV shape on the torchrun byte ranges


def _ranks(path: Path, world: int):
    """Each rank's rows of ``path`` (a DataFrame) or its DataError, as torchrun's ranks read them."""
    from gradfit.data.shards import _read_csv_shard
    from gradfit.errors import DataError

    out = []
    for rank in range(world):
        try:
            out.append(_read_csv_shard(path, ["x", "y"], rank, world))
        except DataError as exc:
            out.append(exc)
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("quoted", [False, True])
def test_shard_reader_refuses_a_ragged_row_naming_its_line(tmp_path, world, quoted):
    import pandas as pd

    from gradfit.errors import DataError

    rows = [f"{i},{2 * i}" for i in range(40)]
    rows[25] = "1,000,2000"  # (the example: a thousands separator)
    if quoted:
        rows[3] = '"3",6'
    p = tmp_path / "d.csv"
    p.write_text("x,y\n" + "\n".join(rows) + "\n")
    got = _ranks(p, world)
    errors = [g for g in got if isinstance(g, DataError)]
    assert len(errors) == 1  # (the rank whose byte range holds line 27)
    assert errors[0].message == f"{p}: line 27 has 3 fields where the header has 2"
    rows[25] = "25,50"
    p.write_text("x,y\n" + "\n".join(rows) + "\n")
    frames = _ranks(p, world)
    assert not any(isinstance(g, DataError) for g in frames)
    whole = pd.concat(frames, ignore_index=True)
    assert whole["y"].tolist() == [2.0 * i for i in range(40)]  # every row once, in order


def test_shard_reader_refuses_rows_one_field_longer_or_shorter_than_the_header(tmp_path):
    from gradfit.errors import DataError

    p = tmp_path / "d.csv"
    p.write_text("x,y\n" + "".join(f"{i},{2 * i},7\n" for i in range(10)))
    assert all(isinstance(g, DataError) and "has 3 fields where the header has 2" in g.message for g in _ranks(p, 2))
    p.write_text("x,y\n1,2\n\n3\n4,8\n")  # (a blank line is skipped, as pandas does; a short row is not)
    (err,) = [g for g in _ranks(p, 1) if isinstance(g, DataError)]
    assert err.message == f"{p}: line 4 has 1 field where the header has 2"


# ---------------------------------------------------------------- messages with the true cause


def _config(tmp_path: Path, name: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "device": "cpu", "data": {"path": name, "target": "y"},
                                   "model": {"kind": "linear"}, "train": {"epochs": 5}}))
    return cfg


def _train_on(tmp_path: Path, text: str, cli):
    """gradfit train on a CSV of ``text``: (exit code, stderr as one line)."""
    (tmp_path / "d.csv").write_text(text)
    cfg = _config(tmp_path, "d.csv")
    r = cli("train", cfg, "--out", tmp_path / "run")
    return r.exit_code, flat(r.stderr)


def test_values_near_1e308_say_the_scaling_statistics_overflow(tmp_path, cli):
    import numpy as np

    x = np.linspace(-1, 1, 30)
    code, err = _train_on(tmp_path, "x,y\n" + "".join(f"{a!r},{0.9e308 * a!r}\n" for a in x.tolist()), cli)
    assert code == 1 and "Traceback" not in err
    assert "the data's scaling statistics overflow: values up to 9.0e307 in column 'y'" in err
    assert "rescale the column" in err and "lower optimizer.lr" not in err and "standardize: true" not in err
    assert not (tmp_path / "run").exists()


def test_distinct_subnormal_values_are_not_called_a_single_value(tmp_path, cli):
    x = [k * 5e-324 for k in range(1, 30)]  # 29 distinct subnormal numbers
    assert len(set(x)) == 29
    code, err = _train_on(tmp_path, "x,y\n" + "".join(f"{a!r},{k}\n" for k, a in enumerate(x)), cli)
    assert code == 1 and "single value" not in err
    assert "column 'x' has distinct values, from 4.94e-324 to 1.43e-322, but they are subnormal" in err
    assert "rescale the column (multiply 'x' by 1e300, say)" in err


def test_a_constant_column_is_still_a_single_value(tmp_path, cli):
    code, err = _train_on(tmp_path, "x,y\n" + "".join(f"1e-320,{k}\n" for k in range(20)), cli)
    assert code == 1 and "take a single value on the training rows" in err


@pytest.mark.parametrize("name", ["d.parquet", "d.csv"])
def test_duplicate_column_names_are_named_without_pyarrow_internals(tmp_path, cli, name):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if name.endswith(".parquet"):
        table = pa.table([pa.array([1.0, 2, 3, 4]), pa.array([1.0, 2, 3, 4]), pa.array([2.0, 4, 6, 8])], names=["x", "x", "y"])
        pq.write_table(table, tmp_path / name)
    else:
        (tmp_path / name).write_text("x,x,y\n1,1,2\n2,2,4\n3,3,6\n")
    cfg = _config(tmp_path, name)
    for args in (["train", cfg, "--out", tmp_path / "run"], ["check", cfg]):
        r = cli(*args)
        err = flat(r.stderr)
        assert r.exit_code == 1, err
        assert f"{tmp_path / name}: the column name 'x' occurs more than once in the header (3 columns)" in err
        assert "give every column its own name" in err
        assert "FieldRef" not in err and "__fragment_index" not in err and "x.1" not in err


def test_an_interrupted_command_in_process_leaves_the_signals_as_they_were(tmp_path, monkeypatch):
    """The console script ignores further signals while an abort is reported; run inside another
    program (typer's CliRunner here) the command must not: that program, and every process it
    starts afterwards, would inherit ignored SIGINT and SIGTERM."""
    import signal

    from typer.testing import CliRunner

    from gradfit.cli import app
    from gradfit.train import run as run_module

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "load_dataset", interrupted)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_config()))
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    r = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 130 and "nothing was written" in flat(r.stderr), r.output
    assert {s: signal.getsignal(s) for s in before} == before
