"""Penalized least squares (ridge, lasso, elastic net) by cyclic coordinate descent on a Gram matrix.

The objective, in the units of the target, on the design's centred columns (the intercept is
eliminated exactly and never penalized):

    1/(2n) ||y - b0 - Z w||^2 + l1 ||w||_1 + (l2/2) ||w||^2

which is scikit-learn's ElasticNet with alpha = l1 + l2 and l1_ratio = l1 / (l1 + l2) (docs/config.md).
Each coordinate step is exact (soft thresholding), so coefficients that the L1 term sets to zero
are exactly 0.0, not a subgradient's small number. Everything is float64 on k x k matrices: the
rows were read once, into the Gram matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Stop when the largest violation of the optimality (KKT) conditions, relative to the scale of
# the gradient (max |Z^T y| / n), is at most this: about 1e-13 of it leaves the coefficients
# within rounding of the exact minimizer (scikit-learn at tol=1e-12 agrees to 1e-10).
KKT_RTOL = 1e-13
MAX_SWEEPS = 100_000


@dataclass
class PenalizedFit:
    coef: torch.Tensor  # (k,) the design's coefficients (float64)
    intercept: float  # b0 (0.0 without an intercept)
    sweeps: int  # passes over the coordinates
    kkt: float  # the largest optimality violation at the end, relative to max |c|
    converged: bool
    objective: float  # the penalized objective at the end (target units squared)
    mse: float  # the training rows' mean squared error of the fit


def kkt_violation(G: torch.Tensor, c: torch.Tensor, w: torch.Tensor, l1: float, l2: float) -> torch.Tensor:
    """Per coordinate: how far w is from the optimality conditions of the penalized objective
    (G = Z^T Z / n, c = Z^T y / n, both of the centred design)."""
    g = G @ w - c + l2 * w  # the smooth part's gradient
    nonzero = w != 0
    return torch.where(nonzero, (g + l1 * torch.sign(w)).abs(), (g.abs() - l1).clamp(min=0))


def penalized_least_squares(G: torch.Tensor, c: torch.Tensor, n: int, l1: float, l2: float,
                            intercept: bool, yss: float = 0.0) -> PenalizedFit:
    """Minimize the penalized objective given the Gram matrix G of [Z, 1] (the ones column last when
    ``intercept``), c = A^T y and n of the training rows; ``yss``: sum (y - ybar)^2 (with an
    intercept) or sum y^2 (without), for the objective's value only."""
    G = G.to(torch.float64)
    c = c.to(torch.float64)
    if intercept:
        # Centre exactly: Gc = Z^T Z - n m m^T, cc = Z^T y - n m ybar, with m the columns' means.
        m = G[:-1, -1] / n
        ybar = float(c[-1]) / n
        Gz = G[:-1, :-1] - n * torch.outer(m, m)
        cz = c[:-1] - n * m * ybar
    else:
        m, ybar, Gz, cz = None, 0.0, G, c
    Gn, cn = Gz / n, cz / n
    k = Gn.shape[0]
    diag = Gn.diagonal().clone()
    w = torch.zeros(k, dtype=torch.float64)
    scale = max(float(cn.abs().max()) if k else 0.0, 1e-300)
    live = diag > 0  # (a constant column: coefficient 0)
    sweeps, viol = 0, 0.0
    grad = -cn.clone()  # Gn @ w - cn, kept up to date
    for sweeps in range(1, MAX_SWEEPS + 1):
        for j in range(k):
            if not live[j]:
                continue
            wj = float(w[j])
            rho = -(float(grad[j]) - float(diag[j]) * wj)  # cn_j - sum_{i != j} Gn_ji w_i
            new = _soft(rho, l1) / (float(diag[j]) + l2)
            if new != wj:
                grad += Gn[:, j] * (new - wj)
                w[j] = new
        if sweeps % 10 == 0 or k <= 1:
            grad = Gn @ w - cn  # (refresh against drift of the running update)
            viol = float(kkt_violation(Gn, cn, w, l1, l2)[live].max()) / scale if bool(live.any()) else 0.0
            if viol <= KKT_RTOL:
                break
    b0 = ybar - float(m @ w) if intercept else 0.0
    # 1/(2n)||y_c - Z_c w||^2 = (yy_c - 2 w.cz + w.Gz.w) / (2n)
    rss = yss - 2 * float(w @ cz) + float(w @ Gz @ w)
    objective = rss / (2 * n) + l1 * float(w.abs().sum()) + 0.5 * l2 * float(w @ w)
    return PenalizedFit(w, b0, sweeps, viol, viol <= KKT_RTOL, objective, max(rss, 0.0) / n)


def _soft(x: float, t: float) -> float:
    """Soft thresholding: sign(x) max(|x| - t, 0)."""
    if x > t:
        return x - t
    if x < -t:
        return x + t
    return 0.0
