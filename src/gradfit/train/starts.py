"""Multi-starts of a formula model (``train.starts: N``): fit from the start and N-1 seeded
perturbations of it, keep the best.

Start k > 0 draws each varying parameter as v * 10^U(-1, 1) (log-uniform from a tenth to ten
times its start value, the sign kept; a start of 0 draws U(-1, 1)), clipped to its bounds,
from ``seed`` and k. Parameters without a start value begin at 1.0 in every start. The best start is the converged fit with the lowest training loss (the
lowest of all when none converged). The run then trains from the winning start (the same
deterministic fit), and metrics.json records ``starts``: how many, which won, how many
converged, and each one's training loss.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Callable

SPREAD_DECADES = 1.0  # perturbations: log-uniform within this many decades of the start value


def perturbed(start: dict, k: int, seed: int) -> dict:
    """Start ``k`` (0: the given one) of a formula model's ``start`` mapping (floats or {value, min, max, vary})."""
    if k == 0:
        return dict(start)
    rng = random.Random(f"{seed}:{k}")
    out = {}
    for name, v in start.items():
        spec = dict(v) if isinstance(v, dict) else {"value": float(v)}
        if spec.get("vary", True):
            x = float(spec["value"])
            x = x * 10 ** rng.uniform(-SPREAD_DECADES, SPREAD_DECADES) if x != 0 else rng.uniform(-1, 1)
            lo, hi = spec.get("min"), spec.get("max")
            x = max(x, lo) if lo is not None else x
            x = min(x, hi) if hi is not None else x
            spec["value"] = x
        out[name] = spec if isinstance(v, dict) else spec["value"]
    return out


def with_start(cfg, start: dict):
    """A copy of ``cfg`` fitting from ``start``, with train.starts: 1."""
    model = cfg.model.model_copy(update={"start": start})
    return cfg.model_copy(update={"model": model, "train": cfg.train.model_copy(update={"starts": 1})})


def choose_start(cfg, fit_one: Callable) -> tuple[object, dict]:
    """(the config with the winning start, the ``starts`` record); ``fit_one(cfg)`` trains one start
    without writing (returns a RunResult)."""
    n = cfg.train.starts
    # (every point drawn before any fit, each fit given its own copy: nothing a fit does moves them)
    points = [perturbed(copy.deepcopy(dict(cfg.model.start)), k, cfg.seed) for k in range(n)]
    losses, converged = [], []
    for k in range(n):
        run = fit_one(with_start(cfg, copy.deepcopy(points[k])))
        loss = float(run.metrics["train"]["mse"])
        losses.append(loss if math.isfinite(loss) else math.inf)
        converged.append(bool(run.metrics["converged"]))
    pool = [k for k in range(n) if converged[k]] or list(range(n))
    best = min(pool, key=lambda k: losses[k])
    record = {"n": n, "best": best, "converged": sum(converged), "train_mse": losses, "start": copy.deepcopy(points[best])}
    return with_start(cfg, copy.deepcopy(points[best])), record
