"""Memory estimates from the config, before anything is allocated (issue 21).

A run whose synthetic data, polynomial design or MLP parameters cannot fit in the memory this
machine has free is refused with the estimate, the key that sets it and the fix, instead of
allocating for a minute and dying with an allocator traceback. The estimates live in the config
room because they read only the config: training (train/run.py) checks the whole run, evaluation
(results/evaluate.py) the data a checkpoint's recorded config asks it to rebuild, and the
checkpoint reader (results/checkpoint.py) the model its recorded spec asks it to build.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from gradfit.config.schema import Config
from gradfit.errors import ConfigError, GradfitError

FLOAT = 8  # bytes: the estimates assume float64 (auto dtype may halve them)


def available_memory() -> Optional[int]:
    """Bytes this machine can still give (MemAvailable in /proc/meminfo, else free pages); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def estimates(cfg: Config) -> list[tuple[str, int, str]]:
    """(config key, bytes, what they hold) for what the run will allocate, as far as the config tells."""
    out = []
    syn = cfg.data.synthetic
    n_features = getattr(syn, "n_features", 1) if syn is not None else None
    if syn is not None:
        # the generated columns, their float copy for training, and the split's rows
        out.append(("data.synthetic.n_samples", 3 * syn.n_samples * (n_features + 1) * FLOAT,
                    f"{syn.n_samples} rows x {n_features + 1} columns"))
    if cfg.model.kind == "polynomial" and syn is not None:
        terms = math.comb(n_features + cfg.model.degree, cfg.model.degree) if cfg.model.interactions \
            else n_features * cfg.model.degree + 1
        out.append(("model.degree", 2 * syn.n_samples * terms * FLOAT,
                    f"a design of {syn.n_samples} rows x {terms} terms"))
    if cfg.model.kind == "mlp":
        params = mlp_parameters(n_features or 1, list(cfg.model.hidden))
        # weights, gradients and two optimizer moments
        out.append(("model.hidden", 4 * params * FLOAT, f"{params:,} parameters with their gradients and optimizer state"))
    return out


def check_memory(cfg: Config, available: Optional[int] = None, *, keys: Optional[tuple[str, ...]] = None,
                 needs: str = "this run needs", error: type[GradfitError] = ConfigError, hint: str = "") -> None:
    """Refuse a run that cannot fit in the free memory (``error`` naming the key, the estimate and the memory).

    ``keys``: count only these estimates (evaluation rebuilds the data, not the optimizer's state);
    ``needs`` starts the message, ``hint`` replaces the default fix.
    """
    parts = [p for p in estimates(cfg) if keys is None or p[0] in keys]
    refuse_if_over(parts, available, needs, error, hint)


def refuse_if_over(parts: list[tuple[str, int, str]], available: Optional[int], needs: str,
                   error: type[GradfitError] = ConfigError, hint: str = "") -> None:
    """Raise ``error`` when the estimates ``parts`` (key, bytes, what) add up to more than ``available``."""
    available = available_memory() if available is None else available
    if available is None or not parts:
        return
    total = sum(b for _, b, _ in parts)
    if total <= available:
        return
    key, size, what = max(parts, key=lambda p: p[1])
    raise error(
        f"{needs} about {gib(total)} of memory, more than the {gib(available)} this machine has free; "
        f"most of it for {key} ({what}: about {gib(size)})",
        hint=hint or f"lower {key}, or run on a machine with more memory",
    )


def mlp_parameters(n_in: int, hidden: list[int]) -> int:
    """The weights and biases of an MLP with ``n_in`` inputs, these hidden widths and one output."""
    sizes = [n_in, *hidden, 1]
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
