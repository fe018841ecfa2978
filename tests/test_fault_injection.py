"""Fault injection (issue 21): OS errors at every write site of a run, signals at seeded moments.

Part one, in process: every file of a run is written through ``files.atomic_path`` (the training
state, the figures, config, history, coefficients, summary, split, checkpoint, metrics) and the run
directory is claimed by creating its marker (``os.open`` in results/rundir.py). A clean run counts
those write sites; then each site in turn gets an OSError (ENOSPC, EACCES, EROFS, EFBIG) raised
where the OS would raise it (inside the real ``atomic_path``, or from ``os.open``), once or, for a
full disk, at that write and every later one.

Part two, in a subprocess: ``gradfit train`` gets SIGINT or SIGTERM at a seeded moment after it
enters loading, training or writing.

After each fault the invariant is checked: every file that existed before is byte-identical, no
marker or temporary file is left, and the run directory is complete (metrics.json, and the model
loads), resumable (config, history and training state, and ``resume`` then completes it), or
absent because this run made it; the message names the cause and matches what is kept. The counts
of injected faults are printed (``pytest -s``) and asserted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import sigint_default, small_config
from gradfit import files
from gradfit.config.loading import load_config
from gradfit.files import RUN_MARKER, WriteError
from gradfit.results import plots, rundir
from gradfit.results.checkpoint import load_model
from gradfit.train import resume as rs
from gradfit.train.run import resume, train

# The cause each errno is named by (files.os_cause), as the user reads it.
ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EACCES: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large",
}
RESUMABLE = ("config.yaml", "history.csv", rs.RESUME_NAME)


def snapshot(d: Path) -> dict:
    """Every file under ``d`` with its bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def write_config(d: Path, epochs: int = 20) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "c.yaml"
    p.write_text(yaml.safe_dump({**small_config(train={"epochs": epochs}), "output": {"dir": str(d / "runs")}}))
    return p


def state_of(d: Path, made_by_run: bool, users: set) -> str:
    """The invariant on a run directory: complete, resumable, or absent because this run made it."""
    if not d.exists():
        assert made_by_run, f"{d} was there before the run and is gone"
        return "absent"
    names = {p.name for p in d.iterdir()}
    assert RUN_MARKER not in names and not any(n.endswith(".tmp") for n in names), names
    if "metrics.json" in names:
        load_model(d)  # (complete: the model loads)
        return "complete"
    if set(RESUMABLE) <= names:
        return "resumable"
    assert names == users, f"{d} holds a partial run that cannot be resumed: {sorted(names - users)}"
    return "absent"  # (only the user's own files remain in the user's directory)


# ---------------------------------------------------------------- part one: OS errors at each write site


@pytest.fixture
def fast_figures(monkeypatch):
    """The figures' write site without matplotlib's drawing (a second per figure here): the same
    atomic_path, a stand-in PNG."""
    def draw(kind, path, args):
        with plots.atomic_path(Path(path)) as tmp:
            tmp.write_bytes(b"\x89PNG\r\n\x1a\n" + kind.encode())

    monkeypatch.setattr(plots, "_draw", draw)


class Injector:
    """Counts the write sites of a run and raises an OSError at the chosen ones."""

    def __init__(self, monkeypatch):
        self.sites: list[str] = []
        self.fail_at: set[int] = set()
        self.code = errno.ENOSPC
        real_atomic, real_open = files.atomic_path, os.open

        @contextlib.contextmanager
        def atomic(path):
            with real_atomic(path) as tmp:
                self._visit(Path(path).name, tmp)  # (raised inside the real one: it translates and cleans up)
                yield tmp

        def open_(path, flags, *a, **k):
            if str(path).endswith(RUN_MARKER):
                self._visit(RUN_MARKER, path)
            return real_open(path, flags, *a, **k)

        # Each module that writes holds its own name for atomic_path (from ... import atomic_path).
        for name, mod in list(sys.modules.items()):
            if name.startswith("gradfit") and getattr(mod, "atomic_path", None) is real_atomic:
                monkeypatch.setattr(mod, "atomic_path", atomic)
        monkeypatch.setattr(rundir.os, "open", open_)

    def _visit(self, name: str, path) -> None:
        self.sites.append(name)
        if len(self.sites) - 1 in self.fail_at:
            raise OSError(self.code, os.strerror(self.code), str(path))

    def arm(self, code: int, at: set[int]) -> None:
        self.sites, self.code, self.fail_at = [], code, at


