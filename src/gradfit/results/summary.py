"""statsmodels' OLS/WLS summary numbers from sums over the rows (chunks, ranks).

Every number is defined as statsmodels 0.15 defines it (``OLS(y, X).fit(cov_type=...)``,
``WLS(y, X, weights=w)``, and the diagnostics of its ``summary()``); the rows are seen in
chunks, possibly on several processes, and never held together:

- pass 1, :class:`GramSums`: weighted column means and co-moments of ``[A, y]`` (Chan's
  merge), from which :meth:`GramSums.solve` gives the coefficients, ``(A'WA)^+`` and the
  singular values of ``sqrt(W) A`` (the condition number);
- pass 2, :class:`ResidualSums`: power sums of the weighted residuals, Durbin-Watson's sum,
  the HC0/HC2/HC3 meat matrices (whitened) and ``A'W r`` (one refinement of the coefficients, then
  pass 2 again, as results/exact.py does);
- :func:`finalize`: the summary as a dict of plain floats.

``A`` is a float64 design block in raw (original) units, with the intercept's column of ones
if the model has one; ``y`` its targets; ``w`` optional weights (WLS). Chunks of one object
must come in row order (Durbin-Watson pairs consecutive rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np

from gradfit.results import distributions

COV_TYPES = ("nonrobust", "HC0", "HC1", "HC2", "HC3")
PINV_RCOND = 1e-15  # statsmodels' pinv_extended cut-off, relative to the largest singular value


def _block(A, y, w):
    """(A, y, w) as float64 arrays: (n, k), (n,), (n,) (ones without weights)."""
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
    if A.ndim != 2 or A.shape[0] != y.shape[0] or w.shape[0] != y.shape[0]:
        raise ValueError(f"summary: design {A.shape}, targets {y.shape}, weights {w.shape} do not match")
    return A, y, w


# ---------------------------------------------------------------- pass 1: the normal equations


@dataclass
class GramSums:
    """Pass 1: n, sum w, sum log w, and the weighted mean and co-moments of ``[A, y]``.

    ``names``: one per column of A; ``intercept``: the index of the column of ones, or None
    (its coefficient is reported as "intercept"). Co-moments about the mean rather than
    ``A'WA``, ``A'Wy``, ``y'Wy``: a raw design with large column means (longley's years) loses
    about half its digits in ``A'WA``; ``gram``/``xty``/``yty`` give those sums all the same.
    """

    names: Sequence[str]
    intercept: Optional[int] = None
    n: int = 0
    sum_w: float = 0.0
    sum_log_w: float = 0.0
    mean: Optional[np.ndarray] = None  # (k+1,) weighted means of [A, y]
    comoment: Optional[np.ndarray] = None  # (k+1, k+1) sum w (z - mean)(z - mean)'

    def __post_init__(self):
        self.names = tuple(self.names)
        k = len(self.names)
        if self.mean is None:
            self.mean = np.zeros(k + 1)
            self.comoment = np.zeros((k + 1, k + 1))

    def add(self, A, y, w=None) -> "GramSums":
        """Fold in a chunk of rows: A (n, k) float64, y (n,), w (n,) or None."""
        A, y, w = _block(A, y, w)
        if A.shape[0] == 0:
            return self
        Z = np.concatenate([A, y[:, None]], axis=1)  # (n, k+1)
        sw = float(w.sum())
        mean = (w @ Z) / sw
        Zc = Z - mean
        if self.intercept is not None:  # the column of ones, exactly: no rounding noise in it
            mean[self.intercept] = 1.0
            Zc[:, self.intercept] = 0.0
        log_w = float(np.log(w).sum()) if np.any(w != 1.0) else 0.0
        self._merge(A.shape[0], sw, log_w, mean, (Zc * w[:, None]).T @ Zc)
        return self

    def _merge(self, n, sum_w, sum_log_w, mean, comoment) -> None:
        total = self.sum_w + sum_w
        delta = mean - self.mean
        self.comoment = self.comoment + comoment + np.outer(delta, delta) * (self.sum_w * sum_w / total)
        self.mean = self.mean + delta * (sum_w / total)
        self.n, self.sum_w, self.sum_log_w = self.n + n, total, self.sum_log_w + sum_log_w

    def merge(self, other: "GramSums") -> "GramSums":
        """Add another object's rows (another chunk range or rank); in place, returns self."""
        if other.names != self.names or other.intercept != self.intercept:
            raise ValueError("summary: merging sums of different designs")
        if other.n:
            self._merge(other.n, other.sum_w, other.sum_log_w, other.mean, other.comoment)
        return self

    def reduce(self, gather: Callable[[object], list]) -> "GramSums":
        """The sums over every rank (``gather``: e.g. ``Dist.gather``), merged in rank order."""
        total = GramSums(self.names, self.intercept)
        for part in gather(self):
            total.merge(part)
        return total

    @property
    def gram(self) -> np.ndarray:
        """A'WA, (k, k)."""
        m = self.mean[:-1]
        return self.comoment[:-1, :-1] + self.sum_w * np.outer(m, m)

    @property
    def xty(self) -> np.ndarray:
        """A'Wy, (k,)."""
        return self.comoment[:-1, -1] + self.sum_w * self.mean[:-1] * self.mean[-1]

    @property
    def yty(self) -> float:
        """y'Wy."""
        return float(self.comoment[-1, -1] + self.sum_w * self.mean[-1] ** 2)

    def clear_rank(self, margin: float = 1e4) -> bool:
        """Whether each direction of the scaled co-moments is ``margin`` times above ``_root``'s rank cut (or
        exactly 0, the ones' column): sums that differ at rounding level then make the same rank decision."""
        C = self.comoment
        d = np.sqrt(np.diag(C))
        live = d > 0
        lam = np.linalg.eigvalsh(C[np.ix_(live, live)] / d[live][:, None] / d[live][None, :])
        return bool(lam.size == 0 or lam.min() > margin * lam.max() * C.shape[0] * np.finfo(np.float64).eps)

    def _root(self) -> np.ndarray:
        """S (k+2, k+1) with S'S = [A y]'W[A y]: a square root of the co-moments and the mean row."""
        C = self.comoment
        d = np.sqrt(np.diag(C))
        d[d == 0] = 1.0
        lam, V = np.linalg.eigh(C / d[:, None] / d[None, :])  # scaled: small columns keep their digits
        # Eigenvalues at rounding level (numpy's matrix_rank rule on the scaled co-moments) are 0: an
        # exactly aliased column (x2 = 2 x1) then has no direction of its own, where the square root of
        # its rounding noise (about 1e-8 of the largest singular value) would pass for one.
        lam = np.where(lam > lam.max() * C.shape[0] * np.finfo(np.float64).eps, lam, 0.0)
        root = np.sqrt(lam)[:, None] * V.T * d[None, :]
        return np.vstack([root, math.sqrt(self.sum_w) * self.mean[None, :]])

    def solve(self) -> "Solution":
        """Least squares from the sums, as statsmodels' pinv: min-norm where A is rank-deficient."""
        k = len(self.names)
        if self.n == 0:
            raise ValueError("summary: no rows")
        S = self._root()
        U, s, Vt = np.linalg.svd(S[:, :k], full_matrices=False)
        keep = s > PINV_RCOND * s.max()
        inv_s = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
        coef = Vt.T @ (inv_s * (U.T @ S[:, k]))
        return Solution(
            names=self.names,
            intercept=self.intercept,
            coef=coef,
            cov_unscaled=(Vt.T * inv_s**2) @ Vt,
            half=Vt.T * inv_s,
            singular=s,
            rank=int(np.sum(s > s.max() * k * np.finfo(np.float64).eps)),  # numpy's matrix_rank
            nobs=self.n,
            sum_log_w=self.sum_log_w,
            tss_centered=float(self.comoment[-1, -1]),
            tss_uncentered=self.yty,
        )


