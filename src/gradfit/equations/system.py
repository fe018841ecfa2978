"""A system of equations as residuals of a vector of unknowns, with its gradient and Jacobian by autograd."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gradfit.expr.nodes import Equation

if TYPE_CHECKING:  # pragma: no cover (torch is imported where a solve starts, for start-up time)
    import torch

EPS = 2.220446049250313e-16  # float64 machine epsilon


class System:
    """Residuals of the parsed equations as a function of one float64 vector of unknowns."""

    def __init__(self, equations: list[Equation], unknowns: list[str]):
        self.equations = equations
        self.unknowns = unknowns

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) -> (m,): LEFT - RIGHT of each equation."""
        import torch  # (imported here for start-up time)

        env = dict(zip(self.unknowns, x.unbind()))
        return torch.stack([eq.residual(env).reshape(()) for eq in self.equations])

    def sizes(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) -> (m,): max(1, |LEFT|, |RIGHT|) of each equation, the scale its residual is judged on
        (relative for large sides; absolute near zero, where a root of a polynomial lies)."""
        import torch  # (imported here for start-up time)

        env = dict(zip(self.unknowns, x.detach().unbind()))
        sides = [max(1.0, abs(float(eq.left.to_torch(env))), abs(float(eq.right.to_torch(env)))) for eq in self.equations]
        return torch.tensor(sides, dtype=torch.float64)

    def value_and_grad(self, x: torch.Tensor):
        """Loss sum(r**2) as a float, its gradient (n,), and the residuals (m,)."""
        import torch  # (imported here for start-up time)

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
        from torch.autograd.functional import jacobian  # (imported here for start-up time)

        return jacobian(self.residuals, x.detach()).reshape(len(self.equations), len(x))


class Objective:
    """The closure an optimizer calls: the loss sum(r**2) at the parameter ``x``, its gradient
    left in ``x.grad`` by ``backward()``; the residuals (m,) of the last evaluation are kept."""

    def __init__(self, system: System, x: torch.Tensor):
        self.system = system
        self.x = x  # (n,) float64 leaf tensor with requires_grad
        self.at: torch.Tensor | None = None  # where the last evaluation was
        self.residuals: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        import torch  # (imported here for start-up time)

        x = self.x
        x.grad = None
        r = self.system.residuals(x)
        loss = (r * r).sum()
        if loss.requires_grad:
            loss.backward()
        if x.grad is None:  # no equation depends on the unknowns (or on some of them)
            x.grad = torch.zeros_like(x)
        self.at, self.residuals = x.detach().clone(), r.detach()
        return loss.detach()

    def residuals_here(self) -> torch.Tensor:
        """The residuals at the parameter's current value (the last evaluation's, if it was there)."""
        import torch  # (imported here for start-up time)

        if self.at is not None and torch.equal(self.at, self.x.detach()):
            return self.residuals
        return self.system.residuals(self.x.detach()).detach()


def finite(loss: float, grad: torch.Tensor) -> bool:
    import torch  # (imported here for start-up time)

    return math.isfinite(loss) and bool(torch.isfinite(grad).all())


@dataclass
class Run:
    """One optimizer run from one start."""

    x: torch.Tensor
    loss: float
    residuals: torch.Tensor
    iterations: int
    converged: bool
    stopped: str  # "residuals", "stationary", "stalled", "max_iter"



