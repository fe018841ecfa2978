"""Regression metrics in original units: loss, mse, rmse, mae, r2."""

from __future__ import annotations

import math

import torch

METRIC_KEYS = ("loss", "mse", "rmse", "mae", "r2")


def regression_metrics(y: torch.Tensor, pred: torch.Tensor, loss) -> dict:
    """Metrics of predictions against truth (float64 tensors of shape (n,))."""
    y = y.to(torch.float64)
    pred = pred.to(torch.float64)
    r = pred - y
    mse = float(r.pow(2).mean())
    ss_tot = float((y - y.mean()).pow(2).sum())
    ss_res = float(r.pow(2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res == 0 else float("-inf")
    return {
        "loss": loss.original(pred, y),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(r.abs().mean()),
        "r2": r2 if math.isfinite(r2) else None,
    }
