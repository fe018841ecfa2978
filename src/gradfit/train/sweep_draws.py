"""What a sweep trains besides a grid: seeded random draws and Optuna's TPE trials over --range KEY=LOW:HIGH[:log].

A range's key must name a number in the config (after the sweep's --set values): an integer field
(model.degree, train.epochs) is drawn as an integer in [LOW, HIGH], both included; a float field
uniformly on [LOW, HIGH] (log-uniformly with ``:log``). Values are written with 6 significant
digits, so that a run's directory name is the value it trained with.

Nothing here imports torch (``gradfit runs`` reads a sweep's ranking through ``read_ranking``),
and optuna is imported only by ``optuna_study``.
"""

from __future__ import annotations

import json
import math
import random
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from gradfit.config.schema import Config
from gradfit.errors import ConfigError

RANKING_NAME = "ranking.json"
OPTUNA_NAME = "optuna.db"  # the study's sqlite storage in the sweep directory (an interrupted sweep resumes from it)
STUDY_NAME = "gradfit-sweep"
# A sweep whose only key is one of these also writes the regularization path (path.csv, path.png).
PATH_KEYS = ("model.penalty.l1", "model.penalty.l2")


@dataclass(frozen=True)
class Range:
    key: str
    low: float
    high: float
    log: bool
    integer: bool

    def value(self, u: float) -> str:
        """The value at ``u`` in [0, 1) of the range (log-uniform with ``log``), as the --set text."""
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        if self.integer:  # [LOW, HIGH] both included: HIGH - LOW + 1 equal cells (equal in log with :log)
            if self.log:
                cells = math.log(self.high + 1) - math.log(self.low)
                return str(min(int(self.high), int(math.floor(math.exp(math.log(self.low) + u * cells)))))
            return str(min(int(self.high), int(self.low) + int(math.floor(u * (self.high - self.low + 1)))))
        return fmt_value(v)

    def to_text(self) -> str:
        return f"{fmt_value(self.low)}:{fmt_value(self.high)}" + (":log" if self.log else "")


def fmt_value(v: float) -> str:
    """A float as 6 significant digits (YAML reads ``1e-05`` back as a float)."""
    return f"{float(v):.6g}"


def parse_ranges(items: list[str], cfg: Config) -> list[Range]:
    """``KEY=LOW:HIGH[:log]`` strings as Ranges, in the order given; ``cfg`` says which keys are integers."""
    out: list[Range] = []
    for item in items:
        key, eq, spec = item.partition("=")
        key = key.strip()
        parts = [p.strip() for p in spec.split(":")]
        log = len(parts) == 3 and parts[2] == "log"
        if not eq or not key or len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ConfigError(f"--range {item!r} is not KEY=LOW:HIGH or KEY=LOW:HIGH:log",
                              hint="e.g. --range optimizer.lr=1e-4:1e-1:log --range model.degree=1:6")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--range {item!r}: LOW and HIGH must be numbers", hint="e.g. --range model.degree=1:6") from None
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(f"--range {item!r}: LOW must be below HIGH (both finite)", hint=f"e.g. --range {key}=1:10")
        if log and low <= 0:
            raise ConfigError(f"--range {item!r}: a log range needs LOW > 0", hint="drop :log, or start the range above 0")
        if any(r.key == key for r in out):
            raise ConfigError(f"--range {key} is given twice", hint="give each key one --range")
        integer = is_integer_key(cfg, key, item)
        if integer and (low != int(low) or high != int(high)):
            raise ConfigError(f"--range {item!r}: {key} is an integer, so LOW and HIGH must be whole numbers",
                              hint=f"e.g. --range {key}={math.ceil(low)}:{math.floor(high)}")
        out.append(Range(key, low, high, log, integer))
    return out


def is_integer_key(cfg: Config, key: str, item: str) -> bool:
    """Whether the config field at the dotted ``key`` is an integer (True) or a float (False)."""
    node: object = cfg
    ann: object = type(cfg)
    for part in key.split("."):
        cls = type(node) if isinstance(node, BaseModel) else _model_class(ann)
        if cls is None or part not in cls.model_fields:
            raise ConfigError(f"--range {item!r}: {key} is not a config key", hint="give a dotted path like optimizer.lr")
        ann = cls.model_fields[part].annotation
        node = getattr(node, part, None) if isinstance(node, BaseModel) else None
    kinds = set(_leaves(ann))
    if float in kinds:
        return False
    if int in kinds:
        return True
    raise ConfigError(f"--range {item!r}: {key} is not a number", hint="ranges are for numeric keys; use --grid for others")


def _leaves(ann) -> list:
    args = typing.get_args(ann)
    return [a for arg in args for a in _leaves(arg)] if args else [ann]


def _model_class(ann) -> Optional[type]:
    for a in _leaves(ann):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def random_draws(ranges: list[Range], n: int, seed: int) -> list[list[str]]:
    """``n`` seeded draws, each a list of KEY=VALUE overrides (draw i does not depend on n); repeats dropped."""
    if n < 1:
        raise ConfigError(f"--random {n} must be at least 1", hint="e.g. --random 20")
    rng = random.Random(seed)
    out: list[list[str]] = []
    for _ in range(n):
        combo = [f"{r.key}={r.value(rng.random())}" for r in ranges]
        if combo not in out:
            out.append(combo)
    return out


def optuna_study(out: Path, seed: int, maximize: bool):
    """The sweep's TPE study, stored in ``out/optuna.db`` (created, or loaded to resume), its sampler seeded."""
    try:
        import optuna  # (imported here: an optional extra)
    except ImportError:
        raise ConfigError("--optuna needs the optuna library, which is not installed",
                          hint="install gradfit[optuna] (pip install 'gradfit[optuna]'), or use --random N") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # (library code does not print)
    storage = f"sqlite:///{(out / OPTUNA_NAME).resolve()}"
    direction = "maximize" if maximize else "minimize"
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True, direction=direction)
    # The sampler's random state is not stored: a resumed study seeded as before would draw its first
    # (random) trials again. Seed S + the trials already in the study: S for a new study, as documented.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    return study


def suggest(trial, ranges: list[Range]) -> list[str]:
    """A trial's values as KEY=VALUE overrides."""
    combo = []
    for r in ranges:
        if r.integer:
            v = str(trial.suggest_int(r.key, int(r.low), int(r.high), log=r.log))
        else:
            v = fmt_value(trial.suggest_float(r.key, r.low, r.high, log=r.log))
        combo.append(f"{r.key}={v}")
    return combo


def read_ranking(directory: str | Path) -> Optional[dict]:
    """A sweep directory's ranking.json (``metric``, ``runs`` best first), or None when it has none."""
    file = Path(directory) / RANKING_NAME
    if not file.is_file():
        return None
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("runs"), list) else None
