"""Sweeps: a config trained for each combination of a grid of --set values (``gradfit sweep``).

DIR holds ``sweep.yaml`` (the config, the grid, folds and metric), one run directory per
combination (a cross-validation directory with ``--folds``) and ``ranking.json``. A
combination whose directory already holds metrics.json (cv.json) is read, not trained again.
"""

from __future__ import annotations

import itertools
import json
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
from gradfit.results.rundir import write_json, write_text
from gradfit.train.cv import cross_validate
from gradfit.train.run import train

SWEEP_NAME = "sweep.yaml"
RANKING_NAME = "ranking.json"


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


def sweep(config: str | Path, out: str | Path, grid_items: list[str], *, overrides: tuple = (),
          folds: Optional[int] = None, metric: str = "val.r2", jobs: int = 1,
          on_run: Optional[Callable[[str, bool], None]] = None) -> SweepResult:
    """Train every combination of the grid (skipping finished ones), rank them by ``metric``."""
    which, _, name = metric.partition(".")
    if which not in ("train", "val", "test") or not name:
        raise ConfigError(f"--metric {metric!r} is not SET.NAME", hint="e.g. val.r2, val.mse or train.loss")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be at least 1", hint="drop --jobs, or use 2 or more")
    grid = parse_grid(grid_items)
    combos = combinations(grid)
    base = list(overrides)
    for combo in combos:
        load_config(config, base + combo)  # every combination validates before any trains
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / SWEEP_NAME, dump_yaml({"config": str(Path(config).resolve()), "set": base, "grid": grid,
                                            "folds": folds, "metric": metric}))
    todo = []
    for combo in combos:
        d = out / run_name(combo)
        done = (d / ("cv.json" if folds else "metrics.json")).is_file()  # (written last: the run is complete)
        if on_run is not None and done:
            on_run(run_name(combo), True)
        if not done:
            todo.append(combo)
    if jobs == 1:
        for combo in todo:
            _train_here(config, base + combo, out / run_name(combo), folds)
            if on_run is not None:
                on_run(run_name(combo), False)
    else:
        _train_in_processes(config, base, todo, out, folds, jobs, on_run)
    ranking = [{"name": run_name(c), "overrides": c, "score": score_of(out / run_name(c), metric, folds)} for c in combos]
    ranked = sorted((r for r in ranking if r["score"] is not None), key=lambda r: r["score"], reverse=descending(name))
    ranked += [r for r in ranking if r["score"] is None]
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
    write_json(out / RANKING_NAME, {"metric": metric, "runs": ranked})
    return SweepResult(out, metric, ranked)


def _train_here(config, sets: list[str], d: Path, folds: Optional[int]) -> None:
    cfg = load_config(config, sets)
    if folds:
        cross_validate(cfg, d, folds)
    else:
        train(cfg, out=d, force=True)


def _train_in_processes(config, base, todo, out: Path, folds, jobs: int, on_run) -> None:
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
            cmd += ["--folds", str(folds)] if folds else ["--force", "--quiet"]
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
