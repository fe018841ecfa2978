"""Faults and hostile input (issue 21): run directories claimed atomically, nothing a failure did
not create is deleted, write errors in words, outputs never onto inputs, regular files only,
malformed checkpoints, strict CSV shape."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, DATA, run_gradfit, small_config
from gradfit.config.loading import load_config
from gradfit.data.columns import check_csv_shape, read_columns
from gradfit.errors import CheckpointError, DataError, GradfitError
from gradfit.files import WriteError, write_text
from gradfit.results import rundir
from gradfit.results.checkpoint import read_checkpoint
from gradfit.results.evaluate import predict_file
from gradfit.results.rundir import RUN_FILES, RUN_MARKER, claim_run_dir
from gradfit.train import resume as rs
from gradfit.train import run as run_mod
from gradfit.train.run import train

FAST = {"train": {"epochs": 20}}


def write_config(tmp_path: Path, **overrides) -> Path:
    cfg = small_config(**{**FAST, **overrides})
    cfg.setdefault("output", {"dir": str(tmp_path / "runs")})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def flat(text: str) -> str:
    """A message as one line (the console wraps long ones)."""
    return " ".join(text.split())


def snapshot(d: Path) -> dict:
    """Every file under ``d`` with its bytes (the invariant: what existed before a fault is unchanged)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- run directories claimed atomically


def test_resume_state_is_among_the_run_files():
    assert rs.RESUME_NAME in RUN_FILES


def test_two_runs_started_together_get_two_directories(tmp_path):
    p = write_config(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "gradfit", "train", str(p), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    dirs = {o[0].strip() for o in outs}
    assert len(dirs) == 2, outs
    for d in dirs:
        assert (Path(d) / "metrics.json").is_file() and not (Path(d) / RUN_MARKER).exists()


def test_two_runs_into_one_out_one_is_refused_and_nothing_is_lost(tmp_path):
    p = write_config(tmp_path, train={"epochs": 3000, "tol": 0})
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "gradfit", "train", str(p), "--out", str(out), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    codes = sorted(proc.returncode for proc in procs)
    assert codes == [0, 1], outs
    loser = outs[[proc.returncode for proc in procs].index(1)][1]
    assert "Traceback" not in loser
    assert "another gradfit run" in flat(loser) or "already holds files" in flat(loser)
    # The winner's run is whole: the refused run deleted nothing of it.
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / RUN_MARKER).exists()


def test_out_holding_a_marker_is_refused_unless_force(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / RUN_MARKER).touch()
    with pytest.raises(GradfitError, match="in use by another gradfit run"):
        claim_run_dir(tmp_path, "x", out, force=False)
    claim = claim_run_dir(tmp_path, "x", out, force=True)
    assert claim.path == out and not claim.made_dir


def test_default_location_skips_a_claimed_empty_directory(tmp_path):
    first = claim_run_dir(tmp_path, "r", None, False)
    second = claim_run_dir(tmp_path, "r", None, False)
    assert first.path == tmp_path / "r" and second.path == tmp_path / "r-2"
    assert (first.path / RUN_MARKER).is_file()
    (tmp_path / "r-3").mkdir()  # an empty directory nobody claimed is taken over
    third = claim_run_dir(tmp_path, "r", None, False)
    assert third.path == tmp_path / "r-3" and not third.made_dir


def test_marker_is_removed_when_the_run_completes(tmp_path):
    run = train(load_config(write_config(tmp_path)))
    assert (run.run_dir / "metrics.json").is_file()
    assert not (run.run_dir / RUN_MARKER).exists()


def _fail_at_checkpoint(monkeypatch, user_file: Path | None = None):
    """Inject a failure at the checkpoint write (after the training state, figures, config, history,
    coefficients), with the training state's write failing too: nothing to resume from."""

    def boom(path, *a, **k):
        if user_file is not None:
            user_file.write_text("mine")
        raise RuntimeError("injected fault")

    monkeypatch.setattr(run_mod, "save_checkpoint", boom)
    monkeypatch.setattr(rs, "save_state", lambda *a, **k: None)


def test_interrupt_while_a_finished_run_is_written_keeps_it_resumable(tmp_path, monkeypatch):
    def abort(*a, **k):
        raise KeyboardInterrupt  # (a second Ctrl-C while the checkpoint is written)

    monkeypatch.setattr(run_mod, "save_checkpoint", abort)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(write_config(tmp_path)))
    d = tmp_path / "runs" / "t"
    assert {"config.yaml", "history.csv", rs.RESUME_NAME} <= {p.name for p in d.iterdir()}
    assert not (d / RUN_MARKER).exists()
    monkeypatch.undo()
    run = run_mod.resume(d, ["train.epochs=25"])
    assert (d / "metrics.json").is_file() and run.result.epochs == 25


