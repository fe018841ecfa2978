"""Closed-form least squares, used only to check the optimizer (metrics.json's ``exact``).

Never used to initialize, precondition or replace the optimizer. Everything is
accumulated in row chunks of the float64 design, over whatever row source the run has
(in memory, torchrun shards, a Parquet stream: data/sources.py), so the memory it needs
is a chunk's, whatever the number of rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from gradfit.data.sources import MemoryRows
from gradfit.models.gram import pinv_solver

if TYPE_CHECKING:  # pragma: no cover
    from gradfit.data.sources import RowSource


CHUNK_ROWS = 1 << 14  # 16384 rows: a few float64 temporaries of 8 MiB at 64 columns


def design_chunks(model, X: torch.Tensor, chunk: int = CHUNK_ROWS):
    """Float64 design rows of a model, chunk by chunk, with a column of ones for the intercept. Yields (offset, A)."""
    intercept = model.spec["intercept"]
    for i in range(0, X.shape[0], chunk):
        Z = model.features(X[i : i + chunk])  # (rows, m) float64
        if intercept:
            Z = torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype)], dim=1)
        yield i, Z


def _design_rows(model, source: RowSource):
    """(A, y): float64 design rows (the intercept's column of ones last) and targets of the training rows."""
    for X, y in source.chunks("train"):
        for i, A in design_chunks(model, X):
            yield A, y[i : i + A.shape[0]].to(torch.float64)


def _weighted_rows(model, source: RowSource):
    """(A, y, w) as ``_design_rows``, w each row's weight (data.weights; ones where the source has none)."""
    if getattr(source, "weights", None) is None:
        for A, y in _design_rows(model, source):
            yield A, y, None
        return
    for X, y, w in source.weighted_chunks("train"):
        for i, A in design_chunks(model, X):
            yield A, y[i : i + A.shape[0]].to(torch.float64), w[i : i + A.shape[0]].to(torch.float64)


def gram(model, source: RowSource) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(A^T W A, A^T W y, n) of the training rows' float64 design A (W: the row weights, or I), summed over chunks and ranks."""
    k = model.features.n_terms + int(bool(model.spec["intercept"]))
    G = torch.zeros(k, k, dtype=torch.float64)
    c = torch.zeros(k, dtype=torch.float64)
    n = 0
    for A, y, w in _weighted_rows(model, source):
        WA = A if w is None else A * w[:, None]
        G += A.T @ WA
        c += WA.T @ y
        n += A.shape[0]
    return source.sum(G), source.sum(c), int(source.sum(n))


def exact_fit(model, source: RowSource, design: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> dict:
    """{'loss': MSE of the least-squares fit on the training rows, in original units; 'coef'; 'gram'; 'n'}
    for linear/polynomial models, over every rank's rows (three passes: normal equations, one
    refinement, residuals).

    ``design``: (Z, y), the float64 training design in hand (as the run trained on it, any layout)
    and the raw targets of the same rows, for a source in one process without row weights: the
    same sums from whole-matrix products, without gathering the rows and building their design
    three times (0.1 s instead of 2-6 s at 1,000,000 x 32 on 2 cores)."""
    if design is not None:
        return _exact_fit_in_hand(model, *design)
    G, c, n = gram(model, source)
    solve = pinv_solver(G)[0]  # (the design is centred and scaled: G is well conditioned)
    coef = solve(c)
    g = torch.zeros_like(c)
    for A, y, w in _weighted_rows(model, source):  # one refinement step against rounding in the normal equations
        g += A.T @ ((y - A @ coef) * (1.0 if w is None else w))
    coef = coef + solve(source.sum(g))
    rss, sum_w = 0.0, 0.0
    for A, y, w in _weighted_rows(model, source):
        sq = (A @ coef - y).pow(2)
        rss += float(sq.sum() if w is None else (w * sq).sum())
        sum_w += A.shape[0] if w is None else float(w.sum())
    # the Gram matrix and the row count serve the standard errors as well (uncertainty.py);
    # with row weights (WLS) the loss is the weighted mean, sum w r^2 / sum w, and rss the weighted sum
    sum_w = source.sum(sum_w)
    return {"loss": source.sum(rss) / (sum_w if sum_w > 0 else 1), "coef": coef, "gram": G, "n": n, "rss": source.sum(rss)}


def _exact_fit_in_hand(model, Z: torch.Tensor, y: torch.Tensor) -> dict:
    """``exact_fit`` from the float64 design Z (n, m) of the training rows and their targets y (n,)."""
    intercept = bool(model.spec["intercept"])
    Z, y = Z.to(torch.float64), y.to(device=Z.device, dtype=torch.float64)
    n, m = Z.shape
    G = Z.T @ Z
    c = Z.T @ y
    if intercept:  # (the column of ones last, as design_chunks puts it)
        s = Z.sum(0)
        G = torch.cat([torch.cat([G, s[:, None]], 1), torch.cat([s, s.new_tensor([float(n)])])[None, :]], 0)
        c = torch.cat([c, y.sum()[None]])
    G, c = G.cpu(), c.cpu()
    solve = pinv_solver(G)[0]  # (the design is centred and scaled: G is well conditioned)

    def residuals(coef):  # y - A coef
        coef = coef.to(Z.device)
        return y - (Z @ coef[:m] + (coef[m] if intercept else 0.0))

    coef = solve(c)
    r = residuals(coef)
    g = Z.T @ r
    coef = coef + solve((torch.cat([g, r.sum()[None]]) if intercept else g).cpu())  # one refinement step
    r = residuals(coef)
    rss = float(r @ r)
    return {"loss": rss / (n if n > 0 else 1), "coef": coef, "gram": G, "n": n, "rss": rss}


def exact_least_squares(model, X: torch.Tensor, y: torch.Tensor, rows: Optional[torch.Tensor] = None,
                        weights: Optional[torch.Tensor] = None) -> dict:
    """``exact_fit`` on rows in hand: ``X``, ``y`` (or ``X[rows]``, ``y[rows]``, read chunk by chunk; ``weights``: (n,) of X's rows)."""
    return exact_fit(model, MemoryRows.training(X, y, rows, weights))
