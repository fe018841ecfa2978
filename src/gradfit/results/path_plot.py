"""The regularization path of a sweep over model.penalty.l1 or .l2: path.csv and path.png in the sweep directory.

Coefficients are in original units, as each run's coefficients.json reports them (the penalty acts on
the standardized terms; a linear model's coefficient is its standardized one divided by its feature's
population SD, so an L1 zero stays an exact zero; a polynomial's power-basis coefficients mix the
standardized Legendre terms, so they have no exact zeros). With cross-validation each value is the mean
over the folds' runs. ``path.csv``: the penalty, the sweep's metric, the intercept and one column per
coefficient, one row per penalty value, ascending. ``path.png``: each coefficient against the penalty on
a log axis (a penalty of 0 is in the CSV, not on the log axis).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

from gradfit.errors import GradfitError
from gradfit.results.plots import _figure, _power_of_ten, _save
from gradfit.results.rundir import write_text

PATH_CSV = "path.csv"
PATH_PNG = "path.png"
# Coefficients named in the figure's legend; beyond this many the lines go unlabelled.
LEGEND_MAX = 12


def run_coefficients(d: Path, folds: bool) -> Optional[tuple[float, dict]]:
    """(intercept, {name: coefficient}) of a run directory, or the mean over a cv directory's folds; None if absent."""
    dirs = [d]
    if folds:
        try:
            doc = json.loads((d / "cv.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        dirs = [d / f["run_dir"] for f in doc.get("folds", [])]
    found = []
    for run in dirs:
        try:
            doc = json.loads((run / "coefficients.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc.get("coefficients"), dict):
            return None
        found.append((float(doc.get("intercept") or 0.0), {k: float(v) for k, v in doc["coefficients"].items()}))
    if not found:
        return None
    names = list(found[0][1])
    mean = {k: sum(c[k] for _, c in found) / len(found) for k in names}
    return sum(b for b, _ in found) / len(found), mean


def regularization_path(out: Path, key: str, runs: list[tuple[float, Path, Optional[float]]], metric: str,
                        folds: bool) -> Path:
    """Write ``out/path.csv`` and ``out/path.png`` from (penalty, run directory, score) triples; returns the CSV."""
    rows = []
    for value, d, score in sorted(runs, key=lambda r: r[0]):
        coef = run_coefficients(d, folds)
        if coef is None:
            raise GradfitError(f"{d} has no coefficients.json: the regularization path needs every run's coefficients",
                               hint="run the same sweep again: unfinished runs are trained")
        rows.append((value, score, *coef))
    names = list(rows[0][3])
    penalty = key.rsplit(".", 1)[-1]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([penalty, metric, "intercept", *names])
    for value, score, b0, c in rows:
        w.writerow([repr(value), "" if score is None else repr(float(score)), repr(b0), *(repr(c.get(k, math.nan)) for k in names)])
    write_text(out / PATH_CSV, buf.getvalue())
    shown = [r for r in rows if r[0] > 0]
    _draw_path(out / PATH_PNG, [r[0] for r in shown], {k: [r[3].get(k, math.nan) for r in shown] for k in names},
               key, folds)
    return out / PATH_CSV


def _draw_path(path: Path, x: list[float], lines: dict[str, list[float]], key: str, folds: bool) -> None:
    """Each coefficient against the penalty, log x axis."""
    from matplotlib.ticker import FuncFormatter  # (imported here for start-up time)

    fig, ax = _figure((7, 4.5))
    for i, (name, ys) in enumerate(lines.items()):
        ax.plot(x, ys, marker="o", ms=3, lw=1.5, color=f"C{i % 10}", label=name if len(lines) <= LEGEND_MAX else None)
    ax.axhline(0, color="k", lw=0.8)
    if x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    ax.set_xlabel(f"{key} (log scale)")
    ax.set_ylabel("coefficient (original units" + (", mean over folds)" if folds else ")"))
    ax.set_title("Regularization path")
    if lines and len(lines) <= LEGEND_MAX:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    _save(fig, path)
