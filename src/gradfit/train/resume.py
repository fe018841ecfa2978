"""Resume state: what a run needs to continue training exactly where it stopped.

``optimizer.safetensors`` in the run directory holds, at the last completed epoch:
the head's weights (``head.*``), every tensor of the optimizer's state (``opt.N``),
the mini-batch generator's state (``generator``), and in the header's metadata, as
JSON, the rest of the optimizer's ``state_dict`` (hyper-parameters, step counts)
with each tensor replaced by its name. Nothing is pickled, and loading executes
nothing from the file; a file that does not decode is a ``CheckpointError``.

The run directory's ``config.yaml`` and ``history.csv`` complete the picture; the
scaling statistics are recomputed from the same data (whose fingerprint is checked).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from gradfit.config.loading import load_config
from gradfit.errors import CheckpointError, ConfigError
from gradfit.results.checkpoint import check_layout
from gradfit.results.rundir import atomic_path
from gradfit.train.loop import EpochRecord
from gradfit.train.stopping import StopState

RESUME_NAME = "optimizer.safetensors"
FORMAT = "gradfit-resume"
FORMAT_VERSION = 1


@dataclass
class ResumeState:
    """The training state after ``epoch`` completed epochs (tensors on the CPU)."""

    epoch: int
    kind: str  # optimizer kind
    head: dict  # name -> tensor
    optimizer: dict  # a torch optimizer state_dict
    generator: Optional[torch.Tensor]
    stop: Any = None  # train.stopping.StopState: the stopping rules' memory (None in files from before it was kept)


def capture(head: torch.nn.Module, optimizer, gen: Optional[torch.Generator], epoch: int, kind: str,
            stop=None) -> ResumeState:
    """A copy of the training state now (safe to keep while training goes on)."""

    return ResumeState(
        epoch=int(epoch),
        kind=kind,
        head={k: v.detach().to("cpu").clone() for k, v in head.state_dict().items()},
        optimizer=_to_cpu(copy.deepcopy(optimizer.state_dict())),
        generator=gen.get_state().clone() if gen is not None else None,
        stop=stop.snapshot() if stop is not None else None,
    )


# train.stopping.StopState's numbers, stored in the header's metadata (its best weights as tensors "best.*").
_STOP_FIELDS = ("best_val", "best_epoch", "since_best", "best_grad", "loss_floor", "calm", "prev_loss", "tol")


def restore(state: ResumeState, head: torch.nn.Module, optimizer, gen: Optional[torch.Generator]) -> None:
    """Put a captured state back into a freshly built head, optimizer and generator."""
    try:
        head.load_state_dict(state.head, strict=True)
        optimizer.load_state_dict(state.optimizer)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(
            f"the saved training state does not fit the model and optimizer of the config ({type(exc).__name__}: {exc})",
            hint="resume with the run directory's own config.yaml, changing only train.* settings",
        ) from None
    if gen is not None and state.generator is not None:
        gen.set_state(state.generator)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ---------------------------------------------------------------- encoding (JSON + named tensors)


def _encode(obj: Any, tensors: dict) -> Any:
    """JSON-safe form of a state_dict; tensors go to ``tensors`` under names 'opt.N'."""
    if isinstance(obj, torch.Tensor):
        name = f"opt.{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"$t": name}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$f": repr(obj)}
    if isinstance(obj, dict):
        return {"$d": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    raise TypeError(f"cannot store a {type(obj).__name__} in the resume state")


def _decode(obj: Any, tensors: dict) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict) and len(obj) == 1:
        (tag, v), = obj.items()
        if tag == "$t" and isinstance(v, str) and v in tensors:
            return tensors[v]
        if tag == "$f" and v in ("inf", "-inf", "nan"):
            return float(v)
        if tag == "$tuple" and isinstance(v, list):
            return tuple(_decode(x, tensors) for x in v)
        if tag == "$d" and isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v):
            return {_decode(k, tensors): _decode(x, tensors) for k, x in v}
    raise ValueError(f"unexpected value in the optimizer record: {str(obj)[:80]}")


def save_state(path: Path, state: ResumeState) -> None:
    """Write ``optimizer.safetensors`` atomically."""
    from safetensors.torch import save_file  # (imported here for start-up time)


    tensors: dict = {f"head.{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.head.items()}
    opt_tensors: dict = {}
    record = _encode(state.optimizer, opt_tensors)
    tensors.update(opt_tensors)
    if state.generator is not None:
        tensors["generator"] = state.generator.contiguous()
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "epoch": str(state.epoch),
        "kind": state.kind,
        "optimizer": json.dumps(record),
    }
    if state.stop is not None:
        meta["stop"] = json.dumps({k: _encode(getattr(state.stop, k), {}) for k in _STOP_FIELDS})
        for k, v in (state.stop.best_state or {}).items():
            tensors[f"best.{k}"] = v.detach().to("cpu").contiguous().clone()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_state(path: Path) -> ResumeState:
    """Read ``optimizer.safetensors`` safely; CheckpointError for anything that is not one."""
    from safetensors import SafetensorError, safe_open  # (imported here for start-up time)


    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"{p.parent} has no {p.name}: it is not a run that can be resumed",
            hint="--resume takes a run directory written by 'gradfit train' (interrupted, or stopped at train.epochs)",
        )
    check_layout(p)  # refuses pickles, zips, truncated files with their own messages
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: cannot read the saved training state ({exc})", hint="the file is damaged") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a gradfit resume state (no gradfit records)")
    try:
        version = int(meta.get("format_version", ""))
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{p} was written by a newer gradfit (resume format {version}); upgrade gradfit to resume it")
        epoch = int(meta["epoch"])
        optimizer = _decode(json.loads(meta["optimizer"]), tensors)
        if not isinstance(optimizer, dict) or epoch < 0:
            raise ValueError("the optimizer record is not a state_dict")
        stop = None
        if "stop" in meta:
            fields = {k: _decode(v, {}) for k, v in json.loads(meta["stop"]).items() if k in _STOP_FIELDS}
            best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
            stop = StopState(**fields, best_state=best or None)
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{p}: the saved training state is damaged ({exc})") from None
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    return ResumeState(epoch, str(meta.get("kind", "")), head, optimizer, tensors.get("generator"), stop)


# ---------------------------------------------------------------- a run directory to continue


def read_history(path: Path, up_to_epoch: int) -> list:
    """The rows of history.csv with epoch <= ``up_to_epoch`` (later rows belong to a lost future)."""

    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}", hint="resume a run directory written by 'gradfit train'")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines[1:]:
            if not line.strip():
                continue
            epoch, train_loss, val_loss, lr, seconds = line.split(",")
            if int(epoch) > up_to_epoch:
                break
            rows.append(EpochRecord(int(epoch), float(train_loss), float(val_loss) if val_loss else None, float(lr), float(seconds)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the history ({exc})", hint="the file is damaged") from None
    if len(rows) != up_to_epoch or any(r.epoch != i + 1 for i, r in enumerate(rows)):
        raise CheckpointError(
            f"{path} holds {len(rows)} epochs where the saved training state is at epoch {up_to_epoch}",
            hint="the run directory is incomplete; start the run again",
        )
    return rows


def load_run(run_dir: Path, overrides=()):
    """The config, training state and history of a run directory, checked for resuming.

    Only ``train.*`` settings may be overridden (more epochs, another tolerance...):
    anything else would make it another experiment.
    """

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: not a directory", hint="give the run directory that 'gradfit train' printed")
    bad = [o for o in overrides if not o.partition("=")[0].strip().startswith("train.")]
    if bad:
        raise ConfigError(
            f"--set {bad[0]!r} with --resume: a resumed run keeps its experiment; only train.* settings can change",
            hint="e.g. --set train.epochs=5000; for other changes start a new run",
        )
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"--resume {run_dir}: no config.yaml there; it is not a gradfit run directory")
    cfg = load_config(run_dir / "config.yaml", overrides)
    state = load_state(run_dir / RESUME_NAME)
    if state.kind != cfg.optimizer.kind:
        raise CheckpointError(f"{run_dir}: the saved state is for optimizer {state.kind!r}, the config says {cfg.optimizer.kind!r}")
    if state.epoch >= cfg.train.epochs:
        raise ConfigError(
            f"{run_dir} has already trained {state.epoch} epochs and train.epochs is {cfg.train.epochs}: nothing to resume",
            hint=f"train further with --set train.epochs=N (N > {state.epoch})",
        )
    history = read_history(run_dir / "history.csv", state.epoch)
    return cfg, state, history
