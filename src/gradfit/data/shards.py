"""Each torchrun rank's share of the rows: contiguous ranges of CSV lines, Parquet row groups or synthetic rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from gradfit.data import tables as gdata
from gradfit.data.columns import _ragged
from gradfit.data.split import Split, split_rows
from gradfit.errors import DataError
from gradfit.files import os_cause
from gradfit.parallel import Dist

# ---------------------------------------------------------------- each rank's rows


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that rank keeps: contiguous, sizes differing by at most one."""
    return rank * n // world, (rank + 1) * n // world


def assign_groups(sizes: list[int], rank: int, world: int) -> list[int]:
    """Indices of the row groups (of these sizes) that rank reads: contiguous, balanced by rows.

    A group belongs to the rank whose share of rows [r*N/W, (r+1)*N/W) holds its first row.
    """
    N = sum(sizes)
    lo, hi = shard_range(N, rank, world)
    out, start = [], 0
    for i, s in enumerate(sizes):
        if lo <= start < hi:
            out.append(i)
        start += s
    return out


def _read_csv_shard(path: Path, columns: list[str], rank: int, world: int):
    """This rank's lines of a CSV file: those whose first byte lies in its byte range of the body.

    Each rank checks the shape of its own lines (as many fields as the header; check_csv_shape's rule
    for the whole file), so that a ragged row is refused on this path too, naming its line of the file.
    """

    import pandas as pd  # (imported here for start-up time)

    try:
        with open(path, "rb") as f:
            header = f.readline()
            body_start = f.tell()
            size = path.stat().st_size - body_start
            lo, hi = shard_range(size, rank, world)

            def line_start(pos: int) -> int:
                # The first line beginning at or after body offset pos.
                if pos <= 0:
                    return body_start
                f.seek(body_start + pos - 1)
                f.readline()
                return f.tell()

            a, b = line_start(lo), line_start(hi) if hi < size else body_start + size
            f.seek(a)
            chunk = f.read(max(0, b - a))
            bad = shard_shape_error(header, chunk)
            if bad is not None:
                f.seek(0)
                lines_before = f.read(a).count(b"\n")  # (only on the error path: the line's number in the file)
                _ragged(path, lines_before + bad[0], bad[1], bad[2])
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {os_cause(exc)}") from None
    try:
        buf = io.BytesIO(header + chunk)
        try:
            return pd.read_csv(buf, usecols=columns, dtype={c: "float64" for c in columns}, engine="c")
        except ValueError:
            buf.seek(0)
            return pd.read_csv(buf, usecols=columns)
    except Exception as exc:
        if type(exc).__name__ == "EmptyDataError":
            return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        raise DataError(f"{path}: cannot read it: {exc}") from None


def shard_shape_error(header: bytes, chunk: bytes, sep: str = ",") -> tuple[int, int, int] | None:
    """The first non-blank line of ``chunk`` whose field count differs from the header's:
    (its line within the chunk, from 1; its fields; the header's), or None when every line fits."""
    rows = csv.reader(io.StringIO(header.decode("utf-8-sig", errors="replace"), newline=""), delimiter=sep)
    expected = len(next(rows, []))
    if not chunk:
        return None
    if b'"' not in chunk:  # (no quotes: count the separators of each line, as check_csv_shape does)
        import numpy as np  # (imported here for start-up time)

        buf = np.frombuffer(chunk if chunk.endswith(b"\n") else chunk + b"\n", np.uint8)
        ends = np.flatnonzero(buf == 10)
        starts = np.concatenate(([0], ends[:-1] + 1))
        at = np.flatnonzero(buf == ord(sep))
        fields = np.searchsorted(at, ends) - np.searchsorted(at, starts) + 1
        lengths = ends - starts - (buf[np.maximum(ends - 1, 0)] == 13)
        bad = np.flatnonzero((lengths > 0) & (fields != expected))
        return (int(bad[0]) + 1, int(fields[bad[0]]), expected) if len(bad) else None
    reader = csv.reader(io.StringIO(chunk.decode("utf-8", errors="replace"), newline=""), delimiter=sep)
    try:
        for row in reader:
            if row and len(row) != expected:
                return reader.line_num, len(row), expected
    except csv.Error:
        return None  # (pandas then says what it cannot parse)
    return None


def load_shard(cfg, dist: Dist):
    """This rank's rows of the experiment's data: (Dataset of its rows, its first global row, N)."""

    dc = cfg.data
    if dc.synthetic is not None:
        # The seeded rows, generated alike on every rank; each keeps its slice.
        full = dist.agree(lambda: gdata.load_dataset(cfg))
        lo, hi = shard_range(full.n_rows, dist.rank, dist.world_size)
        ds = gdata.Dataset(full.X[lo:hi].clone(), full.y[lo:hi].clone(), full.feature_names, full.target_name,
                           full.source, list(full.notes))
        n_all = full.n_rows
        del full
        return ds, lo, n_all

    path = cfg.resolved_data_path()
    parquet = gdata.is_parquet(path)

    def read():
        columns = gdata.read_columns(path)
        feats = gdata.select_columns(columns, dc.target, dc.features, path, dc.exclude)
        cols = feats + [dc.target]
        if parquet:
            import pyarrow.parquet as pq  # (imported here for start-up time)

            try:
                pf = pq.ParquetFile(path)
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
                mine = assign_groups(sizes, dist.rank, dist.world_size)
                first = sum(sizes[: mine[0]]) if mine else 0
                frame = pf.read_row_groups(mine, columns=cols).to_pandas() if mine else \
                    pf.schema_arrow.empty_table().select(cols).to_pandas()
            except Exception as exc:
                raise DataError(f"{path}: cannot read it: {exc}") from None
            return feats, frame, first
        return feats, _read_csv_shard(path, cols, dist.rank, dist.world_size), None

    feats, frame, first = dist.agree(read)
    raw_counts = dist.gather(len(frame))
    if sum(raw_counts) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    before = sum(raw_counts[: dist.rank])
    first_row = (first + 1) if parquet else (before + 2)  # file line of this rank's first row
    X, y, _ = dist.agree(lambda: gdata.frame_to_arrays(frame, feats, dc.target, path, dc.dropna, first_row=first_row))
    frame = None  # (the rows are in X and y now)
    counts = dist.gather(len(X))
    n_all = sum(counts)
    if n_all == 0:
        raise DataError(f"{path}: no rows left after dropping missing values")
    dropped = sum(raw_counts) - n_all
    notes = [f"dropped {dropped} row{'s' if dropped > 1 else ''} with missing values (data.dropna)"] if dropped else []
    # Only rank 0 writes the checkpoint that records the fingerprint; no need to hash the file N times.
    source = {"path": str(path.resolve()), "fingerprint": gdata.fingerprint(path) if dist.is_main else None}
    ds = gdata.Dataset(torch.from_numpy(X), torch.from_numpy(y), feats, dc.target, source, notes)
    return ds, sum(counts[: dist.rank]), n_all


def split_shard(n_all: int, offset: int, n_local: int, cfg, dist: Dist):
    """The single-process split of all n_all rows, restricted to this rank's rows (local indices)."""

    s = dist.agree(lambda: split_rows(n_all, cfg.data.split.val, cfg.data.split.test, cfg.seed))

    def mine(idx: torch.Tensor) -> torch.Tensor:
        keep = (idx >= offset) & (idx < offset + n_local)
        return idx[keep] - offset

    return Split(mine(s.train), mine(s.val), mine(s.test))
