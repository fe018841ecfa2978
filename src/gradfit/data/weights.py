"""Observation weights (data.weights): a column of the table read into per-row weights of the loss.

``data.weights_are: weights`` (the default): the column holds the weights w themselves, as
statsmodels' ``WLS(weights=w)`` and scikit-learn's ``sample_weight`` take them. ``sigma``: it
holds each row's measurement standard deviation, and w = 1 / sigma^2, as
``scipy.optimize.curve_fit(sigma=...)`` weighs its residuals. A weight of 0 is allowed (the
row contributes nothing); a negative, missing, infinite or non-numeric one is an error that
names its row and column, and so is a set of rows whose weights are all 0.
"""

from __future__ import annotations

from typing import Optional

from gradfit.errors import DataError

# (numpy and pandas are imported in the functions that read rows: gradfit check imports this module)


def weights_from_column(values, column: str, are: str, source, first_line: int):
    """(n,) float64 weights of a frame's column (``first_line``: the file line of its first row)."""
    import numpy as np  # (imported here for start-up time)
    import pandas as pd  # (imported here for start-up time)

    s = pd.Series(values)
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    what = "measurement standard deviations (data.weights_are: sigma)" if are == "sigma" else "weights"

    def refuse(mask, why: str, fix: str) -> None:
        i = int(np.argmax(mask))
        raise DataError(
            f"{source}: the {what} column {column!r} (data.weights) {why} at row {i + first_line} "
            f"({s.iloc[i]!r}; {int(mask.sum())} such row{'s' if mask.sum() > 1 else ''})",
            hint=fix,
        )

    missing = np.isnan(num)
    if missing.any():
        refuse(missing, "holds a missing or non-numeric value", "give every row a weight (0 leaves a row out of the fit)")
    if not np.isfinite(num).all():
        refuse(~np.isfinite(num), "holds an infinite value", "give every row a finite weight")
    if are == "sigma":
        if (num <= 0).any():
            refuse(num <= 0, "holds a standard deviation that is not positive",
                   "a measurement's sigma is > 0; leave such rows out, or give weights (data.weights_are: weights) with 0")
        return 1.0 / (num * num)
    if (num < 0).any():
        refuse(num < 0, "holds a negative weight", "weights are >= 0 (0 leaves a row out of the fit)")
    return num


def check_weights_column(columns: list[str], column: Optional[str], path, features: list[str]) -> None:
    """data.weights must name a column of the file, and not one of the features (a formula's inputs too)."""
    if column is not None and column in features:
        raise DataError(f"{path}: the weights column {column!r} (data.weights) is also a feature of the model",
                        hint="a weight is not an input: leave it out of the features (or of model.formula)")
    if column is not None and column not in columns:
        shown = ", ".join(repr(c) for c in columns[:30]) + (" ..." if len(columns) > 30 else "")
        raise DataError(f"{path}: the weights column {column!r} (data.weights) is not a column; columns found: {shown}",
                        hint="set data.weights to the column holding each row's weight, or remove it")


def check_total(w, source, column: str, which: str = "training") -> None:
    """A set of rows whose weights are all 0 has no loss to fit or measure: an error."""
    if w is not None and len(w) and not float(w.sum()) > 0:
        raise DataError(
            f"{source}: every {which + ' ' if which else ''}row has weight 0 in column {column!r} (data.weights); "
            f"nothing is left to {'measure' if which == 'validation' else 'fit'}",
            hint="give some rows a positive weight" + (" (or draw another split: seed, data.split.val)" if which == "validation" else ""),
        )


def table_weights(frame, n_rows: int, column: Optional[str], are: str, source, first_line: int, kept=None):
    """The weights of the rows a table kept (``kept``: mask of the frame's rows left after data.dropna,
    None for all), or None when the run has no weights column or the file lacks it (predict needs none)."""
    import numpy as np  # (imported here for start-up time)

    if column is None or column not in frame.columns:
        return None
    w = weights_from_column(frame[column], column, are, source, first_line)
    if kept is not None:
        w = w[kept]
    if len(w) != n_rows:  # (the table's rows and its weights are read from the same frame)
        raise DataError(f"{source}: {len(w)} weights for {n_rows} rows", hint="report this: the rows and weights disagree")
    check_total(w, source, column, "")
    return np.array(w, dtype=np.float64)  # (a writable copy: torch.from_numpy takes it)
