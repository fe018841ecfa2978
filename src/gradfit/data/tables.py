"""Tables: CSV, Parquet or synthetic rows -> named float64 tensors (a ``Dataset``).

Rows are kept in float64 on the CPU here (float32 where a Parquet file's feature columns are float32:
the same numbers, in half the memory); the model's feature map turns them into
the training design in the run's dtype, on the run's device (see models/regression.py).
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gradfit.config.schema import Config, DataConfig
from gradfit.data import arrow
from gradfit.data.columns import (
    _small_csv,
    check_csv_shape,
    is_parquet,
    read_columns,
    select_columns,
    select_synthetic_columns,
    sniff_sep,
)
from gradfit.data.encoding import Encoding, fit_encoding
from gradfit.data.split import Dataset
from gradfit.data.synthetic import _synthetic
from gradfit.data.weights import check_weights_column, table_weights
from gradfit.data.wilkinson import fit_wilkinson
from gradfit.errors import DataError
from gradfit.files import fingerprint


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 of tensors' float64 bytes (synthetic data: regenerated rows must be the same rows)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().data)  # the buffer itself: no bytes copy
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- files


_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")


def _small_csv_arrays(path: Path, feature_names: list[str], target: str, sep: str = ","):
    """Float64 (X, y) of a small CSV whose used cells are all finite plain numbers, else None (pandas reads it)."""
    small = _small_csv(path, sep)
    if small is None or not small[1]:
        return None
    header, rows = small
    idx = [header.index(c) for c in [*feature_names, target]]
    try:
        cells = [[r[j] for j in idx] for r in rows]
        if not all(len(c) <= 40 and _PLAIN_NUMBER.fullmatch(c) for row in cells for c in row):
            return None
        arr = np.array(cells, dtype=np.float64)  # correctly rounded, as pandas' parser
    except (ValueError, IndexError):
        return None
    if not np.isfinite(arr).all():
        return None
    d = len(feature_names)
    return np.ascontiguousarray(arr[:, :d]), np.ascontiguousarray(arr[:, d])


def read_frame(path: Path, columns: list[str], sep: str = ",", decimal: str = "."):
    """Read only the named columns of a CSV or Parquet file into a pandas DataFrame."""
    import pandas as pd  # (imported here for start-up time)

    try:
        if is_parquet(path):
            return pd.read_parquet(path, columns=columns)
        # float64 directly where the text allows; a non-numeric column falls back to object.
        opts = dict(usecols=columns, index_col=False, sep=sep, decimal=decimal)
        try:
            return pd.read_csv(path, dtype={c: "float64" for c in columns}, engine="c", **opts)
        except ValueError:
            return pd.read_csv(path, **opts)
    except Exception as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from None


def frame_to_arrays(frame, feature_names: list[str], target: Optional[str], source, dropna: bool, first_row: Optional[int] = None):
    """Check a DataFrame's columns (numeric, finite, no missing values) and return float64 arrays.

    Returns (X, y or None, notes). Row numbers in messages count the header as line 1.
    """
    import pandas as pd  # (imported here for start-up time)

    notes: list[str] = []
    cols = feature_names + ([target] if target is not None else [])
    plain = [frame[c].to_numpy(copy=False) for c in cols if _plain_numbers(frame[c])]
    if len(plain) == len(cols) and all(a.dtype.kind != "f" or np.isfinite(a).all() for a in plain):
        # Plain numbers, none missing or infinite (the common case): straight into the arrays, with no
        # frame of the used columns and no table of missing values made on the way (0.3 s at 1M x 32).
        return *_fill(plain, len(feature_names), target is not None), notes
    # first_row: the file line of the frame's first row when it is a slice (one rank's share).
    first_data_line = first_row if first_row is not None else (2 if str(source).lower().endswith(".csv") else 1)
    for c in cols:
        s = frame[c]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            num = pd.to_numeric(s, errors="coerce")
            bad = num.isna() & s.notna()
            if bad.any():
                i = int(np.argmax(bad.to_numpy()))
                raise DataError(
                    f"{source}: column {c!r} is not numeric: row {i + first_data_line} holds {s.iloc[i]!r}",
                    hint="gradfit fits numeric columns only; fix or remove that value, or leave the column out of data.features",
                )
            frame[c] = num.where(s.notna())  # a missing date (NaT) stays missing, not -9.2e18
    sub = frame[cols]
    missing = sub.isna()
    n_missing_rows = int(missing.any(axis=1).sum())
    if n_missing_rows:
        if dropna:
            sub = sub.dropna()
            notes.append(f"dropped {n_missing_rows} row{'s' if n_missing_rows > 1 else ''} with missing values (data.dropna)")
        else:
            row = int(np.argmax(missing.any(axis=1).to_numpy()))
            col = [c for c in cols if missing[c].iloc[row]][0]
            raise DataError(
                f"{source}: {int(missing.to_numpy().sum())} missing value(s) in {n_missing_rows} row(s); "
                f"the first is column {col!r} at row {row + first_data_line}",
                hint="fill them in, or set data.dropna: true to drop those rows",
            )
    # Column by column into the final arrays: no (n, k) intermediate copy (a 1 GB CSV's
    # peak stays near twice its used numbers; see bench/csv_memory.py).
    columns = []
    for c in cols:
        # Plain numpy numbers as they are (a float32 or integer column is cast block by block below,
        # not held as a float64 copy meanwhile); pandas' nullable and other types as float64.
        s = sub[c]
        col = s.to_numpy(copy=False) if _plain_numbers(s) else s.to_numpy(dtype=np.float64, copy=False)
        finite = np.isfinite(col)
        if not finite.all():
            r = int(np.argmin(finite))
            raise DataError(
                f"{source}: column {c!r} holds an infinite value at row {int(frame.index.get_loc(sub.index[r])) + first_data_line} "
                f"({int(col.size - finite.sum())} in that column)",
                hint="remove or replace infinite values (or leave the column out of data.features)",
            )
        columns.append(col)
    return *_fill(columns, len(feature_names), target is not None), notes


def _plain_parquet(path: Path, feats: list[str], target: str, narrow: bool):
    """(X, y, digest) of a Parquet file whose used columns are plain finite numbers (data/arrow.py), else None.

    ``narrow``: X keeps float32 when every feature column is float32 (the design is made in float64 from it)."""
    pending = arrow.take(path, [*feats, target])  # (a read the command line started before importing torch)
    pending = pending if narrow else None  # (that read kept float32 columns as they are)
    try:
        if pending is not None:
            arrays = pending[0].result()
        else:
            with ThreadPoolExecutor(1) as pool:  # (the digest meanwhile, as in the pandas read)
                digest = pool.submit(fingerprint, path)
                arrays = arrow.read_plain(path, feats, target, narrow)
                pending = (None, digest)
    except MemoryError:
        raise  # (pandas' read would need more)
    except Exception:
        return None  # (pandas' read then says what is wrong with the file)
    if arrays is None:
        return None
    try:
        digest = pending[1].result()
    except Exception:
        digest = fingerprint(path)  # (again here: an OSError is reported with its cause)
    return *arrays, digest


def _plain_numbers(series) -> bool:
    """A column of plain numpy numbers (float, int, unsigned; not bool, not pandas' nullable types)."""
    return isinstance(series.dtype, np.dtype) and series.dtype.kind in "fiu"


# Rows per block when frame_to_arrays fills X (2048 x 32 float64: 512 KiB, within a core's cache).
FILL_ROWS = 2048


def _fill(columns: list, d: int, has_target: bool):
    """(X (n, d) float64 row-major, y (n,) float64 or None) from the feature columns and the target's."""
    n = len(columns[0]) if columns else 0
    X = np.empty((n, d), dtype=np.float64)
    y = np.empty(n, dtype=np.float64) if has_target else None
    if has_target:
        y[:] = columns[d]
    features = columns[:d]
    # Into the row-major X a block of rows at a time: writing whole columns strides through all
    # of X once per column (0.69 s for 1,000,000 x 32; by blocks that stay in cache, 0.14 s).
    for i in range(0, n, FILL_ROWS):
        block = X[i : i + FILL_ROWS]
        for j, col in enumerate(features):
            block[:, j] = col[i : i + FILL_ROWS]
    return X, y


# ---------------------------------------------------------------- entry points


def load_dataset(cfg: Config) -> Dataset:
    """The rows of an experiment: read and checked, or generated from the seed."""
    dc: DataConfig = cfg.data
    if dc.synthetic is not None:
        select_synthetic_columns(dc.synthetic, dc.target, dc.features)
        ds = _synthetic(dc.synthetic, cfg.seed)
        ds.source["fingerprint"] = tensor_fingerprint(ds.X, ds.y)
        return ds
    path = cfg.resolved_data_path()
    sep = dc.sep or (sniff_sep(path) if path.is_file() and not is_parquet(path) else ",")
    if sep == dc.decimal:
        raise DataError(f"{path}: its fields are separated by {sep!r}, which data.decimal says is the decimal mark",
                        hint="a file with decimal commas separates its fields with another character, e.g. ';' (data.sep)")
    columns = read_columns(path, sep)
    check_weights_column(columns, dc.weights, path, [])
    exclude = [*(dc.exclude or ()), dc.weights] if dc.weights is not None else dc.exclude  # (a weight is no feature)
    feats = select_columns(columns, dc.target, dc.features, path, exclude)
    check_weights_column(columns, dc.weights, path, feats)
    formula = getattr(cfg.model, "formula", None) if cfg.model.kind == "linear" else None  # (data/wilkinson.py)
    plain = dc.decimal == "." and not formula and dc.weights is None
    small = _small_csv_arrays(path, feats, dc.target, sep) if plain else None
    # Formula models (y = f(x; p)) read numeric columns by their own names: no encoding.
    encode = cfg.model.kind != "formula"
    encoding, kept, w = Encoding.numeric(feats), None, None
    fast = _plain_parquet(path, feats, dc.target, encode) if plain and not dc.reference and is_parquet(path) else None
    if fast is None:
        arrow.drop()  # (a read the command line started that this load does not use)
    if small is not None:
        (X, y), notes = small, []
        digest = fingerprint(path)
    elif fast is not None:
        (X, y, digest), notes = fast, []
    else:
        # The file's digest on another thread while it is parsed (hashlib lets go of the GIL for
        # large buffers, and so do pyarrow and pandas' C parser): 0.2 s of a 250 MB file's load.

        # The rows' field counts too (pandas would pad a short row and take a long one's fields for an index).
        with ThreadPoolExecutor(2) as pool:
            pending = pool.submit(fingerprint, path)
            shape = pool.submit(check_csv_shape, path, sep) if not is_parquet(path) else None
            try:
                frame = read_frame(path, feats + [dc.target] + ([dc.weights] if dc.weights else []), sep, dc.decimal)
            finally:
                if shape is not None:
                    shape.result()  # (a ragged row is the true cause of a parse error too)
            if len(frame) == 0:
                raise DataError(f"{path}: the file has a header but no rows", hint="add the data rows below the header")
            first_line = 1 if is_parquet(path) else 2
            w = table_weights(frame, len(frame), dc.weights, dc.weights_are, path, first_line)
            if encode:
                encoding = fit_wilkinson(frame, formula, path) if formula else fit_encoding(frame, feats, dc.reference, path)
                if not encoding.is_numeric:
                    coded = encoding.apply(frame, path, 1 if is_parquet(path) else 2)
                    coded[dc.target] = frame[dc.target]
                    frame = coded
            kept = frame[[*encoding.keys, dc.target]].notna().all(axis=1).to_numpy() if dc.dropna else None
            X, y, notes = frame_to_arrays(frame, encoding.keys, dc.target, path, dc.dropna)
            del frame
            digest = pending.result()
    if len(X) == 0:
        raise DataError(f"{path}: no rows left after dropping missing values")
    source = {"path": str(path.resolve()), "fingerprint": digest}
    if encode:
        source["encoding"] = encoding.to_json()
    ds = Dataset(torch.from_numpy(X), torch.from_numpy(y), encoding.names if encode else feats, dc.target, source, notes)
    if w is not None:
        ds.w = torch.from_numpy(np.array(w[kept] if kept is not None else w, dtype=np.float64))  # (n_rows,) the kept rows
        source["weights"] = {"column": dc.weights, "are": dc.weights_are}
    if kept is not None and len(X) < len(kept):  # (rows dropped: which file rows are left, for split.csv)
        ds.file_rows, ds.n_file_rows = torch.from_numpy(np.flatnonzero(kept)), len(kept)
    return ds


def load_table(
    path: Path,
    feature_names: list[str],
    target: Optional[str],
    require_target: bool,
    dropna: bool = False,
    encoding: Optional[dict] = None,
    decimal: str = ".",
):
    """Read a data file for eval/predict: the model's feature columns (and the target when present).

    ``encoding``: the checkpoint's record (data.source.encoding), which rebuilds the model's inputs
    from raw columns. Returns (frame of all the file's columns, X float64, y float64 or None, notes).
    With ``dropna`` rows with missing values are left out of X and y (not of the frame), as in training.
    """
    enc = Encoding.from_json(encoding)
    raw = enc.raw_columns if enc is not None else feature_names
    sep = sniff_sep(path) if path.is_file() and not is_parquet(path) else ","
    columns = read_columns(path, sep)
    missing = [f for f in raw if f not in columns]
    if missing:
        shown = ", ".join(repr(c) for c in columns[:30])
        raise DataError(
            f"{path}: the model's feature column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)} not found; columns found: {shown}",
            hint=f"the model was trained on {raw}",
        )
    has_target = target is not None and target in columns
    if require_target and not has_target:
        raise DataError(
            f"{path}: target column {target!r} not found; columns found: {', '.join(repr(c) for c in columns[:30])}",
            hint="eval needs the true values to compare with; predict does not",
        )
    import pandas as pd  # (imported here for start-up time)

    if not is_parquet(path):
        check_csv_shape(path, sep)
    try:
        frame = pd.read_parquet(path) if is_parquet(path) else pd.read_csv(path, index_col=False, sep=sep, decimal=decimal)
    except Exception as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from None
    if len(frame) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    try:
        coded, keys = frame.copy(), feature_names
        if enc is not None:
            keys = enc.keys
            if not enc.is_numeric:
                coded = enc.apply(frame, path, 1 if is_parquet(path) else 2)
                if has_target:
                    coded[target] = frame[target]
        X, y, notes = frame_to_arrays(coded, keys, target if has_target else None, path, dropna)
    except DataError as err:
        if err.hint and "data.dropna" in err.hint:  # that hint is for training configs
            err.hint = "fill in or remove the rows with missing values"
        raise
    if len(X) == 0:
        raise DataError(f"{path}: no rows left after dropping missing values")
    return frame, X, y, notes
