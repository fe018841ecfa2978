"""Rows in memory (``Dataset``), seeded random streams and the train/val/test split of rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from gradfit.errors import DataError

# Independent random streams derived from the one seed.
STREAM_DATA, STREAM_SPLIT, STREAM_INIT, STREAM_BATCH, STREAM_PLOT = 0, 1, 2, 3, 4


def generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one purpose (data, split, init, batches), derived from the seed."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + stream * 7919) % (2**63))
    return g


@dataclass
class Split:
    """Row indices of each set, drawn with the seed."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def split_rows(n: int, val: float, test: float, seed: int) -> Split:
    """Shuffle row indices with the seed; hold out round(val*n) and round(test*n) rows."""
    perm = torch.randperm(n, generator=generator(seed, STREAM_SPLIT))
    n_val = int(round(val * n))
    n_test = int(round(test * n))
    if val > 0 and n_val == 0:
        raise DataError(f"data.split.val = {val} of {n} rows leaves the validation set empty", hint="use more rows or a larger fraction, or val: 0")
    if test > 0 and n_test == 0:
        raise DataError(f"data.split.test = {test} of {n} rows leaves the test set empty", hint="use more rows or a larger fraction, or test: 0")
    if n - n_val - n_test < 2:
        raise DataError(
            f"data.split (val {val}, test {test}) leaves {n - n_val - n_test} training row(s) of {n}; at least 2 are needed",
            hint="lower data.split.val / data.split.test, or use more rows",
        )
    val_idx = perm[:n_val].sort().values
    test_idx = perm[n_val : n_val + n_test].sort().values
    train_idx = perm[n_val + n_test :].sort().values
    return Split(train_idx, val_idx, test_idx)


@dataclass
class Dataset:
    """Rows of named features and a target, in float64 on the CPU (X: float32 for float32 Parquet columns)."""

    X: torch.Tensor  # (n_rows, n_features) float64, or float32 holding a float32 file's numbers as they are
    y: torch.Tensor  # (n_rows,) float64
    feature_names: list[str]
    target_name: str
    source: dict = field(default_factory=dict)  # path and fingerprint, or the synthetic spec
    notes: list[str] = field(default_factory=list)  # things the user should hear (rows dropped...)
    # Each row's 0-based row in the data file when rows were dropped (data.dropna), of n_file_rows.
    file_rows: Optional[torch.Tensor] = None  # (n_rows,) int64; None: row i is the file's row i
    n_file_rows: Optional[int] = None
    w: Optional[torch.Tensor] = None  # (n_rows,) float64 weights of the loss (data.weights); None: every row 1

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])


# The sets of split.csv, by code: a data file's row is in one of them.
SET_NAMES = ("train", "val", "test", "dropped")


def row_sets(ds: Dataset, split: Split) -> torch.Tensor:
    """(n_file_rows,) uint8: each data-file row's set, a code into SET_NAMES (dropped: left out for missing values)."""
    n_file = ds.n_file_rows if ds.file_rows is not None else ds.n_rows
    codes = torch.full((n_file,), SET_NAMES.index("dropped"), dtype=torch.uint8)
    at = ds.file_rows if ds.file_rows is not None else torch.arange(ds.n_rows)
    for code, rows in enumerate((split.train, split.val, split.test)):
        codes[at[rows]] = code
    return codes
