"""Regression metrics in original units: loss, mse, rmse, mae, r2; and of a model over its sets."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from gradfit.data.moments import Moments
from gradfit.data.sources import SETS
from gradfit.models.weighted import weighted_original
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
        self.weighted: Optional[WeightedSums] = None  # data.weights: the sums with each row's weight

    def add(self, y: torch.Tensor, pred: torch.Tensor, loss, w: Optional[torch.Tensor] = None) -> "MetricSums":
        y, pred = y.to(torch.float64), pred.to(torch.float64)
        n = y.shape[0]
        if n == 0:
            return self
        if w is not None:
            self.loss_name = getattr(loss, "metric_name", None)
            self.weighted = (self.weighted or WeightedSums()).add(y, pred, loss, w.to(torch.float64))
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
        if self.weighted is not None:  # (weighted rows are in one process: config/weighting.py)
            return self.weighted.result(self.loss_name)
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


class WeightedSums:
    """MetricSums' sums with row weights w: sum w, sum w l, sum w r^2, sum w |r|, and the weighted
    mean and centred sum of squares of the target (West's weighted merge), so that r2 is
    1 - sum w r^2 / sum w (y - ybar_w)^2, statsmodels' WLS rsquared."""

    def __init__(self):
        self.sw = self.loss = self.ss_res = self.sum_abs = self.named = self.mean = self.m2 = 0.0

    def add_target(self, y: torch.Tensor, w: torch.Tensor) -> None:
        sw = float(w.sum())
        if sw <= 0:
            return
        mean = float((w * y).sum()) / sw
        m2 = float((w * (y - mean).square()).sum())
        total = self.sw + sw
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.sw * sw / total
        self.mean += delta * sw / total
        self.sw = total

    def add(self, y, pred, loss, w) -> "WeightedSums":
        sw = float(w.sum())
        if sw > 0:
            r = pred - y
            self.loss += weighted_original(loss, pred, y, w) * sw
            if getattr(loss, "metric_name", None) is not None:
                self.named += weighted_original(loss, pred, y, w) * sw  # (log_cosh: the loss itself)
            self.ss_res += float((w * r.square()).sum())
            self.sum_abs += float((w * r.abs()).sum())
        self.add_target(y, w)
        return self

    def result(self, loss_name) -> Optional[dict]:
        if not self.sw > 0:
            return None
        mse = self.ss_res / self.sw
        r2 = 1.0 - self.ss_res / self.m2 if self.m2 > 0 else (1.0 if self.ss_res == 0 else float("-inf"))
        out = {"loss": self.loss / self.sw, "mse": mse, "rmse": math.sqrt(mse), "mae": self.sum_abs / self.sw,
               "r2": r2 if math.isfinite(r2) else None, "weighted": True}
        if loss_name is not None:
            out[loss_name] = self.named / self.sw
        return out


def regression_metrics(y: torch.Tensor, pred: torch.Tensor, loss, w: Optional[torch.Tensor] = None) -> dict:
    """Metrics of predictions against truth (float64 tensors of shape (n,)), in one process (``w``: row weights)."""
    return MetricSums().add(y, pred, loss, w).result(SINGLE)


def evaluate_sets(model: RegressionModel, source: RowSource, loss: Loss) -> dict:
    """Metrics of train, val and test (None where a set is empty) over every rank's rows, in original units
    (weighted means where the source has row weights, data.weights)."""
    sums = {which: MetricSums() for which in SETS}
    if getattr(source, "weights", None) is not None:
        for which in SETS:
            for X, y, w in source.weighted_chunks(which):
                sums[which].add(y, model.predict(X), loss, w)
    else:
        for which, X, y in source.chunks_by_set():
            sums[which].add(y, model.predict(X), loss)
    return {which: sums[which].result(source.dist) for which in SETS}


def target_variance(source: RowSource) -> float:
    """Population variance of the target over every rank's training rows (weighted, with row weights)."""
    if getattr(source, "weights", None) is not None:
        ws = WeightedSums()
        for _, y, w in source.weighted_chunks("train"):
            ws.add_target(y.to(torch.float64), w.to(torch.float64))
        return ws.m2 / ws.sw if ws.sw > 0 else 0.0
    return float(source.moments()[1]["var"][0])


def predict_rows(model: RegressionModel, X: torch.Tensor, rows: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """``model.predict(X[rows])``, gathering the rows chunk by chunk (chunk-sized temporaries)."""
    if rows.numel() <= chunk:
        return model.predict(X[rows])
    out = torch.empty(rows.numel(), dtype=torch.float64)
    for i in range(0, rows.numel(), chunk):
        out[i : i + chunk] = model.predict(X.index_select(0, rows[i : i + chunk]), batch_rows=chunk)
    return out
