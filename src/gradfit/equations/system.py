"""A system of equations as residuals of a vector of unknowns, with its gradient and Jacobian by autograd."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gradfit.expr.nodes import Equation

if TYPE_CHECKING:  # pragma: no cover (torch is imported where a solve starts, for start-up time)
    import torch

_EPS = 2.220446049250313e-16  # float64 machine epsilon


class _System:
    """Residuals of the parsed equations as a function of one float64 vector of unknowns."""

    def __init__(self, equations: list[Equation], unknowns: list[str]):
        self.equations = equations
        self.unknowns = unknowns

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) -> (m,): LEFT - RIGHT of each equation."""
        import torch

        env = dict(zip(self.unknowns, x.unbind()))
        return torch.stack([eq.residual(env).reshape(()) for eq in self.equations])

    def value_and_grad(self, x: torch.Tensor):
        """Loss sum(r**2) as a float, its gradient (n,), and the residuals (m,)."""
        import torch

        x = x.detach().requires_grad_(True)
        r = self.residuals(x)
        loss = (r * r).sum()
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
            grad = torch.zeros_like(x) if grad is None else grad
        else:  # no equation depends on the unknowns
            grad = torch.zeros_like(x)
        return loss.item(), grad.detach(), r.detach()

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(m, n) at x (torch.autograd.functional, which does not import torch._dynamo)."""
        from torch.autograd.functional import jacobian

        return jacobian(self.residuals, x.detach()).reshape(len(self.equations), len(x))


def _finite(loss: float, grad: torch.Tensor) -> bool:
    import torch

    return math.isfinite(loss) and bool(torch.isfinite(grad).all())


@dataclass
class _Run:
    """One optimizer run from one start."""

    x: torch.Tensor
    loss: float
    residuals: torch.Tensor
    iterations: int
    converged: bool
    stopped: str  # "residuals", "stationary", "stalled", "max_iter"


