"""Models that take raw inputs: a feature map (scaling and polynomial terms), a head, target scaling.

A ``RegressionModel`` predicts in original units from raw float64 inputs. Inside,
the ``FeatureMap`` turns raw columns into a well-conditioned design (each feature
mapped to a standard range, polynomial terms in the Legendre basis, each column
centred and scaled), and the head (a linear layer or an MLP) works on that design
and on a standardized target. Training sees only the design, computed once.
``coefficients()`` converts a linear head back to powers of the raw inputs, in
exact rational arithmetic, so that what is written is what the model computes.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Optional

import torch
from torch import nn

from gradfit.data.batches import empty_design
from gradfit.data.moments import check_scaling
from gradfit.data.sources import MemoryRows
from gradfit.errors import DataError
from gradfit.models.base import Model
from gradfit.models.features import FeatureMap, drop_indicator_powers, polynomial_terms, term_name
from gradfit.models.heads import DTYPES, LinearHead, MLPHead

# Rows per chunk when a large design is built or summarized: float64 temporaries of a few MiB
# (900,000 x 32 rows into a column-major design: 0.21 s by 8192 rows, 0.23 by 2048, 0.33 by 32768).
DESIGN_CHUNK_ROWS = 1 << 13


class RegressionModel(Model):
    """Raw inputs in, predictions in original units out.

    ``spec`` holds everything needed to rebuild the module (kind, names, terms, sizes);
    the state dict holds the numbers (weights and float64 scaling statistics).
    """

    def __init__(self, spec: dict, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.spec = dict(spec)
        dtype = DTYPES[spec["dtype"]]
        d = len(spec["features"])
        self.features = FeatureMap(d, [tuple(t) for t in spec["terms"]], spec["basis"])
        m = self.features.n_terms
        if spec["kind"] == "mlp":
            g = generator if generator is not None else torch.Generator().manual_seed(0)
            self.head: nn.Module = MLPHead(m, spec["hidden"], spec["activation"], dtype, g)
        else:
            self.head = LinearHead(m, spec["intercept"], dtype)
        self.register_buffer("y_shift", torch.zeros((), dtype=torch.float64))
        self.register_buffer("y_scale", torch.ones((), dtype=torch.float64))

    @classmethod
    def from_config(cls, cfg, feature_names, target, X_train, y_train, device, generator=None,
                    summarize=None) -> "RegressionModel":
        """A model for this config, its scaling fitted on the training rows (see ``fit_scaling``), on ``device``."""
        model = cls(model_spec(cfg, feature_names, target), generator=generator)
        fit_scaling(model, X_train, y_train, summarize)
        model.head.to(device)
        return model

    @classmethod
    def from_spec(cls, spec: dict) -> "RegressionModel":
        """The architecture a checkpoint's spec describes, before its weights load."""
        return cls(spec)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.spec["dtype"]]

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def design(self, X: torch.Tensor, device=None, rows: Optional[torch.Tensor] = None,
               column_major: bool = False) -> torch.Tensor:
        """Raw (n, d) -> design (n, m) in the head's dtype, on ``device`` (default: the head's).

        ``rows``: the design of ``X[rows]``, gathered chunk by chunk (no copy of those rows).
        ``column_major``: stored column by column (``data.batches.empty_design``), the layout the
        one-pass linear gradient reads fastest on the CPU; the same numbers.
        """

        device = device or self.device
        n = X.shape[0] if rows is None else rows.shape[0]
        if n <= DESIGN_CHUNK_ROWS and not column_major:
            return self.features(X if rows is None else X[rows]).to(device=device, dtype=self.dtype)
        # Chunk by chunk into the result: the float64 intermediates stay chunk-sized (the same
        # numbers, row by row, as in one go).
        out = empty_design(n, self.features.n_terms, self.dtype, device, column_major=column_major)
        for i in range(0, n, DESIGN_CHUNK_ROWS):
            chunk = X[i : i + DESIGN_CHUNK_ROWS] if rows is None else X.index_select(0, rows[i : i + DESIGN_CHUNK_ROWS])
            out[i : i + DESIGN_CHUNK_ROWS] = self.features(chunk)
        return out

    def scaled_target(self, y: torch.Tensor, device=None) -> torch.Tensor:
        return ((y.to(torch.float64) - self.y_shift) / self.y_scale).to(device=device or self.device, dtype=self.dtype)

    def unscale(self, pred_scaled: torch.Tensor) -> torch.Tensor:
        """Head output -> original units, float64 on the CPU."""
        out = pred_scaled.detach().to("cpu", torch.float64) * self.y_scale.cpu() + self.y_shift.cpu()
        # loss poisson, gamma: the head's output is log E[y] (the log link), the target is never scaled
        return out.exp() if self.spec.get("link") == "log" else out

    @torch.no_grad()
    def predict(self, X, batch_rows: int = 1 << 16) -> torch.Tensor:
        """Predictions in original units (float64, CPU) for raw inputs (array or tensor (n, d))."""
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[1] != self.features.n_features:
            raise DataError(f"expected {self.features.n_features} feature column(s), got {X.shape[1]}")
        was = self.training
        self.eval()
        out = torch.cat(
            [self.unscale(self.head(self.design(X[i : i + batch_rows]))) for i in range(0, X.shape[0], batch_rows)]
        ) if X.shape[0] else torch.zeros(0, dtype=torch.float64)
        self.train(was)
        return out

    # ------------------------------------------------------------ capabilities

    @property
    def linear_in_parameters(self) -> bool:
        return isinstance(self.head, LinearHead)

    @property
    def has_standard_errors(self) -> bool:
        return isinstance(self.head, LinearHead)

    @property
    def one_pass_gradient(self) -> bool:
        return isinstance(self.head, LinearHead)

    @property
    def standardizes(self) -> bool:
        return bool(self.spec["standardize"])

    # ------------------------------------------------------------ readable form

    def raw_polynomial(self) -> dict[tuple[int, ...], float]:
        """A linear head as a polynomial in the raw inputs: {exponents: coefficient}, exact then rounded."""
        assert isinstance(self.head, LinearHead)
        fm = self.features
        w = [Fraction(float(v)) for v in self.head.weight.detach().cpu().double().tolist()]
        b = Fraction(float(self.head.bias.detach().cpu().double())) if self.head.bias is not None else Fraction(0)
        mean = [Fraction(float(v)) for v in fm.col_mean.tolist()]
        cs = [Fraction(float(v)) for v in fm.col_scale.tolist()]
        ys, yh = Fraction(float(self.y_shift)), Fraction(float(self.y_scale))
        zero = tuple([0] * fm.n_features)
        total: dict[tuple[int, ...], Fraction] = {zero: ys + yh * b}
        for j, poly in enumerate(fm.term_polynomials()):
            a = yh * w[j] / cs[j]
            total[zero] -= a * mean[j]
            for e, c in poly.items():
                total[e] = total.get(e, Fraction(0)) + a * c
        return {e: float(c) for e, c in total.items()}

    def coefficients(self) -> dict:
        """The learned model in readable form (coefficients.json)."""
        names = self.spec["features"]
        target = self.spec["target"]
        if not isinstance(self.head, LinearHead):  # an MLP
            layers = []
            for m in self.head.net:
                if isinstance(m, nn.Linear):
                    layers.append({"type": "linear", "in": m.in_features, "out": m.out_features})
                else:
                    layers.append({"type": "activation", "name": self.spec["activation"]})
            return {
                "model": "mlp",
                "target": target,
                "features": names,
                "layers": layers,
                "parameters": int(sum(p.numel() for p in self.head.parameters())),
            }
        poly = self.raw_polynomial()
        zero = tuple([0] * len(names))
        order = [tuple(t) for t in polynomial_terms(len(names), max(sum(e) for e in poly), True)]
        coefs = {term_name(e, names): poly.get(e, 0.0) for e in order if e in poly}
        out = {"model": self.spec["kind"], "target": target}
        if self.spec["intercept"]:
            out["intercept"] = poly.get(zero, 0.0)
        out["coefficients"] = coefs
        out["equation"] = equation(target if self.spec.get("link") != "log" else f"log(E[{target}])", out.get("intercept"), coefs)
        if self.spec.get("link") == "log":
            out["link"] = "log"  # (the coefficients are of log E[target])
        return out

    def parameter_names(self) -> list[str]:
        """A linear head's raw coefficients ('intercept' first), an MLP's parameter tensors."""
        if not isinstance(self.head, LinearHead):
            return [name for name, _ in self.head.named_parameters()]
        c = self.coefficients()
        return (["intercept"] if "intercept" in c else []) + list(c["coefficients"])


