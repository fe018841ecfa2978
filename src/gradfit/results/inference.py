"""The run's statistical summary (``summary.json``, ``gradfit summary``): sums at training time, numbers later.

At the end of training a linear or polynomial model with MSE loss, :func:`summary_sums` passes over
the training rows of the run's row source (in memory, torchrun shards or a Parquet stream) and keeps
results/summary.py's sums, never the rows: the normal equations' co-moments, then the residuals' power
sums, Durbin-Watson's sum and the HC meat matrices (a second pass, so HC2/HC3's leverages are
available for streamed rows too). :func:`read_summary` turns the stored sums into statsmodels' numbers
for any ``cov_type`` and ``alpha``, from the run directory alone. A formula model's summary (nonlinear
least squares, bounds and fixed parameters) is results/formula_inference.py's, read through the same calls.

The design is the model's in raw (original) units: one column per reported coefficient (the raw
monomials of coefficients.json) and the intercept's column of ones first, as statsmodels'
``OLS(y, add_constant(X))`` sees it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gradfit.errors import GradfitError
from gradfit.models.features import polynomial_terms, term_name
from gradfit.results import distributions
from gradfit.results.formula_inference import FORMULA_KIND, formula_prediction_intervals, formula_sums, read_formula_summary
from gradfit.results.lifted import LiftedDesign
from gradfit.results.summary import COV_TYPES, GramSums, ResidualSums, Solution, finalize

SUMMARY_NAME = "summary.json"
SUMMARY_VERSION = 1


class SummaryError(GradfitError):
    """A run has no summary, or the summary asked for cannot be made."""


def summary_supported(cfg, model) -> Optional[str]:
    """None when the run gets a summary; else the reason it does not."""
    if cfg.loss.kind != "mse":
        return f"loss.kind is {cfg.loss.kind!r}; the summary is defined for mse"
    if cfg.model.kind == "formula":
        return None  # (nonlinear least squares: results/formula_inference.py)
    if not model.linear_in_parameters or "features" not in getattr(model, "spec", {}):
        return f"model.kind {cfg.model.kind!r} is not linear or polynomial"
    if model.spec.get("link") == "log":
        return "the model has a log link"
    if getattr(cfg.model, "penalty", None) is not None:
        return "the model is penalized; the OLS summary would not describe it"
    return None


def raw_terms(model) -> tuple[list[tuple[int, ...]], list[str], bool]:
    """(exponents, names, intercept) of the raw design: one column per coefficient of coefficients.json."""
    names = model.spec["features"]
    poly = model.raw_polynomial()
    zero = tuple([0] * len(names))
    degree = max(sum(e) for e in poly)
    order = [tuple(t) for t in polynomial_terms(len(names), max(degree, 1), True)]
    terms = [e for e in order if e in poly and e != zero]
    return terms, [term_name(e, names) for e in terms], bool(model.spec["intercept"])


def raw_design(terms: list[tuple[int, ...]], intercept: bool, X) -> np.ndarray:
    """(n, k) float64: the ones column (if ``intercept``) first, then prod_i x_i^e_i for each term (X: (n, d) tensor or array)."""
    X = X.to(torch.float64).cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X, dtype=np.float64)
    out = np.empty((X.shape[0], len(terms) + int(intercept)))
    if intercept:
        out[:, 0] = 1.0
    if terms and all(sum(e) == 1 for e in terms):  # (a linear model: its columns as they are, one copy)
        order = [list(e).index(1) for e in terms]
        out[:, int(intercept):] = X if order == list(range(X.shape[1])) else X[:, order]
        return out
    # Each column written in place, its first factor copied (1 * x^k is x^k exactly), x^1 not raised:
    # the numbers of the product of powers, at a fifth of the time of building it column by column.
    for j, e in enumerate(terms, start=int(intercept)):
        col, first = out[:, j], True
        for i, k in enumerate(e):
            if k:
                v = X[:, i] if k == 1 else X[:, i] ** k
                if first:
                    col[...] = v
                    first = False
                else:
                    col *= v
        if first:
            col[...] = 1.0
    return out


def _blocks(source, terms, intercept):
    """(A, y, w) of this rank's training rows in row order (w: a source's weights, or None)."""
    for X, y, w in source.weighted_chunks("train"):  # (WLS as statsmodels' WLS(y, A, weights=w) with data.weights)
        w = w.to(torch.float64).cpu().numpy() if w is not None else None
        yield raw_design(terms, intercept, X), y.to(torch.float64).cpu().numpy(), w


def summary_sums(model, source, design=None, gram=None) -> Optional[dict]:
    """summary.json's content: the sums of the training rows over every rank (three passes); None when
    the sums cannot be formed (every rank gets the same reduced sums, so the same answer).

    ``design``: (Z, y), the float64 training design the run holds and its raw targets
    (train/prepared.py's ``training_design``), and ``gram``: the exact check's [Z 1]'[Z 1] of it
    (results/exact.py); a linear model's passes then read Z, not the rows (results/lifted.py)."""
    if model.spec.get("kind") == FORMULA_KIND:
        return formula_sums(model, source)
    try:
        with np.errstate(all="ignore"):  # (a row of leverage 1 makes HC2/HC3 infinite, as in statsmodels)
            return _summary_sums(model, source, design, gram)
    except (ValueError, np.linalg.LinAlgError):
        return None


def _summary_sums(model, source, design=None, gram=None) -> dict:
    terms, names, intercept = raw_terms(model)
    all_names = (["intercept"] if intercept else []) + names
    idx = 0 if intercept else None
    lift = LiftedDesign.of(model, terms, intercept, design, gram)
    sums = lift.gram_sums(all_names, idx) if lift is not None else None  # (from the design's sums, as the raw columns')
    if sums is not None and not sums.clear_rank():  # (collinear or nearly: the rank is decided on the raw rows)
        lift = sums = None
    blocks = (lambda: _blocks(source, terms, intercept)) if lift is None else lift.blocks
    gather = source.dist.gather
    if sums is None:
        sums = GramSums(all_names, idx)
        for A, y, w in blocks():
            sums.add(A, y, w)
    sol = sums.reduce(gather).solve()
    # (ranks hold contiguous row ranges in rank order where the rows are sharded; strided shards lose the seams' DW pairs)
    for final in (False, True):  # pass 2 refines the coefficients once (results/exact.py does the same); pass 3 is kept
        res = ResidualSums(sol if lift is None else lift.lift(sol), score_only=not final)
        for A, y, w in blocks():
            res.add(A, y, w)
        res = res.reduce(gather, consecutive=True)
        if lift is not None:  # (back to the raw columns; every other sum is the same in both)
            res.solution, res.score = sol, lift.lower_score(res.score)
        if not final:
            sol = sol.refined(res)
    weighted = getattr(source, "weights", None) is not None  # (data.weights: statsmodels' WLS)
    return {"version": SUMMARY_VERSION, "terms": [list(e) for e in terms], "weighted": weighted, **_dump(res)}


def _dump(res: ResidualSums) -> dict:
    s = res.solution
    arr = lambda a: np.asarray(a, dtype=np.float64).tolist()  # noqa: E731
    return {
        "solution": {
            "names": list(s.names), "intercept": s.intercept, "coef": arr(s.coef), "cov_unscaled": arr(s.cov_unscaled),
            "half": arr(s.half), "singular": arr(s.singular), "rank": s.rank, "nobs": s.nobs,
            "sum_log_w": s.sum_log_w, "tss_centered": s.tss_centered, "tss_uncentered": s.tss_uncentered,
        },
        "residuals": {
            "power": arr(res.power), "dw": res.dw, "first": res.first, "last": res.last,
            "score": arr(res.score), "meat": arr(res.meat),
        },
    }


def load_sums(stored: dict) -> ResidualSums:
    """The ResidualSums of a summary.json's content."""
    s, r = stored["solution"], stored["residuals"]
    a = np.asarray
    sol = Solution(
        names=tuple(s["names"]), intercept=s["intercept"], coef=a(s["coef"]), cov_unscaled=a(s["cov_unscaled"]),
        half=a(s["half"]), singular=a(s["singular"]), rank=int(s["rank"]), nobs=int(s["nobs"]),
        # (null: -inf, a row of weight 0, whose log-likelihood term statsmodels' WLS also makes -inf)
        sum_log_w=float(s["sum_log_w"]) if s["sum_log_w"] is not None else -math.inf, tss_centered=float(s["tss_centered"]), tss_uncentered=float(s["tss_uncentered"]),
    )
    return ResidualSums(sol, power=a(r["power"]), dw=float(r["dw"]), first=r["first"], last=r["last"],
                        score=a(r["score"]), meat=a(r["meat"]))


def run_summary_path(run: Path) -> Path:
    """summary.json of a run directory (or of the directory holding a checkpoint file)."""
    run = Path(run)
    d = run.parent if run.is_file() else run
    if not d.is_dir():
        raise SummaryError(f"{run} is not a run directory", hint="pass the directory 'gradfit train' wrote (see 'gradfit runs')")
    p = d / SUMMARY_NAME
    if not p.is_file():
        raise SummaryError(
            f"{d} has no {SUMMARY_NAME}",
            hint="the summary is written by 'gradfit train' for linear, polynomial and formula models with loss mse; "
            "retrain the run with this version (its metrics.json 'warnings' say why a summary was left out)",
        )
    return p


def read_summary(run: Path, cov_type: str = "nonrobust", alpha: float = 0.05) -> dict:
    """The summary of a run directory under the JSON keys the README lists (statsmodels' numbers), plus ``notes``."""
    import json

    if cov_type not in COV_TYPES:
        raise SummaryError(f"--cov {cov_type!r} is not a covariance type", hint=f"use one of {', '.join(COV_TYPES)}")
    if not 0.0 < alpha < 1.0:
        raise SummaryError(f"--alpha {alpha} is outside (0, 1)", hint="use e.g. --alpha 0.05 for 95% intervals")
    p = run_summary_path(run)
    try:
        stored = json.loads(p.read_text())
        if stored.get("kind") == FORMULA_KIND:
            if cov_type != "nonrobust":
                raise SummaryError(f"--cov {cov_type} is for linear and polynomial runs; {run} is a formula model",
                                   hint="leave --cov out: a formula model's covariance is the nonrobust (J'J)^-1 sigma^2")
            return read_formula_summary(stored, alpha)
        res = load_sums(stored)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SummaryError(f"{p} cannot be read ({e})", hint="retrain the run; the file is written by 'gradfit train'") from None
    out = finalize(res, cov_type=cov_type, alpha=alpha)
    out["alpha"] = alpha
    out["method"] = "WLS" if stored.get("weighted") else "OLS"  # (WLS: statsmodels' WLS(y, A, weights=w) numbers)
    out["notes"] = _notes(res, out)
    return out


def short_summary(stored: Optional[dict]) -> Optional[dict]:
    """The end-of-training lines' numbers from summary.json's content (None: no summary): linear and
    polynomial runs r2, adj_r2, f_stat, f_pvalue; formula runs residual_sd, df_resid, aic, bic; both nobs."""
    if stored is None:
        return None
    if stored.get("kind") == FORMULA_KIND:
        out = read_formula_summary(stored, 0.05)
        keys = ("model", "nobs", "df_resid", "residual_sd", "aic", "bic")
    else:
        out = finalize(load_sums(stored))
        keys = ("nobs", "r2", "adj_r2", "f_stat", "f_pvalue")
    return {k: out.get(k) for k in keys}


def _notes(res: ResidualSums, out: dict) -> list[str]:
    """What statsmodels' summary would warn about: rank deficiency, a large condition number."""
    notes = []
    k = len(res.solution.names)
    if res.solution.rank < k:
        notes.append(f"the design has rank {res.solution.rank} of {k} columns: collinear terms; the coefficients are the minimum-norm solution")
    if out["cond_no"] > 1000:
        notes.append(f"the condition number is large ({out['cond_no']:.3g}): strong multicollinearity or other numerical problems")
    return notes


INTERVAL_COLUMNS = ("mean_se", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper")


def prediction_intervals(run: Path, X: torch.Tensor, level: float, model=None) -> dict:
    """statsmodels' ``get_prediction(A).summary_frame(alpha=1 - level)`` columns for raw rows X (n, d).

    From summary.json alone: the OLS coefficients, (A'A)^+ (as B B') and the residual variance.
    A formula model: the delta method on its autograd Jacobian (``model``, or the run's checkpoint).
    A weighted fit (data.weights, WLS): (A'WA)^+, and the observation interval is that of a new row
    of weight 1, statsmodels' default (its variance se^2 + scale / 1).
    """
    import json

    if not 0.0 < level < 1.0:
        raise SummaryError(f"--interval {level} is outside (0, 1)", hint="use e.g. --interval 0.95")
    p = run_summary_path(run)
    stored = json.loads(p.read_text())
    if stored.get("kind") == FORMULA_KIND and model is None:  # (the delta method needs the formula: the run's checkpoint)
        from gradfit.results.checkpoint import load_model  # (imported here for start-up time)

        model = load_model(p.parent).model
    return stored_intervals(stored, X, level, model, p)


def confidence_band(stored: Optional[dict], model, level: float = 0.95):
    """fit.png's band: grid (n, 1) -> (mean_ci_lower, mean_ci_upper), from summary.json's content
    (``stored``, None: no band); None where the run has no summary."""
    if stored is None:
        return None

    def band(grid):
        try:
            out = stored_intervals(stored, torch.as_tensor(grid, dtype=torch.float64), level, model, SUMMARY_NAME)
        except SummaryError:  # (no residual degrees of freedom: no band)
            return np.full(len(grid), np.nan), np.full(len(grid), np.nan)
        return out["mean_ci_lower"], out["mean_ci_upper"]

    return band


def stored_intervals(stored: dict, X: torch.Tensor, level: float, model, p) -> dict:
    """prediction_intervals from summary.json's content ``stored`` (read from ``p``)."""
    if stored.get("kind") == FORMULA_KIND:
        return formula_prediction_intervals(stored, model, X, level)
    res = load_sums(stored)
    sol = res.solution
    terms = [tuple(e) for e in stored["terms"]]
    A = raw_design(terms, sol.intercept is not None, X)  # (n, k)
    df_resid = sol.nobs - sol.rank
    if df_resid <= 0:
        raise SummaryError(f"{p}: no residual degrees of freedom ({sol.nobs} rows, rank {sol.rank}); no intervals")
    scale = float(res.power[2]) / df_resid
    mean = A @ sol.coef
    G = A @ sol.half  # (n, k): x' (A'A)^+ x = |B' x|^2
    se = np.sqrt(scale * np.einsum("ij,ij->i", G, G))
    obs = np.sqrt(se**2 + scale)
    q = float(distributions.t_ppf(0.5 + level / 2, df_resid))
    return {"mean_se": se, "mean_ci_lower": mean - q * se, "mean_ci_upper": mean + q * se,
            "obs_ci_lower": mean - q * obs, "obs_ci_upper": mean + q * obs}
