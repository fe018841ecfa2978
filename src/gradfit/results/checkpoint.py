"""Checkpoints: one safetensors file with the weights, the scaling and everything needed to predict.

Loading never executes anything from the file. A safetensors file is an 8-byte
header length, a JSON header and raw tensor bytes; gradfit checks that layout
itself (so that a pickle, a zip, a text file or a truncated copy gets a message
that says which), then lets safetensors read it. Nothing is ever unpickled:
neither ``pickle`` nor ``torch.load`` is used anywhere in gradfit.

The header's metadata (strings) holds the records, each as JSON:
``format``/``format_version`` (refused when newer than this reader), ``spec``
(the model's architecture: kind, feature and target names, dtype, polynomial
terms...), ``config`` (the resolved config), ``data`` (where the rows came from:
path and fingerprint or synthetic spec, split fractions, seed), ``extra`` (the
run's metrics) and ``tensors_sha256`` (a digest of the weights, so a damaged copy
is caught rather than predicting wrong numbers).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradfit.errors import CheckpointError, DataError
from gradfit.files import check_regular_file

CHECKPOINT_NAME = "model.safetensors"
FORMAT = "gradfit-checkpoint"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
GIVE_HINT = "give the model.safetensors that 'gradfit train' wrote, or its run directory"
COPY_HINT = GIVE_HINT + "; a truncated or damaged copy must be copied again"


def tensors_digest(tensors: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: Path, model, *, config: dict, data: dict, extra: dict | None = None) -> None:
    """Write a model and its records to ``path`` (atomically)."""
    from safetensors.torch import save_file  # (imported here for start-up time)

    from gradfit import __version__  # (imported here for start-up time)
    from gradfit.results.rundir import atomic_path  # (imported here for start-up time)

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "gradfit_version": __version__,
        "spec": json.dumps(model.spec),
        "config": json.dumps(config),
        "data": json.dumps(data),
        "extra": json.dumps(extra or {}),
        "tensors_sha256": tensors_digest(tensors),
    }
    with atomic_path(path) as tmp:  # (an I/O error of safetensors' writer is a WriteError too)
        save_file(tensors, str(tmp), metadata=meta)


# ---------------------------------------------------------------- reading


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the model.safetensors inside a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}", hint="give a run directory or the model.safetensors in it")
    if path.is_dir():
        p = path / CHECKPOINT_NAME
        if not p.exists():
            raise CheckpointError(
                f"{path} is a directory without a {CHECKPOINT_NAME}",
                hint="give the run directory that 'gradfit train' printed",
            )
        return check_regular_file(p, "the checkpoint", CheckpointError)
    return check_regular_file(path, "the checkpoint", CheckpointError)


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sample is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _refuse(p: Path, reason: str, hint: str = COPY_HINT) -> CheckpointError:
    return CheckpointError(f"{p} cannot be loaded as a gradfit checkpoint: {reason}", hint=hint)


def _tensor_end(name: str, entry) -> int:
    """Where a tensor's bytes end, from its header entry: two whole numbers, begin <= end (not 1e400)."""
    offsets = entry["data_offsets"] if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name[:80]!r} has data_offsets {str(offsets)[:80]}, not two whole numbers begin <= end")
    return offsets[1]


def check_layout(p: Path) -> dict:
    """Check a file's safetensors layout without trusting it; return its parsed JSON header.

    Refuses, each with its own message: an empty file, a zip (torch.save), a pickle,
    a text file, a truncated file, a file with bytes after its tensors.
    """
    size = check_regular_file(p, "the checkpoint", CheckpointError).stat().st_size
    with p.open("rb") as f:
        head = f.read(64)
        if size == 0:
            raise _refuse(p, "the file is empty (0 bytes)")
        if head[:2] == b"PK":
            raise _refuse(
                p,
                "it is a zip archive, as torch.save writes (.pt/.pth); those hold pickles, and loading a pickle "
                "can run any code, so gradfit never does",
                hint="train with 'gradfit train', which writes a safe model.safetensors",
            )
        if head[:1] == b"\x80" and head[8:9] != b"{":  # (a header length whose low byte is 0x80 starts with it too)
            raise _refuse(
                p,
                "it is a Python pickle (.pkl/.pt); loading a pickle can run any code, so gradfit never does",
                hint="train with 'gradfit train', which writes a safe model.safetensors",
            )
        n = int.from_bytes(head[:8], "little")
        if size < 10 or head[8:9] != b"{" or n > MAX_HEADER_BYTES:
            if _looks_like_text(head):
                lines = head[:40].decode("utf-8", errors="replace").strip().splitlines()
                raise _refuse(p, f"it is a text file (it starts with {lines[0] if lines else ''!r}), not a safetensors file", GIVE_HINT)
            if size < 10:
                raise _refuse(p, f"it is only {size} bytes long: a truncated copy, or not a checkpoint at all")
            raise _refuse(p, "it is not a safetensors file (no safetensors header)", GIVE_HINT)
        if 8 + n > size:
            raise _refuse(p, f"it is truncated: its header alone needs {8 + n} bytes, the file has {size}")
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [_tensor_end(k, v) for k, v in header.items() if k != "__metadata__"]
    except RecursionError:
        raise _refuse(p, "its safetensors header is nested too deeply to be a checkpoint's") from None
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise _refuse(p, f"its safetensors header is damaged ({exc})") from None
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise _refuse(p, f"it is truncated: {size} bytes where its header promises {expected}")
    if size > expected:
        raise _refuse(p, f"it has {size - expected} unexpected bytes after its tensors ({size} bytes, {expected} expected)")
    return header


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
    format_version: int = FORMAT_VERSION


