"""data.streaming: train on a Parquet file (or a directory of them) larger than memory.

The rows are never all in memory (data/stream.py reads them, slice by slice, at each pass);
memory is bounded by the row-group reader, one slice and one batch, not by the data:

- a first pass checks every value and accumulates the scaling statistics of the training
  rows; polynomial models take a second pass for the statistics of their terms;
- each epoch reads the row groups in a seeded random order, shuffles the rows inside each
  slice and cuts them into batches of ``train.batch_size`` rows (a step per batch). With
  ``batch_size: null`` the gradient is accumulated over the whole pass and the epoch is one
  exact full-batch step, the same step as in memory;
- with a validation split, each epoch takes a second pass for the validation loss;
- at the end, passes for the metrics of each set and the exact least-squares check
  (results/, over the row source like any other).
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch

from gradfit.data.split import STREAM_INIT, Dataset, Split, generator
from gradfit.data.stream import TEST, TRAIN, VAL, StreamRows, fingerprint
from gradfit.errors import DataError
from gradfit.models import losses
from gradfit.models.build import build_model
from gradfit.models.heads import DTYPES
from gradfit.optim import plan as optim
from gradfit.parallel import Dist
from gradfit.train.loop import TrainData
from gradfit.train.prepared import Prepared


class ParquetStream(StreamRows):
    """The Parquet row source, with the training epochs over it that the loop calls."""

    streamed = True  # the loop reads each epoch's batches from it (optim.steppers.StreamedStep)

    def __init__(self, cfg, dist: Dist):
        super().__init__(cfg, dist)
        self.model = None  # set once built: the passes that need the design use it

    # ------------------------------------------------------------ training

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


    stream = dist.agree(lambda: ParquetStream(cfg, dist))
    X, y, sets = stream.scan()  # (rank 0's sample of rows, for the plots of the run directory)
    if stream.n_train < 2:
        raise DataError(f"{stream.path}: {stream.n_train} training row(s); at least 2 are needed",
                        hint="use more rows or smaller data.split fractions")
    model = dist.agree(lambda: build_model(cfg, stream.features, stream.target, None, None, device,
                                           generator(cfg.seed, STREAM_INIT), summarize=stream.summarizer()))
    stream.model = model
    dtype = DTYPES[cfg.dtype]
    placeholder = torch.zeros(0, model.features.n_terms, dtype=dtype, device=device)
    data = TrainData(placeholder, torch.zeros(0, dtype=dtype, device=device))
    plan = optim.plan(cfg, None)  # sgd with lr auto is refused by the config
    source = {"path": str(stream.path.resolve()),
              "fingerprint": fingerprint(stream.files, stream.path) if dist.is_main else None,
              "streaming": True, "split_rule": "row hash (streaming.row_sets)"}
    notes = [f"dropped {stream.dropped} row{'s' if stream.dropped > 1 else ''} with missing values (data.dropna)"] if stream.dropped else []
    ds = Dataset(torch.from_numpy(X), torch.from_numpy(y), stream.features, stream.target, source, notes)
    st = torch.from_numpy(sets.astype(np.int64))
    split = Split(*(torch.nonzero(st == s).flatten() for s in (TRAIN, VAL, TEST)))
    # (Huber's default delta from rank 0's sample of training targets, the same on every rank)
    loss = dist.gather(dist.agree(lambda: losses.from_config(cfg, y[sets == TRAIN])))[0]
    return Prepared(cfg, device, ds, split, model, data, loss, plan,
                    time.perf_counter() - t0, stream, dist=dist)
