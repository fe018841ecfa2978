"""How sure a least-squares fit is: standard errors, 95% intervals, residual SD, in original units.

For an MSE fit with p coefficients on n training rows, at the solution found:
    sigma^2 = RSS / (n - p)          cov = sigma^2 (J^T J)^-1

with J the Jacobian of the predictions with respect to the coefficients. This is
the usual asymptotic covariance (exact for linear models with independent
Gaussian noise), the one NIST certifies. Everything is float64.

- Linear and polynomial models: J is the model's own well-conditioned design
  (scaled Legendre or monomial columns, plus the intercept's column of ones), so
  (J^T J)^-1 is accurate; the covariance is then carried to the raw coefficients
  through the linear map from the head's weights to the raw polynomial, built
  exactly (``FeatureMap.term_polynomials``, the map ``coefficients()`` uses).
- Formula models: J from forward-mode autograd at the fitted parameters, on the raw
  rows in float64, inverted through a QR factorization of its column-scaled form.

``ci95`` is value +- t(0.975, n - p) * std_error (results/distributions.py's t quantile). Other losses and MLPs get none of this.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Optional

import torch

from gradfit.data.sources import MemoryRows
from gradfit.models.features import polynomial_terms, term_name
from gradfit.optim.lm import jacobian, stacked_factors  # jacobian: not torch.func.jacfwd, which imports torch._dynamo
from gradfit.parallel import SINGLE, Dist
from gradfit.results import distributions
from gradfit.results.exact import gram

if TYPE_CHECKING:  # pragma: no cover
    from gradfit.data.sources import RowSource

# ---------------------------------------------------------------- summaries


def summarize(names: list[str], values: list[float], variances: list[float], rss: float, n: int, p: int,
              absolute: bool = False) -> dict:
    """{std_errors, ci95, residual_sd, dof} from coefficient variances (sigma^2 already in them).

    ``absolute`` (data.absolute_sigma): the variances are (J'WJ)^-1 with sigma known, and the
    interval is the normal one (value +- 1.96 se), as for curve_fit's absolute_sigma=True."""
    dof = n - p
    tq = float(distributions.norm_ppf(0.975) if absolute else distributions.t_ppf(0.975, dof))
    se = {k: math.sqrt(max(v, 0.0)) for k, v in zip(names, variances)}
    out = {
        "std_errors": se,
        "ci95": {k: [x - tq * se[k], x + tq * se[k]] for k, x in zip(names, values)},
        "residual_sd": math.sqrt(rss / dof),
        "dof": dof,
    }
    if absolute:
        out["absolute_sigma"] = True
    return out


def standard_errors(model, source: RowSource, fit: Optional[dict] = None, rss: Optional[float] = None,
                    absolute: bool = False) -> dict:
    """The uncertainty keys of coefficients.json for a model with standard errors fitted by MSE,
    over every rank's training rows (every rank must call it).

    ``fit``: the exact check's result (its Gram matrix and row count) and ``rss``: the training
    rows' residual sum of squares, when the caller has them (each is otherwise a pass over the rows).
    Empty when it cannot be computed (no residual degrees of freedom, or coefficients the data
    cannot tell apart).
    """
    if not model.has_standard_errors:
        return {}
    weighted = getattr(source, "weights", None) is not None  # (data.weights: WLS, sigma^2 = sum w r^2 / (n - p))
    if model.linear_in_parameters:
        G, _, n = gram(model, source) if fit is None else (fit["gram"], None, fit["n"])
        if weighted:  # (a caller's rss is the unweighted mse times n: the weighted sum is the fit's own)
            rss = None
        if rss is None:
            rss = lambda: source.sum(sum(float(((y - model.predict(X)).pow(2) * (1.0 if w is None else w)).sum())  # noqa: E731
                                         for X, y, w in source.weighted_chunks("train")))
        return linear_uncertainty_from_gram(model, G, rss, n, absolute)
    # The Jacobian of all of this rank's training rows at once (formula models run in memory).
    parts = list(source.weighted_chunks("train"))
    X = torch.cat([X for X, _, _ in parts]) if parts else torch.zeros(0, len(model.spec["features"]), dtype=torch.float64)
    y = torch.cat([y for _, y, _ in parts]) if parts else torch.zeros(0, dtype=torch.float64)
    w = torch.cat([w for _, _, w in parts]) if parts and weighted else None
    return formula_uncertainty(model, X, y, source.dist, w, absolute)


def uncertainty(model, X: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> dict:
    """``standard_errors`` on rows in hand: ``X``, ``y`` (or ``X[rows]``, ``y[rows]``, read chunk by chunk; ``weights`` of X's rows)."""
    return standard_errors(model, MemoryRows.training(X, y, rows, weights))


# ---------------------------------------------------------------- linear and polynomial


def raw_map(model) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """The linear map from the design's coefficients to the raw coefficients: (exponents, M (k, m[+1])).

    Raw coefficient of x^e = sum_j M[e, j] * theta_j (theta: the design's coefficients in target
    units, the intercept's last), as ``RegressionModel.raw_polynomial`` computes it; built in
    exact rational arithmetic, then rounded once.
    """

    fm = model.features
    intercept = bool(model.spec["intercept"])
    polys = fm.term_polynomials()
    mean = [Fraction(float(v)) for v in fm.col_mean.tolist()]
    scale = [Fraction(float(v)) for v in fm.col_scale.tolist()]
    d = fm.n_features
    zero = tuple([0] * d)
    present = set().union(*(p.keys() for p in polys)) if polys else set()
    degree = max((sum(e) for e in present), default=1) or 1
    keys = ([zero] if intercept else []) + [tuple(e) for e in polynomial_terms(d, degree, True) if tuple(e) in present]
    row = {e: i for i, e in enumerate(keys)}
    m = len(polys)
    M = [[Fraction(0)] * (m + (1 if intercept else 0)) for _ in keys]
    for j, poly in enumerate(polys):
        for e, c in poly.items():
            if e in row:
                M[row[e]][j] += c / scale[j]
        if intercept:
            M[row[zero]][j] -= mean[j] / scale[j]
    if intercept:
        M[row[zero]][m] = Fraction(1)
    return keys, torch.tensor([[float(v) for v in r] for r in M], dtype=torch.float64)


def linear_uncertainty_from_gram(model, G: torch.Tensor, rss, n: int, absolute: bool = False) -> dict:
    """linear_uncertainty from the training rows' Gram matrix of the scaled design (intercept column
    last) and their residual sum of squares in original units (a number, or a function giving it):
    what a run whose rows are spread over processes or streamed from disk can sum up."""

    p = int(G.shape[0])
    if n <= p:
        return {}
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) != 0:
        return {}
    C = torch.cholesky_inverse(L)  # (A^T A)^-1 in the design's units
    if not bool(torch.isfinite(C).all()):
        return {}
    rss = float(rss() if callable(rss) else rss)
    sigma2 = 1.0 if absolute else rss / (n - p)  # (absolute: the weights are 1/sigma^2 of known sigmas)
    keys, M = raw_map(model)
    variances = (sigma2 * ((M @ C) * M).sum(1)).tolist()
    coefs = model.coefficients()
    names = [("intercept" if sum(e) == 0 else term_name(e, model.spec["features"])) for e in keys]
    values = [coefs["intercept"] if nm == "intercept" else coefs["coefficients"].get(nm, 0.0) for nm in names]
    return summarize(names, values, variances, rss, n, p, absolute)


# ---------------------------------------------------------------- formula


def formula_jacobian(model, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions (n,), J (n, q)) of a formula model at its parameters, float64 on the CPU; J with
    respect to the q varying parameters in external units (fixed ones left out; for a bounded one this
    is lmfit's covariance, the internal one carried back by the transform's derivative)."""
    head = model.head
    X64 = X.to("cpu", torch.float64)
    theta = head.theta.detach().to("cpu", torch.float64)
    idx = head.varying_index.cpu()

    def f(t):
        return head.evaluate(X64, theta.index_put((idx,), t))

    return jacobian(f, theta[idx])


def covariance_unscaled(J: torch.Tensor, dist: Dist = SINGLE) -> torch.Tensor | None:
    """(J^T J)^-1 through a QR factorization of J with unit columns; None when J lacks full column rank.

    ``dist`` (parallel.Dist): J is this rank's rows; the column norms are summed over the ranks
    and R comes from the QR of every rank's R stacked (see lm.py), the same R up to signs and rounding.
    """
    s = dist.sum((J * J).sum(0)).sqrt()  # (p,)
    finite = dist.sum(int(not bool(torch.isfinite(J).all()))) == 0
    n = dist.sum(int(J.shape[0]))
    if not finite or not bool((s > 0).all()):
        return None
    stacked, _ = stacked_factors(J / s, J.new_zeros(J.shape[0]), dist)  # (one process: J / s itself)
    R = torch.linalg.qr(stacked, mode="r").R
    diag = R.diagonal().abs()
    if float(diag.min()) <= J.shape[1] * torch.finfo(torch.float64).eps * float(diag.max()) * max(n, 1):
        return None
    Rinv = torch.linalg.solve_triangular(R, torch.eye(R.shape[0], dtype=torch.float64), upper=True)
    return (Rinv @ Rinv.T) / torch.outer(s, s)


def formula_uncertainty(model, X: torch.Tensor, y: torch.Tensor, dist: Dist = SINGLE,
                        w: torch.Tensor | None = None, absolute: bool = False) -> dict:
    """Standard errors of a formula model's parameters, from its autograd Jacobian at the solution.

    ``dist``: X and y are this rank's training rows; sums and the factorization cover every rank's
    (every rank must call it). ``w``: row weights (data.weights): J and the residuals are multiplied
    by sqrt(w), which is scipy's ``curve_fit(sigma=1/sqrt(w), absolute_sigma=False)``."""
    n = int(dist.sum(int(X.shape[0])))
    names = model.varying_names()  # (fixed parameters: no standard error, no degree of freedom)
    p = len(names)
    if n <= p:
        return {}
    with torch.no_grad():
        pred, J = formula_jacobian(model, X)
    r = y.to(torch.float64) - pred
    if w is not None:
        root = w.to(torch.float64).sqrt()
        J, r = J * root[:, None], r * root
    C = covariance_unscaled(J, dist)
    rss = dist.sum(float(r.pow(2).sum()))
    if C is None or not math.isfinite(rss):
        return {}
    sigma2 = 1.0 if absolute else rss / (n - p)  # (absolute: curve_fit's absolute_sigma=True)
    values = [model.parameters_dict()[k] for k in names]
    return summarize(names, values, (sigma2 * C.diagonal()).tolist(), rss, n, p, absolute)
