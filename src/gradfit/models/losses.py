"""Loss functions: mse, mae, huber, quantile (pinball), log_cosh, in the scaled units training works in.

The Huber ``delta`` is given in the target's own units; a loss in scaled units
converts back to original units by a power of the target's scale (``unit_power``),
since each of these losses is homogeneous: L(s*r; s*delta) = s^p * L(r; delta)
(log_cosh is not: it is evaluated on the residual in original units, then divided by s^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_HUBER_DELTA = 1.0


# The metrics.json name of a loss that is not one of the standard metrics (mse, mae): its mean over a set.
METRIC_NAMES = {"quantile": "pinball", "log_cosh": "log_cosh", "poisson": "poisson_deviance", "gamma": "gamma_deviance"}
# The losses whose model gives log E[y] (the log link): the head's output is exponentiated.
LOG_LINK = ("poisson", "gamma")


def pinball(pred: torch.Tensor, target: torch.Tensor, q: float) -> torch.Tensor:
    """Mean pinball loss: q r for r = target - pred >= 0, (q - 1) r below (scikit-learn's mean_pinball_loss)."""
    r = target - pred
    return torch.maximum(q * r, (q - 1) * r).mean()


def log_cosh(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean log(cosh(r)), computed as |r| + log1p(exp(-2|r|)) - log 2 (no overflow for large |r|)."""
    a = (pred - target).abs()
    return (a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)).mean()


def poisson_deviance(mu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean Poisson deviance 2 (y log(y / mu) - (y - mu)) (scikit-learn's mean_poisson_deviance)."""
    return (2 * (torch.xlogy(y, y) - torch.xlogy(y, mu) - (y - mu))).mean()


def gamma_deviance(mu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean gamma deviance 2 (log(mu / y) + y / mu - 1) (scikit-learn's mean_gamma_deviance)."""
    return (2 * ((mu / y).log() + y / mu - 1)).mean()


@dataclass(frozen=True)
class Loss:
    kind: str  # mse | mae | huber | quantile | log_cosh | poisson | gamma
    delta: float | None = None  # huber, in original units
    q: float | None = None  # quantile

    @property
    def unit_power(self) -> int:
        """Loss in original units = loss in scaled units * y_scale ** unit_power."""
        return 1 if self.kind in ("mae", "quantile", *LOG_LINK) else 2

    @property
    def metric_name(self) -> str | None:
        """The name under which metrics.json reports this loss besides ``loss`` (None: mse, mae)."""
        return METRIC_NAMES.get(self.kind)

    def scaled(self, y_scale: float):
        """The loss function on scaled predictions and targets: (pred, target) -> scalar."""
        if self.kind == "mse":
            return F.mse_loss
        if self.kind == "mae":
            return F.l1_loss
        if self.kind == "quantile":
            q = float(self.q)
            return lambda pred, target: pinball(pred, target, q)  # (homogeneous of degree 1)
        if self.kind == "poisson":
            # on the head's output eta = log mu and the unscaled target: mean(mu - y eta), the
            # negative log-likelihood without its constant (the target is not scaled: y_scale 1)
            return lambda eta, target: (eta.exp() - target * eta).mean()
        if self.kind == "gamma":  # mean(y / mu + log mu), on eta = log mu
            return lambda eta, target: (target * (-eta).exp() + eta).mean()
        if self.kind == "log_cosh":
            # not homogeneous: log cosh of the residual in original units, over y_scale^2 (unit_power 2)
            s = float(y_scale)
            return lambda pred, target: log_cosh(pred * s, target * s) / (s * s)
        delta = (self.delta if self.delta is not None else DEFAULT_HUBER_DELTA) / y_scale

        def huber(pred, target):
            return F.huber_loss(pred, target, delta=delta)

        return huber

    def original(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        """The loss in original units (poisson: ``pred`` is the mean mu, not its log)."""
        if self.kind == "poisson":
            return float((pred - torch.xlogy(target, pred)).mean())
        if self.kind == "gamma":
            return float((target / pred + pred.log()).mean())
        return float(self.scaled(1.0)(pred, target))

    def metric(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        """The value of ``metric_name``: the mean Poisson deviance for poisson, the loss otherwise."""
        if self.kind == "poisson":
            return float(poisson_deviance(pred, target))
        if self.kind == "gamma":
            return float(gamma_deviance(pred, target))
        return self.original(pred, target)


def from_config(cfg) -> Loss:
    return Loss(cfg.loss.kind, cfg.loss.delta, getattr(cfg.loss, "q", None))
