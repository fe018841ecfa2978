"""Where multi-start draws its starts: a box derived from the system, or the one given (--range).

Along each unknown (the others at their starting values), an equation that is a polynomial
in it (degree <= ``_MAX_DEGREE``, detected by interpolation and checked at other points) bounds
its real roots by its companion matrix's eigenvalues; the box's half-width for that unknown is
1.25 times the largest root modulus over the equations (at least 1, and at least the given
starting values). Starts are a Latin hypercube over the box (each unknown's range cut into as
many strata as starts, one start in each), so that 30 starts land in every unit-wide basin of a
polynomial with roots up to about +-7.
"""

from __future__ import annotations

import numpy as np

from gradfit.equations.system import System

_MAX_DEGREE = 12
_CHECKS = (0.3141, -0.7183, 0.5772)  # points (relative to the sampling interval) checking a fit


def _polynomial_roots(probe) -> float | None:
    """Largest root modulus of f(t), a polynomial given by ``probe(ts) -> f(ts)``, or None."""
    checks = probe(np.array(_CHECKS))
    if not np.isfinite(checks).all():
        return None
    for degree in range(1, _MAX_DEGREE + 1):
        ts = np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1))  # Chebyshev nodes on [-1, 1]
        fs = probe(ts)
        if not np.isfinite(fs).all():
            return None
        poly = np.polynomial.Chebyshev.fit(ts, fs, degree, domain=[-1, 1])
        size = max(np.abs(fs).max(), np.abs(checks).max(), 1e-300)
        if np.abs(poly(np.array(_CHECKS)) - checks).max() <= 1e-9 * size:
            coefs = poly.convert(kind=np.polynomial.Polynomial).coef
            big = np.abs(coefs) > 1e-12 * np.abs(coefs).max()
            coefs = coefs[: int(np.nonzero(big)[0].max()) + 1]
            if len(coefs) < 2:
                return None
            return float(np.abs(np.roots(coefs[::-1])).max())
    return None


def start_box(system: System, centre: np.ndarray) -> np.ndarray:
    """(n,): half-widths of the box of random starts, one per unknown."""
    import torch  # (imported here for start-up time)

    n = len(system.unknowns)
    half = np.maximum(1.0, np.abs(centre))
    for j in range(n):

        def probe(ts: np.ndarray, j: int = j, eq=None) -> np.ndarray:
            env = {name: float(centre[k]) for k, name in enumerate(system.unknowns)}
            env[system.unknowns[j]] = torch.tensor(ts, dtype=torch.float64)
            with torch.no_grad():
                return np.broadcast_to(eq.residual(env).numpy(), ts.shape).astype(float)

        for eq in system.equations:
            if system.unknowns[j] not in eq.names:
                continue
            root = _polynomial_roots(lambda ts, eq=eq: probe(ts, eq=eq))
            if root is not None and np.isfinite(root):
                half[j] = max(half[j], 1.25 * root)
    return half


def latin_hypercube(count: int, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(count, n) points in the box, one per stratum of each coordinate."""
    n = len(low)
    strata = np.stack([rng.permutation(count) for _ in range(n)], axis=1)  # (count, n)
    u = (strata + rng.random((count, n))) / count
    return low + u * (high - low)
