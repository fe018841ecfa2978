"""Loss functions: mse, mae, huber, quantile (pinball), log_cosh, in the scaled units training works in.

The Huber ``delta`` is given in the target's own units; a loss in scaled units
converts back to original units by a power of the target's scale (``unit_power``),
since each of these losses is homogeneous: L(s*r; s*delta) = s^p * L(r; delta)
(log_cosh is not: it is evaluated on the residual in original units, then divided by s^2).

Huber without a loss.delta: delta = 1.345 * a robust scale (statsmodels' RLM with HuberT).
Linear and polynomial models under optimizer.kind auto or exact estimate that scale from the
fit's own residuals (optim/huber_irls.py: RLM's IRLS, the MAD scale updated to its fixed point;
the run then carries the delta it found). Where that iteration does not apply (mlp and formula
models, lbfgs/adam asked for), the scale is the training target's MAD about its median,
median(|y - median(y)|) / 0.6745 (``robust_delta``): the residuals' MAD of a model that predicts
the median, a scale that outliers do not inflate. A target with a MAD of 0 (more than half its
values equal) falls back to its mean absolute deviation about the median, times sqrt(pi/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradfit.errors import ConfigError

# HuberT's tuning constant (statsmodels' default: 95% efficiency at the normal distribution)
HUBER_T = 1.345
# Phi^-1(3/4): the MAD of a standard normal sample
MAD_NORMAL = 0.6744897501960817
# A loss.delta below this share of the target's robust scale makes the Huber loss the absolute
# error times delta in floating point (its quadratic part never holds a residual): refused.
MIN_DELTA_SHARE = 1e-12


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
        if self.delta is None:
            raise ValueError("the Huber loss's delta is resolved from the data first (losses.from_config with the target)")
        delta = self.delta / y_scale

        def huber(pred, target):
            return F.huber_loss(pred, target, delta=delta)

        return huber

    def original(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        """The loss in original units (poisson: ``pred`` is the mean mu, not its log)."""
        if self.kind == "poisson":
            return float((pred - torch.xlogy(target, pred)).mean())
        if self.kind == "gamma":
            return float((target / pred + pred.log()).mean())
        if self.kind == "huber" and self.delta is None:  # (a checkpoint that recorded no delta: this target's)
            return Loss("huber", robust_delta(target)).original(pred, target)
        return float(self.scaled(1.0)(pred, target))

    def metric(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        """The value of ``metric_name``: the mean Poisson deviance for poisson, the loss otherwise."""
        if self.kind == "poisson":
            return float(poisson_deviance(pred, target))
        if self.kind == "gamma":
            return float(gamma_deviance(pred, target))
        return self.original(pred, target)


def robust_scale(y) -> float:
    """The target's MAD about its median / 0.6745 (the module docstring); its mean absolute deviation
    about the median * sqrt(pi/2) where the MAD is 0; 0.0 for a constant target."""
    y = torch.as_tensor(y, dtype=torch.float64).detach().cpu().flatten()
    y = y[torch.isfinite(y)]
    if y.numel() == 0:
        return 0.0
    # (torch's median of an even count is the lower middle value: numpy's, the mean of the two, as statsmodels)
    import numpy as np  # (imported here for start-up time)

    a = y.numpy()
    dev = np.abs(a - np.median(a))
    mad = float(np.median(dev)) / MAD_NORMAL
    return mad if mad > 0 else float(dev.mean()) * math.sqrt(math.pi / 2)


def robust_delta(y) -> float:
    """The default Huber delta where the fit's own residual scale is not estimated: 1.345 * robust_scale(y)
    (1.0 for a constant target, where any delta gives the same fit)."""
    s = robust_scale(y)
    return HUBER_T * s if s > 0 else 1.0


def check_delta(delta: float, y) -> None:
    """Refuse a loss.delta so small against the target's spread that the Huber loss is delta * |r|."""
    s = robust_scale(y)
    if s > 0 and delta < MIN_DELTA_SHARE * s:
        raise ConfigError(
            f"loss.delta {delta:g} is below {MIN_DELTA_SHARE:g} of the target's robust scale ({s:.4g}, its MAD / 0.6745): "
            "every residual would be in the Huber loss's linear part, which is then the absolute error scaled by delta "
            "(nothing to train on in floating point)",
            hint="leave loss.delta out (1.345 * the robust scale of the residuals), give it in the target's units "
                 f"(e.g. {HUBER_T * s:.4g}), or use loss.kind: mae")


def from_config(cfg, y_train=None) -> Loss:
    """The run's loss; ``y_train``: the training targets (original units), which resolve Huber's default delta."""
    kind, delta = cfg.loss.kind, cfg.loss.delta
    if kind == "huber" and y_train is not None:
        if delta is None:
            delta = robust_delta(y_train)
        else:
            check_delta(delta, y_train)
    return Loss(kind, delta, getattr(cfg.loss, "q", None))