@dataclass
class Solution:
    """Coefficients, (A'WA)^+ and what the summary needs from pass 1."""

    names: tuple
    intercept: Optional[int]
    coef: np.ndarray  # (k,)
    cov_unscaled: np.ndarray  # (k, k) (A'WA)^+, statsmodels' normalized_cov_params
    half: np.ndarray  # (k, k) B with B B' = (A'WA)^+ (V / s of the SVD)
    singular: np.ndarray  # (k,) singular values of sqrt(W) A, decreasing
    rank: int
    nobs: int
    sum_log_w: float
    tss_centered: float  # sum w (y - ybar_w)^2
    tss_uncentered: float  # sum w y^2

    def refined(self, residuals: "ResidualSums") -> "Solution":
        """One refinement step against rounding: coef + (A'WA)^+ A'W r, r the residuals of pass 2."""
        return replace(self, coef=self.coef + self.cov_unscaled @ residuals.score)


# ---------------------------------------------------------------- pass 2: the residuals


@dataclass
class ResidualSums:
    """Pass 2 for a solution: sums over the weighted residuals e = sqrt(w) (y - A b).

    Durbin-Watson pairs consecutive rows: within a chunk, and across chunks added in row
    order (the last residual is carried into the next chunk). Sums of rows that are not
    consecutive (strided torchrun shards) merge with ``consecutive=False``, which omits the
    pair at the seam; contiguous shards merged in order with ``consecutive=True`` give the
    one-process value.
    """

    solution: Solution
    power: np.ndarray = None  # (5,) sum e^p for p = 0..4
    dw: float = 0.0  # sum (e_t - e_{t-1})^2
    first: Optional[float] = None
    last: Optional[float] = None
    score: np.ndarray = None  # (k,) A'W r
    meat: np.ndarray = None  # (3, k, k) sum g g' (w r)^2 / (1 - h)^j, g = B' x, j = 0, 1, 2 (HC0, HC2, HC3)
    score_only: bool = False  # a refinement pass: only ``score`` is summed (the meat is most of a pass's cost)

    def __post_init__(self):
        k = len(self.solution.names)
        if self.power is None:
            self.power = np.zeros(5)
            self.score = np.zeros(k)
            self.meat = np.zeros((3, k, k))

    def add(self, A, y, w=None) -> "ResidualSums":
        """Fold in the next chunk of rows (row order): A (n, k) float64, y (n,), w (n,) or None."""
        A, y, w = _block(A, y, w)
        if A.shape[0] == 0:
            return self
        sol = self.solution
        r = y - A @ sol.coef
        if self.score_only:
            self.score += A.T @ (w * r)
            return self
        weighted = bool(np.any(w != 1.0))  # (without weights e, w r and the leverages need no products)
        e = np.sqrt(w) * r if weighted else r  # statsmodels' wresid
        self.power += [e.size, e.sum(), e @ e, (e * e) @ e, (e * e) @ (e * e)]
        de = np.diff(e)
        self.dw += float(de @ de) + (0.0 if self.last is None else (e[0] - self.last) ** 2)
        self.first = float(e[0]) if self.first is None else self.first
        self.last = float(e[-1])
        wr = w * r if weighted else r
        self.score += A.T @ wr
        # The HC covariances B M_j B' with M_j = sum g g' (w r)^2 / (1 - h)^j in whitened
        # coordinates g_i = B' x_i (B B' = (A'WA)^+): statsmodels' sum x x' (w r)^2/(1 - h)^j
        # between two (A'WA)^+, where the product of an ill-conditioned bread with the summed
        # meat would lose digits to cancellation. h_i = w_i |g_i|^2 is a sum of squares.
        G = A @ sol.half  # (n, k)
        h = np.einsum("ij,ij->i", G, G)  # leverage of the row sqrt(w_i) x_i
        if weighted:
            h *= w
        for j, c in enumerate((wr, wr / np.sqrt(1.0 - h), wr / (1.0 - h))):  # (w r)/(1 - h)^(j/2)
            Gj = G * c[:, None]
            self.meat[j] += Gj.T @ Gj
        return self

    def merge(self, other: "ResidualSums", consecutive: bool = False) -> "ResidualSums":
        """Add another object's rows; ``consecutive``: they follow this one's rows directly."""
        if other.first is None:
            return self
        if consecutive and self.last is not None:
            self.dw += (other.first - self.last) ** 2
        self.power = self.power + other.power
        self.dw += other.dw
        self.first = other.first if self.first is None else self.first
        self.last = other.last
        self.score = self.score + other.score
        self.meat = self.meat + other.meat
        return self

    def reduce(self, gather: Callable[[object], list], consecutive: bool = False) -> "ResidualSums":
        """The sums over every rank (``gather``: e.g. ``Dist.gather``), merged in rank order."""
        total = ResidualSums(self.solution, score_only=self.score_only)
        for part in gather(self):
            total.merge(part, consecutive=consecutive)
        return total


