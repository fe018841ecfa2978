"""gradfit check, init, schema and runs: look at configs and runs without training.

None of these commands imports torch (start-up about 1 s instead of 4 to 6), except
check on a formula config, whose validation parses the formula with gradfit.expr.formula.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import typer

from gradfit.cli.common import app, stderr_console, stdout_console, user_errors
from gradfit.errors import DataError, GradfitError

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
    from rich.markup import escape

    from gradfit.config.loading import load_config

    cfg = load_config(config, set_)
    cfg, what = check_data(cfg)
    sys.stdout.write(readable_yaml(cfg.to_dict()))
    stderr_console().print(f"[green]ok:[/] {escape(str(config))} is valid; {escape(what)}", soft_wrap=True)


def check_data(cfg):
    """The data checks train makes before training (without reading the rows): (config, what was checked).

    A formula config comes back resolved (data.target and data.features from the formula).
    """
    dc = cfg.data
    if cfg.model.kind == "formula":
        from gradfit.data.resolve import resolve_config

        cfg = resolve_config(cfg)  # reads the column names itself; DataError/ConfigError as train
        dc = cfg.data
        return cfg, f"the formula's target {dc.target!r} and inputs {', '.join(dc.features or [])} are columns of the data"
    if dc.synthetic is not None:
        syn = dc.synthetic
        names = [syn.feature] if syn.kind == "polynomial" else (
            ["x"] if syn.n_features == 1 else [f"x{i + 1}" for i in range(syn.n_features)])
        if dc.target != "y" or (dc.features and dc.features != names):  # as gradfit.data.load_dataset
            raise DataError(
                f"synthetic data has features {names} and target 'y'; "
                "remove data.target/data.features or make them match"
            )
        return cfg, f"synthetic {syn.kind} data, {syn.n_samples} rows, features {', '.join(names)}"
    import os

    from gradfit.data.columns import read_columns, select_columns

    path = cfg.resolved_data_path()
    feats = select_columns(read_columns(path), dc.target, dc.features, path)  # errors word the path as train does
    return cfg, f"{os.path.normpath(path)} has the target {dc.target!r} and the features {', '.join(feats)}"


def readable_yaml(doc: dict) -> str:
    """YAML for people: a block per section, one key a line; lists of plain values on one line."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def short_list(dumper, value):
        flat = all(not isinstance(v, (dict, list, tuple)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)

    Dumper.add_representer(list, short_list)
    Dumper.add_representer(tuple, short_list)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)


# ---------------------------------------------------------------- init

_HEADER = """\
# yaml-language-server: $schema=gradfit.schema.json
# The line above gives editors completion and checking of this file: run
#   gradfit schema > gradfit.schema.json
# in this folder (VS Code's YAML extension and other yaml-language-server clients read it).
#
# {what}
#   gradfit check {config}   # validate; print the config with every default filled in
#   gradfit train {config}   # train; the run directory is made under output.dir
"""

_COMMON_TAIL = """\
train:
  epochs: {epochs}             # the cap on passes over the data
  batch_size: null          # null = full batch; a number for mini-batches
  tol: 1.0e-9               # stop when the loss improves by less than this (relative); 0: never
{early}output:
  dir: runs                 # run directories are made under it (runs/{name}, runs/{name}-2, ...)
"""

