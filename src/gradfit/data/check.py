"""The data checks ``gradfit train`` makes before training, made without reading the rows.

The same functions as training's (gradfit.data.columns, gradfit.data.resolve), so the
messages are the same. Importing this module imports neither torch nor pandas; checking a
formula config parses the formula (gradfit.expr.formula).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gradfit.config.loading import load_config
from gradfit.config.schema import Config
from gradfit.data.columns import read_columns, select_columns, select_synthetic_columns
from gradfit.data.weights import check_weights_column


@dataclass
class DataCheck:
    """A config that passed the data checks, and what was checked, in words."""

    config: Config  # a formula config comes back resolved (data.target and data.features from the formula)
    checked: str


def check_config(path: str | Path, overrides: Sequence[str] = ()) -> DataCheck:
    """The config file loaded (with ``--set`` overrides) and validated, and its data checked."""
    return check_data(load_config(path, overrides))


def check_data(cfg: Config) -> DataCheck:
    """The config's data checked as training checks it; DataError/ConfigError with training's message."""
    dc = cfg.data
    if cfg.model.kind == "formula":
        from gradfit.data.resolve import resolve_config  # (start-up time: it imports the formula parser)

        cfg = resolve_config(cfg)  # reads the column names itself
        dc = cfg.data
        return DataCheck(
            cfg, f"the formula's target {dc.target!r} and inputs {', '.join(dc.features or [])} are columns of the data"
        )
    if cfg.model.kind == "linear" and getattr(cfg.model, "formula", None) and dc.synthetic is None:
        from gradfit.data.wilkinson import resolve_wilkinson  # (imported here for start-up time)

        cfg = resolve_wilkinson(cfg, read_columns(cfg.resolved_data_path(), dc.sep))
        dc = cfg.data
        return DataCheck(cfg, f"the formula's target {dc.target!r} and inputs {', '.join(dc.features or [])} are columns of the data")
    if dc.synthetic is not None:
        syn = dc.synthetic
        names = select_synthetic_columns(syn, dc.target, dc.features)
        return DataCheck(cfg, f"synthetic {syn.kind} data, {syn.n_samples} rows, features {', '.join(names)}")
    path = cfg.resolved_data_path()
    columns = read_columns(path, dc.sep)
    check_weights_column(columns, dc.weights, path, [])
    exclude = [*(dc.exclude or ()), dc.weights] if dc.weights is not None else dc.exclude  # (as data.tables reads it)
    feats = select_columns(columns, dc.target, dc.features, path, exclude)  # errors word the path as train does
    check_weights_column(columns, dc.weights, path, feats)
    weighted = f", weighted by {dc.weights!r}" if dc.weights is not None else ""
    return DataCheck(cfg, f"{os.path.normpath(path)} has the target {dc.target!r} and the features {', '.join(feats)}{weighted}")
