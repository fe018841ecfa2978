"""The summary of a formula (nonlinear least-squares) run: sums at training time, numbers later.

At the end of an MSE fit of a formula model, :func:`formula_sums` keeps what the summary needs
(summary.json, ``kind: formula``): the parameters, which vary, their bounds, the row count, the
residual sum of squares and (J^T J)^-1 of the autograd Jacobian J (n, q) of the predictions with
respect to the q varying parameters at the solution (results.uncertainty: a QR factorization, the
rows' factors summed over the ranks). :func:`read_formula_summary` turns them into the numbers a
nonlinear least-squares fit reports (R's ``summary.nls``, lmfit's fit report), with statsmodels'
key names; :func:`formula_prediction_intervals` gives the delta method's bands of the curve.

Only the varying parameters count: fixed ones (``vary: false``) are not in J, not in the degrees
of freedom (n - q) and not in AIC/BIC; a bounded parameter's covariance is lmfit's (the internal
parameter's, carried back by the transform's derivative, which is J in external units). AIC and
BIC count the q parameters as statsmodels' OLS does (R's AIC of an nls fit counts the variance
too: 2 more). With row weights (data.weights) every sum is weighted, as in statsmodels' WLS.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from gradfit.results import distributions
from gradfit.results.uncertainty import covariance_unscaled, formula_jacobian

FORMULA_KIND = "formula"


def formula_sums(model, source) -> Optional[dict]:
    """summary.json's content for a fitted formula model over every rank's training rows (every rank
    must call it); None when the covariance cannot be formed (a singular Jacobian, no rows)."""
    parts = list(source.weighted_chunks("train"))
    d = len(model.spec["features"])
    X = torch.cat([c[0] for c in parts]) if parts else torch.zeros(0, d, dtype=torch.float64)
    y = torch.cat([c[1] for c in parts]).to(torch.float64) if parts else torch.zeros(0, dtype=torch.float64)
    w = torch.cat([c[2] for c in parts]).to(torch.float64) if parts and parts[0][2] is not None else None
    dist = source.dist
    n = int(dist.sum(int(X.shape[0])))
    q = len(model.varying_names())
    with torch.no_grad():
        pred, J = formula_jacobian(model, X)  # (n,), (n, q)
    r = y - pred
    if w is not None:
        root = w.sqrt()
        J, r = J * root[:, None], r * root
    C = covariance_unscaled(J, dist) if n > q else None
    rss = float(dist.sum(float(r.pow(2).sum())))
    sum_log_w = float(dist.sum(float(w.log().sum()))) if w is not None else 0.0
    ww = w if w is not None else torch.ones_like(y)
    sw, swy, swyy = (float(dist.sum(float(v))) for v in (ww.sum(), (ww * y).sum(), (ww * y * y).sum()))
    if C is None or not math.isfinite(rss):
        return None
    return {
        "version": 1,
        "kind": FORMULA_KIND,
        "formula": model.spec["formula"],
        "parameters": model.parameters_dict(),
        "varying": model.varying_names(),
        "fixed": model.fixed_names(),
        "bounds": model.bounds(),
        "at_bound": model.at_bounds(),
        "nobs": n,
        "rss": rss,
        "sum_log_w": sum_log_w,
        "weighted": w is not None,
        # the target's (weighted) sums of squares about its mean and about 0: gradfit compare's same-rows test
        "tss_centered": swyy - swy * swy / sw if sw > 0 else 0.0,
        "tss_uncentered": swyy,
        "cov_unscaled": C.tolist(),
    }


def read_formula_summary(stored: dict, alpha: float) -> dict:
    """The summary's numbers from a formula run's summary.json content (SPEC.md's keys, plus
    ``correlation``, ``residual_sd``, ``rss``, ``fixed``, ``bounds``, ``at_bound`` and ``notes``)."""
    names = list(stored["varying"])
    values = dict(stored["parameters"])
    n, q = int(stored["nobs"]), len(names)
    df = n - q
    rss = float(stored["rss"])
    sigma2 = rss / df
    cov = sigma2 * np.asarray(stored["cov_unscaled"], dtype=np.float64)  # (q, q)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    tq = float(distributions.t_ppf(1 - alpha / 2, df))
    coefs = {}
    for name, v in values.items():
        if name not in names:  # fixed: no uncertainty
            coefs[name] = {"coef": v, "std_err": None, "t": None, "p": None, "ci_low": None, "ci_high": None}
            continue
        s = float(se[names.index(name)])
        t = v / s if s > 0 else math.copysign(math.inf, v) if v else math.nan
        p = float(2 * distributions.t_sf(abs(t), df)) if not math.isnan(t) else None
        coefs[name] = {"coef": v, "std_err": s, "t": t, "p": p, "ci_low": v - tq * s, "ci_high": v + tq * s}
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(se, se)
    llf = -n / 2 * (math.log(2 * math.pi) + math.log(rss / n) + 1) + 0.5 * float(stored.get("sum_log_w", 0.0))
    out = {
        "model": FORMULA_KIND,
        "formula": stored["formula"],
        "cov_type": "nonrobust",
        "coefficients": coefs,
        "nobs": n,
        "df_model": q,
        "df_resid": df,
        "rss": rss,
        "residual_sd": math.sqrt(sigma2),
        # lmfit's rsquared, 1 - RSS / TSS about the mean (a description of the fit, no test behind it)
        "r2": 1 - rss / tss if (tss := float(stored.get("tss_centered", math.nan))) > 0 else None,
        "log_likelihood": llf,
        "aic": -2 * llf + 2 * q,
        "bic": -2 * llf + q * math.log(n),
        "correlation": {a: {b: float(corr[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)},
        "fixed": list(stored["fixed"]),
        "bounds": dict(stored["bounds"]),
        "at_bound": dict(stored["at_bound"]),
        "weighted": bool(stored.get("weighted", False)),
        "alpha": alpha,
    }
    out["adj_r2"] = 1 - (1 - out["r2"]) * (n - 1) / df if out["r2"] is not None else None
    out["notes"] = formula_notes(out)
    return out


def formula_notes(out: dict) -> list[str]:
    """Which parameters are fixed or sit at a bound, and strong correlations."""
    notes = []
    for name in out["fixed"]:
        notes.append(f"{name} is fixed at {out['coefficients'][name]['coef']:.10g} (vary: false): "
                     "left out of the fit, the degrees of freedom and the covariance")
    for name, side in out["at_bound"].items():
        b = out["bounds"][name][0 if side == "min" else 1]
        notes.append(f"{name} sits at its {'lower' if side == 'min' else 'upper'} bound ({b:.10g}): the optimum lies "
                     "beyond it; its standard error and interval describe the curvature there, not a two-sided uncertainty")
    names = list(out["correlation"])
    strong = [(a, b, out["correlation"][a][b]) for i, a in enumerate(names) for b in names[i + 1:]
              if abs(out["correlation"][a][b]) > 0.99]
    for a, b, c in strong:
        notes.append(f"{a} and {b} are strongly correlated ({c:.4f}): the data determine a combination of them "
                     "better than either")
    return notes


def formula_prediction_intervals(stored: dict, model, X: torch.Tensor, level: float) -> dict:
    """statsmodels' summary_frame columns for a formula model at raw rows X (n, d), by the delta method:
    mean_se^2 = g' cov g with g the autograd gradient of the prediction with respect to the varying
    parameters; the observation's adds the residual variance (a new row of weight 1)."""
    n, q = int(stored["nobs"]), len(stored["varying"])
    df = n - q
    sigma2 = float(stored["rss"]) / df
    C = torch.tensor(stored["cov_unscaled"], dtype=torch.float64)  # (q, q)
    with torch.no_grad():
        mean, G = formula_jacobian(model, torch.as_tensor(X, dtype=torch.float64))  # (n,), (n, q)
    se = torch.sqrt(sigma2 * ((G @ C) * G).sum(1).clamp_min(0)).numpy()
    mean = mean.numpy()
    obs = np.sqrt(se**2 + sigma2)
    tq = float(distributions.t_ppf(0.5 + level / 2, df))
    return {"mean_se": se, "mean_ci_lower": mean - tq * se, "mean_ci_upper": mean + tq * se,
            "obs_ci_lower": mean - tq * obs, "obs_ci_upper": mean + tq * obs}