_TEMPLATES = {
    "polynomial": """\
name: quadratic             # names the run directory
seed: 0                     # every random choice (split, initial weights, batches) derives from it
device: auto                # auto | cpu | cuda | cuda:N ; auto = cuda when available
dtype: float32              # float32 | float64
data:
  path: {data}# .csv or .parquet, relative to this file
  target: y                 # the column to predict
  features: [x]             # default: every column but the target
  split: {{val: 0.2, test: 0.0}}  # fractions of the rows held out, drawn with the seed
  standardize: true         # scale inputs and target for training; results are in original units
model:
  kind: polynomial          # linear | polynomial | mlp | formula
  degree: 2                 # y = c0 + c1*x + c2*x^2
loss:
  kind: mse                 # mse | mae | huber (huber: delta, in the target's units)
optimizer:
  kind: adam                # adam | adamw | sgd | lbfgs
  lr: 0.05                  # a number, or auto
""",
    "linear": """\
name: linear                # names the run directory
seed: 0                     # every random choice (data, split, initial weights) derives from it
device: auto                # auto | cpu | cuda | cuda:N ; auto = cuda when available
dtype: float32              # float32 | float64
data:
  # Data made in-process from the seed: y = 3 + 2*x1 - 1*x2 + 0.5*x3 + noise.
  # For your own data, replace 'synthetic' with  path: my_data.csv  and set target/features.
  synthetic: {{kind: linear, n_features: 3, coefficients: [2.0, -1.0, 0.5], bias: 3.0, n_samples: 500, noise: 0.1}}
  split: {{val: 0.2, test: 0.0}}  # fractions of the rows held out, drawn with the seed
  standardize: true         # scale inputs and target for training; results are in original units
model:
  kind: linear              # linear | polynomial | mlp | formula
  intercept: true
loss:
  kind: mse                 # mse | mae | huber (huber: delta, in the target's units)
optimizer:
  kind: adam                # adam | adamw | sgd | lbfgs
  lr: auto                  # a number, or auto (chosen from the data's curvature)
""",
    "mlp": """\
name: sine                  # names the run directory
seed: 0                     # every random choice (split, initial weights, batches) derives from it
device: auto                # auto | cpu | cuda | cuda:N ; auto = cuda when available
dtype: float32              # float32 | float64
data:
  path: {data}# .csv or .parquet, relative to this file: y = sin(2x) + noise
  target: y                 # the column to predict
  features: [x]             # default: every column but the target
  split: {{val: 0.2, test: 0.0}}  # fractions of the rows held out, drawn with the seed
  standardize: true         # scale inputs and target for training; results are in original units
model:
  kind: mlp                 # linear | polynomial | mlp | formula
  hidden: [32, 32]          # units per hidden layer
  activation: tanh          # relu | tanh | gelu | sigmoid | silu | elu | leaky_relu | softplus
loss:
  kind: mse                 # mse | mae | huber (huber: delta, in the target's units)
optimizer:
  kind: adam                # adam | adamw | sgd | lbfgs
  lr: 0.01                  # a number, or auto
""",
}

_WHAT = {
    "polynomial": "Fit a quadratic, y = c0 + c1*x + c2*x^2, to the sample data in {data}.",
    "linear": "Fit a linear model of three features to synthetic data (no file needed).",
    "mlp": "Fit a small neural network (MLP) to the sample data in {data}: y = sin(2x) + noise.",
}

_EPOCHS = {"polynomial": 2000, "linear": 2000, "mlp": 3000}
_EARLY = {"mlp": "  early_stopping: {patience: 200}  # stop when the validation loss stalls this many epochs\n"}


def sample_data(kind: str, seed: int = 0) -> str | None:
    """The sample CSV of an example config (deterministic: the same text for the same seed), or None."""
    rng = random.Random(seed)
    if kind == "polynomial":
        n, f, noise = 50, lambda x: 3 + 2 * x + x * x, 0.1  # the seed tutorial's y = x^2 + 2x + 3
    elif kind == "mlp":
        import math

        n, f, noise = 200, lambda x: math.sin(2 * x), 0.05
    else:
        return None
    lines = ["x,y"]
    for i in range(n):
        x = -3 + 6 * i / (n - 1)
        lines.append(f"{x:.6g},{f(x) + rng.gauss(0.0, noise):.6g}")
    return "\n".join(lines) + "\n"


def example_config(kind: str, data_name: str, config_name: str) -> str:
    """The commented example config of one model kind."""
    early = _EARLY.get(kind, "  # early_stopping: {patience: 50}  # needs a validation split\n")
    body = _TEMPLATES[kind].format(data=f"{data_name} ".ljust(20))  # comments line up at column 28
    name = _run_name(config_name) or body.split()[1]
    first, rest = body.split("\n", 1)
    body = f"name: {name} ".ljust(28) + first[first.index("#"):] + "\n" + rest
    return (
        _HEADER.format(what=_WHAT[kind].format(data=data_name), config=config_name)
        + body
        + _COMMON_TAIL.format(epochs=_EPOCHS[kind], early=early, name=name)
    )


