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
