"""gradfit cv and sweep: choose a model by cross-validation and by sweeps over config values."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from gradfit.cli.common import app, stderr_console, stdout_console, user_errors
from gradfit.cli.train import fmt
from gradfit.files import check_output


@app.command()
@user_errors
def cv(
    config: Path = typer.Argument(..., help="YAML experiment file.", show_default=False),
    folds: int = typer.Option(5, "--folds", help="Number of folds K."),
    repeats: int = typer.Option(1, "--repeats", help="Repeat the K folds R times, each with another shuffle."),
    group: Optional[str] = typer.Option(None, "--group", help="Keep the rows of each value of this column in one fold."),
    time: bool = typer.Option(False, "--time", help="Time-ordered forward chaining: train on earlier rows, validate on the next block."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: KEY=VALUE (dotted path).", metavar="KEY=VALUE"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write here instead of OUTPUT_DIR/NAME-cv."),
    force: bool = typer.Option(False, "--force", help="Write even inside a run directory."),
    json_out: bool = typer.Option(False, "--json", help="Print cv.json to stdout."),
) -> None:
    """Cross-validate a config: one run per fold, folds.csv (row,fold) and cv.json (per fold, mean and sd)."""
    from gradfit.config.loading import load_config  # (imported here for start-up time)
    from gradfit.train.cv import cross_validate  # (imported here for start-up time)

    cfg = load_config(config, set_)
    where = out if out is not None else Path(cfg.output.dir) / f"{cfg.name}-cv"
    check_output(where, inputs=((config, "the config file"),), force=force, writes="cross-validations")
    result = cross_validate(cfg, where, folds, repeats=repeats, group=group, time=time)
    if json_out:
        from gradfit.results.rundir import to_json  # (imported here for start-up time)

        sys.stdout.write(to_json({**result.to_dict(), "out": str(result.out)}))
        return
    stdout_console().print(cv_table(result))
    stdout_console().print(f"cross-validation directory: {result.out}", soft_wrap=True)


def cv_table(result):
    """One row per fold, then mean and sd: n, and the val (and train) metrics."""
    from rich.table import Table  # (imported here for start-up time)

    names = [k for k in ("mse", "mae", "r2") if result.mean.get("val") and k in result.mean["val"]]
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ["fold", "n_train", "n_val", *(f"val {k}" for k in names), "train r2"]:
        table.add_column(col, justify="left" if col == "fold" else "right")
    for f in result.folds:
        label = str(f["fold"]) if result.repeats == 1 else f"{f['repeat']}.{f['fold']}"
        table.add_row(label, str(f["n_train"]), str(f["n_val"]), *(fmt((f["val"] or {}).get(k), 5) for k in names),
                      fmt((f["train"] or {}).get("r2"), 5))
    for what in ("mean", "sd"):
        d = getattr(result, what)
        table.add_row(what, "", "", *(fmt((d["val"] or {}).get(k), 5) for k in names), fmt((d["train"] or {}).get("r2"), 5))
    return table


@app.command()
@user_errors
def sweep(
    config: Path = typer.Argument(..., help="YAML experiment file.", show_default=False),
    grid: List[str] = typer.Option([], "--grid", help="Values of one config key: KEY=V1,V2,...", metavar="KEY=V1,V2"),
    random_n: Optional[int] = typer.Option(None, "--random", help="Train N seeded random draws over the --range values.",
                                           metavar="N"),
    optuna_n: Optional[int] = typer.Option(None, "--optuna", help="Train N trials of Optuna's TPE sampler over the "
                                           "--range values (needs gradfit[optuna]).", metavar="N"),
    range_: List[str] = typer.Option([], "--range", help="A numeric key's range for --random/--optuna: "
                                     "KEY=LOW:HIGH, or KEY=LOW:HIGH:log for log-uniform.", metavar="KEY=LOW:HIGH[:log]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the --random draws and the --optuna sampler "
                                       "(default: the config's seed)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="Cross-validate each combination on K folds."),
    repeats: int = typer.Option(1, "--repeats", help="With --folds: repeat the K folds R times, each with another shuffle."),
    metric: str = typer.Option("val.r2", "--metric", help="Rank by this metric (SET.NAME; with --folds the mean over folds)."),
    jobs: int = typer.Option(1, "--jobs", help="Train this many combinations at once, in processes (threads = cores / jobs)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value for every run: KEY=VALUE.", metavar="KEY=VALUE"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write here instead of OUTPUT_DIR/NAME-sweep."),
    force: bool = typer.Option(False, "--force", help="Write even inside a run directory."),
    json_out: bool = typer.Option(False, "--json", help="Print ranking.json to stdout."),
) -> None:
    """Train each combination of the --grid values (or --random / --optuna draws over --range values) and rank them.

    DIR holds sweep.yaml, the runs and ranking.json (and path.csv, path.png for a sweep over
    model.penalty.l1 or .l2 alone). Running the same command again skips the runs that finished
    (an interrupted sweep resumes; --optuna keeps its study in DIR/optuna.db).
    """
    from gradfit.config.loading import load_config  # (imported here for start-up time)
    from gradfit.train.sweep import sweep as run_sweep  # (imported here for start-up time)

    cfg = load_config(config, set_)
    where = out if out is not None else Path(cfg.output.dir) / f"{cfg.name}-sweep"
    check_output(where, inputs=((config, "the config file"),), force=force, writes="sweeps")
    err = stderr_console()
    result = run_sweep(config, where, grid, random_n=random_n, optuna_n=optuna_n, range_items=range_, seed=seed,
                       overrides=tuple(set_), folds=folds, repeats=repeats, metric=metric, jobs=jobs,
                       on_run=lambda name, skipped: err.print(f"{'skipped (finished)' if skipped else 'trained'}: {name}",
                                                              soft_wrap=True, markup=False))
    if json_out:
        from gradfit.results.rundir import to_json  # (imported here for start-up time)

        sys.stdout.write(to_json({"metric": result.metric, "runs": result.ranking, "out": str(result.out)}))
        return
    stdout_console().print(ranking_table(result.metric, result.ranking))
    if (result.out / "path.csv").is_file():
        stdout_console().print(f"regularization path: {result.out / 'path.csv'}, {result.out / 'path.png'}",
                               soft_wrap=True)
    stdout_console().print(f"sweep directory: {result.out}", soft_wrap=True)


def ranking_table(metric: str, runs: list[dict]):
    """A sweep's ranking: rank, run, score (``gradfit sweep`` and ``gradfit runs SWEEP_DIR``)."""
    from rich.table import Table  # (imported here for start-up time)

    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("rank", "run", metric):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in runs:
        table.add_row(str(r.get("rank", "")), str(r.get("name", "")), fmt(r.get("score")))
    return table