def _run_name(config_name: str) -> str | None:
    """The run name for a config file: its stem as a directory name (my.yaml -> my), None for gradfit.yaml."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config_name).stem).lstrip("._-")[:100]
    return None if stem in ("", "gradfit") else stem


@app.command()
@user_errors
def init(
    path: str = typer.Argument("gradfit.yaml", metavar="PATH", help="Config file to write (a folder: gradfit.yaml in it)."),
    model: str = typer.Option("polynomial", "--model", help="Model kind of the example: linear, polynomial or mlp."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Write a commented example config (and its sample data) that `gradfit train` runs as is."""
    from rich.markup import escape

    from gradfit.results.rundir import write_text

    if model not in _TEMPLATES:
        raise typer.BadParameter(f"{model!r} is not one of: {', '.join(sorted(_TEMPLATES))}", param_hint="--model")
    path = Path(path) / "gradfit.yaml" if Path(path).is_dir() or path.endswith(("/", "\\")) else Path(path)
    data_path = path.with_suffix(".csv") if model != "linear" else None
    if data_path == path:
        raise GradfitError(f"{path}: a config file cannot end in .csv", hint="name it e.g. gradfit.yaml")
    files = {path: example_config(model, data_path.name if data_path else "", path.name)}
    if data_path is not None:
        files[data_path] = sample_data(model)
    taken = [p for p in files if p.exists()]
    if taken and not force:
        raise GradfitError(
            f"{' and '.join(map(str, taken))} already exist{'s' if len(taken) == 1 else ''}; nothing was written",
            hint="add --force to overwrite, or give another PATH",
        )
    for p in files:
        if p.is_dir():
            raise GradfitError(f"{p} is a directory; nothing was written", hint="give another PATH")
    for p, text in files.items():
        try:
            write_text(p, text)
        except OSError as exc:
            raise GradfitError(f"cannot write {p}: {exc.strerror or exc}") from None
    console = stderr_console()
    console.print(f"wrote {escape(str(path))}" + (f" and its sample data {escape(str(data_path))}" if data_path else ""))
    import shlex

    console.print(f"next: gradfit train {escape(shlex.quote(str(path)))}", soft_wrap=True)


