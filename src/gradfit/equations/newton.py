"""Levenberg-Marquardt on the system's residuals, the Jacobian from autograd (the solver's default
for nonlinear systems).

Each iteration solves the damped Gauss-Newton problem

    minimize ||W (J d + r)||^2 + mu ||D d||^2

as a least-squares problem (``torch.linalg.lstsq``, never the normal equations), W the row
weights fixed at the start (1 / the size of each equation's sides: an equation multiplied by
1e8 weighs the same), D the largest |column| of W J seen so far (max-abs, whose squares cannot underflow) (Marquardt's scaling, as in
MINPACK and ``optim/lm.py``: invariant to the unknowns' units), with Nielsen's damping rule.
Near a simple root it converges quadratically; near a multiple root linearly, which the
stopping rule tolerates (it polishes to far below the tolerance, relative to each equation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradfit.equations.system import EPS, Run, System

if TYPE_CHECKING:  # pragma: no cover
    import torch

_TRIALS = 40  # damped steps tried per iteration before the run counts as stalled
_POLISH = 1e-6  # stop when every |residual| is this far below the tolerance (relative)
_MU_START = 1e-3  # initial damping, for the columns scaled by D


def run_lm(system: System, x0: torch.Tensor, max_iter: int, tol: float) -> Run:
    """Levenberg-Marquardt from x0 (finite residuals there), at most max_iter iterations."""
    import torch  # (imported here for start-up time)

    x = x0.detach().clone()
    weights = 1.0 / system.sizes(x)  # (m,)
    r = system.residuals(x).detach()
    cost = float(((weights * r) ** 2).sum())
    scale = torch.zeros_like(x)  # D
    mu, nu = None, 2.0
    for it in range(max_iter):
        if _polished(system, x, r, tol):
            return Run(x, float((r * r).sum()), r, it, True, "residuals")
        jac = system.jacobian(x) * weights[:, None]  # (m, n)
        f = weights * r
        scale = torch.maximum(scale, jac.abs().amax(dim=0))  # not the 2-norm: its squares underflow
        d_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        grad = jac.T @ f
        if float((grad / d_scale).abs().max()) <= EPS * max(cost, EPS):
            return Run(x, float((r * r).sum()), r, it, True, "stationary")
        if mu is None:
            mu = _MU_START  # the scaled columns have largest entry 1
        step = _damped_step(system, x, jac, f, weights, d_scale, cost, mu, nu)
        if step is None:  # no damping lowers the cost: converged if the equations hold
            return Run(x, float((r * r).sum()), r, it, _polished(system, x, r, tol / _POLISH), "stalled")
        d, r, cost, mu, nu = step
        small = float(d.abs().max()) <= 4 * EPS * float(x.abs().max() + EPS)
        x = x + d
        if small:  # rounding level: no more digits to win
            return Run(x, float((r * r).sum()), r, it + 1, _polished(system, x, r, tol / _POLISH), "stalled")
    return Run(x, float((r * r).sum()), r, max_iter, False, "max_iter")


def _polished(system: System, x: torch.Tensor, r: torch.Tensor, tol: float) -> bool:
    return bool((r.abs() <= tol * _POLISH * system.sizes(x)).all())


def _damped_step(system, x, jac, f, weights, d_scale, cost, mu, nu):
    """An accepted step (d, residuals, cost, mu, nu) after raising mu as needed, or None."""
    import torch  # (imported here for start-up time)

    n = x.numel()
    rhs = torch.cat([-f, torch.zeros(n, dtype=f.dtype)])
    scaled = jac / d_scale[None, :]  # (m, n): in the unknowns d_scale * d, columns of norm <= 1
    eye = torch.eye(n, dtype=f.dtype)
    for _ in range(_TRIALS):
        a = torch.cat([scaled, (mu**0.5) * eye])  # (m + n, n)
        d = torch.linalg.lstsq(a, rhs[:, None], driver="gelsd").solution[:, 0] / d_scale
        r_new = system.residuals(x + d).detach()
        new = float(((weights * r_new) ** 2).sum()) if bool(torch.isfinite(r_new).all()) else float("inf")
        predicted = cost - float(((jac @ d + f) ** 2).sum())
        if new < cost or (new == cost == 0.0):
            rho = (cost - new) / predicted if predicted > 0 else 0.0
            mu *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
            return d, r_new, new, mu, 2.0
        mu, nu = mu * nu, nu * 2
    return None
