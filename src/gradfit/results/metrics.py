"""Regression metrics in original units: loss, mse, rmse, mae, r2; and of a model over its sets."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from gradfit.data.moments import Moments

if TYPE_CHECKING:  # pragma: no cover
    from gradfit.data.split import Dataset, Split
    from gradfit.models.losses import Loss
    from gradfit.models.regression import RegressionModel
    from gradfit.parallel import Dist

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


def predict_rows(model: RegressionModel, X: torch.Tensor, rows: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """``model.predict(X[rows])``, gathering the rows chunk by chunk (chunk-sized temporaries)."""
    if rows.numel() <= chunk:
        return model.predict(X[rows])
    out = torch.empty(rows.numel(), dtype=torch.float64)
    for i in range(0, rows.numel(), chunk):
        out[i : i + chunk] = model.predict(X[rows[i : i + chunk]], batch_rows=chunk)
    return out


def evaluate_sets(model: RegressionModel, ds: Dataset, split: Split, loss: Loss) -> dict:
    """metrics for train, val and test (None where a set is empty), in original units."""
    out = {}
    for name in ("train", "val", "test"):
        idx = getattr(split, name)
        if idx.numel() == 0:
            out[name] = None
            continue
        out[name] = regression_metrics(ds.y[idx], predict_rows(model, ds.X, idx), loss)
    return out


class MetricSums:
    """Sums that give regression_metrics' numbers over rows seen chunk by chunk and rank by rank."""

    def __init__(self, center: float):
        self.center = center  # subtracted from y before squaring (the training mean), against cancellation
        self.v = torch.zeros(6, dtype=torch.float64)  # n, loss*n, sum r^2, sum |r|, sum (y-c), sum (y-c)^2

    def add(self, y: torch.Tensor, pred: torch.Tensor, loss) -> None:
        y, pred = y.to(torch.float64), pred.to(torch.float64)
        n = y.shape[0]
        if n == 0:
            return
        r = pred - y
        yc = y - self.center
        self.v += torch.tensor([n, loss.original(pred, y) * n, float(r.pow(2).sum()), float(r.abs().sum()),
                                float(yc.sum()), float(yc.pow(2).sum())], dtype=torch.float64)

    def result(self, dist: Dist) -> Optional[dict]:
        n, loss_n, ss_res, sum_abs, s1, s2 = dist.sum(self.v).tolist()
        if n == 0:
            return None
        mse = ss_res / n
        ss_tot = max(s2 - s1 * s1 / n, 0.0)
        if ss_tot > 0:
            r2 = 1.0 - ss_res / ss_tot
        else:
            r2 = 1.0 if ss_res == 0 else float("-inf")
        return {"loss": loss_n / n, "mse": mse, "rmse": math.sqrt(mse), "mae": sum_abs / n,
                "r2": r2 if math.isfinite(r2) else None}



def evaluate_sets_over_ranks(model, ds, split, loss, dist: Dist) -> dict:
    """api.evaluate_sets_over_ranks over every rank's rows: metrics of train, val and test (None where empty)."""
    out = {}
    center = float(model.y_shift)
    for name in ("train", "val", "test"):
        idx = getattr(split, name)
        sums = MetricSums(center)
        if idx.numel():
            sums.add(ds.y[idx], model.predict(ds.X[idx]), loss)
        out[name] = sums.result(dist)
    return out



def variance_over_ranks(y: torch.Tensor, dist: Dist) -> float:
    """Population variance_over_ranks of y over every rank's rows."""
    if not dist.enabled:
        return float(y.var(unbiased=False))
    m = Moments().add(y).reduce(dist)
    return float(m["std"][0]) ** 2
