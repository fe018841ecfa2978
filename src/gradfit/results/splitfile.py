"""split.csv: which set each row of the data file was in (train, val, test, or dropped for missing values).

``row,set``: the 0-based row of the data file (the header not counted, blank lines skipped as
pandas skips them) and its set, one line per row. Beyond PARQUET_ROWS rows it is split.parquet
(the same two columns). A fit can be reproduced elsewhere from it, e.g. in statsmodels:
``d = pd.read_csv(DATA); s = pd.read_csv(RUN / "split.csv"); smf.ols(F, d[s.set.eq("train").to_numpy()])``.
"""

from __future__ import annotations

from pathlib import Path

from gradfit.data.split import SET_NAMES
from gradfit.files import atomic_path, write_bytes

SPLIT_CSV, SPLIT_PARQUET = "split.csv", "split.parquet"
PARQUET_ROWS = 1_000_000  # (a CSV line per row of 10 million rows is 150 MB; Parquet keeps it a few MB)


def write_split(run_dir: Path, codes) -> Path:
    """Write codes ((n_file_rows,) uint8, indices into SET_NAMES) as split.csv, or split.parquet when large."""
    codes = codes.numpy() if hasattr(codes, "numpy") else codes
    if len(codes) > PARQUET_ROWS:
        import numpy as np  # (imported here for start-up time)
        import pyarrow as pa  # (imported here for start-up time)
        import pyarrow.parquet as pq  # (imported here for start-up time)

        sets = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int8)), pa.array(list(SET_NAMES)))
        table = pa.table({"row": pa.array(np.arange(len(codes), dtype=np.int64)), "set": sets})
        path = run_dir / SPLIT_PARQUET
        with atomic_path(path) as tmp:
            pq.write_table(table, str(tmp))
        return path
    path = run_dir / SPLIT_CSV
    write_bytes(path, split_csv_bytes(codes))
    return path


def split_csv_bytes(codes) -> bytes:
    """split.csv's bytes: ``row,set`` and a line ``i,NAME`` per row, made by numpy: each row's number in
    digits and its ``,NAME\n`` side by side in a grid padded with NULs, which are dropped at the end (a
    line per row formatted in Python took 0.8 s for 1,000,000 rows)."""
    import numpy as np  # (imported here for start-up time)

    codes = np.asarray(codes, dtype=np.int64)
    n = codes.size
    header = b"row,set\n"
    if n == 0:
        return header
    places = len(str(n - 1))
    names = [b"," + name.encode() + b"\n" for name in SET_NAMES]
    wide = max(len(b) for b in names)
    table = np.zeros((len(names), wide), dtype=np.uint8)
    for c, name in enumerate(names):
        table[c, : len(name)] = np.frombuffer(name, dtype=np.uint8)
    grid = np.empty((n, places + wide), dtype=np.uint8)
    value = np.arange(n, dtype=np.int64)
    for k in range(places):  # the digits right-aligned; the places left of a number's first digit stay NUL
        col = grid[:, places - 1 - k]
        np.add(value % 10, 48, out=col, casting="unsafe")
        if k:
            col[: min(n, 10**k)] = 0
        value //= 10
    grid[:, places:] = table[codes]
    return header + grid[grid != 0].tobytes()


def read_split(run_dir: Path):
    """The run's split as a pandas DataFrame (row, set), or None when the run directory has none."""
    import pandas as pd  # (imported here for start-up time)

    if (run_dir / SPLIT_CSV).is_file():
        return pd.read_csv(run_dir / SPLIT_CSV)
    if (run_dir / SPLIT_PARQUET).is_file():
        frame = pd.read_parquet(run_dir / SPLIT_PARQUET)
        frame["set"] = frame["set"].astype(str)
        return frame
    return None


def recorded_split(run_dir: Path, ds):
    """The run's Split of ds's rows as split.csv records it, or None (no file, or one of another row count)."""
    import torch  # (imported here for start-up time)

    from gradfit.data.split import Split  # (imported here for start-up time)

    frame = read_split(run_dir)
    n_file = ds.n_file_rows if ds.file_rows is not None else ds.n_rows
    if frame is None or len(frame) != n_file or list(frame.columns) != ["row", "set"]:
        return None
    sets = frame["set"].astype(str).to_numpy()
    if ds.file_rows is not None:
        sets = sets[ds.file_rows.numpy()]
    rows = [torch.from_numpy((sets == name).nonzero()[0]).to(torch.long) for name in SET_NAMES[:3]]
    return Split(*rows)
