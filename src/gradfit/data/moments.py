"""Column moments (mean, spread, extremes) accumulated chunk by chunk and merged over ranks."""

from __future__ import annotations

import math

import torch

from gradfit.parallel import Dist

# ---------------------------------------------------------------- statistics over chunks and ranks


class Moments:
    """Column statistics accumulated chunk by chunk (Chan's merge), then over ranks.

    Gives n, mean, var and std (population), m2 (the sum of squared deviations from the mean), min,
    max and rms of each column: what the feature map's and the target's scaling need, and
    the metrics' total sum of squares, without holding the rows.
    """

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.sumsq = self.lo = self.hi = None
        # Of rows that came as one chunk: torch's own variance, so that rows in hand get exactly the
        # statistics torch computes of them (m2 / n differs in the last bits); None after a merge.
        self.var = None

    def add(self, A: torch.Tensor) -> "Moments":
        """Fold in a chunk of rows, (n, k) or (n,), float64."""
        A = A.to(torch.float64)
        if A.ndim == 1:
            A = A[:, None]
        nb = int(A.shape[0])
        if self.mean is None:
            k = A.shape[1]
            self.mean = torch.zeros(k, dtype=torch.float64)
            self.m2 = torch.zeros(k, dtype=torch.float64)
            self.sumsq = torch.zeros(k, dtype=torch.float64)
            self.lo = torch.full((k,), math.inf, dtype=torch.float64)
            self.hi = torch.full((k,), -math.inf, dtype=torch.float64)
        if nb == 0:
            return self
        A = A.cpu()
        self.var = A.var(0, unbiased=False) if self.n == 0 else None
        mb = A.mean(0)
        # amin/amax: min(0)/max(0) also find the indices, ten times slower; squared in place.
        self._merge(nb, mb, (A - mb).square_().sum(0))
        self.sumsq += (A * A).sum(0)
        self.lo = torch.minimum(self.lo, A.amin(0))
        self.hi = torch.maximum(self.hi, A.amax(0))
        return self

    def _merge(self, nb: int, mb: torch.Tensor, m2b: torch.Tensor) -> None:
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta.pow(2) * (self.n * nb / n)
        self.n = n

    def reduce(self, dist: Dist) -> dict:
        """The statistics over every rank's rows (merged in rank order, so equal on all ranks)."""
        if dist.enabled:
            parts = dist.gather((self.n, self.mean, self.m2, self.sumsq, self.lo, self.hi))
            k = next((p[1].shape[0] for p in parts if p[1] is not None), 0)
            total = Moments().add(torch.zeros(0, k, dtype=torch.float64))
            for n, mean, m2, sumsq, lo, hi in parts:
                if n:
                    total._merge(n, mean, m2)
                    total.sumsq += sumsq
                    total.lo = torch.minimum(total.lo, lo)
                    total.hi = torch.maximum(total.hi, hi)
        else:  # (no rows added at all: no columns either)
            total = self if self.mean is not None else Moments().add(torch.zeros(0, 0, dtype=torch.float64))
        n = max(total.n, 1)
        var = total.var if total.var is not None else total.m2 / n
        return {
            "n": total.n,
            "mean": total.mean,
            "var": var,
            "std": var.sqrt(),
            "m2": total.m2,
            "min": total.lo,
            "max": total.hi,
            "rms": (total.sumsq / n).sqrt(),
        }



# ---------------------------------------------------------------- statistics float64 cannot hold

TINY = 2.2250738585072014e-308  # float64's smallest normal number: below it a spread has lost its digits


def check_scaling(stats: dict, names: list[str]) -> None:
    """Refuse columns whose scaling statistics (``Moments.reduce``) float64 cannot hold, with the true cause.

    Values near 1e308 overflow the sums of squares (the spread becomes inf, and training a NaN loss);
    distinct values all subnormal (below 2.2e-308) have a spread that underflows to 0 or nearly
    (so that they looked like a single value, and a coefficient of 1 / spread overflows).
    """
    from gradfit.errors import DataError  # (a plain module)

    lo, hi = stats["min"].tolist(), stats["max"].tolist()
    spread = [stats[k].tolist() for k in ("mean", "std", "rms")]
    for j, name in enumerate(names):
        if not (math.isfinite(lo[j]) and math.isfinite(hi[j])):
            continue  # (non-finite values are refused where the rows are read)
        big = f"{max(abs(lo[j]), abs(hi[j])):.1e}".replace("e+", "e")
        if not all(math.isfinite(s[j]) for s in spread):
            raise DataError(
                f"the data's scaling statistics overflow: values up to {big} in column {name!r} "
                "(their squares exceed float64's largest number, 1.8e308), so the column cannot be standardized",
                hint=f"rescale the column (divide {name!r} by 1e300, say: its values must stay far below 1e154)",
            )
        if hi[j] > lo[j] and (hi[j] - lo[j] < TINY or not spread[1][j] > 0):
            raise DataError(
                f"column {name!r} has distinct values, from {lo[j]:.3g} to {hi[j]:.3g}, but they are subnormal "
                "(their spread is below float64's smallest normal number, 2.2e-308), so it cannot be scaled "
                "and its coefficient would overflow",
                hint=f"rescale the column (multiply {name!r} by 1e300, say)",
            )
