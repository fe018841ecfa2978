"""gradfit compare RUN_A RUN_B: nested linear runs' F and likelihood-ratio tests, or AIC/BIC side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from gradfit.cli.common import app, imports_done, stdout_console, user_errors


@app.command("compare")
@user_errors
def compare(
    run_a: Path = typer.Argument(..., help="A run directory of a linear or polynomial MSE run.", show_default=False),
    run_b: Path = typer.Argument(..., help="Another, on the same rows.", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object (f_stat, f_pvalue, df_diff, lr_stat, lr_pvalue)."),
) -> None:
    """F-test and likelihood-ratio test of two nested linear runs (as R's anova); AIC/BIC otherwise."""
    from gradfit.results.nested import compare_runs  # (imported here for start-up time)

    imports_done()
    out = compare_runs(run_a, run_b)
    if json_out:
        from gradfit.results.rundir import to_json  # (imported here for start-up time)

        sys.stdout.write(to_json(out))
        return
    from rich.markup import escape  # (imported here for start-up time)
    from rich.table import Table  # (imported here for start-up time)

    console = stdout_console()
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("run", "rows", "df_resid", "ssr", "log-lik", "AIC", "BIC"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in out["runs"]:
        table.add_row(escape(r["run"]), f"{r['nobs']}", f"{r['df_resid']:.0f}", f"{r['ssr']:.6g}", f"{r['log_likelihood']:.2f}",
                      f"{r['aic']:.1f}", f"{r['bic']:.1f}")
    console.print(table)
    if out["nested"]:
        console.print(f"F = {out['f_stat']:.6g} on {out['df_diff']:.0f} and {out['runs'][1 - out['restricted']]['df_resid']:.0f} df, "
                      f"p = {out['f_pvalue']:.4g};  LR = {out['lr_stat']:.6g}, p = {out['lr_pvalue']:.4g}")
    else:
        console.print(f"no F-test: {escape(out['reason'])}", soft_wrap=True)