def summary_from_chunks(chunks: Callable, names: Sequence[str], intercept: Optional[int] = None, **options) -> dict:
    """The three passes over ``chunks()`` (yields (A, y, w) or (A, y)) in one process: the summary.

    ``options``: those of :func:`finalize`.
    """
    gram = GramSums(names, intercept)
    for block in chunks():
        gram.add(*block)
    sol = gram.solve()
    for _ in range(1):  # pass 2 refines the coefficients once; pass 3 is the summary's
        res = ResidualSums(sol, score_only=True)
        for block in chunks():
            res.add(*block)
        sol = sol.refined(res)
    res = ResidualSums(sol)
    for block in chunks():
        res.add(*block)
    return finalize(res, **options)


# ---------------------------------------------------------------- the summary


def finalize(res: ResidualSums, cov_type: str = "nonrobust", alpha: float = 0.05, use_t: Optional[bool] = None) -> dict:
    """The summary (plain floats) under its JSON keys, as statsmodels' results give them.

    ``cov_type``: nonrobust | HC0 | HC1 | HC2 | HC3; ``alpha``: the intervals' level is 1 - alpha;
    ``use_t``: Student t (else normal) for the coefficients' p-values and intervals; None is
    statsmodels' default, t for nonrobust and normal for the HC covariances. The F test is
    always an F test (for HC: the Wald test that all slopes are 0, as statsmodels' ``fvalue``).
    """
    if cov_type not in COV_TYPES:
        raise ValueError(f"summary: cov_type must be one of {', '.join(COV_TYPES)}, not {cov_type!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"summary: alpha must be in (0, 1), not {alpha!r}")
    use_t = (cov_type == "nonrobust") if use_t is None else use_t
    sol = res.solution
    fit = _fit_statistics(sol, res)
    cov = _covariance(sol, res, cov_type, fit["df_resid"])
    out = {"coefficients": _coefficients(sol, cov, fit["df_resid"], use_t, alpha)}
    out.update(fit)
    out.update(_f_test(sol, res, cov_type, fit))
    out.update(_diagnostics(res))
    out["cond_no"] = _condition_number(sol.singular)
    out["cov_type"] = cov_type
    return out


def _ratio(a: float, b: float) -> float:
    """a / b, nan or +-inf where b is 0 (statsmodels' numpy division)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def _fit_statistics(sol: Solution, res: ResidualSums) -> dict:
    """nobs, df, R^2 (uncentered without an intercept), log-likelihood, AIC, BIC."""
    k_const = 0 if sol.intercept is None else 1
    nobs = float(sol.nobs)
    df_model = float(sol.rank - k_const)
    df_resid = nobs - sol.rank
    ssr = float(res.power[2])
    tss = sol.tss_centered if k_const else sol.tss_uncentered
    r2 = 1.0 - _ratio(ssr, tss)
    llf = -nobs / 2 * math.log(2 * math.pi) - nobs / 2 * math.log(ssr / nobs) - nobs / 2 + 0.5 * sol.sum_log_w
    k_params = df_model + k_const
    return {
        "nobs": nobs,
        "df_model": df_model,
        "df_resid": df_resid,
        "ssr": ssr,
        "ess": tss - ssr,
        "scale": _ratio(ssr, df_resid),
        "r2": r2,
        "adj_r2": 1.0 - _ratio(nobs - k_const, df_resid) * (1.0 - r2),
        "log_likelihood": llf,
        "aic": -2 * llf + 2 * k_params,
        "bic": -2 * llf + math.log(nobs) * k_params,
    }


def _covariance(sol: Solution, res: ResidualSums, cov_type: str, df_resid: float) -> np.ndarray:
    """The coefficients' covariance: scale (A'WA)^+, or the HC sandwich B M B'."""
    if cov_type == "nonrobust":
        return sol.cov_unscaled * _ratio(res.power[2], df_resid)
    B = sol.half
    return B @ _meat(sol, res, cov_type, df_resid) @ B.T


