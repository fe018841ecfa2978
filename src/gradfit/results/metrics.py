"""Regression metrics in original units: loss, mse, rmse, mae, r2; and of a model over its sets."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from gradfit.data.moments import Moments
from gradfit.data.sources import SETS
from gradfit.parallel import SINGLE

if TYPE_CHECKING:  # pragma: no cover
    from gradfit.data.sources import RowSource
    from gradfit.models.losses import Loss
    from gradfit.models.regression import RegressionModel
    from gradfit.parallel import Dist

METRIC_KEYS = ("loss", "mse", "rmse", "mae", "r2")


class MetricSums:
    """The metrics as sums over rows seen chunk by chunk and rank by rank.

    Residual sums add up; the target's total sum of squares (for r2) is merged as column
    moments (Chan's merge, in rank order), which keeps it accurate when the target's mean
    is large against its spread.
    """

    def __init__(self):
        self.v = torch.zeros(5, dtype=torch.float64)  # n, loss*n, sum r^2, sum |r|, named metric*n
        self.y = Moments()
        self.loss_name = None

    def add(self, y: torch.Tensor, pred: torch.Tensor, loss) -> "MetricSums":
        y, pred = y.to(torch.float64), pred.to(torch.float64)
        n = y.shape[0]
        if n == 0:
            return self
        r = pred - y
        self.loss_name = getattr(loss, "metric_name", None)
        named = loss.metric(pred, y) * n if self.loss_name is not None else 0.0
        self.v += torch.tensor([n, loss.original(pred, y) * n, float(r.pow(2).sum()), float(r.abs().sum()), named],
                               dtype=torch.float64)
        self.y.add(y)
        return self

    def result(self, dist: Dist) -> Optional[dict]:
        """The metrics over every rank's rows; None when there are none."""
        n, loss_n, ss_res, sum_abs, named_n = dist.sum(self.v).tolist()
        ys = self.y.reduce(dist)  # (every rank takes part, with rows or not)
        if n == 0:
            return None
        mse = ss_res / n
        ss_tot = float(ys["m2"][0])
        if ss_tot > 0:
            r2 = 1.0 - ss_res / ss_tot
        else:
            r2 = 1.0 if ss_res == 0 else float("-inf")
        out = {"loss": loss_n / n, "mse": mse, "rmse": math.sqrt(mse), "mae": sum_abs / n,
               "r2": r2 if math.isfinite(r2) else None}
        if self.loss_name is not None:  # (pinball, log_cosh, poisson_deviance)
            out[self.loss_name] = named_n / n
        return out


def regression_metrics(y: torch.Tensor, pred: torch.Tensor, loss) -> dict:
    """Metrics of predictions against truth (float64 tensors of shape (n,)), in one process."""
    return MetricSums().add(y, pred, loss).result(SINGLE)


def evaluate_sets(model: RegressionModel, source: RowSource, loss: Loss) -> dict:
    """Metrics of train, val and test (None where a set is empty) over every rank's rows, in original units."""
    sums = {which: MetricSums() for which in SETS}
    for which, X, y in source.chunks_by_set():
        sums[which].add(y, model.predict(X), loss)
    return {which: sums[which].result(source.dist) for which in SETS}


def target_variance(source: RowSource) -> float:
    """Population variance of the target over every rank's training rows."""
    return float(source.moments()[1]["var"][0])


def predict_rows(model: RegressionModel, X: torch.Tensor, rows: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """``model.predict(X[rows])``, gathering the rows chunk by chunk (chunk-sized temporaries)."""
    if rows.numel() <= chunk:
        return model.predict(X[rows])
    out = torch.empty(rows.numel(), dtype=torch.float64)
    for i in range(0, rows.numel(), chunk):
        out[i : i + chunk] = model.predict(X[rows[i : i + chunk]], batch_rows=chunk)
    return out
