"""The run directory: its name, atomic writes, and the JSON/CSV/YAML files in it."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from gradfit.errors import GradfitError
from gradfit.files import RUN_MARKER, atomic_path, run_dir_holding, write_error, write_text  # noqa: F401 (the run files are written with them)

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


# The marker a run keeps in its directory while it runs: created exclusively (O_CREAT|O_EXCL), so
# that of two runs started at once into one directory exactly one gets it; removed when the run ends.
# (defined in gradfit.files, whose check_output refuses to write inside a run directory)
# The files a run writes (train/resume.py's RESUME_NAME among them): clean-up after a failure
# removes only these, and only those this run created; a user's own file stays, and so does its directory.
RUN_FILES = ("config.yaml", "metrics.json", "history.csv", "coefficients.json", "model.safetensors",
             "optimizer.safetensors", "loss.png", "fit.png", "split.csv",
             "split.parquet", "summary.json")


@dataclass
class RunClaim:
    """A run directory this run holds: whether it made the directory, and what was there before."""

    path: Path
    made_dir: bool
    before: frozenset = frozenset()

    def written(self) -> list[str]:
        """The run files this run has written so far (not those there before it)."""
        return [n for n in RUN_FILES if n not in self.before and (self.path / n).is_file()]

    def release(self) -> None:
        """The run ended (complete, or kept to be resumed or written again): the marker goes."""
        with contextlib.suppress(OSError):
            (self.path / RUN_MARKER).unlink()

    def clean_up(self) -> None:
        """A failed run: remove the files it created, then its directory if it made it and nothing else is there."""
        for name in os.listdir(self.path) if self.path.is_dir() else ():
            mine = name in RUN_FILES or any(name.startswith(f".{f}.") and name.endswith(".tmp") for f in RUN_FILES)
            if mine and name not in self.before:
                with contextlib.suppress(OSError):
                    (self.path / name).unlink()
        self.release()
        if self.made_dir:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # (only when empty: a file someone else put there keeps it)


def _take_marker(p: Path) -> bool:
    """Create ``p``'s marker exclusively; False when another run holds it."""
    try:
        os.close(os.open(p / RUN_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise write_error(p / RUN_MARKER, exc, "the run directory's marker") from None


def claim_run_dir(output_dir: str | Path, name: str, out: str | Path | None, force: bool) -> RunClaim:
    """Claim the run directory: OUTPUT_DIR/NAME (or NAME-2, NAME-3... if taken), or --out DIR."""
    try:
        return _claim_out(Path(out), force) if out is not None else _claim_default(Path(output_dir), name)
    except OSError as exc:
        raise write_error(getattr(exc, "filename", None) or (out or output_dir), exc, "the run directory") from None


def _claim_out(p: Path, force: bool) -> RunClaim:
    if p.exists() and not p.is_dir():
        raise GradfitError(f"--out {p} exists and is a file", hint="give a directory path")
    if (p / RUN_MARKER).exists() and not force:
        raise GradfitError(
            f"--out {p} is in use by another gradfit run (it holds {RUN_MARKER}), or one that stopped without finishing",
            hint="choose another --out; if no run is writing there, add --force to write into it anyway",
        )
    if p.exists() and any(p.iterdir()) and not force:
        raise GradfitError(
            f"--out {p} already holds files; gradfit never overwrites a run",
            hint="choose another --out, or add --force to write into it anyway",
        )
    outer = run_dir_holding(p.parent)
    if outer is not None and not force:  # (a run among another run's files: eval/cv/sweep would mistake them)
        raise GradfitError(
            f"--out {p} is inside the run directory {outer}; gradfit does not write a run among another run's files",
            hint="choose an --out outside it, or add --force to write there anyway",
        )
    made = not p.exists()
    if made:
        try:
            p.mkdir(parents=True)
        except FileExistsError:  # made by another run meanwhile
            made = False
    before = frozenset(os.listdir(p))
    if not _take_marker(p) and not force:
        raise GradfitError(
            f"--out {p} was claimed by another gradfit run that started at the same time",
            hint="choose another --out for this run",
        )
    return RunClaim(p, made, before - {RUN_MARKER})


def _claim_default(base: Path, name: str) -> RunClaim:
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100_000):
        p = base / (name if i == 1 else f"{name}-{i}")
        try:
            p.mkdir()
            made = True
        except FileExistsError:
            # An empty directory is taken over (its marker decides between two runs); a file, or a
            # directory holding anything, is another run's or the user's.
            if not p.is_dir() or any(p.iterdir()):
                continue
            made = False
        try:
            if _take_marker(p):
                return RunClaim(p, made)
        except BaseException:  # (an interrupt between the mkdir and the marker: the directory goes again)
            if made:
                with contextlib.suppress(OSError):
                    p.rmdir()
            raise
    raise GradfitError(f"too many runs named {name!r} under {base}; choose another name")


def make_run_dir(output_dir: str | Path, name: str, out: str | Path | None, force: bool) -> Path:
    """The path of a claimed run directory (see ``claim_run_dir``)."""
    return claim_run_dir(output_dir, name, out, force).path
