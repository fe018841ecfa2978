"""gradfit check, init, schema and runs: look at configs and runs without training.

None of these commands imports torch (start-up about 1 s instead of 4 to 6), except
check on a formula config, whose validation parses the formula with gradfit.expr.formula.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer

from gradfit.cli.common import app, stderr_console, stdout_console, user_errors
from gradfit.errors import GradfitError

# ---------------------------------------------------------------- check


@app.command()
@user_errors
def check(
    config: Path = typer.Argument(..., help="YAML experiment file.", show_default=False),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: KEY=VALUE (dotted path).", metavar="KEY=VALUE"),
) -> None:
    """Validate a config without training; print it resolved, every default filled in, as YAML.

    Checks what train checks before training: the schema, the data file and its
    columns, the formula against the columns. The YAML goes to stdout (redirect it
    to keep it); the verdict to stderr. Exit 1 with train's message on a bad config.
    """
    from rich.markup import escape  # (imported here for start-up time)

    from gradfit.data.check import check_config  # (imported here for start-up time)

    checked = check_config(config, set_)
    sys.stdout.write(readable_yaml(checked.config.to_dict()))
    stderr_console().print(f"[green]ok:[/] {escape(str(config))} is valid; {escape(checked.checked)}", soft_wrap=True)


def readable_yaml(doc: dict) -> str:
    """YAML for people: a block per section, one key a line; lists of plain values on one line."""
    import yaml  # (imported here for start-up time)

    class Dumper(yaml.SafeDumper):
        pass

    def short_list(dumper, value):
        flat = all(not isinstance(v, (dict, list, tuple)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)

    Dumper.add_representer(list, short_list)
    Dumper.add_representer(tuple, short_list)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)


# ---------------------------------------------------------------- init

@app.command()
@user_errors
def init(
    path: str = typer.Argument("gradfit.yaml", metavar="PATH", help="Config file to write (a folder: gradfit.yaml in it)."),
    model: str = typer.Option("polynomial", "--model", help="Model kind of the example: linear, polynomial or mlp."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Write a commented example config (and its sample data) that `gradfit train` runs as is."""
    import shlex  # (imported here for start-up time)

    from rich.markup import escape  # (imported here for start-up time)

    from gradfit.config.templates import MODELS, write_example  # (imported here for start-up time)

    if model not in MODELS:
        raise typer.BadParameter(f"{model!r} is not one of: {', '.join(MODELS)}", param_hint="--model")
    written = write_example(path, model, force)
    console = stderr_console()
    data = f" and its sample data {escape(str(written.data))}" if written.data else ""
    console.print(f"wrote {escape(str(written.config))}{data}")
    console.print(f"next: gradfit train {escape(shlex.quote(str(written.config)))}", soft_wrap=True)


# ---------------------------------------------------------------- schema


@app.command()
@user_errors
def schema(
    out: Optional[Path] = typer.Option(None, "--out", help="Write the schema to this file (atomically) instead of stdout."),
    force: bool = typer.Option(False, "--force", help="Write --out even inside a run directory."),
) -> None:
    """Print the JSON Schema of the config file (for editors: gradfit schema --out gradfit.schema.json).

    Point an editor at it with a first line  # yaml-language-server: $schema=gradfit.schema.json
    in the config (gradfit init writes it).
    """
    import json  # (imported here for start-up time)

    from gradfit.config.schema import Config  # (imported here for start-up time)
    from gradfit.files import check_output, write_text  # (imported here for start-up time)

    if out is not None:
        check_output(out, force=force, writes="schemas")
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}
    doc["title"] = "gradfit config"
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    write_text(out, text)
    stderr_console().print(f"wrote {out}", soft_wrap=True, markup=False)


# ---------------------------------------------------------------- runs


@app.command()
@user_errors
def runs(
    directory: Path = typer.Argument(Path("runs"), metavar="DIR", help="Folder holding run directories."),
    sort: str = typer.Option(
        "date", "--sort", metavar="KEY",
        help="Sort by a key or a SET.METRIC path (val.r2, train.loss, epochs, date, name). Best first: "
             "r2 high to low, loss/mse/rmse/mae low to high, date newest first, others ascending.",
    ),
    reverse: bool = typer.Option(False, "--reverse", help="Flip the sort order (runs missing the key stay last)."),
    json_out: bool = typer.Option(False, "--json", help="Print the runs as a JSON list of objects."),
) -> None:
    """List the finished runs under DIR (default runs/) as a table: model, metrics, date."""
    from gradfit.results import compare  # (imported here for start-up time)

    try:
        compare.check_sort_key(sort)
    except GradfitError as err:
        raise typer.BadParameter(f"{err.message} ({err.hint})", param_hint="--sort") from None
    listing = compare.list_runs(directory)
    records = compare.sort_runs(listing.runs, sort, reverse)
    err = stderr_console()
    if listing.skipped:
        shown = ", ".join(listing.skipped[:5]) + (", ..." if len(listing.skipped) > 5 else "")
        n = len(listing.skipped)
        err.print(f"[yellow]note:[/] skipped {n} incomplete run director{'y' if n == 1 else 'ies'} "
                  f"(no metrics.json or config.yaml): {shown}", soft_wrap=True, markup=True, highlight=False)
    if json_out:
        from gradfit.results.rundir import to_json  # (imported here for start-up time)

        sys.stdout.write(to_json(records))
        return
    if not records:
        err.print(f"no finished runs under {directory}")
        return
    console = stdout_console()
    with console.capture() as captured:
        console.print(runs_table(records, sort, console.width), soft_wrap=False)
        _sweep_ranking(directory, console)
    # rich pads every line to the table's width; the padding is noise in a pipe or a diff.
    sys.stdout.write(_TRAILING_SPACE.sub(r"\1", captured.get()))


def _sweep_ranking(directory: Path, console) -> None:
    """A sweep directory's ranking (its ranking.json), below the list of its runs."""
    from gradfit.train.sweep_draws import read_ranking  # (imported here for start-up time; no torch)

    ranking = read_ranking(directory)
    if ranking is None:
        return
    from gradfit.cli.select import ranking_table  # (imported here for start-up time)

    console.print(f"\nsweep ranking by {ranking.get('metric')} (ranking.json):", markup=False, highlight=False)
    console.print(ranking_table(str(ranking.get("metric")), ranking["runs"]), soft_wrap=False)


# Spaces at the end of a line, before any closing colour codes.
_TRAILING_SPACE = re.compile(r"[ \t]+((?:\x1b\[[0-9;]*m)*)$", re.MULTILINE)


def runs_table(records: list[dict], sort: str, width: int = 80):
    """A rich table of run records in ``width`` columns (cells: gradfit.results.compare.tabulate_runs)."""
    from rich.table import Table  # (imported here for start-up time)

    from gradfit.results.compare import tabulate_runs  # (imported here for start-up time)

    cells = tabulate_runs(records, sort, width)
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  header_style="bold", caption="\n".join(cells.caption) or None, caption_justify="left")
    for i, header in enumerate(cells.columns):
        table.add_column(header, justify="left" if cells.is_text(i) else "right", no_wrap=True, overflow="ellipsis",
                         max_width=cells.run_width if i == 0 else None)
    for row in cells.rows:
        table.add_row(*row)
    return table