def _num(v: float) -> str:
    s = f"{v:.6g}"
    return s


def equation(target: str, intercept: Optional[float], coefs: dict[str, float]) -> str:
    """'y = 3 + 2*x + 1*x^2' (6 significant digits)."""
    parts: list[str] = []
    if intercept is not None:
        parts.append(_num(intercept))
    for name, c in coefs.items():
        term = f"{_num(abs(c))}*{name}"
        if not parts:
            parts.append(term if c >= 0 else f"-{term}")
        else:
            parts.append(("+ " if c >= 0 else "- ") + term)
    return f"{target} = " + (" ".join(parts) if parts else "0")


# ---------------------------------------------------------------- building from data


def model_spec(cfg, feature_names: list[str], target: str) -> dict:
    """The architecture of a config's model for these features (no numbers yet)."""
    mc = cfg.model
    d = len(feature_names)
    spec = {
        "kind": mc.kind,
        "features": list(feature_names),
        "target": target,
        "dtype": cfg.dtype,
        "intercept": getattr(mc, "intercept", True),
        "standardize": cfg.data.standardize,
    }
    if cfg.loss.kind in ("poisson", "gamma"):
        spec["link"] = "log"  # (unscale: exp of the head's output)
    if mc.kind == "polynomial":
        spec["terms"] = drop_indicator_powers(polynomial_terms(d, mc.degree, mc.interactions), list(feature_names))
        spec["basis"] = "legendre" if cfg.data.standardize and spec["intercept"] else "monomial"
    else:
        spec["terms"] = polynomial_terms(d, 1, False)
        spec["basis"] = "monomial"
    if mc.kind == "mlp":
        spec["hidden"] = list(mc.hidden)
        spec["activation"] = mc.activation
    return spec


