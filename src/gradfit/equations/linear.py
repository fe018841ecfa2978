"""Linear systems solved directly: the matrix read off the expression trees, equilibrated, solved
by a backward-stable factorization and refined.

The matrix ``A`` and constants ``c`` (residuals ``A x + c``) come from the trees' affine
coefficients (``expr.nodes.affine_coefficients``), without autograd. Rows and then columns are
scaled by powers of two (exact in floating point) so that each has largest entry about 1:
multiplying an equation by 1e8 or changing an unknown's units does not change the rank or
the verdict. Up to ``DENSE_LIMIT`` entries the equilibrated matrix is factored by SVD, its
rank counted with singular values relative to the largest (threshold max(m, n) * eps, the
precision of the factorization); a square nonsingular one is then solved by LU with partial
pivoting (numpy's ``solve``), others by the SVD; a rank-deficient system gets the solution nearest the start
(minimum-norm from zero) and its free directions from the SVD of the row-scaled matrix, in the
unknowns' own units. Larger systems (thousands of unknowns, as chains of equations are) are
sparse: a square one is factored by sparse LU (scipy's SuperLU), others by LSQR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradfit.expr.nodes import Equation, affine_coefficients

EPS = float(np.finfo(float).eps)
DENSE_LIMIT = 4_000_000  # entries m * n solved densely (32 MB); larger systems go sparse
_REFINE = 4  # steps of iterative refinement


@dataclass
class Coefficients:
    """The system as residuals ``A x + c``: A as (rows, cols, values) triplets, shape (m, n)."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    c: np.ndarray  # (m,)
    shape: tuple[int, int]

    def dense(self) -> np.ndarray:
        a = np.zeros(self.shape)
        np.add.at(a, (self.rows, self.cols), self.values)
        return a

    def sparse(self):
        from scipy.sparse import coo_matrix  # (imported here for start-up time)

        return coo_matrix((self.values, (self.rows, self.cols)), shape=self.shape).tocsr()

    def term_sizes(self, x: np.ndarray) -> np.ndarray:
        """(m,): sum |a_ij x_j| + |c_i|, the size of each equation's terms at x."""
        sizes = np.abs(self.c).copy()
        np.add.at(sizes, self.rows, np.abs(self.values * x[self.cols]))
        return sizes


def read_coefficients(equations: list[Equation], unknowns: list[str]) -> Coefficients | None:
    """The coefficients of an affine system, or None (a term not affine, or not finite)."""
    index = {name: j for j, name in enumerate(unknowns)}
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    c: list[float] = []
    names = frozenset(unknowns)
    for i, eq in enumerate(equations):
        left, right = affine_coefficients(eq.left, names), affine_coefficients(eq.right, names)
        if left is None or right is None:
            return None
        for sign, (coefs, _) in ((1.0, left), (-1.0, right)):
            for name, value in coefs.items():
                rows.append(i)
                cols.append(index[name])
                values.append(sign * value)
        c.append(left[1] - right[1])
    out = Coefficients(np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64),
                       np.array(values, dtype=float), np.array(c, dtype=float), (len(equations), len(unknowns)))
    if not (np.isfinite(out.values).all() and np.isfinite(out.c).all()):
        return None
    return out


@dataclass
class LinearSolution:
    """The point, the rank (None when not determined: a large non-square system) and free directions."""

    x: np.ndarray  # (n,)
    rank: int | None
    null: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (n - rank, n), orthonormal
    iterations: int = 0


def _power_of_two(size: np.ndarray) -> np.ndarray:
    """1 / size rounded to a power of two (1 where size is 0)."""
    out = np.ones_like(size)
    nz = size > 0
    out[nz] = np.exp2(-np.round(np.log2(size[nz])))
    return out


def _scales(coefs: Coefficients) -> tuple[np.ndarray, np.ndarray]:
    """Row and column scales (powers of two): rows of largest entry ~1, then columns."""
    m, n = coefs.shape
    a = np.abs(coefs.values)
    rmax = np.zeros(m)
    np.maximum.at(rmax, coefs.rows, a)
    row = _power_of_two(rmax)
    cmax = np.zeros(n)
    np.maximum.at(cmax, coefs.cols, a * row[coefs.rows])
    return row, _power_of_two(cmax)