def _meat(sol: Solution, res: ResidualSums, cov_type: str, df_resid: float) -> np.ndarray:
    """The HC meat in whitened coordinates (HC1: HC0's times n / df_resid)."""
    meat = res.meat[{"HC0": 0, "HC1": 0, "HC2": 1, "HC3": 2}[cov_type]]
    return meat * _ratio(sol.nobs, df_resid) if cov_type == "HC1" else meat


def _coefficients(sol: Solution, cov: np.ndarray, df_resid: float, use_t: bool, alpha: float) -> dict:
    """{name: {coef, std_err, t, p, ci_low, ci_high}}, the intercept under "intercept"."""
    se = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = sol.coef / se
    p = 2 * (distributions.t_sf(np.abs(t), df_resid) if use_t else distributions.norm_sf(np.abs(t)))
    q = distributions.t_ppf(1 - alpha / 2, df_resid) if use_t else distributions.norm_ppf(1 - alpha / 2)
    table = {}
    for i, name in enumerate(sol.names):
        key = "intercept" if i == sol.intercept else name
        b, s = float(sol.coef[i]), float(se[i])
        table[key] = {
            "coef": b,
            "std_err": s,
            "t": float(t[i]),
            "p": float(p[i]),
            "ci_low": b - q * s,
            "ci_high": b + q * s,
        }
    return table


