"""Checkpoints: one safetensors file with the weights, the scaling and everything needed to predict.

Loading never executes anything from the file: safetensors holds raw tensors and a
JSON header, and gradfit refuses any other format (pickles above all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradfit.errors import CheckpointError

CHECKPOINT_NAME = "model.safetensors"
FORMAT = "gradfit-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, model, *, config: dict, data: dict, extra: dict | None = None) -> None:
    """Write a model and its records to ``path`` (atomically)."""
    from safetensors.torch import save_file

    from gradfit import __version__
    from gradfit.runs import atomic_path

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "gradfit_version": __version__,
        "spec": json.dumps(model.spec),
        "config": json.dumps(config),
        "data": json.dumps(data),
        "extra": json.dumps(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}", hint="give a run directory or its model.safetensors")
    if path.is_dir():
        p = path / CHECKPOINT_NAME
        if not p.exists():
            raise CheckpointError(f"{path} is a directory without a {CHECKPOINT_NAME}", hint="give the run directory that 'gradfit train' printed")
        return p
    return path


def _refuse_reason(path: Path) -> str:
    head = path.open("rb").read(8)
    if head[:2] == b"PK":
        return "it is a zip archive (a torch.save/.pt file?); those are pickles, and loading one can run code"
    if head[:1] == b"\x80":
        return "it is a Python pickle; gradfit never loads pickles, since loading one can run arbitrary code"
    return "it is not a safetensors file"


@dataclass
class Checkpoint:
    """What a checkpoint file holds: tensors and the records beside them."""

    path: Path
    tensors: dict
    spec: dict
    config: dict
    data: dict
    extra: dict
    gradfit_version: str


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely; raise CheckpointError for anything that is not a valid one."""
    p = _resolve(Path(path))
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = p.stat().st_size
        raise CheckpointError(
            f"{p} cannot be loaded as a gradfit checkpoint: {_refuse_reason(p)} ({size} bytes; {exc})",
            hint="give the model.safetensors that 'gradfit train' wrote; a truncated copy must be copied again",
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is a safetensors file but not a gradfit checkpoint (no gradfit metadata)")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} was written in checkpoint format {version} by gradfit {meta.get('gradfit_version')}; "
            f"this gradfit reads format {FORMAT_VERSION} and older",
            hint="upgrade gradfit to read it",
        )
    if version < 1:
        raise CheckpointError(f"{p}: unknown checkpoint format version {meta.get('format_version')!r}")
    try:
        fields = {k: json.loads(meta[k]) for k in ("spec", "config", "data", "extra")}
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p}: the checkpoint's records are damaged ({exc})") from None
    return Checkpoint(p, tensors, fields["spec"], fields["config"], fields["data"], fields["extra"], meta.get("gradfit_version", "?"))


def model_from_checkpoint(ck: Checkpoint):
    """Rebuild the RegressionModel a checkpoint holds."""
    from gradfit.models import RegressionModel

    try:
        model = RegressionModel(ck.spec)
        model.load_state_dict(ck.tensors, strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck.path}: the weights do not match the model it describes ({exc})") from None
    model.eval()
    return model


class LoadedModel:
    """A trained model loaded from a checkpoint: ``predict`` and ``coefficients``."""

    def __init__(self, ck: Checkpoint):
        self.checkpoint = ck
        self.model = model_from_checkpoint(ck)
        self.feature_names: list[str] = list(ck.spec["features"])
        self.target: str = ck.spec["target"]
        self.config: dict = ck.config

    def predict(self, data: Any):
        """Predictions (numpy float64) for a DataFrame with the feature columns, or an array (n, d)."""
        import numpy as np

        from gradfit.data import frame_to_arrays

        if hasattr(data, "columns"):
            missing = [c for c in self.feature_names if c not in data.columns]
            if missing:
                from gradfit.errors import DataError

                raise DataError(f"missing feature column(s) {missing}; columns found: {list(data.columns)}")
            X, _, _ = frame_to_arrays(data.copy(), self.feature_names, None, "data", dropna=False)
        else:
            X = np.asarray(data, dtype=np.float64)
        return self.model.predict(X).numpy()

    def coefficients(self) -> dict:
        return self.model.coefficients()


def load_model(path: str | Path) -> LoadedModel:
    """Load a checkpoint file or a run directory."""
    return LoadedModel(read_checkpoint(path))
