"""data.streaming: the rows of a Parquet file (or a directory of them) read from disk at each pass.

The rows are never all in memory. Each pass reads this rank's row groups in slices of
``READ_ROWS`` rows (``ParquetFile.iter_batches``), so memory is bounded by the row-group
reader and one slice, not by the data. A first pass (``scan``) checks every value
(numeric, finite, missing values per data.dropna), counts the sets and accumulates the
raw columns' statistics of the training rows (Chan's merge of per-slice moments, then
over ranks). The training epochs over these rows are train/streamed.py's.

The held-out split cannot be a permutation of all rows (that is O(rows) memory). Row i of
the data (counting across files in name order, before rows with missing values are
dropped) goes to validation when u(seed, i) < val, to test when u < val + test, else to
training, where u is a 64-bit hash of the seed and i mapped to [0, 1). The sets are the
same in every epoch, on any number of processes and for any row-group layout, and their
sizes are val and test of the rows up to binomial noise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from gradfit.data.columns import select_columns
from gradfit.data.moments import Moments
from gradfit.data.shards import assign_groups
from gradfit.data.sources import SETS, ChunkedRows
from gradfit.data.tables import frame_to_arrays
from gradfit.errors import DataError
from gradfit.parallel import Dist

READ_ROWS = 1 << 16  # rows per slice read from a row group
SAMPLE_ROWS = 5_000  # rows rank 0 keeps for the run directory's plots
TRAIN, VAL, TEST = 0, 1, 2


def row_sets(seed: int, rows: np.ndarray, val: float, test: float) -> np.ndarray:
    """TRAIN/VAL/TEST for global row indices, from a splitmix64 hash of (seed, row)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    out = np.zeros(rows.shape[0], dtype=np.uint8)
    out[u < val + test] = TEST
    out[u < val] = VAL
    return out


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the Parquet files under a directory (in name order)."""
    if not path.exists():
        raise DataError(f"data file not found: {path}", hint="check data.path (relative paths start at the config file)")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".parquet", ".pq"))
    if not files:
        raise DataError(f"{path} is a directory without .parquet files", hint="point data.path at a Parquet file or a directory of them")
    return files


def fingerprint(files: list[Path], root: Path) -> str:
    """sha256 over each file's name, size and Parquet footer (which holds every row group's statistics)."""
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(root) if f != root else f.name}|{size}|".encode())
        with open(f, "rb") as fh:
            fh.seek(max(0, size - 8))
            tail = fh.read(8)
            n = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
            fh.seek(max(0, size - 8 - n))
            h.update(fh.read(n + 8))
    return "sha256-footers:" + h.hexdigest()


@dataclass
class Piece:
    """One row group: file, index in the file, rows, global index of its first row and of its file's."""

    file: int
    group: int
    rows: int
    first: int
    file_first: int