def _one_fault(base: Path, inj: Injector, code: int, at: set[int], users_out: bool, ref_mse: float,
               resume_it: bool) -> str:
    """Train with ``at`` write sites failing with ``code``; check the invariant; the end state."""
    cfg = load_config(write_config(base))
    (base / "input.txt").write_text("the user's")
    out, users = None, set()
    if users_out:
        out = base / "mine"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        users = {"notes.txt"}
    before = snapshot(base)
    inj.arm(code, at)
    with pytest.raises(WriteError) as e:
        train(cfg, out=out, force=users_out)
    inj.arm(code, set())
    msg, hint = e.value.message, e.value.hint or ""
    assert ERRNOS[code] in msg, msg
    after = snapshot(base)
    assert {k: after.get(k) for k in before} == before, "a file that existed before the fault changed"
    d = out if out is not None else base / "runs" / "t"
    state = state_of(d, made_by_run=not users_out, users=users)
    if state == "resumable":
        assert f"gradfit train --resume {d}" in hint, hint
    if state == "resumable" and resume_it:
        done = resume(d, ["train.epochs=25"])  # resumable means it trains on from the kept state, and completes
        assert state_of(d, False, users) == "complete" and done.metrics["epochs"] == 25
        # (full batch: stopped and resumed, the same fit as 25 epochs straight)
        assert done.metrics["train"]["mse"] == pytest.approx(ref_mse, rel=1e-6)
    return state


def _sweep(tmp_path: Path, monkeypatch, cases, resumes: int) -> dict:
    """Inject the faults of ``cases``; resume the first ``resumes`` resumable end states (each takes a run)."""
    inj = Injector(monkeypatch)
    train(load_config(write_config(tmp_path / "count")))
    sites = list(inj.sites)
    ref_mse = train(load_config(write_config(tmp_path / "ref", epochs=25)), write=False).metrics["train"]["mse"]
    assert sites[0] == RUN_MARKER and sites[-1] == "metrics.json" and len(sites) >= 10, sites
    seen: dict = {}
    n = 0
    for i, (code, k, persistent, users_out) in enumerate(cases(len(sites))):
        at = set(range(k, len(sites) + 5)) if persistent else {k}
        state = _one_fault(tmp_path / f"f{i}", inj, code, at, users_out, ref_mse, seen.get("resumable", 0) < resumes)
        seen[state] = seen.get(state, 0) + 1
        n += 1
    print(f"\n{len(sites)} write sites ({', '.join(sites)}); {n} faults injected; end states {seen}")
    return {"sites": len(sites), "faults": n, "states": seen}


def _default_cases(n_sites: int):
    """Each errno at each site once (the user's --out at odd sites), and a full disk from each site."""
    for code in ERRNOS:
        for k in range(n_sites):
            yield code, k, False, k % 2 == 1
    for k in range(n_sites):
        yield errno.ENOSPC, k, True, k % 2 == 0


def test_an_os_error_at_each_write_site_keeps_the_invariant(tmp_path, monkeypatch, fast_figures):
    got = _sweep(tmp_path, monkeypatch, _default_cases, resumes=6)
    assert got["faults"] == 5 * got["sites"]
    assert got["states"].get("resumable", 0) >= 4 and got["states"].get("absent", 0) >= 4  # both kinds of end reached


@pytest.mark.slow
def test_every_errno_at_every_site_in_both_places_once_and_persistent(tmp_path, monkeypatch, fast_figures):
    def cases(n_sites):
        for code in ERRNOS:
            for k in range(n_sites):
                for persistent in (False, True):
                    for users_out in (False, True):
                        yield code, k, persistent, users_out

    got = _sweep(tmp_path, monkeypatch, cases, resumes=10**6)
    assert got["faults"] == 16 * got["sites"]


# ---------------------------------------------------------------- part two: signals at seeded moments

# Runs gradfit with MODULE.NAME held: entering it touches MARK and waits HOLD seconds before the
# real work (the test signals the process at a seeded moment of that wait, inside that step).
WRAPPER = textwrap.dedent('''
    import importlib, sys, time
    module, name, mark, hold = sys.argv[1:5]
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    def held(*a, **k):
        open(mark, "w").close()
        end = time.monotonic() + float(hold)
        while time.monotonic() < end:
            time.sleep(0.01)
        return real(*a, **k)
    setattr(mod, name, held)
    sys.argv = ["gradfit"] + sys.argv[5:]
    from gradfit.__main__ import main
    main()
''')

