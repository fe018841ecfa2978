"""A formula config's target and input columns, resolved against the data's columns."""

from __future__ import annotations

from gradfit.data.columns import synthetic_columns
from gradfit.errors import (
    ConfigError,
    DataError,
)
from gradfit.expr.formula import MAX_PARAMETERS, parse_formula


def resolve_config(cfg, columns: list[str] | None = None):
    """The config with data.target and data.features set from the formula and the data's columns.

    Names on the right side that are columns are inputs; the others are parameters. Raises
    ConfigError/DataError before any training: a target that is not a column, a formula
    without inputs or parameters, a start value given for a column.
    """
    from gradfit.data.columns import read_columns  # (imported here for start-up time)

    mc, dc = cfg.model, cfg.data
    parsed = parse_formula(mc.formula)
    where = dc.path or "the synthetic data"
    if columns is None:
        columns = _columns(cfg, read_columns)
    shown = ", ".join(repr(c) for c in columns[:30]) + (" ..." if len(columns) > 30 else "")
    if "target" in dc.model_fields_set and dc.target != parsed.target:
        raise ConfigError(
            f"model.formula predicts {parsed.target!r} but data.target is {dc.target!r}",
            hint="remove data.target (the formula names the target) or make them agree",
        )
    if parsed.target not in columns:
        raise DataError(
            f"{where}: the formula's target {parsed.target!r} is not a column; columns found: {shown}",
            hint="the name left of '=' in model.formula must be the target column",
        )
    left_out = set(dc.exclude or ())
    available = [c for c in columns if c != parsed.target and c not in left_out] if dc.features is None else list(dc.features)
    inputs = [n for n in parsed.names if n in columns]
    outside = [n for n in inputs if n not in available]
    if outside:
        raise ConfigError(
            f"model.formula uses the column{'s' if len(outside) > 1 else ''} {', '.join(map(repr, outside))}, "
            "which data.features leaves out",
            hint="add it to data.features, or remove data.features (a formula picks its own columns)",
        )
    if dc.weights is not None and dc.weights in inputs:
        raise ConfigError(
            f"model.formula uses the column {dc.weights!r}, which data.weights names as the rows' weights",
            hint="a weight is not an input: use another column in the formula, or another for data.weights",
        )
    if not inputs:
        raise DataError(
            f"model.formula uses no column of {where} (columns found: {shown}); every name in it would be a parameter",
            hint="write the input column's name in the formula, e.g. y = a * exp(b * x)",
        )
    params = [n for n in parsed.names if n not in columns]
    if not params:
        raise ConfigError(
            f"model.formula has no parameters: every name in it ({', '.join(parsed.names)}) is a column of {where}",
            hint="names that are not columns are the parameters to fit, e.g. y = a * exp(b * x)",
        )
    if len(params) > MAX_PARAMETERS:
        raise ConfigError(f"model.formula has {len(params)} parameters; at most {MAX_PARAMETERS} are supported")
    clash = [k for k in mc.start if k in columns]
    if clash:
        raise ConfigError(
            f"model.start gives a value for {', '.join(map(repr, clash))}, which {'is a column' if len(clash) == 1 else 'are columns'} "
            f"of {where}, so an input, not a parameter",
            hint="rename the parameter in the formula and in model.start",
        )
    data = {"target": parsed.target}
    if dc.synthetic is None:
        data["features"] = list(dc.features) if dc.features is not None else inputs
    new = cfg.model_copy(update={"data": dc.model_copy(update=data)})
    new._base_dir = cfg._base_dir
    return new


def _columns(cfg, read_columns) -> list[str]:
    syn = cfg.data.synthetic
    if syn is None:
        return list(read_columns(cfg.resolved_data_path()))
    return synthetic_columns(syn) + ["y"]
