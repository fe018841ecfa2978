"""gradfit compare RUN_A RUN_B: the F and likelihood-ratio tests of nested linear runs (statsmodels'
``compare_f_test`` / ``compare_lr_test``, R's ``anova``), else AIC/BIC side by side.

Everything comes from the runs' summary.json (results/inference.py): the residual sum of squares,
the residual degrees of freedom, the log-likelihood and the design's term names. Two runs are
nested when one's terms (and intercept) are among the other's and they were fitted on the same
rows: the same number of rows with the same target sums (n, sum of y about its mean and about 0).
"""

from __future__ import annotations

from pathlib import Path

from gradfit.results import distributions
from gradfit.results.formula_inference import read_formula_summary
from gradfit.results.inference import SummaryError, load_sums, run_summary_path
from gradfit.results.summary import finalize

SAME_ROWS_RTOL = 1e-10  # the targets' sums of squares of two runs on the same rows agree to rounding


def _load(run: Path) -> dict:
    import json

    p = run_summary_path(run)
    stored = json.loads(p.read_text())
    if stored.get("kind") == "formula":  # (a nonlinear fit: AIC/BIC side by side, never an F-test)
        f = read_formula_summary(stored, 0.05)
        return {"run": str(run), "names": list(stored["varying"]), "nobs": f["nobs"], "ssr": f["rss"], "df_resid": f["df_resid"],
                "log_likelihood": f["log_likelihood"], "aic": f["aic"], "bic": f["bic"], "r2": None, "formula": True,
                "tss": (stored.get("tss_centered", float("nan")), stored.get("tss_uncentered", float("nan")))}
    res = load_sums(stored)
    out = finalize(res)
    sol = res.solution
    return {"run": str(run), "names": list(sol.names), "nobs": sol.nobs, "ssr": out["ssr"], "df_resid": out["df_resid"],
            "log_likelihood": out["log_likelihood"], "aic": out["aic"], "bic": out["bic"], "r2": out["r2"],
            "tss": (sol.tss_centered, sol.tss_uncentered)}


def _same_rows(a: dict, b: dict) -> bool:
    return a["nobs"] == b["nobs"] and all(
        abs(x - y) <= SAME_ROWS_RTOL * max(abs(x), abs(y), 1e-300) for x, y in zip(a["tss"], b["tss"])
    )


def compare_runs(run_a: Path, run_b: Path) -> dict:
    """{'runs': [{run, nobs, df_resid, ssr, log_likelihood, aic, bic, r2}, ...], 'nested': bool, and either
    f_stat, f_pvalue, df_diff, lr_stat, lr_pvalue, 'restricted' (0 or 1: which run is the smaller) or 'reason'}."""
    a, b = _load(run_a), _load(run_b)
    shown = [{k: r[k] for k in ("run", "nobs", "df_resid", "ssr", "log_likelihood", "aic", "bic", "r2")} for r in (a, b)]
    out = {"runs": shown, "nested": False}
    if not _same_rows(a, b):
        out["reason"] = (f"the runs were not fitted on the same rows ({a['nobs']} and {b['nobs']} rows, or different targets); "
                         "the F-test compares nested models on one set of rows")
        return out
    if a.get("formula") or b.get("formula"):
        out["reason"] = "a formula (nonlinear) model is not a nested linear model: the F-test does not apply; compare AIC/BIC"
        return out
    small, big = (0, 1) if len(a["names"]) <= len(b["names"]) else (1, 0)
    r, f = (a, b)[small], (a, b)[big]
    extra = [n for n in r["names"] if n not in f["names"]]
    if extra:
        out["reason"] = (f"the models are not nested: {', '.join(map(repr, extra))} of {r['run']} "
                         f"{'is' if len(extra) == 1 else 'are'} not in {f['run']}; compare AIC/BIC instead")
        return out
    df_diff = r["df_resid"] - f["df_resid"]
    if df_diff <= 0:
        out["reason"] = "the models have the same terms: there is nothing to test"
        return out
    if not f["ssr"] > 0 or not f["df_resid"] > 0:
        raise SummaryError(f"{f['run']} fits its rows exactly (or has no residual degrees of freedom): no F-test",
                           hint="compare runs with residual variance")
    f_stat = ((r["ssr"] - f["ssr"]) / df_diff) / (f["ssr"] / f["df_resid"])
    lr = -2.0 * (r["log_likelihood"] - f["log_likelihood"])
    out.update(nested=True, restricted=small, df_diff=df_diff, f_stat=f_stat,
               f_pvalue=distributions.f_sf(f_stat, df_diff, f["df_resid"]), lr_stat=lr, lr_pvalue=distributions.chi2_sf(lr, df_diff))
    return out
