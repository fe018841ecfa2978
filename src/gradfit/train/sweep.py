"""Sweeps: a config trained for each combination of a grid of --set values, for seeded random draws
or for Optuna's TPE trials over --range values (``gradfit sweep``).

DIR holds ``sweep.yaml`` (the config, the grid or the ranges and seed, folds and metric), one run
directory per combination (a cross-validation directory with ``--folds``) and ``ranking.json``. A
combination whose directory already holds metrics.json (cv.json) is read, not trained again, so an
interrupted sweep resumes: random draws are the same for the same seed, and an Optuna sweep keeps its
study in ``DIR/optuna.db`` (sqlite), asking only for the trials still missing. A sweep over
model.penalty.l1 or .l2 alone also writes the regularization path (results/path_plot.py).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from gradfit.config.loading import dump_yaml, load_config
from gradfit.errors import ConfigError, TrainingError
from gradfit.results.compare import descending
from gradfit.results.path_plot import regularization_path
from gradfit.results.rundir import write_json, write_text
from gradfit.train.cv import cross_validate
from gradfit.train.run import train
from gradfit.train.sweep_draws import OPTUNA_NAME, PATH_KEYS, RANKING_NAME, optuna_study, parse_ranges, random_draws, suggest

SWEEP_NAME = "sweep.yaml"


@dataclass
class SweepResult:
    out: Path
    metric: str
    ranking: list[dict]  # best first: name, overrides, score (None when the run has no such metric)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``KEY=V1,V2,...`` strings as {KEY: [V1, V2, ...]}, in the order given."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key.strip() or not vals:
            raise ConfigError(f"--grid {item!r} is not KEY=V1,V2,...", hint="e.g. --grid model.degree=1,2,3")
        if key.strip() in grid:
            raise ConfigError(f"--grid {key.strip()} is given twice", hint="list all its values in one --grid")
        grid[key.strip()] = vals
    if not grid:
        raise ConfigError("a sweep needs at least one --grid KEY=V1,V2,...", hint="e.g. --grid model.degree=1,2,3")
    return grid


def combinations(grid: dict[str, list[str]]) -> list[list[str]]:
    """Every combination as a list of KEY=VALUE overrides."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, vals)] for vals in itertools.product(*(grid[k] for k in keys))]


