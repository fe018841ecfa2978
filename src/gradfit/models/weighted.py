"""Weighted losses (data.weights): sum(w l(r)) / sum(w) over the rows, for mse, mae, huber and log_cosh.

The same per-row losses as models/losses.py's means, in the same units: with every w = 1 these
are exactly the unweighted losses. For mse this is the loss whose minimizer is weighted least
squares (statsmodels' WLS, scikit-learn's ``sample_weight``); the weights' scale does not matter.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from gradfit.models.losses import Loss


def row_losses(loss: Loss, y_scale: float, target_sample=None) -> Callable:
    """(pred, target) -> (n,) each row's loss, on scaled units (``y_scale``: the target's scale)."""
    kind = loss.kind
    if kind == "mse":
        return lambda pred, target: (pred - target).square()
    if kind == "mae":
        return lambda pred, target: (pred - target).abs()
    if kind == "log_cosh":
        s = float(y_scale)

        def log_cosh(pred, target):
            a = ((pred - target) * s).abs()
            return (a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)) / (s * s)

        return log_cosh
    if kind == "huber":
        delta = loss.delta
        if delta is None:  # (a checkpoint that recorded no delta: the target's robust one, as Loss.original)
            from gradfit.models.losses import robust_delta  # (its default lives there)

            delta = robust_delta(target_sample)
        d = float(delta) / float(y_scale)
        return lambda pred, target: F.huber_loss(pred, target, delta=d, reduction="none")
    raise ValueError(f"loss kind {kind!r} takes no weights (config/weighting.py refuses it)")


def weighted_loss(loss: Loss, y_scale: float, w: torch.Tensor) -> Callable:
    """(pred, target) -> sum(w l) / sum(w) for the rows whose weights are ``w`` (n,), in scaled units."""
    per_row = row_losses(loss, y_scale)
    total = w.sum()

    def fn(pred, target):
        return (w * per_row(pred, target)).sum() / total

    return fn


def weighted_original(loss: Loss, pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> float:
    """The weighted mean loss in original units (y_scale 1); 0/0 is nan for rows of total weight 0."""
    per_row = row_losses(loss, 1.0, target)
    return float((w * per_row(pred, target)).sum() / w.sum())