def _f_test(sol: Solution, res: ResidualSums, cov_type: str, fit: dict) -> dict:
    """F-statistic and its p-value: explained over residual mean square, or (HC) Wald on the slopes."""
    df_model, df_resid = fit["df_model"], fit["df_resid"]
    if cov_type == "nonrobust":
        f_stat = _ratio(_ratio(fit["ess"], df_model), _ratio(fit["ssr"], df_resid))
        df_num = df_model
    else:
        slopes = [i for i in range(len(sol.names)) if i != sol.intercept]
        if not slopes:
            return {"f_stat": math.nan, "f_pvalue": math.nan}
        f_stat, df_num = _wald(sol.coef[slopes], sol.half[slopes], _meat(sol, res, cov_type, df_resid))
    if df_model == 0:
        return {"f_stat": f_stat, "f_pvalue": math.nan}
    return {"f_stat": f_stat, "f_pvalue": distributions.f_sf(f_stat, df_num, df_resid)}


def _wald(b: np.ndarray, P: np.ndarray, meat: np.ndarray) -> tuple:
    """(b' (P M P')^+ b / q, q) for the q tested coefficients b, as statsmodels' f_test.

    With K = P M^(1/2), b' (K K')^+ b = |K^+ b|^2: K's conditioning, not its square's.
    """
    mu, U = np.linalg.eigh(meat)
    K = P @ (U * np.sqrt(np.clip(mu, 0.0, None)))  # (q, k)
    Uk, s, Vt = np.linalg.svd(K, full_matrices=False)
    q = int(np.sum(s**2 > (s**2).max() * max(K.shape[0], 1) * np.finfo(np.float64).eps))  # matrix_rank(cov)
    keep = s > PINV_RCOND * s.max()
    z = (Uk.T @ b)[keep] / s[keep]
    return float(z @ z) / q, float(q)


