"""gradfit report RUN [RUN2 ...] [--out FILE.html]"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gradfit.cli.common import app, imports_done, stderr_console, user_errors


@app.command("report")
@user_errors
def report(
    runs: List[Path] = typer.Argument(..., help="Run directories written by 'gradfit train' (several: side by side).", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the HTML here (default: RUN/report.html for one run, ./report.html for several)."),
    force: bool = typer.Option(False, "--force", help="Write --out even inside another run directory, or over a run's file."),
) -> None:
    """One self-contained HTML report (config, metrics, coefficients, warnings, figures) of one or more runs."""
    from gradfit.files import check_output  # (a plain module: no torch)
    from gradfit.results.report import write_report  # (imported here for start-up time)

    if out is not None:
        check_output(out, force=force, writes="reports", own_runs=runs, own_names=("report.html",))

    imports_done()
    res = write_report(runs, out)
    n = len(res.runs)
    stderr_console().print(f"wrote the report of {n} run{'s' if n != 1 else ''} ({res.figures} figures) to {res.path}",
                           soft_wrap=True, markup=False)
