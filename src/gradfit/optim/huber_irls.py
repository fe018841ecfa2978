"""Huber's M-estimate of a linear-in-parameters model by iteratively reweighted least squares, in float64.

This is statsmodels' ``RLM(y, A, M=HuberT()).fit()`` with its defaults (robust/robust_linear_model.py):

- start: ordinary least squares; scale s = median(|r|) / Phi^-1(3/4) (``scale.mad(resid, center=0)``);
- repeat: weights w_i = min(1, t / |r_i / s|) with t = 1.345, b = the weighted least-squares fit,
  s = the MAD scale of its residuals again (``update_scale=True``).

statsmodels stops when the sum of rho(r / s) changes by less than 1e-8 (absolute) or after 50
iterations; here the iteration runs to its fixed point instead (the fitted values and the scale
move by less than STEP_RTOL of the scale, or by no more than the rounding of the residuals,
ROUNDING_ULPS * eps * max_i (|y_i| + sum_j |A_ij b_j|), where an ill-conditioned design jitters),
so the answer is the estimate, not where a loose stop left it. At the fixed point b minimizes the Huber loss with
delta = t * s (in the target's units): the optimality test is its gradient, A^T psi(r / s) = 0.

``scale`` given (a fixed loss.delta = t * scale, optimizer.kind: exact): the same iteration with
the scale held, which converges to the minimizer of the Huber loss at that delta.

The covariance is RLM's default (``cov="H1"``, Huber 1981):

    k^2 * (sum psi^2 / (n - p)) * s^2 / (sum psi' / n)^2 * (A^T A)^-1,
    k = 1 + p / n * var(psi') / mean(psi')^2

with psi, psi' at the scaled residuals r / s and p the design's rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

# HuberT's tuning constant: 95% efficiency at the normal distribution (statsmodels' default)
HUBER_T = 1.345
# Phi^-1(3/4): the MAD of a standard normal sample (statsmodels' scale.mad divides by it)
MAD_NORMAL = 0.6744897501960817
MAX_IRLS = 1000
EPS = float(np.finfo(np.float64).eps)
# The fixed point: fitted values and scale that move by less than this share of the scale ...
STEP_RTOL = 1e-13
# ... or by no more than this many ulps of the residuals' terms (longley's design jitters at ~3 ulps)
ROUNDING_ULPS = 16
# Optimality test: |A^T psi(r / s)| at most this share of the sum of |A_ij psi_i| (each column).
GRADIENT_RTOL = 1e-9


@dataclass
class HuberFit:
    coef: np.ndarray  # (k,) of the design A's columns
    scale: float  # the MAD scale of the residuals (target units); the fixed one when given
    delta: float  # t * scale: where the Huber loss turns linear, in target units
    iterations: int
    converged: bool
    gradient: float  # the optimality test's value: max_j |sum_i A_ij psi_i| / sum_i |A_ij psi_i|
    covariance: Optional[np.ndarray]  # (k, k) RLM's H1 covariance; None where A is rank deficient or n <= p
    why: str  # why it did not converge ('' when it did)


def mad_scale(r: np.ndarray) -> float:
    """statsmodels' ``scale.mad(r, center=0)``: median(|r|) / Phi^-1(3/4)."""
    return float(np.median(np.abs(r))) / MAD_NORMAL


def _huber_weights(z: np.ndarray, t: float) -> np.ndarray:
    """HuberT's weights psi(z) / z: 1 inside [-t, t], t / |z| outside."""
    a = np.abs(z)
    w = np.ones_like(z)
    out = a > t
    w[out] = t / a[out]
    return w


def _wls(A: np.ndarray, y: np.ndarray, w: Optional[np.ndarray]) -> np.ndarray:
    """The (weighted) least-squares coefficients, minimum-norm where A is rank deficient."""
    if w is None:
        return np.linalg.lstsq(A, y, rcond=None)[0]
    sw = np.sqrt(w)
    return np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)[0]


def huber_irls(A: np.ndarray, y: np.ndarray, scale: Optional[float] = None, t: float = HUBER_T) -> HuberFit:
    """Fit b for A (n, k) float64 against y (n,); ``scale`` None: estimated (MAD, updated), else held."""
    fixed = scale is not None
    b = _wls(A, y, None)
    r = y - A @ b
    s = float(scale) if fixed else mad_scale(r)
    converged, why, it = False, "", 0
    # (a scale at the rounding of the target is 0: more than half of the rows on the fit)
    tiny = ROUNDING_ULPS * EPS * float(np.abs(y).max()) if y.size else 0.0
    for it in range(1, MAX_IRLS + 1):  # noqa: B007 (the count is reported)
        if not s > tiny:
            why = (f"the residuals' MAD scale is 0 (to rounding: {s:.2g}): more than half of the training rows are "
                   "fitted exactly, so the Huber weights are undefined (statsmodels' RLM stops there too); "
                   "the fit reported is the last weighted least-squares one")
            break
        b_new = _wls(A, y, _huber_weights(r / s, t))
        r_new = y - A @ b_new
        s_new = s if fixed else mad_scale(r_new)
        moved = float(np.abs(r_new - r).max()) if r.size else 0.0
        floor = ROUNDING_ULPS * EPS * float((np.abs(y) + np.abs(A) @ np.abs(b_new)).max()) if r.size else 0.0
        b, r = b_new, r_new
        limit = max(STEP_RTOL * s, floor)
        settled = moved <= limit and abs(s_new - s) <= limit
        s = s_new
        if settled:
            converged = True
            break
    else:
        why = f"the iteration did not settle in {MAX_IRLS} steps"
    gradient = _gradient(A, r, s, t) if s > 0 else float("inf")
    if converged and not gradient <= GRADIENT_RTOL:
        converged, why = False, f"the Huber loss's gradient is {gradient:.2g} of its scale at the last step"
    cov = h1_covariance(A, r, s, t) if s > 0 else None
    return HuberFit(b, s, t * s, it, converged, gradient, cov, why)


def _gradient(A: np.ndarray, r: np.ndarray, s: float, t: float) -> float:
    """The relative gradient of sum rho(r / s): max_j |sum_i A_ij psi_i| / sum_i |A_ij psi_i|."""
    psi = np.clip(r / s, -t, t)
    g = np.abs(A.T @ psi)
    size = np.abs(A).T @ np.abs(psi)
    return float(np.max(np.where(size > 0, g / np.where(size > 0, size, 1.0), 0.0))) if g.size else 0.0


def h1_covariance(A: np.ndarray, r: np.ndarray, s: float, t: float) -> Optional[np.ndarray]:
    """RLM's H1 covariance of b (module docstring); None where A's rank is below its columns or n <= p."""
    n, k = A.shape
    p = int(np.linalg.matrix_rank(A))
    if p < k or n <= p:
        return None
    z = r / s
    psi = np.clip(z, -t, t)
    dpsi = (np.abs(z) <= t).astype(np.float64)
    m = float(dpsi.mean())
    if not m > 0:
        return None
    kk = 1 + p / n * float(dpsi.var()) / m**2
    pinv = np.linalg.pinv(A)
    return kk**2 * (float((psi**2).sum()) / (n - p) * s**2) / m**2 * (pinv @ pinv.T)