def _moments(power: np.ndarray) -> tuple:
    """(n, skew, kurtosis) of the residuals (biased, as scipy.stats.skew and kurtosis)."""
    n = power[0]
    mean = power[1] / n
    raw = power / n  # raw moments E[e^p]
    m2 = raw[2] - mean**2
    m3 = raw[3] - 3 * mean * raw[2] + 2 * mean**3
    m4 = raw[4] - 4 * mean * raw[3] + 6 * mean**2 * raw[2] - 3 * mean**4
    return n, _ratio(m3, m2**1.5), _ratio(m4, m2**2)


def _diagnostics(res: ResidualSums) -> dict:
    """Omnibus (D'Agostino-Pearson), Jarque-Bera, skew, kurtosis, Durbin-Watson of the residuals."""
    n, skew, kurtosis = _moments(res.power)
    jb = n / 6.0 * (skew**2 + 0.25 * (kurtosis - 3.0) ** 2)
    if n >= 8:  # statsmodels' omni_normtest: nan below 8 rows
        omnibus = skewtest_z(n, skew) ** 2 + kurtosistest_z(n, kurtosis) ** 2
        omnibus_p = distributions.chi2_sf(omnibus, 2)
    else:
        omnibus = omnibus_p = math.nan
    return {
        "omnibus": float(omnibus),
        "omnibus_p": omnibus_p,
        "jarque_bera": float(jb),
        "jarque_bera_p": distributions.chi2_sf(jb, 2),
        "skew": skew,
        "kurtosis": kurtosis,
        "durbin_watson": _ratio(res.dw, res.power[2]),
    }


def skewtest_z(n: float, skew: float) -> float:
    """scipy.stats.skewtest's Z from n and the sample skewness (D'Agostino 1970)."""
    y = skew * math.sqrt(((n + 1) * (n + 3)) / (6.0 * (n - 2)))
    beta2 = 3.0 * (n**2 + 27 * n - 70) * (n + 1) * (n + 3) / ((n - 2.0) * (n + 5) * (n + 7) * (n + 9))
    w2 = -1 + math.sqrt(2 * (beta2 - 1))
    delta = 1 / math.sqrt(0.5 * math.log(w2))
    alpha = math.sqrt(2.0 / (w2 - 1))
    y = 1.0 if y == 0 else y
    return delta * math.log(y / alpha + math.sqrt((y / alpha) ** 2 + 1))


def kurtosistest_z(n: float, kurtosis: float) -> float:
    """scipy.stats.kurtosistest's Z from n and the sample kurtosis (Pearson's, 3 for a normal)."""
    mean = 3.0 * (n - 1) / (n + 1)
    var = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) * (n + 1.0) * (n + 3) * (n + 5))
    x = (kurtosis - mean) / math.sqrt(var)
    sqrtbeta1 = 6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9)) * math.sqrt((6.0 * (n + 3) * (n + 5)) / (n * (n - 2) * (n - 3)))
    a = 6.0 + 8.0 / sqrtbeta1 * (2.0 / sqrtbeta1 + math.sqrt(1 + 4.0 / sqrtbeta1**2))
    term1 = 1 - 2 / (9.0 * a)
    denom = 1 + x * math.sqrt(2 / (a - 4.0))
    if denom == 0.0:
        return math.nan
    term2 = math.copysign(((1 - 2.0 / a) / abs(denom)) ** (1 / 3), denom)
    return (term1 - term2) / math.sqrt(2 / (9.0 * a))


def _condition_number(singular: np.ndarray) -> float:
    """statsmodels' "Cond. No.": sqrt(largest / smallest eigenvalue of (sqrt(W) A)'(sqrt(W) A))."""
    eig = singular**2
    return float(np.sqrt(eig[0] / eig[-1])) if eig[-1] > 0 else math.inf
