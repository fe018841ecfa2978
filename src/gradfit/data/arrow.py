"""Parquet columns of plain numbers straight from pyarrow, and a read started before torch loads.

A Parquet file whose used columns are numbers (float or integer, no nulls, all finite) needs no
DataFrame: its Arrow columns go straight into the run's arrays (``read_plain``), which spares
pandas' import (0.5 s on 2 cores), the frame's copy of the table and its conversion (0.4 s at
1,000,000 x 32). Any other file (text, categories, dates, missing values, infinities) returns None
and is read through pandas (data/tables.py), with that path's messages.

``prefetch`` starts that read, and the file's digest, on threads from the command line before it
imports torch: pyarrow and hashlib let go of the GIL, so the read overlaps torch's 1.5-2 s import.
This module imports neither torch nor pandas.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

from gradfit.files import fingerprint

_PENDING: dict[tuple, tuple[Future, Future]] = {}
_LOCK = threading.Lock()


def _key(path: Path, columns: list[str]) -> tuple:
    st = path.stat()  # (inode and ctime too: a file replaced by one of the same size and mtime is another file)
    return (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, tuple(columns))


def read_plain(path: Path, feats: list[str], target: str, narrow: bool = True) -> Optional[tuple]:
    """(X (n, d) column-major, y (n,) float64) of the Parquet file's columns ``feats`` and ``target``
    when each is plain finite numbers, else None. ``narrow``: X is float32 when every feature column is float32
    (each such value is one of float64's: the same numbers in half the memory), else float64."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq  # (imported here for start-up time)

    columns = [*feats, target]
    with pq.ParquetFile(path) as f:  # (not pq.read_table, which imports pandas for a file that pandas wrote)
        table = f.read(columns=columns, use_threads=True)
    arrays = []
    for name in columns:
        col = table.column(name)
        t = col.type
        if col.null_count or not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            return None  # (missing values, text, categories, dates, booleans: pandas' path and its messages)
        a = _numbers(col)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return None  # (NaN is a missing value there, inf an error with its row)
        arrays.append(a)
    if table.num_rows == 0:
        return None
    d = len(feats)
    dtype = np.float32 if narrow and all(a.dtype == np.float32 for a in arrays[:d]) else np.float64
    # X column by column: a copy of each column as it is (one GIL-free copy each, where a row-major
    # X takes thousands of small ones, each waiting for the GIL while torch is imported meanwhile).
    X = np.empty((d, table.num_rows), dtype=dtype)
    for j, a in enumerate(arrays[:d]):
        X[j] = a
    del table
    return X.T, arrays[d].astype(np.float64)  # ((n, d) column-major: the same rows, every layout reads them)


# Arrow's names of the number types whose numpy name differs (the integers' are the same).
_NUMPY_NAMES = {"halffloat": "float16", "float": "float32", "double": "float64"}


def _numbers(col):
    """A chunked Arrow column of numbers without nulls as a numpy array: its chunks' data buffers as
    they are (one chunk: no copy). Arrow's own ``to_numpy`` would import pandas (0.5 s)."""
    import numpy as np

    dtype = np.dtype(_NUMPY_NAMES.get(str(col.type), str(col.type)))
    parts = [np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c), offset=c.offset * dtype.itemsize)
             for c in col.chunks if len(c)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, dtype)


def _run(fn, *args) -> Future:
    done: Future = Future()

    def work():
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # (the read in the run itself says what went wrong)
            done.set_exception(exc)

    threading.Thread(target=work, daemon=True, name="gradfit-prefetch-parquet").start()
    return done


def prefetch(path: Path, feats: list[str], target: str) -> None:
    """Start ``read_plain`` of the Parquet file ``path`` and its digest on threads (see the module's text)."""
    try:
        key = _key(path, [*feats, target])
    except OSError:
        return
    with _LOCK:
        if key not in _PENDING:
            _PENDING[key] = (_run(read_plain, path, feats, target), _run(fingerprint, path))


def take(path: Path, columns: list[str]) -> Optional[tuple[Future, Future]]:
    """The (columns, digest) futures of a prefetch of exactly this file and these columns, once; else None.
    Any other prefetch is dropped (one read is prefetched, for the run's first load)."""
    try:
        key = _key(path, columns)
    except OSError:
        key = None
    with _LOCK:
        found = _PENDING.pop(key, None)
        _PENDING.clear()
    return found


def drop() -> None:
    """Forget any prefetch (its threads finish; their results are freed)."""
    with _LOCK:
        _PENDING.clear()


def prefetch_config(cfg) -> None:
    """``prefetch`` the data of a config whose load takes the plain Parquet path (data/tables.py's
    ``load_dataset``): one process, not streamed, no weights, formula or reference levels. Nothing is
    reported here: a file or column the run cannot use is reported by the run's own read."""
    import os  # (imported here for start-up time)

    from gradfit.config.resources import check_memory  # (imported here for start-up time)
    from gradfit.data.columns import is_parquet, read_columns, select_columns

    dc = cfg.data
    if (dc.path is None or dc.streaming or dc.weights is not None or dc.reference or dc.decimal != "."
            or cfg.model.kind == "formula" or getattr(cfg.model, "formula", None)
            or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1):
        return
    try:
        check_memory(cfg)  # (data too large for the machine is refused by the run, in words, before any read)
        path = cfg.resolved_data_path()
        if not is_parquet(path):
            return
        feats = select_columns(read_columns(path), dc.target, dc.features, path, dc.exclude)
        prefetch(path, feats, dc.target)
    except Exception:
        return
