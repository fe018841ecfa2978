"""Loss functions: mse, mae, huber, in the scaled units training works in.

The Huber ``delta`` is given in the target's own units; a loss in scaled units
converts back to original units by a power of the target's scale (``unit_power``),
since each of these losses is homogeneous: L(s*r; s*delta) = s^p * L(r; delta).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_HUBER_DELTA = 1.0


@dataclass(frozen=True)
class Loss:
    kind: str  # mse | mae | huber
    delta: float | None = None  # huber, in original units

    @property
    def unit_power(self) -> int:
        """Loss in original units = loss in scaled units * y_scale ** unit_power."""
        return 1 if self.kind == "mae" else 2

    def scaled(self, y_scale: float):
        """The loss function on scaled predictions and targets: (pred, target) -> scalar."""
        if self.kind == "mse":
            return F.mse_loss
        if self.kind == "mae":
            return F.l1_loss
        delta = (self.delta if self.delta is not None else DEFAULT_HUBER_DELTA) / y_scale

        def huber(pred, target):
            return F.huber_loss(pred, target, delta=delta)

        return huber

    def original(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        """The loss in original units."""
        return float(self.scaled(1.0)(pred, target))


def from_config(cfg) -> Loss:
    return Loss(cfg.loss.kind, cfg.loss.delta)