def test_failure_removes_only_this_runs_files_and_keeps_a_users_file(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "t"
    _fail_at_checkpoint(monkeypatch, run_dir / "notes.txt")
    with pytest.raises(RuntimeError, match="injected"):
        train(load_config(write_config(tmp_path)))
    assert snapshot(run_dir) == {"notes.txt": b"mine"}  # the run's files gone, the user's kept, and its directory


def test_failure_in_a_fresh_directory_removes_it(tmp_path, monkeypatch):
    _fail_at_checkpoint(monkeypatch)
    with pytest.raises(RuntimeError, match="injected"):
        train(load_config(write_config(tmp_path)))
    assert list((tmp_path / "runs").iterdir()) == []


def test_failure_never_removes_a_users_out_directory_or_its_files(tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    _fail_at_checkpoint(monkeypatch)
    with pytest.raises(RuntimeError):
        train(load_config(write_config(tmp_path)), out=out)
    assert out.is_dir() and list(out.iterdir()) == []
    (out / "keep.txt").write_text("keep")
    (out / "config.yaml").write_text("name: mine\n")
    before = snapshot(out)
    monkeypatch.setattr(run_mod, "write_text", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(load_config(write_config(tmp_path)), out=out, force=True)
    assert snapshot(out) == before


# ---------------------------------------------------------------- write errors are user errors


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied"), (errno.EFBIG, "too large")])
def test_write_error_names_path_and_cause(tmp_path, monkeypatch, code, words):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WriteError) as e:
        write_text(tmp_path / "f.json", "{}")
    assert str(tmp_path / "f.json") in e.value.message and words in e.value.message and e.value.hint
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_unwritable_output_dir_exits_1(tmp_path, gradfit_proc):
    p = write_config(tmp_path, output={"dir": "/proc/x"})
    r = gradfit_proc("train", p)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "/proc/x" in flat(r.stderr) and "cannot write" in flat(r.stderr)


def test_read_only_out_parent(tmp_path, monkeypatch):
    # (running as root, chmod does not stop writes: the refusal is injected)
    real = Path.mkdir

    def read_only(self, *a, **k):
        if self.parent == tmp_path / "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(WriteError, match="read-only") as e:
        train(load_config(write_config(tmp_path)), out=tmp_path / "ro" / "run")
    assert str(tmp_path / "ro" / "run") in e.value.message


def test_disk_full_at_checkpoint_keeps_what_was_written_and_says_so(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def full(tensors, path, *a, **k):
        if ".model.safetensors." in path:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(WriteError, match="no space left") as e:
        train(load_config(write_config(tmp_path)))
    d = tmp_path / "runs" / "t"
    assert "model.safetensors" in e.value.message and "not complete" in e.value.hint
    kept = {p.name for p in d.iterdir()}
    assert {"config.yaml", "history.csv", "coefficients.json", "loss.png"} <= kept
    assert "metrics.json" not in kept and RUN_MARKER not in kept and not any(n.endswith(".tmp") for n in kept)
    assert rs.RESUME_NAME in kept and "--resume" in e.value.hint  # the training state: the run can be written again


def test_write_error_before_any_file_leaves_no_directory(tmp_path, monkeypatch):
    def full(path, state):
        raise WriteError(f"cannot write {path}: no space left on the device")

    monkeypatch.setattr(rs, "save_state", full)
    with pytest.raises(WriteError, match="no space left") as e:
        train(load_config(write_config(tmp_path)))
    # (the config and the history go before the state; without the state they are removed again)
    assert list((tmp_path / "runs").iterdir()) == [] and "files this run had written were removed" in e.value.hint


def test_file_size_limit_exits_1_and_keeps_the_files(tmp_path):
    """A real limit (ulimit -f): the first file larger than it fails; nothing is deleted, no exit 0."""
    p = write_config(tmp_path)
    limit = 16 << 10

    def limit_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, "-m", "gradfit", "train", str(p)], capture_output=True, text=True,
                       timeout=300, preexec_fn=limit_size)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "too large" in flat(r.stderr) and "keeps" in flat(r.stderr)
    d = tmp_path / "runs" / "t"
    assert d.is_dir() and not (d / "metrics.json").exists()


def test_plot_write_error_is_a_user_error(tmp_path, monkeypatch):
    from gradfit.results import plots

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", full)
    with pytest.raises(WriteError, match="no space left"):
        plots.loss_plot(tmp_path / "loss.png", [], "mse")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- outputs never onto run files


@pytest.fixture(scope="module")
def quad_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "q"
    train(load_config(CONFIGS / "quadratic.yaml", ["train.epochs=30"]), out=d)
    return d


def test_predict_refuses_a_path_inside_a_run_directory(quad_run, tmp_path):
    metrics = (quad_run / "metrics.json").read_bytes()
    for target in (quad_run / "metrics.json", quad_run / "pred.csv", quad_run / "sub" / "p.csv"):
        with pytest.raises(DataError, match="inside the run directory"):
            predict_file(quad_run, DATA / "quadratic.csv", out=target)
    assert (quad_run / "metrics.json").read_bytes() == metrics and not (quad_run / "pred.csv").exists()
    predict_file(quad_run, DATA / "quadratic.csv", out=tmp_path / "p.csv")
    assert (tmp_path / "p.csv").is_file()


def test_predict_cli_force_writes_inside_a_run(quad_run, cli):
    r = cli("predict", quad_run, "--data", DATA / "quadratic.csv", "--out", quad_run / "metrics.json")
    assert r.exit_code == 1 and "inside the run directory" in flat(r.stderr)
    r = cli("predict", quad_run, "--data", DATA / "quadratic.csv", "--out", quad_run / "pred.csv", "--force")
    assert r.exit_code == 0, r.output
    (quad_run / "pred.csv").unlink()


# ---------------------------------------------------------------- only regular files are read


def test_fifo_as_data_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "d.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="named pipe"):
        read_columns(fifo)
    p = write_config(tmp_path, data={"path": str(fifo), "target": "y"}, model={"kind": "linear"})
    r = run_gradfit("train", p, timeout=120)
    assert r.returncode == 1 and "named pipe" in flat(r.stderr) and "Traceback" not in r.stderr


def test_device_behind_a_symlink_is_refused(tmp_path):
    link = tmp_path / "zero.csv"
    link.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="character device"):
        read_columns(link)
    r = run_gradfit("check", link, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_fifo_checkpoint_is_refused(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):  # the file, or the run directory holding it
        with pytest.raises(CheckpointError, match="named pipe"):
            read_checkpoint(path)


# ---------------------------------------------------------------- malformed checkpoints


def _safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + data


def test_deeply_nested_checkpoint_header(tmp_path):
    deep = 100_000
    header = b'{"__metadata__": {"format": "gradfit-checkpoint"}, "t": ' + b"[" * deep + b"]" * deep + b"}"
    p = tmp_path / "deep.safetensors"
    p.write_bytes(_safetensors_bytes(header))
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_checkpoint(p)


def test_deeply_nested_checkpoint_records(tmp_path):
    deep = 100_000
    meta = {"format": "gradfit-checkpoint", "format_version": "1", "spec": "[" * deep + "]" * deep,
            "config": "{}", "data": "{}", "extra": "{}"}
    header = json.dumps({"__metadata__": meta}).encode()
    p = tmp_path / "deep.safetensors"
    p.write_bytes(_safetensors_bytes(header))
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_checkpoint(p)


@pytest.mark.parametrize("offsets", ["[0, 1e400]", "[0, 1.5]", "[8, 0]", "[-1, 8]", "[0]", '"x"'])
def test_bad_data_offsets(tmp_path, offsets):
    header = ('{"t": {"dtype": "F64", "shape": [1], "data_offsets": ' + offsets + "}}").encode()
    p = tmp_path / "bad.safetensors"
    p.write_bytes(_safetensors_bytes(header, b"\0" * 8))
    with pytest.raises(CheckpointError, match="data_offsets"):
        read_checkpoint(p)


# ---------------------------------------------------------------- strict CSV shape


RAGGED = {
    "x,y\n0,0\n1,2\n1,000,2000\n3,6\n": "line 4 has 3 fields where the header has 2",
    "x,y\n0,0,9\n1,2,9\n2,4,9\n": "line 2 has 3 fields where the header has 2",
    "x,y\n0,0\n1\n2,4\n": "line 3 has 1 field where the header has 2",
    'x,y\n"0",0\n1,"2",3\n': "line 3 has 3 fields where the header has 2",  # (quoted: the csv module counts)
}


@pytest.mark.parametrize("text, message", list(RAGGED.items()))
@pytest.mark.parametrize("small", [True, False])
def test_ragged_rows_are_refused_for_training(tmp_path, monkeypatch, text, message, small):
    if not small:
        monkeypatch.setattr("gradfit.data.columns.SMALL_CSV_BYTES", 0)  # the pandas path
    (tmp_path / "d.csv").write_text(text)
    cfg = write_config(tmp_path, data={"path": str(tmp_path / "d.csv"), "target": "y", "dropna": True},
                       model={"kind": "linear"})
    with pytest.raises(DataError, match=message):
        train(load_config(cfg), write=False)


@pytest.mark.parametrize("text, message", list(RAGGED.items()))
def test_ragged_rows_are_refused_for_predict(quad_run, tmp_path, text, message):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        predict_file(quad_run, tmp_path / "d.csv")


@pytest.mark.parametrize("block", [3, 7, 64])
def test_shape_check_across_blocks(tmp_path, monkeypatch, block):
    monkeypatch.setattr("gradfit.data.columns.SHAPE_BLOCK_BYTES", block)
    p = tmp_path / "d.csv"
    p.write_text("x,y\r\n\r\n1,2\r\n\n3,4")  # blank lines and CRLF are fine
    check_csv_shape(p)
    p.write_text("x,y\n1,2\n3,4\n5,6,7")
    with pytest.raises(DataError, match="line 4 has 3 fields"):
        check_csv_shape(p)


def test_rundir_module_keeps_make_run_dir(tmp_path):
    assert rundir.make_run_dir(tmp_path, "n", None, False) == tmp_path / "n"


# ---------------------------------------------------------------- fault injection: every write of a run


def _count_writes(monkeypatch, tmp_path) -> int:
    """How many files (os.replace calls) a run of write_config writes."""
    calls = []
    (tmp_path / "count").mkdir()
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(b), real(a, b))[1])
    train(load_config(write_config(tmp_path / "count")), out=tmp_path / "count" / "run")
    monkeypatch.setattr(os, "replace", real)
    return len(calls)


