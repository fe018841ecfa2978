"""Closed-form least squares, used only to check the optimizer (metrics.json's ``exact``).

Never used to initialize, precondition or replace the optimizer. Everything is
accumulated in row chunks of the float64 design, so the memory it needs is a chunk's,
whatever the number of rows; ``rows`` selects rows of X (the training split) without
copying them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch

if TYPE_CHECKING:  # pragma: no cover
    from gradfit.parallel import Dist


CHUNK_ROWS = 1 << 14  # 16384 rows: a few float64 temporaries of 8 MiB at 64 columns


def design_chunks(model, X: torch.Tensor, chunk: int = CHUNK_ROWS, rows: Optional[torch.Tensor] = None):
    """Float64 design rows of a model (of ``X[rows]`` with ``rows``), chunk by chunk, with a column
    of ones for the intercept. Yields (offset, A)."""
    intercept = model.spec["intercept"]
    n = X.shape[0] if rows is None else rows.shape[0]
    for i in range(0, n, chunk):
        Xc = X[i : i + chunk] if rows is None else X[rows[i : i + chunk]]
        Z = model.features(Xc)  # (rows, m) float64
        if intercept:
            Z = torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype)], dim=1)
        yield i, Z


def gram(model, X: torch.Tensor, y: torch.Tensor, rows: Optional[torch.Tensor] = None):
    """(A^T A, A^T y) of the float64 design A (of ``X[rows]``, ``y[rows]``), accumulated in chunks."""
    if rows is not None:
        y = y[rows]
    G = c = None
    for i, A in design_chunks(model, X, rows=rows):
        yy = y[i : i + A.shape[0]].to(torch.float64)
        G = A.T @ A if G is None else G + A.T @ A
        c = A.T @ yy if c is None else c + A.T @ yy
    return G, c


def exact_least_squares(model, X: torch.Tensor, y: torch.Tensor, rows: Optional[torch.Tensor] = None) -> dict:
    """{'loss': MSE of the least-squares fit on (X, y), in original units} for linear/polynomial models.

    ``rows``: the fit on ``X[rows]``, ``y[rows]`` (gathered chunk by chunk).
    """
    G, c = gram(model, X, y, rows)
    if rows is not None:
        y = y[rows]
    # The design is centred and scaled, so its Gram matrix is well conditioned; eigh handles
    # a singular one (collinear columns) with a pseudo-inverse.
    evals, evecs = torch.linalg.eigh(G)
    keep = evals > evals.max() * G.shape[0] * torch.finfo(torch.float64).eps
    coef = evecs[:, keep] @ ((evecs[:, keep].T @ c) / evals[keep])
    # One refinement step against rounding in the normal equations.
    coef = coef + _solve_residual(model, X, y, coef, evals, evecs, keep, rows)
    rss = 0.0
    for i, A in design_chunks(model, X, rows=rows):
        rss += float((A @ coef - y[i : i + A.shape[0]].to(torch.float64)).pow(2).sum())
    return {"loss": rss / y.shape[0], "coef": coef}


def _solve_residual(model, X, y, coef, evals, evecs, keep, rows=None):
    g = None
    for i, A in design_chunks(model, X, rows=rows):
        r = y[i : i + A.shape[0]].to(torch.float64) - A @ coef
        g = A.T @ r if g is None else g + A.T @ r
    return evecs[:, keep] @ ((evecs[:, keep].T @ g) / evals[keep])


def exact_from_chunks(chunks: Callable, k: int, dist: Dist) -> dict:
    """exact.exact_from_chunks over rows seen chunk by chunk and rank by rank.

    ``chunks()`` yields (A, y): float64 design rows with the intercept's column of ones, and
    their targets; it is called three times (normal equations, one refinement, residuals).
    """
    G = torch.zeros(k, k, dtype=torch.float64)
    c = torch.zeros(k, dtype=torch.float64)
    for A, y in chunks():
        G += A.T @ A
        c += A.T @ y
    G, c = dist.sum(G), dist.sum(c)
    evals, evecs = torch.linalg.eigh(G)
    keep = evals > evals.max() * k * torch.finfo(torch.float64).eps

    def solve(rhs):
        return evecs[:, keep] @ ((evecs[:, keep].T @ rhs) / evals[keep])

    coef = solve(c)
    g = torch.zeros(k, dtype=torch.float64)
    for A, y in chunks():  # one refinement step against rounding in the normal equations
        g += A.T @ (y - A @ coef)
    coef = coef + solve(dist.sum(g))
    rss, n = 0.0, 0
    for A, y in chunks():
        rss += float((A @ coef - y).pow(2).sum())
        n += A.shape[0]
    n = int(dist.sum(n))
    # the Gram matrix and the row count serve the standard errors as well (uncertainty.py)
    return {"loss": dist.sum(rss) / max(n, 1), "coef": coef, "gram": G, "n": n}
