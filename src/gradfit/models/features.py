"""Feature maps: polynomial terms of the inputs, in the power or the Legendre basis."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch
from torch import nn

from gradfit.data.encoding import indicator_column

# ---------------------------------------------------------------- polynomial terms


def polynomial_terms(n_features: int, degree: int, interactions: bool) -> list[tuple[int, ...]]:
    """Exponent tuples of every term of total degree 1..degree, lowest degree first."""
    terms = []
    for deg in range(1, degree + 1):
        if interactions:
            for combo in itertools.combinations_with_replacement(range(n_features), deg):
                e = [0] * n_features
                for i in combo:
                    e[i] += 1
                terms.append(tuple(e))
        else:
            for i in range(n_features):
                e = [0] * n_features
                e[i] = deg
                terms.append(tuple(e))
    return terms


def drop_indicator_powers(terms: list[tuple[int, ...]], names: list[str]) -> list[tuple[int, ...]]:
    """The terms without an indicator's power (x^2 = x for 0/1) or a product of two levels of one category (always 0)."""
    groups = [indicator_column(n) for n in names]
    kept = []
    for e in terms:
        used = [g for g, k in zip(groups, e) if g is not None and k]
        if any(g is not None and k > 1 for g, k in zip(groups, e)) or len(used) != len(set(used)):
            continue
        kept.append(e)
    return kept


def term_name(exponents, names: list[str]) -> str:
    """('x', 2) -> 'x^2'; products joined by '*': 'x1*x2^2'."""
    parts = []
    for name, e in zip(names, exponents):
        if e == 1:
            parts.append(name)
        elif e > 1:
            parts.append(f"{name}^{e}")
    return "*".join(parts)


def _legendre_table(t: torch.Tensor, degree: int) -> list[torch.Tensor]:
    """[P_0(t), ..., P_degree(t)] by the three-term recurrence."""
    out = [torch.ones_like(t)]
    if degree >= 1:
        out.append(t)
    for k in range(1, degree):
        out.append(((2 * k + 1) * t * out[k] - k * out[k - 1]) / (k + 1))
    return out


def _legendre_poly(k: int) -> list[Fraction]:
    """Coefficients of P_k(t) in powers of t, lowest first, exact."""
    p0, p1 = [Fraction(1)], [Fraction(0), Fraction(1)]
    if k == 0:
        return p0
    for j in range(1, k):
        nxt = [Fraction(0)] * (j + 2)
        for i, c in enumerate(p1):
            nxt[i + 1] += Fraction(2 * j + 1, j + 1) * c
        for i, c in enumerate(p0):
            nxt[i] -= Fraction(j, j + 1) * c
        p0, p1 = p1, nxt
    return p1


class FeatureMap(nn.Module):
    """Raw inputs (n, d) -> design (n, m): per-feature affine map, polynomial terms, column scaling.

    t_i = (x_i - shift_i) / scale_i; term_j = prod_i B_{a_ji}(t_i) with B the Legendre or
    monomial basis; z_j = (term_j - col_mean_j) / col_scale_j. All statistics are float64.
    """

    def __init__(self, n_features: int, terms: list[tuple[int, ...]], basis: str):
        super().__init__()
        if basis not in ("legendre", "monomial"):
            raise ValueError(basis)
        self.basis = basis
        self.n_features = n_features
        self.register_buffer("terms", torch.tensor(terms, dtype=torch.int64).reshape(len(terms), n_features))
        self.register_buffer("shift", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_features, dtype=torch.float64))
        self.register_buffer("col_mean", torch.zeros(len(terms), dtype=torch.float64))
        self.register_buffer("col_scale", torch.ones(len(terms), dtype=torch.float64))

    @property
    def n_terms(self) -> int:
        return int(self.terms.shape[0])

    def raw_terms(self, X: torch.Tensor) -> torch.Tensor:
        """(n, d) raw float64 -> (n, m) basis terms before column scaling."""
        T = (X.to(torch.float64) - self.shift.to(X.device)) / self.scale.to(X.device)  # (n, d)
        terms = self.terms.tolist()
        if all(sum(e) == 1 for e in terms) and len(terms) == self.n_features:
            order = [e.index(1) for e in terms]
            return T if order == list(range(self.n_features)) else T[:, order]
        max_deg = int(self.terms.max()) if terms else 0
        if self.basis == "legendre":
            tables = [_legendre_table(T[:, i], max_deg) for i in range(self.n_features)]
        else:
            tables = [[T[:, i] ** k for k in range(max_deg + 1)] for i in range(self.n_features)]
        cols = []
        for e in terms:
            col = None
            for i, k in enumerate(e):
                if k:
                    col = tables[i][k] if col is None else col * tables[i][k]
            cols.append(col)
        return torch.stack(cols, dim=1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """(n, d) raw -> (n, m) float64 design."""
        Z = self.raw_terms(X)
        return (Z - self.col_mean.to(Z.device)) / self.col_scale.to(Z.device)

    def term_polynomials(self) -> list[dict[tuple[int, ...], Fraction]]:
        """Each design column (before column scaling) as an exact polynomial in the raw inputs."""
        d = self.n_features
        shift = [Fraction(float(v)) for v in self.shift.tolist()]
        scale = [Fraction(float(v)) for v in self.scale.tolist()]
        cache: dict[tuple[int, int], dict[int, Fraction]] = {}

        def univariate(i: int, k: int) -> dict[int, Fraction]:
            # B_k((x - s)/h) expanded in powers of x.
            key = (i, k)
            if key not in cache:
                coeffs = _legendre_poly(k) if self.basis == "legendre" else [Fraction(0)] * k + [Fraction(1)]
                s, h = shift[i], scale[i]
                out: dict[int, Fraction] = {}
                for power, c in enumerate(coeffs):
                    if c == 0:
                        continue
                    # c * ((x - s)/h)^power = c/h^power * sum_j C(power, j) x^j (-s)^(power-j)
                    base = c / h**power
                    for j in range(power + 1):
                        v = base * math.comb(power, j) * (-s) ** (power - j)
                        if v:
                            out[j] = out.get(j, Fraction(0)) + v
                cache[key] = out
            return cache[key]

        polys = []
        for e in self.terms.tolist():
            poly: dict[tuple[int, ...], Fraction] = {tuple([0] * d): Fraction(1)}
            for i, k in enumerate(e):
                if not k:
                    continue
                uni = univariate(i, k)
                nxt: dict[tuple[int, ...], Fraction] = {}
                for exps, c in poly.items():
                    for j, v in uni.items():
                        ne = list(exps)
                        ne[i] += j
                        ne = tuple(ne)
                        nxt[ne] = nxt.get(ne, Fraction(0)) + c * v
                poly = nxt
            polys.append(poly)
        return polys
