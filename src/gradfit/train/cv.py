"""Cross-validation: the config trained on K seeded folds of its training rows (``gradfit cv``).

The pool of rows is every row of the data that the config's split does not hold out as
``test`` (the config's own ``val`` rows join the pool); test rows are in no fold and are
marked ``test`` in ``folds.csv``. Each fold's run trains on the pool less that fold and is
validated on that fold (its ``val`` metrics); its ``test`` metrics are the config's test rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from gradfit.config.schema import Config
from gradfit.data.resolve import resolve_config
from gradfit.data.split import Split, generator, split_rows
from gradfit.data.tables import load_dataset
from gradfit.errors import ConfigError, DataError
from gradfit.results.rundir import write_json, write_text
from gradfit.train.run import train

CV_NAME = "cv.json"
FOLDS_NAME = "folds.csv"
# A stream of its own for the fold shuffle (data/split.py uses 0-4); repeat r adds r.
STREAM_FOLDS = 100


@dataclass
class Folds:
    """Which fold validates each pooled row: ``fold[r][i]`` for repeat r, row ``pool[i]`` (-1: never validated)."""

    n_rows: int
    pool: np.ndarray  # (n_pool,) 0-based rows of the data, ascending
    test: np.ndarray  # (n_test,) the config's test rows, in no fold
    fold: list[np.ndarray]  # repeats x (n_pool,) fold numbers 0..K-1, or -1
    k: int
    method: str  # "shuffled", "grouped" or "time"

    def split(self, repeat: int, k: int) -> Split:
        """The train/val/test rows of fold ``k`` of ``repeat``."""
        f = self.fold[repeat]
        if self.method == "time":  # forward chaining: train on every earlier block (block 0 is -1)
            train = self.pool[f < k]
        else:
            train = self.pool[f != k]
        val = self.pool[f == k]
        as_t = lambda a: torch.as_tensor(np.sort(a), dtype=torch.long)  # noqa: E731
        return Split(as_t(train), as_t(val), as_t(self.test))


@dataclass
class CVResult:
    out: Path
    folds: list[dict]  # one per fold run: repeat, fold, run_dir, n_train, n_val, train/val/test metrics
    mean: dict  # {set: {metric: mean over the folds}}
    sd: dict  # {set: {metric: sample sd (n - 1) over the folds}}
    method: str
    k: int
    repeats: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"k": self.k, "repeats": self.repeats, "method": self.method, "folds": self.folds,
                "mean": self.mean, "sd": self.sd}


def make_folds(cfg: Config, k: int, repeats: int = 1, group: Optional[str] = None, time: bool = False) -> Folds:
    """The fold assignment of the config's non-test rows, seeded by ``cfg.seed``."""
    if k < 2:
        raise ConfigError(f"--folds {k}: cross-validation needs at least 2 folds", hint="use --folds 5, say")
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats} must be at least 1", hint="drop --repeats, or use 2 or more")
    if group is not None and time:
        raise ConfigError("--group and --time cannot be combined", hint="choose grouped folds or time-ordered folds")
    if time and repeats > 1:
        raise ConfigError("--time folds are the same on every repeat", hint="drop --repeats with --time")
    if cfg.data.streaming:
        raise ConfigError("cross-validation needs the rows in memory (data.streaming is set)", hint="set data.streaming: false")
    ds = load_dataset(resolve_config(cfg) if cfg.model.kind == "formula" else cfg)
    n = ds.n_rows
    test = split_rows(n, cfg.data.split.val, cfg.data.split.test, cfg.seed).test.numpy()
    pool = np.setdiff1d(np.arange(n), test)
    if pool.size < 2 * k:
        raise DataError(f"{pool.size} rows outside the test set are too few for {k} folds", hint="use fewer --folds")
    if time:
        blocks = np.array_split(np.arange(pool.size), k + 1)  # block 0 only ever trains
        fold = np.full(pool.size, -1)
        for i, b in enumerate(blocks[1:]):
            fold[b] = i
        return Folds(n, pool, test, [fold], k, "time")
    labels = _group_labels(cfg, group, n)[pool] if group is not None else None
    out = []
    for r in range(repeats):
        g = generator(cfg.seed, STREAM_FOLDS + r)
        fold = np.empty(pool.size, dtype=np.int64)
        if labels is None:
            perm = torch.randperm(pool.size, generator=g).numpy()
            for i, chunk in enumerate(np.array_split(perm, k)):
                fold[chunk] = i
        else:
            uniq, inv = np.unique(labels, return_inverse=True)
            if uniq.size < k:
                raise DataError(f"--group {group}: {uniq.size} groups are too few for {k} folds", hint="use fewer --folds")
            order = torch.randperm(uniq.size, generator=g).numpy()
            sizes = np.bincount(inv, minlength=uniq.size)
            load = np.zeros(k)
            of_group = np.empty(uniq.size, dtype=np.int64)
            for gi in order:  # each group (in seeded order) to the fold with the fewest rows so far
                f = int(np.argmin(load))
                of_group[gi] = f
                load[f] += sizes[gi]
            fold = of_group[inv]
        out.append(fold)
    return Folds(n, pool, test, out, k, "grouped" if labels is not None else "shuffled")


