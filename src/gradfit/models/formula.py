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

Bounds and fixed parameters (``start: {b1: {value: 500, min: 0, max: 1000}, b3: {value: 2,
vary: false}}``) live in the parametrization, as lmfit and MINUIT do it: the optimizer (any of
them) moves ``head.free``, one unbounded entry per varying parameter, and ``head.theta`` maps it
through smooth transforms onto the bounds, the fixed parameters held at their values. The spec
records them (``spec["bounds"]``, ``spec["fixed"]``); the checkpoint holds ``theta`` in external units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradfit.data.batches import empty_design
from gradfit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EquationError,
    TrainingError,
)
from gradfit.expr.formula import parse_formula
from gradfit.models.base import Model
from gradfit.models.heads import DTYPES

DEFAULT_START = 1.0
AT_BOUND_RTOL = 1e-8  # a parameter this close to a bound (relative) sits at it


# ---------------------------------------------------------------- the model


MIN_SLOPE = 1e-3  # a start on a bound begins where the transform's slope is this share of its largest
ON_BOUND = 1e-10  # closer to a bound than this (relative to the range; 1 for one bound), a parameter is on it


class FormulaHead(nn.Module):
    """The formula on a design of raw input columns: (n, d) -> (n,).

    ``theta`` (p,): every parameter in external units (the formula's), built from the trained
    vector ``free`` (q,): one entry per varying parameter, mapped through lmfit's (MINUIT's) bound
    transforms; fixed parameters (``vary: false``) keep their start value and are not in ``free``.
    With no bounds and nothing fixed ``theta`` is ``free`` itself.
    """

    def __init__(self, formula: str, features: list[str], parameters: list[str], dtype: torch.dtype,
                 bounds: dict | None = None, fixed: list[str] = ()):
        super().__init__()
        self.expr = parse_formula(formula).equation.right
        self.features = list(features)
        self.names = list(parameters)
        self.varying = [j for j, n in enumerate(self.names) if n not in set(fixed)]
        self.bounds = {n: (_side(b[0], -math.inf), _side(b[1], math.inf)) for n, b in (bounds or {}).items()}
        self.plain = len(self.varying) == len(self.names) and not self.bounds
        self.free = nn.Parameter(torch.full((len(self.varying),), DEFAULT_START, dtype=dtype))
        self.register_buffer("values", torch.full((len(self.names),), DEFAULT_START, dtype=dtype))
        self.register_buffer("varying_index", torch.tensor(self.varying, dtype=torch.long))
        # per transform: the positions in ``free`` and the bounds ("both": lo, hi; "min": lo; "max": hi)
        self.kinds = {}
        for k, j in enumerate(self.varying):
            lo, hi = self.bounds.get(self.names[j], (-math.inf, math.inf))
            kind = "both" if math.isfinite(lo) and math.isfinite(hi) else "min" if math.isfinite(lo) else "max" if math.isfinite(hi) else None
            if kind:
                self.kinds.setdefault(kind, []).append((k, lo, hi))
        for kind, rows in self.kinds.items():
            self.register_buffer(f"{kind}_index", torch.tensor([r[0] for r in rows], dtype=torch.long))
            self.register_buffer(f"{kind}_lo", torch.tensor([r[1] for r in rows], dtype=dtype))
            self.register_buffer(f"{kind}_hi", torch.tensor([r[2] for r in rows], dtype=dtype))

    @property
    def parameters_names(self) -> list[str]:
        """The names of ``free``'s entries (the varying parameters)."""
        return [self.names[j] for j in self.varying]

    def varying_external(self, free: torch.Tensor) -> torch.Tensor:
        """The varying parameters in external units for ``free`` (q,): (q,).

        both bounds: lo + (sin u + 1)(hi - lo)/2; a lower one: lo - 1 + sqrt(u^2 + 1); an upper
        one: hi + 1 - sqrt(u^2 + 1) (lmfit's "Bounds Implementation", after MINUIT)."""
        out = free
        for kind in self.kinds:
            i = getattr(self, f"{kind}_index")
            lo, hi = (getattr(self, f"{kind}_{w}").to(free.dtype) for w in ("lo", "hi"))
            u = free[i]
            # Within ON_BOUND of a bound (a share of the range, or of the transform's unit scale) the
            # value is the bound itself and its derivative 0: where the sum of squares no longer
            # resolves the last steps onto the bound, the optimizer's stationarity test sees a parameter held there.
            if kind == "both":
                s = torch.sin(u)
                x = lo + (s + 1) * ((hi - lo) / 2)
                x = torch.where(s >= 1 - 2 * ON_BOUND, hi, torch.where(s <= -1 + 2 * ON_BOUND, lo, x))
                bound = s.abs() >= 1 - 2 * ON_BOUND
            else:
                t = u * u
                x = lo - 1 + torch.sqrt(t + 1) if kind == "min" else hi + 1 - torch.sqrt(t + 1)
                bound = t <= 2 * ON_BOUND
                x = torch.where(bound, lo if kind == "min" else hi, x)
            out = out.index_put((i,), torch.where(bound, x.detach(), x))
        return out

    def on_bound(self, free: torch.Tensor) -> torch.Tensor:
        """Which entries of ``free`` (q,) hold their parameter on a bound (bool (q,)): there the
        prediction's derivative with respect to them is 0 by design, an active constraint, not a plateau."""
        out = torch.zeros(free.shape, dtype=torch.bool, device=free.device)
        for kind in self.kinds:
            i = getattr(self, f"{kind}_index")
            u = free[i]
            out[i] = torch.sin(u).abs() >= 1 - 2 * ON_BOUND if kind == "both" else u * u <= 2 * ON_BOUND
        return out

    def full(self, varying: torch.Tensor) -> torch.Tensor:
        """Every parameter (p,) from the varying ones in external units (q,), the fixed at their values."""
        if len(self.varying) == len(self.names):
            return varying
        return self.values.to(varying.dtype).index_put((self.varying_index,), varying)

    @property
    def theta(self) -> torch.Tensor:
        """Every parameter in external units (p,)."""
        return self.free if self.plain else self.full(self.varying_external(self.free))

    @torch.no_grad()
    def set_external(self, theta: torch.Tensor, nudge: bool = False) -> None:
        """Take every parameter's external value from theta (p,): fixed ones as they are, the varying
        through the inverse transforms. ``nudge``: a value on a bound moves just inside it, where the
        transform's slope is MIN_SLOPE of its largest (on the bound it is 0 and the fit could not move)."""
        theta = theta.to(self.values.dtype)
        self.values.copy_(theta)
        u = theta[self.varying_index].clone()
        for kind in self.kinds:
            i, lo, hi = (getattr(self, f"{kind}_{w}") for w in ("index", "lo", "hi"))
            x = u[i]
            if kind == "both":
                s = (2 * (x - lo) / (hi - lo) - 1).clamp(-1, 1)
                lim = math.sqrt(1 - MIN_SLOPE**2) if nudge else 1.0
                u[i] = torch.asin(s.clamp(-lim, lim))
            else:
                gap = (x - lo) if kind == "min" else (hi - x)
                v = torch.sqrt(((gap.clamp_min(0) + 1) ** 2 - 1).clamp_min(0))
                u[i] = v.clamp_min(MIN_SLOPE) if nudge else v
        self.free.copy_(u)

    def evaluate(self, Z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The formula for rows Z (n, d) at parameters theta (p,), external units: (n,)."""
        env = {name: Z[:, i] for i, name in enumerate(self.features)}
        env.update({name: theta[j] for j, name in enumerate(self.names)})
        out = self.expr.to_torch(env)
        return out.expand(Z.shape[0]) if out.ndim == 0 else out

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        return self.evaluate(Z, self.theta)

    # The checkpoint holds ``theta`` (external units, as before bounds existed) and, when bounds or
    # fixed parameters make it differ from ``free``, ``free`` too (so a resumed fit continues exactly).
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        theta = self.theta
        destination[prefix + "theta"] = theta if keep_vars else theta.detach()
        if not self.plain:
            destination[prefix + "free"] = self.free if keep_vars else self.free.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        known = {prefix + "theta"} | (set() if self.plain else {prefix + "free"})
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in known)
        if prefix + "theta" not in state_dict:
            missing_keys.append(prefix + "theta")
            return
        theta = state_dict[prefix + "theta"]
        if tuple(theta.shape) != (len(self.names),):
            error_msgs.append(f"{prefix}theta has shape {tuple(theta.shape)}, expected ({len(self.names)},)")
            return
        self.set_external(theta)
        free = state_dict.get(prefix + "free")
        if free is not None and tuple(free.shape) == tuple(self.free.shape):
            with torch.no_grad():
                self.free.copy_(free)


def _side(v, default: float) -> float:
    """A bound from a spec (None: none on that side)."""
    return default if v is None else float(v)


class FormulaModel(Model):
    """Raw inputs in, the formula's value out (``models.base.Model``)."""

    def __init__(self, spec: dict, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = dict(spec)
        self.head = FormulaHead(spec["formula"], spec["features"], spec["parameters"], DTYPES[spec["dtype"]],
                                spec.get("bounds"), spec.get("fixed", ()))
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
        start = [start_value(cfg.model.start.get(n, DEFAULT_START)) for n in model.parameter_names()]
        model.head.set_external(torch.tensor(start, dtype=torch.float64), nudge=True)
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

    def varying_names(self) -> list[str]:
        """The parameters the fit moves (all but ``vary: false``): those with standard errors."""
        return self.head.parameters_names

    def fixed_names(self) -> list[str]:
        return list(self.spec.get("fixed", []))

    def bounds(self) -> dict[str, list]:
        """{name: [min, max]} of the bounded parameters (None: no bound on that side)."""
        return {n: list(b) for n, b in self.spec.get("bounds", {}).items()}

    def at_bounds(self, rtol: float = AT_BOUND_RTOL) -> dict[str, str]:
        """{name: "min" or "max"} of the parameters within ``rtol`` (relative) of a bound."""
        values = self.parameters_dict()
        out = {}
        for name, (lo, hi) in self.bounds().items():
            x = values[name]
            width = hi - lo if lo is not None and hi is not None else 0.0
            for side, b in (("min", lo), ("max", hi)):
                if b is not None and abs(x - b) <= rtol * max(abs(b), abs(x), width):
                    out[name] = side
        return out

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
    """The architecture of a formula model: its text, inputs and parameters (in order of appearance),
    and, when model.start gives them, ``bounds`` ({name: [min, max]}, None for no bound) and ``fixed``."""
    parsed = parse_formula(cfg.model.formula)
    parameters = [n for n in parsed.names if n not in feature_names]
    spec = {
        "kind": "formula",
        "features": list(feature_names),
        "target": target,
        "dtype": cfg.dtype,
        "formula": cfg.model.formula,
        "inputs": [n for n in parsed.names if n in feature_names],
        "parameters": parameters,
        "intercept": False,
        "standardize": False,
    }
    entries = {n: v for n, v in cfg.model.start.items() if isinstance(v, dict) and n in parameters}
    bounds = {n: [v.get("min"), v.get("max")] for n, v in entries.items()
              if v.get("vary", True) and ("min" in v or "max" in v)}
    fixed = [n for n in parameters if n in entries and not entries[n].get("vary", True)]
    if len(fixed) == len(parameters):
        raise ConfigError(f"model.start fixes every parameter of the formula ({', '.join(fixed)}): nothing to fit",
                          hint="let at least one parameter vary (remove its vary: false)")
    if bounds:
        spec["bounds"] = bounds
    if fixed:
        spec["fixed"] = fixed
    return spec


def start_value(entry) -> float:
    """The start value of one model.start entry (a number or {value, ...})."""
    return float(entry["value"]) if isinstance(entry, dict) else float(entry)


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
