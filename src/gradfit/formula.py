"""Formula models: any expression of the data columns, its parameters fitted by autograd.

``model: {kind: formula, formula: "y = b1 * (1 - exp(-b2 * x))", start: {b1: 500}}``:
the name left of ``=`` is the target, names on the right that are data columns are
inputs, every other name is a parameter (starting at ``start``'s value, or 1.0).
The text goes through gradfit's safe parser (``gradfit.expr``, the grammar of
``solve-equations``): nothing the user wrote is ever evaluated by Python.

A ``FormulaModel`` keeps the interface of ``models.RegressionModel`` (``spec``,
``head``, ``design``, ``scaled_target``, ``unscale``, ``predict``, ``coefficients``)
so that training, checkpoints, eval and predict work unchanged. Unlike the other
models it never standardizes: the formula is written in raw units, so its
design is the raw input columns and its target is the raw target (``y_shift`` 0,
``y_scale`` 1). Its parameters are one vector ``head.theta``, in the run's dtype,
named by ``spec["parameters"]``; the formula itself travels in ``spec["formula"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gradfit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EquationError,
    TrainingError,
)
from gradfit.expr import Equation, parse_equation

DEFAULT_START = 1.0
MAX_PARAMETERS = 1000


# ---------------------------------------------------------------- the text


@dataclass(frozen=True)
class ParsedFormula:
    """A formula's equation, its target and the names on its right side (inputs and parameters)."""

    equation: Equation
    target: str
    names: tuple[str, ...]  # right side, in order of first appearance


def parse_formula(text: str) -> ParsedFormula:
    """Parse ``target = expression``; raise EquationError pointing at what is not allowed."""
    eq = parse_equation(text)
    target = eq.left.name
    if target is None:
        raise EquationError(
            f"the left side of a formula must be the target column's name alone, not {str(eq.left)!r}",
            hint="write the formula as 'y = expression', with y the target column",
        )
    names = eq.right.names
    if target in names:
        raise EquationError(
            f"the target {target!r} also appears on the right side of the formula",
            hint="a formula predicts the target from the other columns; it cannot use the target itself",
        )
    if not names:
        raise EquationError("the right side of the formula has no names: nothing to fit", hint="e.g. y = a * exp(b * x)")
    return ParsedFormula(eq, target, names)


def check_formula(text: str) -> None:
    """For config validation: parse, turning an EquationError into the ValueError pydantic reports."""
    try:
        parse_formula(text)
    except EquationError as err:
        raise ValueError(str(err)) from None


def check_start(text: str, start: dict) -> None:
    """For config validation: every key of ``start`` must name a parameter candidate of the formula."""
    try:
        parsed = parse_formula(text)
    except EquationError:
        return  # reported by check_formula
    for key in start:
        if key == parsed.target:
            raise ValueError(f"start: {key!r} is the formula's target, not a parameter; remove it")
        if key not in parsed.names:
            raise ValueError(
                f"start: {key!r} does not appear in the formula (its names: {', '.join(parsed.names)}); "
                "remove it or fix the name"
            )