def _group_labels(cfg: Config, column: str, n: int) -> np.ndarray:
    """The values of a column of the data file, one per loaded row."""
    path = cfg.resolved_data_path()
    if path is None:
        raise ConfigError("--group needs a data file (data.path), not synthetic data", hint="drop --group")
    from gradfit.data.columns import check_csv_shape, is_parquet, read_columns, sniff_sep  # (for start-up time)
    from gradfit.data.tables import read_frame

    parquet = is_parquet(path)
    sep = cfg.data.sep or ("," if parquet else sniff_sep(path))  # (as training reads the file: data/tables.py)
    columns = read_columns(path, sep)
    if column not in columns:
        raise DataError(f"--group {column}: no such column in {path}", hint=f"columns: {', '.join(map(str, columns))}")
    if not parquet:
        check_csv_shape(path, sep)  # (a ragged row: the line and the counts, as training says them)
    frame = read_frame(path, [column], sep, cfg.data.decimal)
    if len(frame) != n:
        raise DataError(f"--group {column}: {path} has {len(frame)} rows but {n} were loaded (rows dropped)",
                        hint="drop the incomplete rows from the file first")
    return frame[column].astype(str).to_numpy()


def write_folds(path: Path, folds: Folds) -> None:
    """``row,fold`` (1-based fold; ``test`` for the config's test rows, ``train`` for rows that only train);
    with repeats, ``row,repeat,fold``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    reps = len(folds.fold)
    w.writerow(["row", "repeat", "fold"] if reps > 1 else ["row", "fold"])
    where = {int(t): "test" for t in folds.test}
    for r in range(reps):
        labels = dict(where)
        for row, f in zip(folds.pool.tolist(), folds.fold[r].tolist()):
            labels[row] = str(f + 1) if f >= 0 else "train"
        for row in range(folds.n_rows):
            w.writerow([row, r + 1, labels[row]] if reps > 1 else [row, labels[row]])
    write_text(path, buf.getvalue())


def summarize(folds: list[dict]) -> tuple[dict, dict]:
    """Mean and sample sd of each set's metrics over the fold runs."""
    mean: dict = {}
    sd: dict = {}
    for which in ("train", "val", "test"):
        runs = [f[which] for f in folds if f.get(which)]
        if not runs:
            mean[which] = sd[which] = None
            continue
        keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]  # ("weighted": true is no number)
        vals = {k: np.array([float(r[k]) for r in runs]) for k in keys}
        mean[which] = {k: float(v.mean()) for k, v in vals.items()}
        sd[which] = {k: float(v.std(ddof=1)) if v.size > 1 else math.nan for k, v in vals.items()}
    return mean, sd


def cross_validate(cfg: Config, out: str | Path, k: int, *, repeats: int = 1, group: Optional[str] = None,
                   time: bool = False, on_fold: Optional[Callable[[dict], None]] = None) -> CVResult:
    """Train ``cfg`` on each fold; write DIR/fold-K (or rR-fold-K), folds.csv and cv.json. A fold whose run
    directory already holds metrics.json is read, not trained again (an interrupted cv resumes)."""
    out = Path(out)
    folds = make_folds(cfg, k, repeats, group, time)
    out.mkdir(parents=True, exist_ok=True)
    write_folds(out / FOLDS_NAME, folds)
    records = []
    for r in range(len(folds.fold)):
        for i in range(k):
            name = f"fold-{i + 1}" if len(folds.fold) == 1 else f"r{r + 1}-fold-{i + 1}"
            d = out / name
            split = folds.split(r, i)
            if (d / "metrics.json").is_file():
                metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
            else:
                metrics = train(cfg, out=d, force=True, split=split).metrics
            rec = {"repeat": r + 1, "fold": i + 1, "run_dir": name, "n_train": int(split.train.numel()),
                   "n_val": int(split.val.numel()), **{s: metrics.get(s) for s in ("train", "val", "test")}}
            records.append(rec)
            if on_fold is not None:
                on_fold(rec)
    mean, sd = summarize(records)
    result = CVResult(out, records, mean, sd, folds.method, k, len(folds.fold))
    write_json(out / CV_NAME, result.to_dict())
    return result