def run_name(overrides: list[str]) -> str:
    """The directory name of a combination: its overrides joined by ``,``, safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(overrides))


def score_of(d: Path, metric: str, folds: Optional[int]) -> Optional[float]:
    """The metric (``val.r2``) of a finished run, or the mean over the folds of a cv directory; None if absent."""
    file = d / ("cv.json" if folds else "metrics.json")
    if not file.is_file():
        return None
    doc = json.loads(file.read_text(encoding="utf-8"))
    which, _, name = metric.partition(".")
    sets = doc.get("mean", {}) if folds else doc
    value = (sets.get(which) or {}).get(name)
    return None if value is None else float(value)


def sweep(config: str | Path, out: str | Path, grid_items: list[str] = (), *, random_n: Optional[int] = None,
          optuna_n: Optional[int] = None, range_items: list[str] = (), seed: Optional[int] = None,
          overrides: tuple = (), folds: Optional[int] = None, repeats: int = 1, metric: str = "val.r2",
          jobs: int = 1, on_run: Optional[Callable[[str, bool], None]] = None) -> SweepResult:
    """Train every combination of the grid, ``random_n`` seeded draws or ``optuna_n`` TPE trials over the
    ranges (skipping finished runs), rank them by ``metric``; a penalty path writes path.csv and path.png."""
    which, _, name = metric.partition(".")
    if which not in ("train", "val", "test") or not name:
        raise ConfigError(f"--metric {metric!r} is not SET.NAME", hint="e.g. val.r2, val.mse or train.loss")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be at least 1", hint="drop --jobs, or use 2 or more")
    if repeats != 1 and not folds:
        raise ConfigError(f"--repeats {repeats} repeats cross-validation folds", hint="add --folds K, or drop --repeats")
    base = list(overrides)
    cfg = load_config(config, base)
    seed = cfg.seed if seed is None else seed
    modes = [m for m, given in (("--grid", bool(grid_items)), ("--random", random_n is not None),
                                ("--optuna", optuna_n is not None)) if given]
    if len(modes) != 1:
        raise ConfigError("a sweep needs one of --grid KEY=V1,V2,..., --random N or --optuna N" if not modes
                          else f"{' and '.join(modes)} cannot be combined",
                          hint="e.g. --grid model.degree=1,2,3, or --random 20 --range optimizer.lr=1e-4:1e-1:log")
    if modes[0] == "--grid" and range_items:
        raise ConfigError("--range goes with --random N or --optuna N, not --grid", hint="give the values with --grid")
    if modes[0] != "--grid" and not range_items:
        raise ConfigError(f"{modes[0]} needs at least one --range KEY=LOW:HIGH[:log]",
                          hint="e.g. --range optimizer.lr=1e-4:1e-1:log --range model.degree=1:6")
    out = Path(out)
    run = _Runner(config, base, out, folds, repeats, jobs, on_run)
    spec: dict = {"config": str(Path(config).resolve()), "set": base}
    if modes[0] == "--grid":
        grid = parse_grid(grid_items)
        keys, combos = list(grid), combinations(grid)
        spec["grid"] = grid
    else:
        ranges = parse_ranges(list(range_items), cfg)
        keys = [r.key for r in ranges]
        spec.update({"random" if random_n is not None else "optuna": random_n if random_n is not None else optuna_n,
                     "range": {r.key: r.to_text() for r in ranges}, "seed": seed})
        combos = random_draws(ranges, random_n, seed) if random_n is not None else \
            [[f"{r.key}={r.value(u)}" for r in ranges] for u in (0.0, 1.0 - 1e-12)]  # (the ends validate)
    for combo in combos:  # every combination validates before any trains
        split = load_config(config, base + combo).data.split
        if which != "train" and not getattr(split, which) and not (folds and which == "val"):
            raise ConfigError(f"--metric {metric}: the runs have no {which} rows (data.split.{which} is 0)",
                              hint=f"add --folds K (each fold validates), set data.split.{which}, or rank by train.{name}")
    out.mkdir(parents=True, exist_ok=True)
    if optuna_n is not None:
        spec["storage"] = OPTUNA_NAME
    write_text(out / SWEEP_NAME, dump_yaml({**spec, "folds": folds, "repeats": repeats, "metric": metric}))
    if optuna_n is not None:
        combos = _optuna_trials(ranges, optuna_n, seed, descending(name), run, metric)
    else:
        run(combos)
    ranking = [{"name": run_name(c), "overrides": c, "score": score_of(out / run_name(c), metric, folds)} for c in combos]
    ranked = sorted((r for r in ranking if r["score"] is not None), key=lambda r: r["score"], reverse=descending(name))
    ranked += [r for r in ranking if r["score"] is None]
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
    write_json(out / RANKING_NAME, {"metric": metric, "runs": ranked})
    if len(keys) == 1 and keys[0] in PATH_KEYS:
        regularization_path(out, keys[0], [(float(r["overrides"][0].partition("=")[2]), out / r["name"], r["score"])
                                           for r in ranked], metric, bool(folds))
    return SweepResult(out, metric, ranked)


@dataclass
class _Runner:
    """Trains the combinations not finished yet (in this process, or ``jobs`` processes at a time)."""

    config: str | Path
    base: list[str]
    out: Path
    folds: Optional[int]
    repeats: int
    jobs: int
    on_run: Optional[Callable[[str, bool], None]]

    def __call__(self, combos: list[list[str]]) -> None:
        todo = []
        for combo in combos:
            d = self.out / run_name(combo)
            done = (d / ("cv.json" if self.folds else "metrics.json")).is_file()  # (written last: the run is complete)
            if self.on_run is not None and done:
                self.on_run(run_name(combo), True)
            if not done and combo not in todo:
                todo.append(combo)
        if self.jobs == 1:
            for combo in todo:
                _train_here(self.config, self.base + combo, self.out / run_name(combo), self.folds, self.repeats)
                if self.on_run is not None:
                    self.on_run(run_name(combo), False)
        else:
            _train_in_processes(self.config, self.base, todo, self.out, self.folds, self.repeats, self.jobs, self.on_run)


def _optuna_trials(ranges, n: int, seed: int, maximize: bool, run: _Runner, metric: str) -> list[list[str]]:
    """Ask the study for trials until ``n`` have finished (``run.jobs`` at a time), train and tell them; the
    combinations of every finished trial, in trial order. A trial left running by an interruption is marked
    failed and its values asked again first (its run is then skipped if it had finished)."""
    from optuna.trial import TrialState  # (imported here: an optional extra)

    study = optuna_study(run.out, seed, maximize)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params)
    finished = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("finished"))
    while finished < n:
        batch = []
        for _ in range(min(run.jobs, n - finished)):
            trial = study.ask()
            combo = suggest(trial, ranges)
            load_config(run.config, run.base + combo)
            trial.set_user_attr("overrides", combo)
            batch.append((trial, combo))
        run([c for _, c in batch])
        for trial, combo in batch:
            score = score_of(run.out / run_name(combo), metric, run.folds)
            trial.set_user_attr("finished", True)
            if score is None or not math.isfinite(score):
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, score)
        finished += len(batch)
    combos: list[list[str]] = []
    for t in study.get_trials(deepcopy=False):
        c = t.user_attrs.get("overrides")
        if t.user_attrs.get("finished") and c not in combos:
            combos.append(list(c))
    return combos


def _train_here(config, sets: list[str], d: Path, folds: Optional[int], repeats: int = 1) -> None:
    cfg = load_config(config, sets)
    if folds:
        cross_validate(cfg, d, folds, repeats=repeats)
    else:
        train(cfg, out=d, force=True)


def _train_in_processes(config, base, todo, out: Path, folds, repeats: int, jobs: int, on_run) -> None:
    """``python -m gradfit train|cv`` for each combination, ``jobs`` at a time, each with
    cores // jobs torch threads (at least 1), so that jobs x threads <= cores."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = list(todo)
    running: list[tuple[subprocess.Popen, list[str]]] = []
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            combo = pending.pop(0)
            d = out / run_name(combo)
            cmd = [sys.executable, "-m", "gradfit", "cv" if folds else "train", str(config), "--out", str(d)]
            cmd += ["--folds", str(folds), "--repeats", str(repeats)] if folds else ["--force", "--quiet"]
            for s in base + combo:
                cmd += ["--set", s]
            running.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), combo))
        proc, combo = running.pop(0)
        _, err = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"{run_name(combo)}: {err.decode(errors='replace').strip().splitlines()[-1:] or ''}")
        elif on_run is not None:
            on_run(run_name(combo), False)
    if failed:
        raise TrainingError(f"{len(failed)} run(s) of the sweep failed: " + "; ".join(failed),
                            hint="fix the cause and run the same command again: finished runs are skipped")