def resolve_config(cfg, columns: list[str] | None = None):
    """The config with data.target and data.features set from the formula and the data's columns.

    Names on the right side that are columns are inputs; the others are parameters. Raises
    ConfigError/DataError before any training: a target that is not a column, a formula
    without inputs or parameters, a start value given for a column.
    """
    from gradfit.data import read_columns

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
    available = [c for c in columns if c != parsed.target] if dc.features is None else list(dc.features)
    inputs = [n for n in parsed.names if n in columns]
    outside = [n for n in inputs if n not in available]
    if outside:
        raise ConfigError(
            f"model.formula uses the column{'s' if len(outside) > 1 else ''} {', '.join(map(repr, outside))}, "
            "which data.features leaves out",
            hint="add it to data.features, or remove data.features (a formula picks its own columns)",
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
    if syn.kind == "polynomial":
        return [syn.feature, "y"]
    return (["x"] if syn.n_features == 1 else [f"x{i + 1}" for i in range(syn.n_features)]) + ["y"]


# ---------------------------------------------------------------- the model


class FormulaHead(nn.Module):
    """The formula on a design of raw input columns: (n, d) -> (n,), parameters ``theta`` (p,)."""

    def __init__(self, formula: str, features: list[str], parameters: list[str], dtype: torch.dtype):
        super().__init__()
        self.expr = parse_formula(formula).equation.right
        self.features = list(features)
        self.parameters_names = list(parameters)
        self.theta = nn.Parameter(torch.full((len(parameters),), DEFAULT_START, dtype=dtype))

    def evaluate(self, Z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The formula for rows Z (n, d) at parameters theta (p,): (n,)."""
        env = {name: Z[:, i] for i, name in enumerate(self.features)}
        env.update({name: theta[j] for j, name in enumerate(self.parameters_names)})
        out = self.expr.to_torch(env)
        return out.expand(Z.shape[0]) if out.ndim == 0 else out

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        return self.evaluate(Z, self.theta)


class FormulaModel(nn.Module):
    """Raw inputs in, the formula's value out (the same interface as ``RegressionModel``)."""

    def __init__(self, spec: dict, generator: torch.Generator | None = None):
        super().__init__()
        from gradfit.models import DTYPES

        self.spec = dict(spec)
        self.head = FormulaHead(spec["formula"], spec["features"], spec["parameters"], DTYPES[spec["dtype"]])
        # No target scaling: the formula is in raw units (kept as buffers for the common interface).
        self.register_buffer("y_shift", torch.zeros((), dtype=torch.float64))
        self.register_buffer("y_scale", torch.ones((), dtype=torch.float64))

    @property
    def dtype(self) -> torch.dtype:
        return self.head.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.head.theta.device

    @property
    def parameter_names(self) -> list[str]:
        return list(self.spec["parameters"])

    def design(self, X: torch.Tensor, device=None) -> torch.Tensor:
        """Raw (n, d) -> the same columns in the head's dtype, on ``device`` (no scaling)."""
        X = torch.as_tensor(X)
        return X.to(device=device or self.device, dtype=self.dtype)

    def scaled_target(self, y: torch.Tensor, device=None) -> torch.Tensor:
        return y.to(device=device or self.device, dtype=self.dtype)

    def unscale(self, pred: torch.Tensor) -> torch.Tensor:
        return pred.detach().to("cpu", torch.float64)

    @torch.no_grad()
    def predict(self, X, batch_rows: int = 1 << 16) -> torch.Tensor:
        """The formula (float64, CPU) for raw inputs (array or tensor (n, d)), at the fitted parameters."""
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.ndim == 1:
            X = X[:, None]
        d = len(self.spec["features"])
        if X.shape[1] != d:
            raise DataError(f"expected {d} feature column(s), got {X.shape[1]}")
        if not X.shape[0]:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat([self.unscale(self.head(self.design(X[i : i + batch_rows]))) for i in range(0, X.shape[0], batch_rows)])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.unscale(self.head(self.design(X)))

    def parameters_dict(self) -> dict[str, float]:
        values = self.head.theta.detach().to("cpu", torch.float64).tolist()
        return dict(zip(self.spec["parameters"], values))

    def coefficients(self) -> dict:
        """coefficients.json: the formula and its fitted parameters (uncertainty added by the caller)."""
        return {
            "model": "formula",
            "target": self.spec["target"],
            "formula": self.spec["formula"],
            "inputs": list(self.spec["inputs"]),
            "parameters": self.parameters_dict(),
        }


def formula_spec(cfg, feature_names: list[str], target: str) -> dict:
    """The architecture of a formula model: its text, inputs and parameters (in order of appearance)."""
    parsed = parse_formula(cfg.model.formula)
    return {
        "kind": "formula",
        "features": list(feature_names),
        "target": target,
        "dtype": cfg.dtype,
        "formula": cfg.model.formula,
        "inputs": [n for n in parsed.names if n in feature_names],
        "parameters": [n for n in parsed.names if n not in feature_names],
        "intercept": False,
        "standardize": False,
    }


def model_from_spec(spec: dict) -> FormulaModel:
    """Rebuild from a checkpoint's spec: the formula is parsed again (safely) and its names checked."""
    try:
        parsed = parse_formula(spec["formula"])
        names = set(spec["features"]) | set(spec["parameters"])
        ok = set(parsed.names) <= names and parsed.target == spec["target"]
    except (EquationError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the checkpoint's formula cannot be rebuilt: {exc}") from None
    if not ok:
        raise CheckpointError("the checkpoint's formula does not match its recorded inputs and parameters")
    return FormulaModel(spec)


@torch.no_grad()
def build_formula_model(cfg, feature_names, target, X_train, y_train, device) -> FormulaModel:
    """A formula model at its start point, on ``device``; refuses a start where the formula is not finite."""
    model = FormulaModel(formula_spec(cfg, feature_names, target))
    start = [cfg.model.start.get(n, DEFAULT_START) for n in model.parameter_names]
    model.head.theta.copy_(torch.tensor(start, dtype=torch.float64))
    model.head.to(device)
    check_finite_start(model, X_train)
    return model


def describe_point(names, values) -> str:
    return ", ".join(f"{n}={v:.6g}" for n, v in zip(names, values))


@torch.no_grad()
def check_finite_start(model: FormulaModel, X: torch.Tensor) -> None:
    """TrainingError when the formula is not finite on some training row at the start point."""
    if not X.shape[0]:
        return
    pred = model.head(model.design(X))
    bad = ~torch.isfinite(pred)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        inputs = model.spec["inputs"]
        cols = [model.spec["features"].index(n) for n in inputs]
        at = ", ".join(f"{n}={float(X[row, c]):.6g}" for n, c in zip(inputs, cols))
        theta = model.head.theta.detach().cpu().tolist()
        raise TrainingError(
            f"the formula is not finite at the start point ({describe_point(model.parameter_names, theta)}): "
            f"{float(pred[row])} on {int(bad.sum())} of {X.shape[0]} training rows, e.g. where {at}",
            hint="give model.start values where the formula is finite on every row (unset parameters start at "
            f"{DEFAULT_START:g})",
        )