def _check_spec(p: Path, spec: Any, written_by: str) -> None:
    from gradfit.models.build import MODEL_KINDS  # torch: loaded only when a checkpoint is read
    from gradfit.models.heads import DTYPES  # (imported here for start-up time)

    if not isinstance(spec, dict):
        raise _refuse(p, "its model description (spec) is not a mapping")
    kind = spec.get("kind")
    if kind not in MODEL_KINDS:
        raise CheckpointError(
            f"{p} holds a {kind!r} model, which this gradfit cannot rebuild "
            f"(it knows {', '.join(sorted(MODEL_KINDS))}); it was written by gradfit {written_by}",
            hint="use the gradfit version that wrote it, or a newer one",
        )
    feats, target = spec.get("features"), spec.get("target")
    if not (isinstance(feats, list) and feats and all(isinstance(f, str) for f in feats)) or not isinstance(target, str):
        raise _refuse(p, "its model description lacks the feature and target names")
    if spec.get("dtype") not in DTYPES:
        raise _refuse(p, f"its model description has an unknown dtype {spec.get('dtype')!r}")


def _numbers(entry) -> int:
    """How many numbers a header entry's shape holds (0 for a shape that is not a list of whole numbers)."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        return 0
    return math.prod(shape)


def _check_size(p: Path, spec: dict, header: dict) -> None:
    """What the spec asks to build matches the weights the file holds, and fits in memory: checked
    before anything is allocated (the records are outside the weights' digest, so a crafted spec
    could ask for hidden layers of 65,536 units and a 34 GB allocation)."""
    from gradfit.config.resources import FLOAT, gib, mlp_parameters, refuse_if_over  # (a plain module: no torch)

    held = sum(_numbers(e) for k, e in header.items() if k != "__metadata__")
    parts = [("the checkpoint's weights", held * FLOAT, f"{held:,} numbers read from {p.name}")]
    if spec.get("kind") == "mlp":
        hidden, terms = spec.get("hidden"), spec.get("terms")
        if not (isinstance(hidden, list) and hidden and isinstance(terms, list)
                and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)):
            raise _refuse(p, f"its model description has hidden sizes {str(hidden)[:80]}, not a list of positive whole numbers")
        params = mlp_parameters(len(terms), hidden)
        if params > held:
            raise _refuse(
                p, f"its model description asks for an MLP with hidden sizes {str(hidden)[:80]}: {params:,} parameters "
                   f"(about {gib(params * FLOAT)} to build), but the file holds only {held:,} numbers; "
                   "the description does not match its weights")
        parts.append(("model.hidden", params * FLOAT, f"an MLP of {params:,} parameters"))
    refuse_if_over(parts, None, f"loading the model of {p} needs", CheckpointError,
                   "load it on a machine with more free memory")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely; raise CheckpointError for anything that is not a valid one."""
    p = resolve_checkpoint(path)
    header = check_layout(p)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is a safetensors file but not a gradfit checkpoint (it has no gradfit records)",
            hint="gradfit predicts only with checkpoints that 'gradfit train' wrote",
        )
    written_by = str(meta.get("gradfit_version", "?"))
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise _refuse(p, f"its format version {meta.get('format_version')!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} is a newer checkpoint: format version {version}, written by gradfit {written_by}; "
            f"this gradfit ({_own_version()}) reads format version {FORMAT_VERSION} and older",
            hint="upgrade gradfit (pip install -U gradfit) to read it",
        )
    if version < 1:
        raise _refuse(p, f"unknown checkpoint format version {version}")
    try:
        fields = {k: json.loads(meta[k]) for k in ("spec", "config", "data", "extra")}
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _refuse(p, f"its records are damaged or missing ({type(exc).__name__}: {exc})") from None
    except RecursionError:
        raise _refuse(p, "its records are nested too deeply to be a checkpoint's") from None
    _check_spec(p, fields["spec"], written_by)
    _check_size(p, fields["spec"], header)

    from safetensors import SafetensorError  # (imported here for start-up time)
    from safetensors.torch import load_file  # (imported here for start-up time)

    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise _refuse(p, f"safetensors cannot read its tensors ({exc})") from None
    digest = meta.get("tensors_sha256")
    if digest is not None and tensors_digest(tensors) != digest:
        raise _refuse(p, "its weights do not match their recorded digest: the file is damaged")
    return Checkpoint(
        p, tensors, fields["spec"], fields["config"], fields["data"], fields["extra"], written_by, version
    )