# ---------------------------------------------------------------- schema


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file (for editors: gradfit schema > gradfit.schema.json).

    Point an editor at it with a first line  # yaml-language-server: $schema=gradfit.schema.json
    in the config (gradfit init writes it).
    """
    import json

    from gradfit.config.schema import Config

    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}
    doc["title"] = "gradfit config"
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


# ---------------------------------------------------------------- runs


_STOP = {"max_epochs": "max", "tolerance": "tol", "early_stopping": "es", "interrupted": "int"}
_STOP_WORDS = {"max": "epochs cap", "tol": "tolerance met", "es": "early stopping", "int": "interrupted"}


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
    from gradfit.results import compare

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
        from gradfit.results.rundir import to_json

        sys.stdout.write(to_json(records))
        return
    if not records:
        err.print(f"no finished runs under {directory}")
        return
    console = stdout_console()
    with console.capture() as captured:
        console.print(runs_table(records, sort, console.width), soft_wrap=False)
    # rich pads every line to the table's width; the padding is noise in a pipe or a diff.
    sys.stdout.write(_TRAILING_SPACE.sub(r"\1", captured.get()))


# Spaces at the end of a line, before any closing colour codes.
_TRAILING_SPACE = re.compile(r"[ \t]+((?:\x1b\[[0-9;]*m)*)$", re.MULTILINE)


def runs_table(records: list[dict], sort: str, width: int = 80):
    """A rich table of run records in ``width`` columns (80 for the usual runs: long names are cut).

    Model, loss and optimizer get a column only where the runs differ; what they all
    share is said in the caption, with the stop reasons' abbreviations.
    """
    from rich.table import Table

    from gradfit.cli.train import fmt

    setup = {"model": "model", "loss": "loss", "optimizer": "opt"}
    shared = {k: records[0][k] for k in setup if len({str(r[k]) for r in records}) == 1}
    columns = ["run"] + [h for k, h in setup.items() if k not in shared] + ["epochs"]
    for s in ("val", "train"):
        for m in ("r2", "loss"):
            key = f"{s}.{m}"
            columns.append(f"{s}\n{m}" + ((" v" if _down(key) else " ^") if key == sort else ""))
    columns.append("date")
    this_year = str(_now_year())
    rows = []
    for r in records:
        cells = [r["name"]] + [_model(r[k]) if k == "model" else str(r[k] or "-") for k in setup if k not in shared]
        cells.append(f"{fmt(r['epochs'])} {_STOP.get(r['stop_reason'], str(r['stop_reason'] or '-'))}")  # 812 tol
        for s in ("val", "train"):
            m = r.get(s) or {}
            cells += [_r2(m.get("r2")), fmt(m.get("loss"), 3)]
        date = r["date"]  # ISO 8601, local time; as ls -l: this year's with the time, older with the year
        cells.append(date[5:16].replace("T", " ") if date.startswith(this_year) else date[:10])
        rows.append(cells)
    natural = [max([len(line) for line in h.split("\n")] + [len(row[i]) for row in rows]) for i, h in enumerate(columns)]
    if sum(natural[1:]) + len(columns) - 1 + min(natural[0], 10) > width:
        # Too narrow (runs that differ in model, loss and optimizer): the time of today's runs, the day of older ones.
        today = _today()
        for row, r in zip(rows, records):
            row[-1] = r["date"][11:16] if r["date"][:10] == today else r["date"][:10]
        natural[-1] = max([4] + [len(row[-1]) for row in rows])
    dropped = []
    if sum(natural[1:]) + len(columns) - 1 + min(natural[0], 12) > width:
        # Still too narrow: the run names matter more than their dates (which --json keeps).
        columns, natural, rows = columns[:-1], natural[:-1], [row[:-1] for row in rows]
        dropped.append("dates left out to fit the width (see --json)")
    # The run names take what the other columns leave (one space between columns), at least 6.
    run_width = max(6, min(natural[0], width - sum(natural[1:]) - (len(columns) - 1)))
    for row in rows:  # cut long names in the middle: their ends (quadratic-2, -3, ...) tell runs apart
        if len(row[0]) > run_width:
            head = (run_width - 1) // 2
            row[0] = row[0][:head] + "…" + row[0][len(row[0]) - (run_width - 1 - head):]

    said = [f"{_model(shared['model'])} model"] if "model" in shared else []
    said += [f"{k} {shared[k]}" for k in ("loss", "optimizer") if k in shared]
    stops = sorted({row[columns.index("epochs")].split()[-1] for row in rows} & set(_STOP_WORDS))
    caption = dropped + (["all runs: " + ", ".join(said)] if said else []) + (
        ["stopped: " + ", ".join(f"{s} = {_STOP_WORDS[s]}" for s in stops)] if stops else [])
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  header_style="bold", caption="\n".join(caption) or None, caption_justify="left")
    for i, header in enumerate(columns):
        text = i == 0 or header in setup.values() or header == "date"
        table.add_column(header, justify="left" if text else "right", no_wrap=True, overflow="ellipsis",
                         max_width=run_width if i == 0 else None)
    for cells in rows:
        table.add_row(*cells)
    return table


def _today() -> str:
    import datetime

    return datetime.date.today().isoformat()


def _now_year() -> int:
    import datetime

    return datetime.date.today().year


def _down(key: str) -> bool:
    from gradfit.results.compare import descending

    return descending(key)


def _model(kind: str | None) -> str:
    """polynomial(3) -> poly3: the table is narrow."""
    if kind and kind.startswith("polynomial(") and kind.endswith(")"):
        return "poly" + kind[len("polynomial("):-1]
    return str(kind or "-")


def _r2(v) -> str:
    """R^2 with the digits that tell near-perfect fits apart (0.99998 vs 0.99999)."""
    if v is None:
        return "-"
    return f"{v:.5f}" if v > -10 else f"{v:.3g}"
