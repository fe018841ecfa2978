"""Column names of a CSV or Parquet file, and the target/feature check, without torch.

Split from gradfit.data (which re-exports these names) so that ``gradfit check`` can
check a config's data file without importing torch.
"""

from __future__ import annotations

import csv
from pathlib import Path

from gradfit.errors import DataError


def read_columns(path: Path) -> list[str]:
    """The column names of a CSV or Parquet file, without reading its rows."""
    if not path.exists():
        raise DataError(f"data file not found: {path}", hint="check data.path (relative paths start at the config file)")
    if path.is_dir():
        raise DataError(f"data path {path} is a directory, not a .csv or .parquet file")
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq  # (imported here for start-up time)

            return list(pq.read_schema(path).names)
        small = _small_csv(path)
        if small is not None:
            return list(small[0])
        import pandas as pd  # (imported here for start-up time)

        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        if type(exc).__name__ == "EmptyDataError":
            raise DataError(
                f"{path}: the file is empty (no header, no rows)",
                hint="a CSV needs a header line with the column names, then one line per row",
            ) from None
        raise DataError(f"{path}: cannot read it as {'Parquet' if is_parquet(path) else 'CSV'}: {exc}") from None


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


# A CSV this small whose cells are all plain decimal numbers is read without pandas (whose
# import takes longer than the rest of a small run's loading); anything else goes to pandas.
SMALL_CSV_BYTES = 1 << 20

def _small_csv(path: Path):
    """(header, rows of str) of a small, clean CSV file (unique non-empty names, no ragged rows), else None."""
    try:
        if path.suffix.lower() != ".csv" or path.stat().st_size > SMALL_CSV_BYTES:
            return None
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]  # pandas skips blank lines too
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows:
        return None
    header = rows[0]
    if len(set(header)) != len(header) or not all(header) or any(len(r) != len(header) for r in rows):
        return None
    return header, rows[1:]


def select_columns(columns: list[str], target: str, features: list[str] | None, path) -> list[str]:
    """Check that the target and features exist; return the feature names."""
    shown = ", ".join(repr(c) for c in columns[:30]) + (" ..." if len(columns) > 30 else "")
    if target not in columns:
        raise DataError(
            f"{path}: target column {target!r} not found; columns found: {shown}",
            hint="set data.target to one of them",
        )
    if features is None:
        feats = [c for c in columns if c != target]
        if not feats:
            raise DataError(f"{path}: no feature columns: the file has only the target column {target!r}")
        return feats
    missing = [f for f in features if f not in columns]
    if missing:
        raise DataError(
            f"{path}: feature column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
            f"not found; columns found: {shown}",
            hint="fix data.features, or leave it out to use every column but the target",
        )
    return list(features)


def synthetic_columns(spec) -> list[str]:
    """The feature names of synthetic data (its target is 'y'): x (or x1, x2, ...) for linear data."""
    if spec.kind == "polynomial":
        return [spec.feature]
    return ["x"] if spec.n_features == 1 else [f"x{i + 1}" for i in range(spec.n_features)]


def select_synthetic_columns(spec, target: str, features: list[str] | None) -> list[str]:
    """Check data.target/data.features against synthetic data's columns; return the feature names."""
    names = synthetic_columns(spec)
    if target != "y" or (features and features != names):
        raise DataError(
            f"synthetic data has features {names} and target 'y'; "
            "remove data.target/data.features or make them match"
        )
    return names