def solve_linear(coefs: Coefficients, x0: np.ndarray) -> LinearSolution:
    """The least-squares point nearest x0 (minimum-norm from zero), rank and free directions."""
    m, n = coefs.shape
    row, col = _scales(coefs)
    if m * n <= DENSE_LIMIT:
        return _dense(coefs.dense(), coefs.c, x0, row, col)
    return _sparse(coefs, x0, row, col)


def _dense(a: np.ndarray, c: np.ndarray, x0: np.ndarray, row: np.ndarray, col: np.ndarray) -> LinearSolution:
    m, n = a.shape
    ar = a * row[:, None]  # (m, n) rows scaled
    target = row * -(c + a @ x0)  # ar @ (x - x0) = target
    eq = ar * col[None, :]  # (m, n) rows and columns scaled
    u, s, vt = np.linalg.svd(eq, full_matrices=m < n)
    rank = int((s > s[0] * max(m, n) * EPS).sum()) if s.size and s[0] > 0 else 0
    if rank == n:  # unique (least-squares) point: the column scaling does not change it
        u, s, vt, mat, scale = u[:, :n], s[:n], vt[:n], eq, col
    else:  # free directions in the unknowns' own units: the SVD of the row-scaled matrix
        u, s, vt = np.linalg.svd(ar, full_matrices=m < n)
        u, s, null, vt, mat, scale = u[:, :rank], s[:rank], vt[rank:], vt[:rank], ar, np.ones(n)
    if rank == n == m:  # square and nonsingular: LU with partial pivoting, as numpy's solve
        from scipy.linalg import lu_factor, lu_solve  # (imported here for start-up time)

        lu = lu_factor(eq, check_finite=False)
        y = _refined(lambda v: lu_solve(lu, v, check_finite=False), mat, target)
    else:
        y = _refined(lambda v: vt.T @ ((u.T @ v) / s), mat, target)
    x = x0 + scale * y
    return LinearSolution(x, rank, np.zeros((0, n)) if rank == n else null, _REFINE + 1)


def _refined(solve, mat: np.ndarray, target: np.ndarray) -> np.ndarray:
    """solve(target), refined with residuals computed in extended precision (np.longdouble: the
    scaled matrix is exact in it), which brings an ill-conditioned system (cond * eps < 1) to
    nearly full precision; where longdouble is double there is no refinement."""
    wide, goal = mat.astype(np.longdouble), target.astype(np.longdouble)
    y = np.zeros(mat.shape[1], dtype=np.longdouble)
    # refinement in double precision alone can lose digits on ill-conditioned systems: skip it
    steps = _REFINE if np.finfo(np.longdouble).eps < EPS else 0
    for _ in range(steps + 1):
        y = y + solve((goal - wide @ y).astype(float))
    return y.astype(float)


def _sparse(coefs: Coefficients, x0: np.ndarray, row: np.ndarray, col: np.ndarray) -> LinearSolution:
    from scipy.sparse import diags  # (imported here for start-up time)
    from scipy.sparse.linalg import lsqr, splu  # (imported here for start-up time)

    m, n = coefs.shape
    a = coefs.sparse()
    eq = (diags(row) @ a @ diags(col)).tocsc()  # (m, n) rows and columns scaled
    target = row * -(coefs.c + a @ x0)
    if m == n:
        try:
            lu = splu(eq)
        except RuntimeError:  # exactly singular: least squares below
            lu = None
        if lu is not None:
            diag = np.abs(lu.U.diagonal())
            if diag.min() > diag.max() * n * EPS:
                y = np.zeros(n)
                for _ in range(_REFINE + 1):
                    y = y + lu.solve(target - eq @ y)
                return LinearSolution(x0 + col * y, n, np.zeros((0, n)), _REFINE + 1)
    y = lsqr(eq, target, atol=1e-16, btol=1e-16, iter_lim=20 * max(m, n))[0]
    return LinearSolution(x0 + col * y, None, np.zeros((0, n)), 1)