def _own_version() -> str:
    from gradfit import __version__  # (imported here for start-up time)

    return __version__


# ---------------------------------------------------------------- models


def model_from_checkpoint(ck: Checkpoint):
    """Rebuild the model a checkpoint holds, its weights loaded, on the CPU, in eval mode."""
    from gradfit.models.build import MODEL_KINDS, model_from_spec  # torch: loaded only when a model is rebuilt

    if ck.spec.get("kind") not in MODEL_KINDS:
        _check_spec(ck.path, ck.spec, ck.gradfit_version)
    try:
        model = model_from_spec(ck.spec)
        model.load_state_dict(ck.tensors, strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(
            f"{ck.path}: the weights do not match the model it describes ({type(exc).__name__}: {exc})",
            hint=COPY_HINT,
        ) from None
    model.eval()
    return model


class LoadedModel:
    """A trained model loaded from a checkpoint: ``predict`` and ``coefficients``."""

    def __init__(self, ck: Checkpoint):
        self.checkpoint = ck
        self.model = model_from_checkpoint(ck)
        self.spec: dict = ck.spec
        self.kind: str = ck.spec["kind"]
        self.feature_names: list[str] = list(ck.spec["features"])
        self.target: str = ck.spec["target"]
        self.config: dict = ck.config
        self.metrics: dict = ck.extra.get("metrics") or {}
        # How raw table columns become the model's inputs (categories' levels, dates; data/encoding.py).
        self.encoding: dict | None = ((ck.data or {}).get("source") or {}).get("encoding")
        self.decimal: str = ((self.config or {}).get("data") or {}).get("decimal") or "."

    def __repr__(self) -> str:
        return f"LoadedModel({self.kind} model of {self.target!r} on {self.feature_names}, from {str(self.checkpoint.path)!r})"

    def predict(self, data: Any):
        """Predictions, numpy float64 of shape (n,), for a DataFrame with the feature columns or an array (n, d)."""
        import numpy as np  # (imported here for start-up time)

        from gradfit.data.tables import frame_to_arrays  # (imported here for start-up time)

        if hasattr(data, "columns"):
            from gradfit.data.encoding import Encoding  # (imported here for start-up time)

            enc = Encoding.from_json(self.encoding)
            raw = enc.raw_columns if enc is not None else self.feature_names
            missing = [c for c in raw if c not in data.columns]
            if missing:
                raise DataError(
                    f"missing feature column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                    f"columns found: {', '.join(map(repr, map(str, data.columns)))}",
                    hint=f"the model was trained on {raw}",
                )
            coded = enc.apply(data, "data", 0) if enc is not None and not enc.is_numeric else data.copy()
            X, _, _ = frame_to_arrays(coded, enc.keys if enc is not None else self.feature_names, None, "data", dropna=False)
        else:
            X = np.asarray(data, dtype=np.float64)
            d = len(self.feature_names)
            if X.ndim not in (1, 2) or (X.ndim == 1 and d > 1):
                raise DataError(f"expected an array of shape (n_rows, {d}) with columns {self.feature_names}, got shape {X.shape}")
        # torch wants a writable array (pandas hands out read-only views); copies only when needed.
        return self.model.predict(np.require(X, np.float64, ["C", "W"])).numpy()

    def coefficients(self) -> dict:
        """The model in readable form, as in coefficients.json (with the fit's uncertainty, when recorded)."""
        return {**self.model.coefficients(), **(self.checkpoint.extra.get("uncertainty") or {})}


def load_model(path: str | Path) -> LoadedModel:
    """Load a checkpoint file or a run directory."""
    return LoadedModel(read_checkpoint(path))