def _state_ok(d: Path, made_by_run: bool) -> str:
    """The invariant: the run directory is complete, resumable, or absent because this run made it."""
    if not d.exists():
        assert made_by_run, "a directory this run did not make was removed"
        return "absent"
    names = {p.name for p in d.iterdir()}
    assert RUN_MARKER not in names and not any(n.endswith(".tmp") for n in names), names
    if "metrics.json" in names:
        return "complete"
    if {"config.yaml", "history.csv", rs.RESUME_NAME} <= names:
        return "resumable"
    assert not (names & set(RUN_FILES)), f"a partial run without its training state: {names}"
    return "absent"  # (only files that were there before the run remain)


FAULTS = {
    "enospc": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "efbig": lambda: OSError(errno.EFBIG, "File too large"),
    "interrupt": KeyboardInterrupt,
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("where", ["default", "users_out"])
@pytest.mark.parametrize("persist", [False, True])
def test_a_fault_at_each_write_keeps_the_invariant(tmp_path, monkeypatch, fault, where, persist):
    """A fault injected at the k-th file written (and, ``persist``, at every later one: a full disk),
    for every k; the invariant checked after each."""
    n = _count_writes(monkeypatch, tmp_path)
    assert n >= 7  # optimizer state, two figures, config, history, coefficients, checkpoint, metrics
    seen = {}
    real = os.replace
    for k in range(n):
        base = tmp_path / f"k{k}"
        base.mkdir()
        (base / "input.txt").write_text("the user's")
        out = None
        if where == "users_out":
            out = base / "mine"
            out.mkdir()
            (out / "notes.txt").write_text("mine")
        before = snapshot(base)
        count = [0]

        def faulty(a, b, k=k, count=count):
            count[0] += 1
            if count[0] == k + 1 or (persist and count[0] > k):
                raise FAULTS[fault]()
            return real(a, b)

        monkeypatch.setattr(os, "replace", faulty)
        cfg = load_config(write_config(base, output={"dir": str(base / "runs")}))
        with pytest.raises((WriteError, KeyboardInterrupt)) as e:
            train(cfg, out=out, force=out is not None)
        monkeypatch.setattr(os, "replace", real)
        if isinstance(e.value, WriteError):
            assert ("no space left" if fault == "enospc" else "too large") in e.value.message
        after = snapshot(base)
        for name, data in before.items():  # every file that existed before is unchanged
            if name != "c.yaml":
                assert after.get(name) == data, (k, name)
        d = out if out is not None else base / "runs" / "t"
        if persist and d.exists() and (d / rs.RESUME_NAME).is_file() and not (d / "history.csv").exists():
            # nothing more could be written: the training state and what came before it stay, and are listed
            if isinstance(e.value, WriteError):
                assert "keeps" in e.value.hint and rs.RESUME_NAME in e.value.hint
            assert not any(n.name.endswith(".tmp") or n.name == RUN_MARKER for n in d.iterdir())
            state = "kept what it could"
        else:
            state = _state_ok(d, made_by_run=out is None)
        seen[state] = seen.get(state, 0) + 1
    print(f"{fault}/{where}/{'persistent' if persist else 'once'}: {n} faults injected, end states {seen}")
    assert sum(seen.values()) == n