@torch.no_grad()
def fit_scaling(model: RegressionModel, X: torch.Tensor, y: torch.Tensor, summarize=None) -> None:
    """Set the feature map's and the target's statistics from the training rows (float64).

    ``summarize(fn) -> (stats of fn(X), stats of y)`` supplies statistics over rows not all in
    hand (several processes, streamed data: data/sources.py); default: these rows.
    """
    spec = model.spec
    fm = model.features
    names = spec["features"]
    if not spec["standardize"]:
        return
    if summarize is None:
        summarize = MemoryRows.training(X, y).summarizer()
    xs, ys = summarize(lambda A: A)
    check_scaling(xs, names)  # (values near 1e308, or subnormal ones: refused with the true cause)
    check_scaling(ys, [spec["target"]])
    if model.linear_in_parameters and not spec["intercept"]:
        # No intercept: scale only, never shift (a shift would add a constant term).
        rms = xs["rms"]
        _check_spread(rms, names)
        fm.scale.copy_(rms)
        fm.col_scale.copy_(_nonzero(summarize(fm.raw_terms)[0]["rms"]))
        if spec.get("link") != "log":  # (a log link's target stays in its units)
            model.y_scale.copy_(_nonzero(ys["rms"].reshape(())))
        return
    if spec["basis"] == "legendre":
        lo, hi = xs["min"], xs["max"]
        _check_spread(hi - lo, names)
        fm.shift.copy_((hi + lo) / 2)
        fm.scale.copy_((hi - lo) / 2)
    else:
        sd = xs["std"] if xs["n"] > 1 else torch.ones(len(names), dtype=torch.float64)
        _check_spread(sd, names)
        fm.shift.copy_(xs["mean"])
        fm.scale.copy_(sd)
    if model.linear_in_parameters:  # (an MLP's design has no column statistics)
        zs = summarize(fm.raw_terms)[0]
        fm.col_mean.copy_(zs["mean"])
        fm.col_scale.copy_(_nonzero(zs["std"]))
    if spec.get("link") == "log":  # (a log link's target stays in its units)
        return
    model.y_shift.copy_(ys["mean"].reshape(()))
    model.y_scale.copy_(_nonzero(ys["std"].reshape(())))


def _check_spread(spread: torch.Tensor, names: list[str]) -> None:
    bad = [n for n, s in zip(names, spread.tolist()) if not s > 0]
    if bad:
        raise DataError(
            f"feature column{'s' if len(bad) > 1 else ''} {', '.join(repr(b) for b in bad)} "
            "take a single value on the training rows, so no coefficient can be fitted for them",
            hint="leave such columns out of data.features",
        )


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t, torch.ones_like(t))


