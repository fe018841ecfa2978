"""gradfit eval CHECKPOINT and gradfit predict CHECKPOINT"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from gradfit.cli.common import app, imports_done, stderr_console, stdout_console, user_errors

CHECKPOINT_HELP = "A model.safetensors written by 'gradfit train', or the run directory that holds it."


@app.command("eval")
@user_errors
def eval_(
    checkpoint: Path = typer.Argument(..., help=CHECKPOINT_HELP, show_default=False),
    data: Optional[Path] = typer.Option(
        None, "--data", help="CSV or Parquet file to evaluate on (default: the held-out rows of the training data)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object: {set: {loss, mse, rmse, mae, r2}}."),
) -> None:
    """Metrics of a saved model (loss, MSE, RMSE, MAE, R^2 in original units)."""
    from gradfit.results.evaluate import evaluate  # (imported here for start-up time)

    imports_done()
    ev = evaluate(checkpoint, data)
    err = stderr_console()
    for note in ev.notes:
        err.print(f"[yellow]note:[/] {note}")
    if json_out:
        from gradfit.results.rundir import to_json  # (imported here for start-up time)

        sys.stdout.write(to_json(ev.metrics))
        return
    render_evaluation(stdout_console(), ev)


def render_evaluation(console, ev) -> None:
    """What was evaluated, then one table row per set."""
    from rich.markup import escape  # (imported here for start-up time)
    from rich.table import Table  # (imported here for start-up time)

    from gradfit.cli.train import fmt  # (imported here for start-up time)
    from gradfit.results.metrics import METRIC_KEYS  # (imported here for start-up time)

    lm = ev.model
    held = "data" not in ev.metrics
    where = f"held-out rows of {ev.source}" if held else ev.source
    console.print(
        f"{lm.kind} model of {escape(lm.target)} from {escape(str(lm.checkpoint.path))}\non {escape(where)}", soft_wrap=True
    )
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("set")
    table.add_column("rows", justify="right")
    for k in METRIC_KEYS:
        table.add_column(k, justify="right")
    for name, m in ev.metrics.items():
        table.add_row(name, str(ev.rows[name]), *(fmt(m[k], 6) for k in METRIC_KEYS))
    console.print(table)


@app.command("predict")
@user_errors
def predict(
    checkpoint: Path = typer.Argument(..., help=CHECKPOINT_HELP, show_default=False),
    data: Path = typer.Option(..., "--data", help="CSV or Parquet file with the model's feature columns (the target may be absent).", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the predictions here (CSV; Parquet if it ends in .parquet) instead of stdout."),
    columns: List[str] = typer.Option(
        [], "--columns", help="Output only these columns, in this order (comma-separated or repeated; 'prediction' names the predictions).", metavar="COLS"
    ),
    force: bool = typer.Option(False, "--force", help="Write --out even inside a run directory."),
    interval: Optional[float] = typer.Option(
        None, "--interval", help="Add mean_se, mean_ci_lower/upper, obs_ci_lower/upper at this level (e.g. 0.95; linear/polynomial MSE runs).",
    ),
) -> None:
    """Predict every row of a data file: its columns plus a 'prediction' column, as CSV."""
    from gradfit.results.evaluate import predict_file  # (imported here for start-up time)

    imports_done()
    res = predict_file(checkpoint, data, out=out, columns=columns or None, force=force, interval=interval)
    err = stderr_console()
    for note in res.notes:
        err.print(f"[yellow]note:[/] {note}")
    if out is None:
        res.frame.to_csv(sys.stdout, index=False)
        return
    err.print(f"wrote {res.n_rows} prediction{'s' if res.n_rows != 1 else ''} to {out}", soft_wrap=True)
