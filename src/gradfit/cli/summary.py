"""gradfit summary RUN: the statsmodels-style summary of a linear, polynomial or formula MSE run."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from gradfit.cli.common import app, imports_done, stderr_console, stdout_console, user_errors


@app.command("summary")
@user_errors
def summary(
    run: Path = typer.Argument(..., help="A run directory written by 'gradfit train' (or its model.safetensors).", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print every number as one JSON object (the keys the README lists)."),
    cov: str = typer.Option("nonrobust", "--cov", help="Covariance of the coefficients: nonrobust, HC0, HC1, HC2 or HC3."),
    alpha: float = typer.Option(0.05, "--alpha", help="The intervals' level is 1 - alpha."),
) -> None:
    """Coefficients with t, p and intervals, R^2, F-test, log-likelihood, AIC/BIC and residual diagnostics."""
    from gradfit.results.inference import read_summary  # (imported here for start-up time)

    imports_done()
    out = read_summary(run, cov_type=cov, alpha=alpha)
    if json_out:
        from gradfit.results.rundir import to_json  # (imported here for start-up time)

        sys.stdout.write(to_json(out))
        return
    (render_formula_summary if out.get("model") == "formula" else render_summary)(stdout_console(), out, str(run))
    err = stderr_console()
    for note in out["notes"]:
        err.print(f"[yellow]note:[/] {note}")


def _g(v, width: int = 4) -> str:
    """A number as statsmodels' summary prints it (4 significant digits, nan as nan)."""
    if v is None:
        return "nan"
    return f"{v:.{width}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def render_summary(console, out: dict, run: str) -> None:
    """The fit's statistics in two columns, the coefficient table, the diagnostics."""
    from rich.markup import escape  # (imported here for start-up time)
    from rich.table import Table  # (imported here for start-up time)

    console.print(f"{out.get('method', 'OLS')} summary of {escape(run)} (covariance: {out['cov_type']})", soft_wrap=True)
    left = [("No. Observations", f"{out['nobs']:.0f}"), ("Df Residuals", f"{out['df_resid']:.0f}"),
            ("Df Model", f"{out['df_model']:.0f}"), ("Covariance Type", out["cov_type"])]
    right = [("R-squared", f"{out['r2']:.3f}"), ("Adj. R-squared", f"{out['adj_r2']:.3f}"),
             ("F-statistic", _g(out["f_stat"])), ("Prob (F-statistic)", _g(out["f_pvalue"], 3)),
             ("Log-Likelihood", f"{out['log_likelihood']:.2f}"), ("AIC", f"{out['aic']:.1f}"), ("BIC", f"{out['bic']:.1f}")]
    _pairs(console, Table, left, right)
    half = out["alpha"] / 2
    stat = "t" if out["cov_type"] == "nonrobust" else "z"
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("", "coef", "std err", stat, f"P>|{stat}|", f"[{half:.3g}", f"{1 - half:.3g}]"):
        # (a long term name folds onto a second line rather than losing its end to an ellipsis)
        table.add_column(col, justify="left", overflow="fold") if col == "" else table.add_column(col, justify="right")
    for name, c in out["coefficients"].items():
        table.add_row(escape(name), _g(c["coef"]), _g(c["std_err"]), f"{c['t']:.3f}", f"{c['p']:.3f}", _g(c["ci_low"]), _g(c["ci_high"]))
    console.print()
    console.print(table)
    console.print()
    left = [("Omnibus", f"{out['omnibus']:.3f}" if out["omnibus"] is not None else "nan"),
            ("Prob(Omnibus)", f"{out['omnibus_p']:.3f}" if out["omnibus_p"] is not None else "nan"),
            ("Skew", f"{out['skew']:.3f}"), ("Kurtosis", f"{out['kurtosis']:.3f}")]
    right = [("Durbin-Watson", f"{out['durbin_watson']:.3f}"), ("Jarque-Bera (JB)", f"{out['jarque_bera']:.3f}"),
             ("Prob(JB)", _g(out["jarque_bera_p"], 3)), ("Cond. No.", _g(out["cond_no"], 3))]
    _pairs(console, Table, left, right)


def render_formula_summary(console, out: dict, run: str) -> None:
    """A formula (nonlinear least-squares) run: the fit, the parameter table, the correlation matrix."""
    from rich.markup import escape  # (imported here for start-up time)
    from rich.table import Table  # (imported here for start-up time)

    console.print(f"Nonlinear least-squares summary of {escape(run)}: {escape(out['formula'])}", soft_wrap=True)
    left = [("No. Observations", f"{out['nobs']:.0f}"), ("Df Residuals", f"{out['df_resid']:.0f}"),
            ("Df Model", f"{out['df_model']:.0f}"), ("Residual SD", _g(out["residual_sd"], 6))]
    if out["weighted"]:
        left.append(("Weights", "data.weights"))
    right = [("R-squared", "nan" if out["r2"] is None else f"{out['r2']:.5f}"), ("Log-Likelihood", f"{out['log_likelihood']:.2f}"),
             ("AIC", f"{out['aic']:.1f}"), ("BIC", f"{out['bic']:.1f}")]
    _pairs(console, Table, left, right)
    half = out["alpha"] / 2
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("", "coef", "std err", "t", "P>|t|", f"[{half:.3g}", f"{1 - half:.3g}]", ""):
        table.add_column(col, justify="left" if col == "" else "right")
    for name, c in out["coefficients"].items():
        status = "fixed" if name in out["fixed"] else f"at {out['at_bound'][name]}" if name in out["at_bound"] else ""
        if c["std_err"] is None:
            table.add_row(escape(name), f"{c['coef']:.10g}", "-", "-", "-", "-", "-", status)
            continue
        table.add_row(escape(name), f"{c['coef']:.10g}", _g(c["std_err"]), f"{c['t']:.3f}", _g(c["p"], 3),
                      _g(c["ci_low"], 6), _g(c["ci_high"], 6), status)
    console.print()
    console.print(table)
    names = list(out["correlation"])
    if len(names) > 1:
        corr = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
        corr.add_column("")
        for b in names:
            corr.add_column(escape(b), justify="right")
        for a in names:
            corr.add_row(escape(a), *(f"{out['correlation'][a][b]:.4f}" for b in names))
        console.print()
        console.print("Correlation of the parameters:")
        console.print(corr)


def _pairs(console, Table, left: list, right: list) -> None:
    """Two columns of (label, value) pairs side by side."""
    t = Table(show_header=False, show_edge=False, pad_edge=False, box=None)
    for justify in ("left", "right", "left", "right"):
        t.add_column(justify=justify)
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", "")
        b = right[i] if i < len(right) else ("", "")
        t.add_row(f"{a[0]}:" if a[0] else "", a[1], f"   {b[0]}:" if b[0] else "", b[1])
    console.print(t)
