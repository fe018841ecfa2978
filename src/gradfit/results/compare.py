"""Comparing runs: the run directories under a folder as records, and their sort order.

A run directory counts when it holds both ``metrics.json`` (written last, so its
presence says the run finished; see api.write_run) and ``config.yaml``. A folder
that holds some run files but not both, or whose files cannot be read, is an
incomplete run: it is listed in ``RunListing.skipped``, never in the records.

Sort order (``sort_runs``): best first. ``r2`` sorts high to low; the error
metrics (``loss``, ``mse``, ``rmse``, ``mae``) low to high; ``date`` newest first;
every other key (``name``, ``epochs``, ``seconds``, ...) ascending. ``reverse``
flips the order. Runs that lack the key (no validation split for ``val.r2``) come
last either way, in name order.

Importing this module imports neither torch nor pandas.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gradfit.errors import GradfitError

METRIC_KEYS = ("loss", "mse", "rmse", "mae", "r2")  # as in gradfit.metrics (which imports torch)
SETS = ("train", "val", "test")
RUN_FILES = ("metrics.json", "config.yaml", "history.csv", "coefficients.json", "model.safetensors")
TOP_KEYS = ("name", "model", "loss", "optimizer", "lr", "epochs", "stop_reason", "converged", "seconds", "date")
SORT_KEYS = TOP_KEYS + tuple(f"{s}.{m}" for s in SETS for m in METRIC_KEYS)
HIGHER_IS_BETTER = ("r2",)
MAX_DEPTH = 4  # run directories are looked for this many folders below DIR at most


@dataclass
class RunListing:
    """The finished runs under a folder (one dict each) and the incomplete ones skipped."""

    runs: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # relative paths of incomplete run directories


def list_runs(directory: str | Path) -> RunListing:
    """Every finished run directory under ``directory`` (itself included), as records.

    Record keys: name (path relative to ``directory``, or the folder's own name), path,
    model (kind, plus the degree of a polynomial: ``polynomial(3)``), loss, optimizer,
    lr, epochs, stop_reason, converged, seconds, train/val/test (metric dicts or None),
    date (ISO 8601, local time, when metrics.json was written).
    """
    root = Path(directory)
    if not root.exists():
        raise GradfitError(f"no such directory: {root}", hint="give the folder that holds your run directories (default: runs)")
    if not root.is_dir():
        raise GradfitError(f"{root} is not a directory", hint="give the folder that holds your run directories")
    listing = RunListing()
    for here, dirs, files in _walk(root):
        present = set(files)
        if not present & set(RUN_FILES):
            continue
        name = here.relative_to(root).as_posix() if here != root else (root.resolve().name or str(root))
        record = _record(here, name, present)
        if record is None:
            listing.skipped.append(name)
        else:
            listing.runs.append(record)
        dirs.clear()  # a run directory holds no other runs
    listing.runs.sort(key=lambda r: r["name"])
    listing.skipped.sort()
    return listing


def _walk(root: Path):
    """os.walk, top down, at most MAX_DEPTH folders deep, hidden folders left out, in name order."""
    base = len(root.parts)
    for here, dirs, files in os.walk(root):
        p = Path(here)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if len(p.parts) - base < MAX_DEPTH else []
        yield p, dirs, files


def _record(d: Path, name: str, present: set) -> dict | None:
    """The record of one run directory, or None when it is incomplete or unreadable."""
    if not {"metrics.json", "config.yaml"} <= present:
        return None
    try:
        metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
        mtime = (d / "metrics.json").stat().st_mtime
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(metrics, dict) or not isinstance(config, dict):
        return None
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    kind = model.get("kind")
    if kind == "polynomial" and model.get("degree") is not None:
        kind = f"polynomial({model['degree']})"

    def kind_of(section: str) -> Any:
        value = config.get(section)
        return value.get("kind") if isinstance(value, dict) else None

    return {
        "name": name,
        "path": str(d),
        "model": kind,
        "loss": kind_of("loss"),
        "optimizer": kind_of("optimizer"),
        "lr": metrics.get("lr"),
        "epochs": metrics.get("epochs"),
        "stop_reason": metrics.get("stop_reason"),
        "converged": metrics.get("converged"),
        "seconds": metrics.get("seconds"),
        **{s: metrics.get(s) if isinstance(metrics.get(s), dict) else None for s in SETS},
        "date": _dt.datetime.fromtimestamp(mtime).astimezone().isoformat(timespec="seconds"),
    }


def check_sort_key(key: str) -> str:
    """The key itself when runs can be sorted by it; else GradfitError naming the closest valid key."""
    if key in SORT_KEYS:
        return key
    close = difflib.get_close_matches(key, SORT_KEYS, n=1, cutoff=0.5)
    if not close and key in METRIC_KEYS:
        close = [f"val.{key}"]
    raise GradfitError(
        f"cannot sort by {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
        hint=f"sort keys: {', '.join(TOP_KEYS)}, or SET.METRIC with SET in {'/'.join(SETS)} and METRIC in {'/'.join(METRIC_KEYS)}",
    )


def value_at(record: dict, key: str) -> Any:
    """The value at a dotted path (``val.r2``), or None where the run has none."""
    node: Any = record
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def descending(key: str) -> bool:
    """Whether 'best first' means high to low for this key (r2, date)."""
    return key.split(".")[-1] in HIGHER_IS_BETTER or key == "date"


def sort_runs(records: list[dict], key: str, reverse: bool = False) -> list[dict]:
    """Records sorted by ``key``, best first (see the module docstring); ``reverse`` flips it."""
    check_sort_key(key)
    have = [r for r in records if _comparable(value_at(r, key))]
    missing = [r for r in records if not _comparable(value_at(r, key))]
    have.sort(key=lambda r: r["name"])  # ties keep name order (the sort is stable)
    have.sort(key=lambda r: value_at(r, key), reverse=descending(key) != reverse)
    return have + sorted(missing, key=lambda r: r["name"])


def _comparable(v: Any) -> bool:
    if isinstance(v, float):
        return not math.isnan(v)  # NaN sorts nowhere: treat it as missing
    return v is not None


# ---------------------------------------------------------------- the runs table's cells

SETUP = {"model": "model", "loss": "loss", "optimizer": "opt"}  # record key -> column header
STOP_SHORT = {"max_epochs": "max", "tolerance": "tol", "early_stopping": "es", "interrupted": "int"}
STOP_WORDS = {"max": "epochs cap", "tol": "tolerance met", "es": "early stopping", "int": "interrupted"}


@dataclass
class RunsTable:
    """The runs as text cells that fit a width: headers, rows, the run names' width and the caption lines."""

    columns: list[str]
    rows: list[list[str]]
    run_width: int
    caption: list[str]

    def is_text(self, i: int) -> bool:
        """Whether column ``i`` holds words (left-aligned) rather than numbers."""
        return i == 0 or self.columns[i] in SETUP.values() or self.columns[i] == "date"


def tabulate_runs(records: list[dict], sort: str, width: int = 80) -> RunsTable:
    """Run records as table cells in ``width`` columns (80 for the usual runs: long names are cut).

    Model, loss and optimizer get a column only where the runs differ; what they all
    share is said in the caption, with the stop reasons' abbreviations.
    """
    shared = {k: records[0][k] for k in SETUP if len({str(r[k]) for r in records}) == 1}
    columns = ["run"] + [h for k, h in SETUP.items() if k not in shared] + ["epochs"]
    for s in ("val", "train"):
        for m in ("r2", "loss"):
            key = f"{s}.{m}"
            columns.append(f"{s}\n{m}" + ((" v" if descending(key) else " ^") if key == sort else ""))
    columns.append("date")
    rows = [_cells(r, shared, str(_dt.date.today().year)) for r in records]
    natural = [max([len(line) for line in h.split("\n")] + [len(row[i]) for row in rows]) for i, h in enumerate(columns)]
    if sum(natural[1:]) + len(columns) - 1 + min(natural[0], 10) > width:
        # Too narrow (runs that differ in model, loss and optimizer): the time of today's runs, the day of older ones.
        today = _dt.date.today().isoformat()
        for row, r in zip(rows, records):
            row[-1] = r["date"][11:16] if r["date"][:10] == today else r["date"][:10]
        natural[-1] = max([4] + [len(row[-1]) for row in rows])
    dropped = []
    if sum(natural[1:]) + len(columns) - 1 + min(natural[0], 12) > width:
        # Still too narrow: the run names matter more than their dates (which --json keeps).
        columns, natural, rows = columns[:-1], natural[:-1], [row[:-1] for row in rows]
        dropped.append("dates left out to fit the width (see --json)")
    # The run names take what the other columns leave (one space between columns), at least 6.
    run_width = max(6, min(natural[0], width - sum(natural[1:]) - (len(columns) - 1)))
    for row in rows:  # cut long names in the middle: their ends (quadratic-2, -3, ...) tell runs apart
        if len(row[0]) > run_width:
            head = (run_width - 1) // 2
            row[0] = row[0][:head] + "…" + row[0][len(row[0]) - (run_width - 1 - head):]
    said = [f"{_short_model(shared['model'])} model"] if "model" in shared else []
    said += [f"{k} {shared[k]}" for k in ("loss", "optimizer") if k in shared]
    stops = sorted({row[columns.index("epochs")].split()[-1] for row in rows} & set(STOP_WORDS))
    caption = dropped + (["all runs: " + ", ".join(said)] if said else []) + (
        ["stopped: " + ", ".join(f"{s} = {STOP_WORDS[s]}" for s in stops)] if stops else [])
    return RunsTable(columns, rows, run_width, caption)


def _cells(r: dict, shared: dict, this_year: str) -> list[str]:
    """One run's row: name, the setup where runs differ, epochs and stop reason, metrics, date."""
    cells = [r["name"]] + [_short_model(r[k]) if k == "model" else str(r[k] or "-") for k in SETUP if k not in shared]
    cells.append(f"{_g(r['epochs'])} {STOP_SHORT.get(r['stop_reason'], str(r['stop_reason'] or '-'))}")  # 812 tol
    for s in ("val", "train"):
        m = r.get(s) or {}
        cells += [_r2(m.get("r2")), _g(m.get("loss"), 3)]
    date = r["date"]  # ISO 8601, local time; as ls -l: this year's with the time, older with the year
    cells.append(date[5:16].replace("T", " ") if date.startswith(this_year) else date[:10])
    return cells


def _g(v, digits: int = 6) -> str:
    """A number to ``digits`` significant digits ('-' for missing), as the CLI's fmt."""
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _short_model(kind: str | None) -> str:
    """polynomial(3) -> poly3: the table is narrow."""
    if kind and kind.startswith("polynomial(") and kind.endswith(")"):
        return "poly" + kind[len("polynomial("):-1]
    return str(kind or "-")


def _r2(v) -> str:
    """R^2 with the digits that tell near-perfect fits apart (0.99998 vs 0.99999)."""
    if v is None:
        return "-"
    return f"{v:.5f}" if v > -10 else f"{v:.3g}"
