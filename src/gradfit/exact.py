"""Closed-form least squares, used only to check the optimizer (metrics.json's ``exact``).

Never used to initialize, precondition or replace the optimizer.
"""

from __future__ import annotations

import torch


def design_chunks(model, X: torch.Tensor, chunk: int = 1 << 16):
    """Float64 design rows of a model, chunk by chunk, with a column of ones for the intercept."""
    intercept = model.spec["intercept"]
    for i in range(0, X.shape[0], chunk):
        Z = model.features(X[i : i + chunk])  # (rows, m) float64
        if intercept:
            Z = torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype)], dim=1)
        yield i, Z


def gram(model, X: torch.Tensor, y: torch.Tensor):
    """(A^T A, A^T y) of the float64 design A, accumulated in chunks."""
    G = c = None
    for i, A in design_chunks(model, X):
        yy = y[i : i + A.shape[0]].to(torch.float64)
        G = A.T @ A if G is None else G + A.T @ A
        c = A.T @ yy if c is None else c + A.T @ yy
    return G, c


def exact_least_squares(model, X: torch.Tensor, y: torch.Tensor) -> dict:
    """{'loss': MSE of the least-squares fit on (X, y), in original units} for linear/polynomial models."""
    G, c = gram(model, X, y)
    # The design is centred and scaled, so its Gram matrix is well conditioned; eigh handles
    # a singular one (collinear columns) with a pseudo-inverse.
    evals, evecs = torch.linalg.eigh(G)
    keep = evals > evals.max() * G.shape[0] * torch.finfo(torch.float64).eps
    coef = evecs[:, keep] @ ((evecs[:, keep].T @ c) / evals[keep])
    # One refinement step against rounding in the normal equations.
    coef = coef + _solve_residual(model, X, y, coef, evals, evecs, keep)
    rss = 0.0
    for i, A in design_chunks(model, X):
        rss += float((A @ coef - y[i : i + A.shape[0]].to(torch.float64)).pow(2).sum())
    return {"loss": rss / X.shape[0], "coef": coef}


def _solve_residual(model, X, y, coef, evals, evecs, keep):
    g = None
    for i, A in design_chunks(model, X):
        r = y[i : i + A.shape[0]].to(torch.float64) - A @ coef
        g = A.T @ r if g is None else g + A.T @ r
    return evecs[:, keep] @ ((evecs[:, keep].T @ g) / evals[keep])
