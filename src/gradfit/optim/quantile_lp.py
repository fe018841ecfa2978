"""Quantile regression of a linear-in-parameters model as the linear program it is (scipy's HiGHS).

    minimize  sum_i q u_i + (1 - q) v_i   subject to  A b + u - v = y,  u, v >= 0,  b free

whose optimum is n times the smallest mean pinball loss. A gradient method hovers around that
kink-shaped minimum; the simplex/interior-point solver of HiGHS reaches a vertex of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradfit.errors import TrainingError


@dataclass
class QuantileFit:
    coef: np.ndarray  # (k,) of the design A's columns
    objective: float  # the mean pinball loss at the optimum
    status: str  # scipy's message
    converged: bool


def quantile_lp(A: np.ndarray, y: np.ndarray, q: float) -> QuantileFit:
    """The pinball-loss minimizer over b of A (n, k) b against y (n,), float64."""
    # (imported here for start-up time)
    from scipy import sparse
    from scipy.optimize import linprog

    n, k = A.shape
    eye = sparse.identity(n, format="csr", dtype=np.float64)
    A_eq = sparse.hstack([sparse.csr_matrix(A), eye, -eye], format="csr")
    cost = np.concatenate([np.zeros(k), np.full(n, q), np.full(n, 1.0 - q)])
    bounds = [(None, None)] * k + [(0, None)] * (2 * n)
    res = linprog(cost, A_eq=A_eq, b_eq=y, bounds=bounds, method="highs")
    if res.x is None:
        raise TrainingError(f"the quantile fit's linear program failed: {res.message}",
                                 hint="check the data for infinite values, or use optimizer.kind: adam")
    b = res.x[:k]
    r = y - A @ b
    objective = float(np.maximum(q * r, (q - 1) * r).mean())
    return QuantileFit(b, objective, str(res.message), res.status == 0)
