"""Poisson and gamma regression with the log link by Newton's method in float64, to convergence.

    poisson: minimize mean(mu - y log mu),  gamma: minimize mean(y / mu + log mu),  mu = exp(A b)

(the negative log-likelihoods without their constants). The covariance of b is statsmodels'
GLM's: poisson, the inverse Fisher information (A^T diag(mu) A)^-1 (dispersion 1); gamma,
scale * (A^T A)^-1 with the Pearson scale sum(((y - mu) / mu)^2) / (n - k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gradfit.errors import TrainingError

MAX_NEWTON = 100
# Stop when a Newton step moves no coefficient by more than this relative to its size (from
# there Newton's quadratic convergence leaves the error far below rounding).
STEP_RTOL = 1e-12


@dataclass
class GLMFit:
    coef: torch.Tensor  # (k,) of A's columns
    fisher: torch.Tensor  # (k, k) the Fisher information at the solution (its inverse: the covariance)
    iterations: int
    converged: bool
    nll: float  # mean(mu - y log mu) at the solution


def glm_newton(A: torch.Tensor, y: torch.Tensor, start: torch.Tensor, family: str = "poisson") -> GLMFit:
    """Fit b for A (n, k) float64 against y (n,) (poisson: counts >= 0; gamma: > 0), from ``start`` (k,)."""
    gamma = family == "gamma"
    bad = (y <= 0) if gamma else (y < 0)
    if bool(bad.any()) or not bool(torch.isfinite(y).all()):
        need = "a positive target y > 0" if gamma else "a target of counts y >= 0"
        raise TrainingError(f"loss kind {family!r} needs {need} (finite); this target has values outside that",
                            hint="use loss.kind: mse, or transform the target")
    n, k = A.shape
    b = start.clone()

    def nll(b):
        eta = A @ b
        return float((y * (-eta).exp() + eta).mean() if gamma else (eta.exp() - y * eta).mean())

    f = nll(b)
    converged, iterations = False, 0
    for iterations in range(1, MAX_NEWTON + 1):  # noqa: B007 (the count is reported)
        mu = (A @ b).exp()
        w = y / mu if gamma else mu  # the Hessian's weights
        g = A.T @ ((1 - y / mu) if gamma else (mu - y)) / n
        H = A.T @ (A * w[:, None]) / n
        step = torch.linalg.lstsq(H, g[:, None]).solution[:, 0]
        t = 1.0
        for _ in range(60):  # backtracking: Newton's full step can overshoot far from the optimum
            f_new = nll(b - t * step)
            if math.isfinite(f_new) and f_new <= f + 1e-4 * t * float(g @ -step) + 1e-15 * abs(f):
                break
            t /= 2
        b = b - t * step
        f = nll(b)
        if t == 1.0 and float(step.abs().max()) <= STEP_RTOL * max(1.0, float(b.abs().max())):
            converged = True
            break
    mu = (A @ b).exp()
    if gamma:
        scale = float((((y - mu) / mu) ** 2).sum()) / max(n - k, 1)
        fisher = A.T @ A / scale
    else:
        fisher = A.T @ (A * mu[:, None])
    return GLMFit(b, fisher, iterations, converged, f)
