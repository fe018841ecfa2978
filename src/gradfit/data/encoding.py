"""Column encoding: a table's raw columns -> the numeric inputs of the model, recorded for predict.

Numbers stay as they are; text, boolean and pandas category columns are treatment-coded (one
0/1 indicator per level but the reference, named ``COLUMN[T.LEVEL]`` as patsy and statsmodels
name them); date and datetime columns become days since 1970-01-01 UTC, named ``COLUMN[days]``.
A column name holding a character that term names use as syntax (``*`` and ``^`` join factors
and powers, ``[...]`` marks an encoded column, a backtick quotes) is quoted with backticks, as
formulaic quotes names: ``a*b`` -> ```a*b```, so ```a*b`^2`` and ```a*b`*a`` read one way only.
Other names (spaces, accents, ``m³/s``, ``2010``) stay as they are.
The ``Encoding`` is stored in the checkpoint (``data.source.encoding``): predict rebuilds the
same columns from raw rows without the training data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from gradfit.errors import DataError

DAYS = "days"  # the unit of a date column's number: days since 1970-01-01 00:00 UTC
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?")
_INDICATOR = re.compile(r"(?P<col>`(?:[^`\\]|\\.)*`|[^`\[\]]+)\[T\.(?P<level>.*)\]")


_SYNTAX = frozenset("*^`[]")


def quote(column: str) -> str:
    """A column name as it appears in term names: in backticks when it holds * ^ [ ] or a backtick."""
    if column and not _SYNTAX.intersection(column):
        return column
    return "`" + column.replace("\\", "\\\\").replace("`", "\\`") + "`"


def indicator_column(name: str) -> Optional[str]:
    """The column an indicator term name ``COLUMN[T.LEVEL]`` codes, or None for any other name."""
    m = _INDICATOR.fullmatch(name)
    return m.group("col") if m else None


@dataclass
class ColumnCode:
    """How one raw column becomes model inputs: kind number, category (levels, the reference first) or date."""

    column: str
    kind: str
    levels: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        q = quote(self.column)
        if self.kind == "category":
            return [f"{q}[T.{lv}]" for lv in self.levels[1:]]
        if self.kind == "date":
            return [f"{q}[{DAYS}]"]
        return [q]

    @property
    def keys(self) -> list[str]:
        """The columns of the encoded frame (a number keeps its raw name, so messages name the file's column)."""
        return [self.column] if self.kind == "number" else self.names


@dataclass
class Encoding:
    """The raw columns a model reads and how each becomes its numeric inputs."""

    columns: list[ColumnCode]

    @classmethod
    def numeric(cls, columns: list[str]) -> "Encoding":
        return cls([ColumnCode(c, "number") for c in columns])

    @property
    def raw_columns(self) -> list[str]:
        return [c.column for c in self.columns]

    @property
    def names(self) -> list[str]:
        """The model's feature names, in design order."""
        return [n for c in self.columns for n in c.names]

    @property
    def keys(self) -> list[str]:
        return [k for c in self.columns for k in c.keys]

    @property
    def is_numeric(self) -> bool:
        return all(c.kind == "number" for c in self.columns)

    def to_json(self) -> dict:
        return {"columns": [{"column": c.column, "kind": c.kind, "levels": list(c.levels)} for c in self.columns]}

    @classmethod
    def from_json(cls, rec: Optional[dict]) -> Optional["Encoding"]:
        if not rec:
            return None
        if "formula" in rec:  # a linear model's R-style formula (data/wilkinson.py)
            from gradfit.data.wilkinson import WilkinsonEncoding

            return WilkinsonEncoding.from_json(rec)
        return cls([ColumnCode(str(c["column"]), str(c["kind"]), [str(v) for v in c.get("levels", [])]) for c in rec["columns"]])

    def apply(self, frame, source, first_line: int = 2):
        """A frame of the encoded columns (``keys``), float64 where encoded; numbers as read (checked later)."""
        import pandas as pd  # (imported here for start-up time)

        out = {}
        for c in self.columns:
            s = frame[c.column]
            if c.kind == "number":
                out[c.column] = s
            elif c.kind == "date":
                out[c.names[0]] = _days(s, c.column, source, first_line)
            else:
                text = _as_text(s)
                known = text.isin(c.levels) | text.isna()
                if not known.all():
                    i = int(np.argmin(known.to_numpy()))
                    raise DataError(
                        f"{source}: column {c.column!r} holds the level {text.iloc[i]!r} at row {i + first_line}, "
                        f"which the model was not trained on (its levels: {', '.join(map(repr, c.levels[:20]))})",
                        hint="predict only rows whose levels were in the training data, or retrain with them",
                    )
                missing = text.isna().to_numpy()
                for lv, name in zip(c.levels[1:], c.names):
                    col = (text == lv).to_numpy(dtype=np.float64)
                    col[missing] = np.nan
                    out[name] = col
        return pd.DataFrame(out, index=frame.index)


def _as_text(s):
    """A column's values as text (True -> 'True', a category's labels), missing values kept missing."""
    text = s.astype("object").map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
    return text.where(s.notna(), None)


def _is_date_column(s) -> bool:
    import datetime

    import pandas as pd  # (imported here for start-up time)

    if pd.api.types.is_datetime64_any_dtype(s):
        return True
    if s.dtype != object and not pd.api.types.is_string_dtype(s):
        return False
    v = s.dropna()
    if not len(v):
        return False
    if all(isinstance(x, (datetime.date, pd.Timestamp)) for x in v):
        return True
    return all(isinstance(x, str) and _ISO_DATE.fullmatch(x.strip()) for x in v)


def _days(s, column: str, source, first_line: int):
    """Days since 1970-01-01 UTC, float64 (NaN where missing)."""
    import pandas as pd  # (imported here for start-up time)

    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        raise DataError(f"{source}: column {column!r} holds numbers where the model was trained on dates",
                        hint="give the dates as ISO dates (2024-01-31) or timestamps")
    try:
        text = s.dtype == object or pd.api.types.is_string_dtype(s)
        t = pd.to_datetime(s, utc=True, format="ISO8601") if text else pd.to_datetime(s, utc=True)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: column {column!r} cannot be read as dates: {exc}",
                        hint="write dates as ISO dates, e.g. 2024-01-31 or 2024-01-31T12:00:00") from None
    return ((t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def column_kind(s) -> str:
    """number, category or date, from a column's values (a mostly numeric text column stays a number, refused later)."""
    import pandas as pd  # (imported here for start-up time)

    if pd.api.types.is_bool_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        return "category"
    if _is_date_column(s):
        return "date"
    if pd.api.types.is_numeric_dtype(s):
        return "number"
    v = s.dropna()
    if len(v) and all(isinstance(x, (bool, np.bool_)) for x in v):
        return "category"
    parsed = pd.to_numeric(v, errors="coerce").notna()
    return "number" if len(v) == 0 or parsed.mean() >= 0.5 else "category"


def fit_encoding(frame, columns: list[str], reference: dict[str, str], source) -> Encoding:
    """The encoding of a training frame's feature columns: kinds from the values, levels sorted."""
    codes = []
    for c in columns:
        s = frame[c]
        kind = column_kind(s)
        levels: list[str] = []
        if kind == "category":
            text = _as_text(s)
            found = sorted(set(text.dropna()))
            if len(found) < 2:
                raise DataError(
                    f"{source}: column {c!r} has {'only the level ' + repr(found[0]) if found else 'no values'}; "
                    "a categorical feature needs two levels or more",
                    hint="leave the column out (data.exclude)",
                )
            if len(found) == len(text) > 2:
                raise DataError(
                    f"{source}: column {c!r} is text with a different value on every row ({found[0]!r}, ...): "
                    "an identifier, not a category",
                    hint="leave it out with data.exclude",
                )
            ref = reference.get(c, found[0])
            if ref not in found:
                raise DataError(
                    f"data.reference names the level {ref!r} for column {c!r}, which holds {', '.join(map(repr, found[:20]))}",
                    hint="name one of its levels",
                )
            levels = [ref] + [lv for lv in found if lv != ref]
        codes.append(ColumnCode(c, kind, levels))
    stray = [c for c in reference if c not in {k.column for k in codes if k.kind == "category"}]
    if stray:
        raise DataError(
            f"data.reference names {', '.join(map(repr, stray))}, not a text, boolean or category feature column",
            hint="data.reference sets the reference level of categorical features only",
        )
    enc = Encoding(codes)
    taken = set(enc.names)
    clash = [c for c in frame.columns if c not in columns and str(c) in taken]
    if clash or len(taken) != len(enc.names):
        raise DataError(f"{source}: the encoded column names {sorted(taken)[:10]} are not unique",
                        hint="rename the columns whose names look like encoded ones (COLUMN[T.LEVEL])")
    return enc