# The steps a signal lands in: loading the data, the training loop, writing the finished run.
PHASES = {
    "load": ("gradfit.train.run", "load_dataset"),
    "train": ("gradfit.train.run", "fit"),
    "write": ("gradfit.train.run", "save_checkpoint"),
}


def _signal_run(base: Path, phase: str, sig: int, times: int, delay: float, users_out: bool, hold: float = 2.0) -> str:
    """Signal ``gradfit train`` ``times`` times (0.2 s apart) ``delay`` s into ``phase``; check the invariant."""
    cfg = write_config(base, epochs=20)
    (base / "wrap.py").write_text(WRAPPER)
    out, users = base / "runs" / "t", set()
    args = []
    if users_out:
        out = base / "mine"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        users = {"notes.txt"}
        args = ["--out", str(out), "--force"]
    before = snapshot(base)
    mark = base / "mark"
    module, name = PHASES[phase]
    proc = subprocess.Popen([sys.executable, str(base / "wrap.py"), module, name, str(mark), str(hold), "train", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=base,
                            env=dict(os.environ, COLUMNS="300"), preexec_fn=sigint_default)
    deadline = time.monotonic() + 120
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if not mark.exists():  # (the step was never reached: the signals below would prove nothing)
        out_, err_ = proc.communicate(timeout=120)
        raise AssertionError(f"{phase} was not reached (exit {proc.returncode}): {out_[-2000:]} {err_[-2000:]}")
    time.sleep(delay)
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=120)
    err = " ".join(err.split())
    assert "Traceback" not in err, err
    after = snapshot(base)
    assert {k: after.get(k) for k in before if k != "mark"} == {k: v for k, v in before.items() if k != "mark"}
    state = state_of(out, made_by_run=not users_out, users=users)
    if proc.returncode == 0:  # (the signal came after the run had ended)
        assert state == "complete", err
        return "finished first"
    assert proc.returncode == 130, (proc.returncode, err)
    names = ("SIGINT", "Ctrl-C") if sig == signal.SIGINT else ("SIGTERM",)
    assert any(f"{how} {who}" in err for how in ("aborted by", "interrupted by") for who in names) or \
        any(f"{who} arrived after training had ended" in err for who in names), err
    # The words match what is kept.
    if state == "complete":  # (a signal in the loop stops it after the epoch, and the run is written whole)
        assert f"the run is saved in {out}" in err or f"the run finished and is saved complete in {out}" in err, err
    elif state == "resumable":
        assert f"continue it with: gradfit train --resume {out}" in err, err
    elif users_out:
        assert f"this run's files were removed from {out}" in err or "nothing was written" in err, err
    else:
        assert "nothing was written" in err or f"{out} was removed (this run had made it)" in err, err
    return state


SIGNAL_CASES = [(phase, sig, times) for phase in PHASES for sig in (signal.SIGINT, signal.SIGTERM) for times in (1, 2)]


def _signal_sweep(tmp_path: Path, cases, seed: int) -> dict:
    rng = random.Random(seed)
    seen: dict = {}
    for i, (phase, sig, times) in enumerate(cases):
        delay = rng.uniform(0.0, 0.6)  # (well within the step's hold of 2 s, the second signal too)
        state = _signal_run(tmp_path / f"s{i}", phase, sig, times, delay, users_out=rng.random() < 0.5)
        key = f"{phase}/{times}x/{state}"
        seen[key] = seen.get(key, 0) + 1
    print(f"\n{len(cases)} signals sent (seed {seed}); end states {seen}")
    return seen


def test_a_signal_at_seeded_moments_keeps_the_invariant(tmp_path):
    # Ctrl-C while loading, and twice (the second once ended the process by SIGINT, exit -2, while
    # it said "aborted"); SIGTERM in the loop; two Ctrl-Cs while the finished run is written.
    cases = [("load", signal.SIGINT, 1), ("load", signal.SIGINT, 2), ("train", signal.SIGTERM, 1),
             ("write", signal.SIGINT, 2)]
    seen = _signal_sweep(tmp_path, cases, seed=21)
    assert seen == {"load/1x/absent": 1, "load/2x/absent": 1, "train/1x/complete": 1, "write/2x/resumable": 1}, seen


@pytest.mark.slow
def test_signals_at_many_seeded_moments_keep_the_invariant(tmp_path):
    seen = _signal_sweep(tmp_path, SIGNAL_CASES * 2, seed=2021)
    assert sum(seen.values()) == 2 * len(SIGNAL_CASES)
