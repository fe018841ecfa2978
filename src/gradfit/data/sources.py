"""Where the training rows live: one protocol (``RowSource``), three classes.

- ``MemoryRows``: one process, every row in memory (a ``Dataset`` and its ``Split``);
- ``ShardRows``: torchrun, each rank its shard in memory, sums over the ranks by its ``Dist``;
- ``StreamRows`` (data/stream.py): row groups of Parquet files read from disk at each pass.

Which one a run has is decided once (``train.run.prepare``); the metrics, the exact check,
the target's variance and the standard errors (results/) read rows only through
``chunks(set)`` and combine ranks only through ``dist``, whatever the source.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Protocol

import torch

from gradfit.data.moments import Moments
from gradfit.data.split import Split
from gradfit.parallel import SINGLE, Dist

SETS = ("train", "val", "test")
# Raw rows per chunk: float64 temporaries of a few MiB (the size models.regression builds designs in).
CHUNK_ROWS = 1 << 13

Chunk = tuple[torch.Tensor, torch.Tensor]  # raw X (n, d) and y (n,), float64 on the CPU


class RowSource(Protocol):
    """The rows of a run, in raw (original-unit) float64 blocks of this rank."""

    dist: Dist  # sums over the ranks (SINGLE in one process: the identity)
    streamed: bool  # the training batches are read from disk each epoch (the loop asks the source for them)

    def chunks(self, which: str) -> Iterator[Chunk]:
        """(X, y) blocks of this rank's rows of one set ("train", "val" or "test")."""

    def chunks_by_set(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(set, X, y) blocks of every set of this rank's rows, in one pass."""

    def count(self, which: str) -> int:
        """Rows of one set over all ranks."""

    @property
    def has_val(self) -> bool:
        """Whether any rank holds validation rows."""

    @property
    def n_rows_global(self) -> int:
        """Rows of every set over all ranks (the data's rows, after dropped ones)."""

    def sum(self, x):
        """Sum over the ranks of a tensor or a number."""

    def moments(self, fn: Optional[Callable] = None) -> tuple[dict, dict]:
        """Column statistics (``Moments.reduce``) of ``fn(X)`` (default: X) and of y over all training rows."""

    def summarizer(self) -> Callable:
        """For models.fit_scaling: fn -> (statistics of fn(X), statistics of y) over all training rows."""


class ChunkedRows:
    """What every source derives from ``chunks``, ``counts`` and ``dist`` (the protocol's shared half)."""

    dist: Dist = SINGLE
    streamed = False  # True for a source whose training batches are read from disk each epoch
    counts: dict  # rows of each set over all ranks, counted once when the source is made
    _raw: Optional[tuple] = None  # moments() of the raw columns, once computed (the rows do not change)
    weights: Optional[torch.Tensor] = None  # (n,) the loss's row weights (data.weights), indexed as X; None: all 1

    def chunks(self, which: str) -> Iterator[Chunk]:  # pragma: no cover - each source has its own
        raise NotImplementedError

    def weighted_chunks(self, which: str):
        """(X, y, w) blocks of one set: ``chunks`` with each row's weight (w None without data.weights)."""
        for X, y in self.chunks(which):
            yield X, y, None

    def chunks_by_set(self):
        for which in SETS:
            for X, y in self.chunks(which):
                yield which, X, y

    def count(self, which: str) -> int:
        return self.counts[which]

    @property
    def has_val(self) -> bool:
        return self.counts["val"] > 0

    @property
    def n_rows_global(self) -> int:
        return sum(self.counts.values())

    def sum(self, x):
        return self.dist.sum(x)

    def moments(self, fn: Optional[Callable] = None) -> tuple[dict, dict]:
        if fn is None and self._raw is not None:
            return self._raw
        xs, ys = Moments(), Moments()
        for X, y in self.chunks("train"):
            xs.add(X if fn is None else fn(X))
            ys.add(y)
        out = xs.reduce(self.dist), ys.reduce(self.dist)
        if fn is None:
            self._raw = out
        return out

    def summarizer(self) -> Callable:
        return self.moments


class _RowsInMemory(ChunkedRows):
    """The rows of ``X``, ``y`` that ``split`` indexes, read chunk by chunk (no copy of a set)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, split: Split, dist: Dist):
        self.X, self.y, self.split, self.dist = X, y, split, dist
        # (every rank counts here, together: a later question from one rank alone needs no collective)
        self.counts = {which: int(dist.sum(int(getattr(split, which).numel()))) for which in SETS}

    def chunks(self, which: str) -> Iterator[Chunk]:
        idx = getattr(self.split, which)
        for i in range(0, idx.numel(), CHUNK_ROWS):
            rows = idx[i : i + CHUNK_ROWS]
            yield self.X.index_select(0, rows), self.y.index_select(0, rows)  # (2-5x X[rows]'s time on 2 cores)

    def weighted_chunks(self, which: str):
        if self.weights is None:
            yield from super().weighted_chunks(which)
            return
        idx = getattr(self.split, which)
        for i in range(0, idx.numel(), CHUNK_ROWS):
            rows = idx[i : i + CHUNK_ROWS]
            yield self.X.index_select(0, rows), self.y.index_select(0, rows), self.weights.index_select(0, rows)


class MemoryRows(_RowsInMemory):
    """One process, every row in memory (a Dataset's X and y, and its split)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, split: Split, weights: Optional[torch.Tensor] = None):
        super().__init__(X, y, split, SINGLE)
        self.weights = weights  # (n,) float64 (data.weights) or None

    @classmethod
    def training(cls, X: torch.Tensor, y: torch.Tensor, rows: Optional[torch.Tensor] = None,
                 weights: Optional[torch.Tensor] = None) -> "MemoryRows":
        """The rows ``X[rows]``, ``y[rows]`` (default: all) as a training set, with no held-out rows."""
        rows = torch.arange(X.shape[0]) if rows is None else rows
        none = torch.zeros(0, dtype=torch.long)
        return cls(X, y, Split(rows, none, none), weights)


class ShardRows(_RowsInMemory):
    """torchrun: each rank holds its shard in memory (its rows, its part of the split); ``dist`` sums over ranks."""
