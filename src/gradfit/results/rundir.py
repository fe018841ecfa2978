"""The run directory: its name, atomic writes, and the JSON/CSV/YAML files in it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from gradfit.errors import GradfitError
from gradfit.files import atomic_path, write_text  # noqa: F401 (the run files are written with them)

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")


def _clean(obj):
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def to_json(obj) -> str:
    return json.dumps(_clean(obj), indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, obj) -> None:
    write_text(path, to_json(obj))


def write_history(path: Path, history) -> None:
    """history.csv: epoch,train_loss,val_loss,lr,seconds (val_loss empty without validation)."""
    lines = [",".join(HISTORY_COLUMNS)]
    for r in history:
        val = "" if r.val_loss is None else repr(float(r.val_loss))
        lines.append(f"{r.epoch},{float(r.train_loss)!r},{val},{float(r.lr)!r},{r.seconds:.6f}")
    write_text(path, "\n".join(lines) + "\n")


def make_run_dir(output_dir: str | Path, name: str, out: str | Path | None, force: bool) -> Path:
    """Create the run directory: OUTPUT_DIR/NAME (or NAME-2, NAME-3... if taken), or --out DIR."""
    if out is not None:
        p = Path(out)
        if p.exists() and not p.is_dir():
            raise GradfitError(f"--out {p} exists and is a file", hint="give a directory path")
        if p.exists() and any(p.iterdir()) and not force:
            raise GradfitError(
                f"--out {p} already holds files; gradfit never overwrites a run",
                hint="choose another --out, or add --force to write into it anyway",
            )
        p.mkdir(parents=True, exist_ok=True)
        return p
    base = Path(output_dir)
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100_000):
        p = base / (name if i == 1 else f"{name}-{i}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            if p.is_dir() and not any(p.iterdir()):
                return p
    raise GradfitError(f"too many runs named {name!r} under {base}; choose another name")
