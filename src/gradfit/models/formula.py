"""Formula models: any expression of the data columns, its parameters fitted by autograd.

``model: {kind: formula, formula: "y = b1 * (1 - exp(-b2 * x))", start: {b1: 500}}``:
the name left of ``=`` is the target, names on the right that are data columns are
inputs, every other name is a parameter (starting at ``start``'s value, or 1.0).
The text goes through gradfit's safe parser (``gradfit.expr``, the grammar of
``solve-equations``): nothing the user wrote is ever evaluated by Python.

A ``FormulaModel`` implements the model interface (``models.base.Model``: ``spec``,
``head``, ``design``, ``scaled_target``, ``unscale``, ``predict``, ``coefficients``,
the capabilities) so that training, checkpoints, eval and predict work unchanged. Unlike the other
models it never standardizes: the formula is written in raw units, so its
design is the raw input columns and its target is the raw target (``y_shift`` 0,
``y_scale`` 1). Its parameters are one vector ``head.theta``, in the run's dtype,
named by ``spec["parameters"]``; the formula itself travels in ``spec["formula"]``.
"""

from __future__ import annotations

import torch
from torch import nn

from gradfit.data.batches import empty_design
from gradfit.errors import (
    CheckpointError,
    DataError,
    EquationError,
    TrainingError,
)
from gradfit.expr.formula import parse_formula
from gradfit.models.base import Model
from gradfit.models.heads import DTYPES

DEFAULT_START = 1.0


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


class FormulaModel(Model):
    """Raw inputs in, the formula's value out (``models.base.Model``)."""

    def __init__(self, spec: dict, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = dict(spec)
        self.head = FormulaHead(spec["formula"], spec["features"], spec["parameters"], DTYPES[spec["dtype"]])
        # No target scaling: the formula is in raw units (kept as buffers for the common interface).
        self.register_buffer("y_shift", torch.zeros((), dtype=torch.float64))
        self.register_buffer("y_scale", torch.ones((), dtype=torch.float64))

    @classmethod
    @torch.no_grad()
    def from_config(cls, cfg, feature_names, target, X_train, y_train, device, generator=None,
                    summarize=None) -> "FormulaModel":
        """At its start point, on ``device``; refuses a start where the formula is not finite.

        (``y_train``, ``generator`` and ``summarize`` are not used: nothing is scaled or drawn.)
        """
        model = cls(formula_spec(cfg, feature_names, target))
        start = [cfg.model.start.get(n, DEFAULT_START) for n in model.parameter_names()]
        model.head.theta.copy_(torch.tensor(start, dtype=torch.float64))
        model.head.to(device)
        check_finite_start(model, X_train)
        return model

    @classmethod
    def from_spec(cls, spec: dict) -> "FormulaModel":
        """Rebuild from a checkpoint's spec: the formula is parsed again (safely) and its names checked."""
        try:
            parsed = parse_formula(spec["formula"])
            names = set(spec["features"]) | set(spec["parameters"])
            ok = set(parsed.names) <= names and parsed.target == spec["target"]
        except (EquationError, KeyError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint's formula cannot be rebuilt: {exc}") from None
        if not ok:
            raise CheckpointError("the checkpoint's formula does not match its recorded inputs and parameters")
        return cls(spec)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.head.theta.device

    def parameter_names(self) -> list[str]:
        return list(self.spec["parameters"])

    def design(self, X: torch.Tensor, device=None, rows: torch.Tensor | None = None,
               column_major: bool = False) -> torch.Tensor:
        """Raw (n, d) -> the same columns in the head's dtype, on ``device`` (no scaling).

        ``rows``: those of ``X[rows]``; ``column_major``: stored column by column (the same numbers).
        """
        X = torch.as_tensor(X)
        if rows is not None:
            X = X[rows]
        device = device or self.device
        if not column_major:
            return X.to(device=device, dtype=self.dtype)
        out = empty_design(X.shape[0], X.shape[1], self.dtype, device, column_major=True)
        out.copy_(X)
        return out

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

    # ------------------------------------------------------------ capabilities

    @property
    def linear_in_parameters(self) -> bool:
        return False

    @property
    def has_standard_errors(self) -> bool:
        return True

    @property
    def one_pass_gradient(self) -> bool:
        return False

    @property
    def standardizes(self) -> bool:
        return False

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
            f"the formula is not finite at the start point ({describe_point(model.parameter_names(), theta)}): "
            f"{float(pred[row])} on {int(bad.sum())} of {X.shape[0]} training rows, e.g. where {at}",
            hint="give model.start values where the formula is finite on every row (unset parameters start at "
            f"{DEFAULT_START:g})",
        )