class StreamRows(ChunkedRows):
    """data.streaming: this rank's row groups of a Parquet dataset, read slice by slice at each pass."""

    def __init__(self, cfg, dist: Dist):
        import pyarrow.parquet as pq  # (imported here for start-up time)


        dc = cfg.data
        self.cfg, self.dist = cfg, dist
        self.path = cfg.resolved_data_path()
        self.files = parquet_files(self.path)
        self.val, self.test, self.seed = dc.split.val, dc.split.test, cfg.seed
        pieces, start = [], 0
        names = None
        for i, f in enumerate(self.files):
            try:
                meta = pq.ParquetFile(f).metadata
                cols = list(meta.schema.to_arrow_schema().names)
            except Exception as exc:
                raise DataError(f"{f}: cannot read it as Parquet: {exc}") from None
            if names is None:
                names = cols
                self.features = select_columns(cols, dc.target, dc.features, f, dc.exclude)
            elif any(c not in cols for c in self.features + [dc.target]):
                missing = [c for c in self.features + [dc.target] if c not in cols]
                raise DataError(f"{f}: column(s) {missing} not found (the first file, {self.files[0]}, has them)",
                                hint="every file of a Parquet directory needs the same columns")
            file_first = start
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                pieces.append(Piece(i, g, rows, start, file_first))
                start += rows
        self.target = dc.target
        self.columns = self.features + [dc.target]
        self.n_rows_file = start
        mine = assign_groups([p.rows for p in pieces], dist.rank, dist.world_size)
        self.pieces = [pieces[i] for i in mine]
        self.counts = {"train": 0, "val": 0, "test": 0}  # over all ranks, from the first pass (scan)
        self.n_train_mine = 0  # this rank's training rows
        self.dropped = 0

    # ------------------------------------------------------------ reading

    def _slices(self, pieces, check: bool, shuffle: Optional[torch.Generator] = None):
        """(global rows, X, y) float64 numpy slices of the given row groups, missing rows dropped."""
        import pyarrow.parquet as pq  # (imported here for start-up time)


        dropna = self.cfg.data.dropna
        order = range(len(pieces)) if shuffle is None else torch.randperm(len(pieces), generator=shuffle).tolist()
        current, pf = None, None
        for k in order:
            p = pieces[k]
            if current != p.file:
                pf, current = pq.ParquetFile(self.files[p.file]), p.file
            start = p.first
            for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=[p.group], columns=self.columns):
                n = batch.num_rows
                rows = np.arange(start, start + n, dtype=np.int64)
                first_line = start - p.file_first + 1  # row within its file, 1-based
                start += n
                if check:
                    frame = batch.to_pandas()
                    if dropna:
                        keep = ~frame[self.columns].isna().any(axis=1).to_numpy()
                        frame, rows = frame[keep], rows[keep]
                    X, y, _ = frame_to_arrays(frame, self.features, self.target, self.files[p.file], False, first_row=first_line)
                else:
                    A = np.column_stack([np.asarray(batch.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                                         for c in self.columns])
                    if dropna:
                        keep = ~np.isnan(A).any(axis=1)
                        A, rows = A[keep], rows[keep]
                    X, y = A[:, :-1], A[:, -1]
                yield rows, X, y

    def rows_of(self, which: int, check: bool = False, shuffle=None):
        """(X, y) torch float64 slices of one set (TRAIN, VAL, TEST) of this rank's rows."""
        for rows, X, y in self._slices(self.pieces, check, shuffle):
            keep = row_sets(self.seed, rows, self.val, self.test) == which
            if keep.any():
                yield torch.from_numpy(np.ascontiguousarray(X[keep])), torch.from_numpy(np.ascontiguousarray(y[keep]))

    # ------------------------------------------------------------ statistics

    def first_pass(self):
        """Check every value; count the sets; moments of X and y over the training rows; a sample."""
        xm, ym = Moments(), Moments()
        counts = np.zeros(3, dtype=np.int64)
        raw = sum(p.rows for p in self.pieces)
        sample_X, sample_y, sample_s = [], [], []
        every = max(1, math.ceil(raw / SAMPLE_ROWS))
        kept = 0
        for rows, X, y in self._slices(self.pieces, check=True):
            sets = row_sets(self.seed, rows, self.val, self.test)
            counts += np.bincount(sets, minlength=3)
            tr = sets == TRAIN
            xm.add(torch.from_numpy(X[tr]))
            ym.add(torch.from_numpy(y[tr]))
            kept += len(rows)
            pick = (rows % every) == 0
            sample_X.append(X[pick])
            sample_y.append(y[pick])
            sample_s.append(sets[pick])
        k = len(self.features)
        sample = (np.concatenate(sample_X) if sample_X else np.zeros((0, k)),
                  np.concatenate(sample_y) if sample_y else np.zeros(0),
                  np.concatenate(sample_s) if sample_s else np.zeros(0, dtype=np.uint8))
        return xm, ym, counts, raw - kept, sample

    def scan(self) -> tuple:
        """The first pass, on every rank together: counts of each set over all ranks (``counts``), the raw
        columns' moments, rows dropped for missing values; returns rank 0's sample (X, y, sets) for the plots."""
        dist = self.dist
        xm, ym, counts, dropped, sample = dist.agree(self.first_pass)
        totals = dist.sum(torch.tensor([*counts.tolist(), dropped], dtype=torch.int64)).tolist()
        self.counts = dict(zip(SETS, totals[:3]))
        self.dropped = totals[3]
        self.n_train_mine = int(counts[TRAIN])
        self._raw = (xm.reduce(dist), ym.reduce(dist))  # (what moments() gives without a pass)
        return sample

    # ------------------------------------------------------------ the row source

    @property
    def n_train(self) -> int:
        return self.counts["train"]

    @property
    def n_val(self) -> int:
        return self.counts["val"]

    @property
    def n_test(self) -> int:
        return self.counts["test"]

    def chunks(self, which: str):
        return self.rows_of(SETS.index(which))

    def chunks_by_set(self):
        """One pass over the file(s) for every set (not one per set)."""
        for rows, X, y in self._slices(self.pieces, check=False):
            sets = row_sets(self.seed, rows, self.val, self.test)
            for s, which in enumerate(SETS):
                keep = sets == s
                if keep.any():
                    yield which, torch.from_numpy(np.ascontiguousarray(X[keep])), torch.from_numpy(np.ascontiguousarray(y[keep]))

    def moments(self, fn: Optional[Callable] = None) -> tuple[dict, dict]:
        """The raw columns' from the first pass; another pass for fn(X) (polynomial terms)."""
        xs, ys = self._raw
        if fn is None:
            return xs, ys
        m = Moments()
        for X, _ in self.rows_of(TRAIN):
            m.add(fn(X))
        return m.reduce(self.dist), ys

    def summarizer(self) -> Callable:
        """For models.fit_scaling, which asks for the identity first: the first pass has that."""
        probe = torch.zeros(1, len(self.features), dtype=torch.float64)
        return lambda fn: self.moments(None if fn(probe) is probe else fn)
