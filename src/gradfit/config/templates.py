"""Example configs: the commented templates ``gradfit init`` writes, and their sample data.

Importing this module imports neither torch nor pandas.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gradfit.errors import GradfitError
from gradfit.files import check_output, write_text

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
        import math  # (imported here for start-up time)

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
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(config_name).stem).lstrip("._-")[:100]
    return None if stem in ("", "gradfit") else stem


MODELS = tuple(sorted(_TEMPLATES))  # the model kinds with an example


@dataclass
class Example:
    """The files an example was written to: its config, and its sample data (None for synthetic data)."""

    config: Path
    data: Optional[Path]


def write_example(path: str, model: str = "polynomial", force: bool = False) -> Example:
    """Write the example config of ``model`` at ``path`` (a folder: gradfit.yaml in it), with its sample data.

    Nothing is written when a file exists (unless ``force``) or a path is a directory (GradfitError).
    """
    if model not in _TEMPLATES:
        raise GradfitError(f"{model!r} is not one of: {', '.join(MODELS)}")
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
        check_output(p, force=force, writes="example configs", option="")  # (not among a run's files)
    for p, text in files.items():
        try:
            write_text(p, text)
        except OSError as exc:
            raise GradfitError(f"cannot write {p}: {exc.strerror or exc}") from None
    return Example(path, data_path)
