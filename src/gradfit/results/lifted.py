"""The summary's passes over the training design a run holds, for a linear model (results/inference.py).

The summary is statsmodels' OLS on the raw design a_raw = [1, x_1 .. x_d]. A linear model's float64
training design holds each raw column as an affine map of one design column, x_j = m_j + s_j z_j
(FeatureMap: per-feature, then column scaling), so a_raw = T a_z with a_z = [1, z_j ...] in the raw
columns' order. The passes then read Z as it is, rather than gathering the raw rows and building
their design three times (2.4 s against 0.5 s at 800,000 x 32 on 2 cores):

- pass 1 (the co-moments) comes from the exact check's Gram matrix of the same design and one
  product Z'(y - ybar); for a design that is not centred (no standardization), a pass over Z;
- the coefficients and ``half`` are carried to the design's basis (a_raw' b = a_z' T'b, B'a_raw =
  (T'B)' a_z), where the residuals, the leverages and the whitened HC meat are those of the raw
  design; ``A'r`` comes back as T A_z' r.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from gradfit.results.summary import GramSums, Solution

# Rows per block of the passes (8192 x 33 float64: 2 MiB, near a core's cache; larger blocks measured slower).
LIFT_ROWS = 8192
# A design column whose mean is below this fraction of its root mean square counts as centred: its
# co-moments from the Gram matrix, Z'Z - n zbar zbar', lose no digits to cancellation.
CENTRED = 1e-8


@dataclass
class LiftedDesign:
    Z: np.ndarray  # (n, m) float64 training design (any layout)
    y: np.ndarray  # (n,) float64 raw targets
    T: np.ndarray  # (k, k): a_raw = T a_z
    cols: object  # the design columns of the raw columns, in order (a slice when the same)
    gram: Optional[np.ndarray] = None  # (k, k) a_z' a_z, from the exact check

    @classmethod
    def of(cls, model, terms, intercept: bool, design, gram=None) -> Optional["LiftedDesign"]:
        """The lift of a linear model with an intercept whose float64 design (Z, y) is in hand, else None.

        ``gram``: results/exact.py's [Z 1]'[Z 1] of that design (the intercept's column last)."""
        fm = getattr(model, "features", None)
        if design is None or not intercept or fm is None or not terms or any(sum(e) != 1 for e in terms):
            return None
        Z, y = design
        columns = {tuple(e): j for j, e in enumerate(fm.terms.tolist())}
        if Z.device.type != "cpu" or Z.ndim != 2 or Z.shape[1] != fm.n_terms or any(tuple(e) not in columns for e in terms):
            return None
        order = [columns[tuple(e)] for e in terms]
        feature = [list(e).index(1) for e in terms]
        scale = (fm.scale[feature] * fm.col_scale[order]).numpy()
        shift = (fm.shift[feature] + fm.scale[feature] * fm.col_mean[order]).numpy()
        k = len(terms) + 1
        T = np.eye(k)
        T[1:, 0], T[1:, 1:] = shift, np.diag(scale)
        m = Z.shape[1]
        if gram is not None:  # (to a_z's order: the ones first, then the raw columns' design columns)
            at = [m, *order]
            gram = np.asarray(gram, dtype=np.float64)[np.ix_(at, at)]
        cols = slice(None) if order == list(range(m)) else np.asarray(order)
        return cls(Z.numpy(), y.double().numpy(), T, cols, gram)

    def blocks(self):
        """(a_z rows, y, None) in training-row order, LIFT_ROWS at a time (the block's array is reused)."""
        n, k = self.Z.shape[0], self.T.shape[0]
        A = np.empty((min(LIFT_ROWS, n), k))
        for i in range(0, n, LIFT_ROWS):
            b = A[: min(LIFT_ROWS, n - i)]
            b[:, 0] = 1.0
            b[:, 1:] = self.Z[i : i + b.shape[0], self.cols]
            yield b, self.y[i : i + b.shape[0]], None

    def gram_sums(self, names, intercept: int) -> GramSums:
        """Pass 1's sums of the raw columns: means m + s zbar, co-moments s_i s_j C_ij of the design's."""
        return _raw(self._design_sums(names, intercept), self.T)

    def _design_sums(self, names, intercept: int) -> GramSums:
        G, n, k = self.gram, self.Z.shape[0], self.T.shape[0]
        if G is not None and n > 0:
            s = G[0, 1:]
            zbar = s / n
            if np.all(np.abs(zbar) <= CENTRED * np.sqrt(np.diag(G)[1:] / n)):
                ybar = float(self.y.mean())
                yc = self.y - ybar
                syc = float(yc.sum())
                C = np.zeros((k + 1, k + 1))
                C[1:k, 1:k] = G[1:, 1:] - np.outer(s, s) / n
                zy = (self.Z.T @ yc)[self.cols] - zbar * syc
                C[1:k, k] = C[k, 1:k] = zy
                C[k, k] = float(yc @ yc) - syc * syc / n
                mean = np.concatenate([[1.0], zbar, [ybar + syc / n]])
                return GramSums(names, intercept, n, float(n), 0.0, mean, C)
        sums = GramSums(names, intercept)
        for A, y, w in self.blocks():
            sums.add(A, y, w)
        return sums

    def lift(self, sol: Solution) -> Solution:
        """``sol`` (raw columns) for the design's rows."""
        return replace(sol, coef=self.T.T @ sol.coef, half=self.T.T @ sol.half)

    def lower_score(self, score: np.ndarray) -> np.ndarray:
        """A_raw' r from A_z' r."""
        return self.T @ score


def _raw(sums: GramSums, T: np.ndarray) -> GramSums:
    """The design columns' GramSums as the raw columns'."""
    s = np.append(np.diag(T), 1.0)  # (the ones and the target's column are the same: T[0, 0] is 1)
    mean = sums.mean.copy()
    mean[1:-1] = T[1:, 0] + s[1:-1] * mean[1:-1]
    return GramSums(sums.names, sums.intercept, sums.n, sums.sum_w, sums.sum_log_w, mean, sums.comoment * s[:, None] * s[None, :])

