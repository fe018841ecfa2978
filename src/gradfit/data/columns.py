"""Column names of a CSV or Parquet file, and the target/feature check, without torch.

Split from gradfit.data (which re-exports these names) so that ``gradfit check`` can
check a config's data file without importing torch.
"""

from __future__ import annotations

import csv
from pathlib import Path

from gradfit.errors import DataError
from gradfit.files import check_regular_file, os_cause


def read_columns(path: Path, sep: str | None = None) -> list[str]:
    """The column names of a CSV or Parquet file, without reading its rows (a CSV's separator sniffed unless given)."""
    if not path.exists():
        raise DataError(f"data file not found: {path}", hint="check data.path (relative paths start at the config file)")
    if path.is_dir():
        raise DataError(f"data path {path} is a directory, not a .csv or .parquet file")
    # A FIFO would block the read forever and a device (/dev/zero, also behind a symlink) never ends.
    check_regular_file(path, "data file", DataError)
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq  # (imported here for start-up time)

            return _unique(path, [str(c) for c in pq.read_schema(path).names])
        sep = sep or sniff_sep(path)
        small = _small_csv(path, sep)
        if small is not None:
            return list(small[0])
        import pandas as pd  # (imported here for start-up time)

        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # (pandas renames a repeat x to x.1)
            _unique(path, next(csv.reader(f, delimiter=sep), []))
        return [str(c) for c in pd.read_csv(path, nrows=0, sep=sep).columns]
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        if type(exc).__name__ == "EmptyDataError":
            raise DataError(
                f"{path}: the file is empty (no header, no rows)",
                hint="a CSV needs a header line with the column names, then one line per row",
            ) from None
        raise DataError(f"{path}: cannot read it as {'Parquet' if is_parquet(path) else 'CSV'}: {exc}") from None


def _unique(path: Path, names: list[str]) -> list[str]:
    """``names``, refused (naming the repeats) when a column name occurs twice: which one is meant is unknowable."""
    seen, repeated = set(), []
    for n in names:
        if n in seen and n not in repeated:
            repeated.append(n)
        seen.add(n)
    if repeated:
        raise DataError(
            f"{path}: the column name{'s' if len(repeated) > 1 else ''} {', '.join(map(repr, repeated))} "
            f"occur{'' if len(repeated) > 1 else 's'} more than once in the header ({len(names)} columns)",
            hint="give every column its own name",
        )
    return names


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


# The separators sniff_sep tells apart, in the order preferred when several split every line alike.
SEPARATORS = (",", ";", "\t", "|")
SNIFF_BYTES = 1 << 16


def _count_outside_quotes(line: str, sep: str) -> int:
    if '"' not in line:
        return line.count(sep)
    n, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            n += 1
    return n


def sniff_sep(path: Path) -> str:
    """A CSV's field separator: of , ; tab |, the one found the same number of times on the header and the first lines.

    Several such: the one splitting the header most (a decimal comma is no separator in a
    semicolon file: its header holds no comma). None: the one most in the header, else ','.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return ","
    lines = [ln for ln in head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines() if ln.strip()]
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # (the last may be cut short)
    lines = lines[:50]
    if not lines:
        return ","
    counts = {sep: [_count_outside_quotes(ln, sep) for ln in lines] for sep in SEPARATORS}
    alike = [sep for sep, c in counts.items() if c[0] > 0 and all(k == c[0] for k in c)]
    pool = alike or [sep for sep, c in counts.items() if c[0] > 0]
    if not pool:
        return ","
    return max(pool, key=lambda sep: (counts[sep][0], -SEPARATORS.index(sep)))


# A CSV this small whose cells are all plain decimal numbers is read without pandas (whose
# import takes longer than the rest of a small run's loading); anything else goes to pandas.
SMALL_CSV_BYTES = 1 << 20

def _small_csv(path: Path, sep: str = ","):
    """(header, rows of str) of a small, clean CSV file (unique non-empty names, no ragged rows), else None."""
    try:
        if path.suffix.lower() != ".csv" or path.stat().st_size > SMALL_CSV_BYTES:
            return None
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, delimiter=sep) if r]  # pandas skips blank lines too
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows:
        return None
    header = rows[0]
    if len(set(header)) != len(header) or not all(header) or any(len(r) != len(header) for r in rows):
        return None
    return header, rows[1:]


# Bytes read at a time by check_csv_shape (numpy counts the separators of each line of a block).
SHAPE_BLOCK_BYTES = 1 << 23


def check_csv_shape(path: Path, sep: str = ",") -> None:
    """Every non-blank line of a CSV has as many fields as its header, else a DataError naming the line.

    (pandas fills a short row with missing values and takes a long one's extra fields for an index.)
    A file without quotes is checked by counting commas, a block at a time; one with quotes by the csv module.
    """
    import numpy as np  # (imported here for start-up time)

    try:
        with open(path, "rb") as f:
            line, expected, rest = 0, None, b""
            while True:
                block = f.read(SHAPE_BLOCK_BYTES)
                if b'"' in block:
                    return _check_quoted_csv_shape(path, sep)
                data = rest + block
                if not block:
                    data += b"\n" if data else b""
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    if not block:
                        return
                    rest = data
                    continue
                buf, rest = np.frombuffer(data, np.uint8, cut), data[cut:]
                ends = np.flatnonzero(buf == 10)
                starts = np.concatenate(([0], ends[:-1] + 1))
                at = np.flatnonzero(buf == ord(sep))  # the separators' positions: a line's between its start and end
                commas = np.searchsorted(at, ends) - np.searchsorted(at, starts)
                lengths = ends - starts - (buf[np.maximum(ends - 1, 0)] == 13)
                keep = np.flatnonzero(lengths > 0)  # blank lines are skipped, as pandas does
                if expected is None and len(keep):
                    expected = int(commas[keep[0]]) + 1
                bad = keep[commas[keep] + 1 != expected]
                if len(bad):
                    _ragged(path, line + int(bad[0]) + 1, int(commas[bad[0]]) + 1, expected)
                line += len(ends)
                if not block:
                    return
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {os_cause(exc)}") from None


def _check_quoted_csv_shape(path: Path, sep: str = ",") -> None:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=sep)
        expected = None
        try:
            for row in reader:
                if not row:
                    continue
                if expected is None:
                    expected = len(row)
                elif len(row) != expected:
                    _ragged(path, reader.line_num, len(row), expected)
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num} cannot be read as CSV: {exc}") from None


def _ragged(path: Path, line: int, n: int, expected: int):
    raise DataError(
        f"{path}: line {line} has {n} field{'s' if n != 1 else ''} where the header has {expected}",
        hint="every row needs one value per column (a comma inside a number, as in 1,000, splits it; quote such values)",
    )


def select_columns(columns: list[str], target: str, features: list[str] | None, path, exclude=None) -> list[str]:
    """Check that the target and features exist; return the feature names (default: all but target and exclude)."""
    shown = ", ".join(repr(c) for c in columns[:30]) + (" ..." if len(columns) > 30 else "")
    if target not in columns:
        raise DataError(
            f"{path}: target column {target!r} not found; columns found: {shown}",
            hint="set data.target to one of them",
        )
    if features is None:
        unknown = [c for c in exclude or () if c not in columns]
        if unknown:
            raise DataError(
                f"{path}: data.exclude names {', '.join(map(repr, unknown))}, not a column; columns found: {shown}",
                hint="fix the name in data.exclude",
            )
        feats = [c for c in columns if c != target and c not in (exclude or ())]
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
