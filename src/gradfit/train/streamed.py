"""data.streaming: train on a Parquet file (or a directory of them) larger than memory.

The rows are never all in memory. Each pass reads this rank's row groups in slices of
``READ_ROWS`` rows (``ParquetFile.iter_batches``), so memory is bounded by the row-group
reader, one slice and one batch, not by the data:

- a first pass checks every value (numeric, finite, missing values per data.dropna) and
  accumulates the scaling statistics of the training rows (Chan's merge of per-slice
  moments, then over ranks); polynomial models take a second pass for the statistics of
  their terms;
- each epoch reads the row groups in a seeded random order, shuffles the rows inside each
  slice and cuts them into batches of ``train.batch_size`` rows (a step per batch). With
  ``batch_size: null`` the gradient is accumulated over the whole pass and the epoch is one
  exact full-batch step, the same step as in memory;
- with a validation split, each epoch takes a second pass for the validation loss;
- at the end, passes for the metrics of each set and the exact least-squares check.

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
from typing import Optional

import numpy as np
import torch

from gradfit.data.moments import Moments
from gradfit.data.shards import assign_groups
from gradfit.errors import DataError
from gradfit.parallel import Dist
from gradfit.results.exact import exact_from_chunks
from gradfit.results.metrics import MetricSums

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


class ParquetStream:
    """This rank's row groups of a Parquet dataset, read slice by slice."""

    def __init__(self, cfg, dist: Dist):
        import pyarrow.parquet as pq

        from gradfit.data.columns import select_columns

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
                self.features = select_columns(cols, dc.target, dc.features, f)
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
        self.model = None  # set once built: the passes that need the design use it
        self.n_train = self.n_val = self.n_test = 0  # over all ranks, from the first pass
        self.n_train_mine = 0  # this rank's training rows
        self.y_std = 1.0
        self.dropped = 0

    # ------------------------------------------------------------ reading

    def _slices(self, pieces, check: bool, shuffle: Optional[torch.Generator] = None):
        """(global rows, X, y) float64 numpy slices of the given row groups, missing rows dropped."""
        import pyarrow.parquet as pq

        from gradfit.data.tables import frame_to_arrays

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

    def summarizer(self, xm: Moments, ym: Moments):
        """For models.fit_scaling: statistics over every rank's training rows (a pass for fn != identity)."""
        dist = self.dist
        xs, ys = xm.reduce(dist), ym.reduce(dist)

        def summarize(fn):
            probe = torch.zeros(1, len(self.features), dtype=torch.float64)
            if fn(probe) is probe:  # the identity: the first pass has these
                return xs, ys
            m = Moments()
            for X, _ in self.rows_of(TRAIN):
                m.add(fn(X))
            return m.reduce(dist), ys

        return summarize

    # ------------------------------------------------------------ training

    @property
    def has_val(self) -> bool:
        return self.n_val > 0

    def _design(self, X, y):
        return self.model.design(X), self.model.scaled_target(y)

    def train_epoch(self, head, loss_fn, optimizer, batch_size: Optional[int], generator: torch.Generator):
        """One epoch over this rank's training rows; returns the epoch's mean loss over all ranks (scaled units)."""
        dist = self.dist
        local_loss = getattr(loss_fn, "local", loss_fn)  # the per-rank mean (distributed.Dist.wrap_loss)
        n_mine = self.n_train_mine
        N = self.n_train
        total = torch.zeros((), dtype=self.model.dtype, device=self.model.device)
        slices = self._shuffled_train(generator)
        if batch_size is None or batch_size >= N:
            # Full batch: accumulate the gradient of the global mean over the whole pass, one step.
            optimizer.zero_grad(set_to_none=True)
            scale = dist.world_size / N  # DDP averages over ranks
            sync = getattr(head, "no_sync", None)
            for Z, y in slices:
                with (sync() if sync is not None else _nothing()):
                    loss = local_loss(head(Z), y) * Z.shape[0]
                    (loss * scale).backward()
                total += loss.detach()
            if sync is not None:  # a last, empty backward outside no_sync all-reduces the gradients
                m = self.model.features.n_terms
                Z0 = torch.zeros(0, m, dtype=self.model.dtype, device=self.model.device)
                (head(Z0).sum() * 0.0).backward()
            optimizer.step()
            return dist.sum(total) / N
        steps = max(1, math.ceil(N / batch_size))
        sizes = [(i + 1) * n_mine // steps - i * n_mine // steps for i in range(steps)]
        m = self.model.features.n_terms
        empty = (torch.zeros(0, m, dtype=self.model.dtype, device=self.model.device),
                 torch.zeros(0, dtype=self.model.dtype, device=self.model.device))
        for Zb, yb in _cut(slices, sizes, empty):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(head(Zb), yb)  # the global batch mean: every rank takes this step together
            loss.backward()
            optimizer.step()
            total += loss.detach() * Zb.shape[0]
        return dist.sum(total) / N

    def _shuffled_train(self, generator):
        for X, y in self.rows_of(TRAIN, shuffle=generator):
            perm = torch.randperm(X.shape[0], generator=generator)
            yield self._design(X[perm], y[perm])

    def val_loss(self, head, loss_fn):
        """The loss over every rank's validation rows (scaled units)."""
        local_loss = getattr(loss_fn, "local", loss_fn)
        total = torch.zeros((), dtype=torch.float64)
        for X, y in self.rows_of(VAL):
            Z, yt = self._design(X, y)
            total += float(local_loss(head(Z), yt)) * Z.shape[0]
        return float(self.dist.sum(total)) / self.n_val

    # ------------------------------------------------------------ results (Prepared.rows)

    def evaluate_sets(self, model, loss) -> dict:
        center = float(model.y_shift)
        sums = {TRAIN: MetricSums(center), VAL: MetricSums(center), TEST: MetricSums(center)}
        for rows, X, y in self._slices(self.pieces, check=False):
            sets = row_sets(self.seed, rows, self.val, self.test)
            Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
            pred = model.predict(Xt)
            for s, acc in sums.items():
                keep = torch.from_numpy(sets == s)
                if keep.any():
                    acc.add(yt[keep], pred[keep], loss)
        return {name: sums[s].result(self.dist) for name, s in (("train", TRAIN), ("val", VAL), ("test", TEST))}

    def exact(self, model) -> dict:
        from gradfit.results.exact import design_chunks

        k = model.features.n_terms + int(bool(model.spec["intercept"]))

        def chunks():
            for X, y in self.rows_of(TRAIN):
                for i, A in design_chunks(model, X):
                    yield A, y[i : i + A.shape[0]]

        return exact_from_chunks(chunks, k, self.dist)

    def target_variance(self) -> float:
        return float(self.y_std) ** 2


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cut(slices, sizes: list[int], empty):
    """Batches of exactly these sizes from a stream of (Z, y) slices (which hold sum(sizes) rows)."""
    it = iter(sizes)
    need = next(it, None)
    cur_Z = cur_y = None
    pos = 0
    for Z, y in slices:
        if cur_Z is not None and pos < cur_Z.shape[0]:
            Z, y = torch.cat([cur_Z[pos:], Z]), torch.cat([cur_y[pos:], y])
        cur_Z, cur_y, pos = Z, y, 0
        while need is not None and cur_Z.shape[0] - pos >= need:
            yield cur_Z[pos : pos + need], cur_y[pos : pos + need]
            pos += need
            need = next(it, None)
    while need is not None:  # only zero sizes are left (a rank with few rows): keep in step with the others
        yield empty
        need = next(it, None)


def prepare(cfg, dist: Dist, device: torch.device, t0: float):
    """run.prepare for data.streaming: statistics from a first pass, no rows kept in memory."""
    import time

    from gradfit.data.split import STREAM_INIT, Dataset, Split, generator
    from gradfit.models import losses
    from gradfit.models.build import build_model
    from gradfit.models.heads import DTYPES
    from gradfit.optim import plan as optim
    from gradfit.train.loop import TrainData
    from gradfit.train.prepared import Prepared

    stream = dist.agree(lambda: ParquetStream(cfg, dist))
    xm, ym, counts, dropped, sample = dist.agree(stream.first_pass)
    totals = dist.sum(torch.tensor([*counts.tolist(), dropped], dtype=torch.int64)).tolist()
    stream.n_train, stream.n_val, stream.n_test, stream.dropped = totals
    stream.n_train_mine = int(counts[TRAIN])
    if stream.n_train < 2:
        raise DataError(f"{stream.path}: {stream.n_train} training row(s); at least 2 are needed",
                        hint="use more rows or smaller data.split fractions")
    summarize = stream.summarizer(xm, ym)
    stream.y_std = summarize(lambda A: A)[1]["std"][0]
    model = dist.agree(lambda: build_model(cfg, stream.features, stream.target, None, None, device,
                                           generator(cfg.seed, STREAM_INIT), summarize=summarize))
    stream.model = model
    dtype = DTYPES[cfg.dtype]
    placeholder = torch.zeros(0, model.features.n_terms, dtype=dtype, device=device)
    data = TrainData(placeholder, torch.zeros(0, dtype=dtype, device=device))
    plan = optim.plan(cfg, None)  # sgd with lr auto is refused by the config
    # Rows rank 0 keeps for the plots of the run directory; the sample's own split.
    X, y, sets = sample
    source = {"path": str(stream.path.resolve()),
              "fingerprint": fingerprint(stream.files, stream.path) if dist.is_main else None,
              "streaming": True, "split_rule": "row hash (streaming.row_sets)"}
    notes = [f"dropped {stream.dropped} row{'s' if stream.dropped > 1 else ''} with missing values (data.dropna)"] if stream.dropped else []
    ds = Dataset(torch.from_numpy(X), torch.from_numpy(y), stream.features, stream.target, source, notes)
    ds.n_rows_global = stream.n_train + stream.n_val + stream.n_test
    st = torch.from_numpy(sets.astype(np.int64))
    split = Split(*(torch.nonzero(st == s).flatten() for s in (TRAIN, VAL, TEST)))
    return Prepared(cfg, device, ds, split, model, data, losses.from_config(cfg), plan,
                    time.perf_counter() - t0, dist=dist, rows=stream, stream=stream)
