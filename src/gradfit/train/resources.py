"""Memory estimates from the config, before anything is allocated (issue 21).

A run whose synthetic data, polynomial design or MLP parameters cannot fit in the memory this
machine has free is refused with the estimate, the key that sets it and the fix, instead of
allocating for a minute and dying with an allocator traceback.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from gradfit.config.schema import Config
from gradfit.errors import ConfigError

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


def _gib(n: float) -> str:
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
        sizes = [n_features or 1, *cfg.model.hidden, 1]
        params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
        # weights, gradients and two optimizer moments
        out.append(("model.hidden", 4 * params * FLOAT, f"{params:,} parameters with their gradients and optimizer state"))
    return out


def check_memory(cfg: Config, available: Optional[int] = None) -> None:
    """Refuse a run that cannot fit in the free memory (ConfigError naming the key, the estimate and the memory)."""
    available = available_memory() if available is None else available
    if available is None:
        return
    parts = estimates(cfg)
    total = sum(b for _, b, _ in parts)
    if total <= available:
        return
    key, size, what = max(parts, key=lambda p: p[1])
    raise ConfigError(
        f"this run needs about {_gib(total)} of memory, more than the {_gib(available)} this machine has free; "
        f"most of it for {key} ({what}: about {_gib(size)})",
        hint=f"lower {key}, or run on a machine with more memory",
    )
