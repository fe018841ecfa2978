"""The config file's schema: pydantic models with ranges, choices and cross-field rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gradfit.config.auto import EXACT_ON_REQUEST, auto_optimizer
from gradfit.config.weighting import check_weights


class _Strict(BaseModel):
    # defer_build: a model's validator is built when first used, not at import (the sections a
    # config does not use are never built: about 40 ms of every start-up)
    model_config = ConfigDict(extra="forbid", validate_assignment=False, defer_build=True)


# ---------------------------------------------------------------- data


class SyntheticPolynomial(_Strict):
    """y = c0 + c1*x + c2*x^2 + ... + noise, x uniform on x_range."""

    kind: Literal["polynomial"]
    coefficients: list[float] = Field(min_length=1, description="lowest power first")
    n_samples: int = Field(200, ge=2, le=100_000_000)
    noise: float = Field(0.0, ge=0, description="standard deviation of Gaussian noise")
    x_range: tuple[float, float] = Field((-3.0, 3.0), description="x is drawn uniformly on [low, high]")
    feature: str = Field("x", description="name of the feature column")

    @field_validator("x_range")
    @classmethod
    def _range(cls, v):
        if not v[0] < v[1]:
            raise ValueError(f"x_range must be [low, high] with low < high, got {list(v)}")
        return v


class SyntheticLinear(_Strict):
    """y = bias + X @ coefficients + noise, X standard normal with n_features columns x1..xN."""

    kind: Literal["linear"]
    n_features: int = Field(1, ge=1, le=10_000, description="columns x1..xN, standard normal")
    coefficients: Optional[list[float]] = Field(None, description="drawn from the seed when omitted")
    bias: float = Field(0.0, description="the intercept")
    n_samples: int = Field(200, ge=2, le=100_000_000)
    noise: float = Field(0.0, ge=0, description="standard deviation of Gaussian noise")
    x_range: Optional[tuple[float, float]] = Field(None, description="uniform on this range instead of normal")

    @model_validator(mode="after")
    def _check(self):
        if self.coefficients is not None and len(self.coefficients) != self.n_features:
            raise ValueError(
                f"coefficients has {len(self.coefficients)} values but n_features is {self.n_features}; "
                "give one coefficient per feature"
            )
        if self.x_range is not None and not self.x_range[0] < self.x_range[1]:
            raise ValueError(f"x_range must be [low, high] with low < high, got {list(self.x_range)}")
        return self


Synthetic = Annotated[Union[SyntheticPolynomial, SyntheticLinear], Field(discriminator="kind")]


class Split(_Strict):
    val: float = Field(0.2, ge=0, lt=1, description="fraction held out for validation")
    test: float = Field(0.0, ge=0, lt=1, description="fraction held out for testing")

    @model_validator(mode="after")
    def _sum(self):
        if self.val + self.test >= 1:
            raise ValueError(
                f"val + test must be below 1 (got {self.val} + {self.test}); leave some rows to train on"
            )
        return self


class DataConfig(_Strict):
    """Feature columns are used as their kind says: numbers as they are; text, boolean and category
    columns treatment-coded (one 0/1 column per level but the reference, named COLUMN[T.LEVEL] as
    statsmodels names them; the reference is the first level in sorted order unless data.reference
    names one); date and datetime columns (ISO dates in a CSV, Parquet timestamps) as days since
    1970-01-01 UTC, named COLUMN[days]. The levels are stored in the checkpoint; predict refuses a
    level it never saw. A column name holding * ^ [ ] or a backtick is quoted with backticks in term
    names (`a*b`^2). The run directory's split.csv gives each data row's set: train, val, test or dropped.
    """

    path: Optional[str] = Field(None, description=".csv or .parquet file, relative to the config file")
    synthetic: Optional[Synthetic] = None
    target: str = Field("y", description="the column to predict")
    features: Optional[list[str]] = Field(None, description="default: every column but the target")
    exclude: Optional[list[str]] = Field(None, description="columns left out of the default features (every column but the target)")
    sep: Optional[Literal[",", ";", "\t", "|"]] = Field(None, description="a CSV's field separator; default: sniffed from its first lines")
    decimal: Literal[".", ","] = Field(".", description="a CSV's decimal mark (',' with sep ';' for 1,5;2,25)")
    reference: dict[str, str] = Field(
        default_factory=dict, description="the reference level of categorical columns, e.g. {city: Paris}; default: the first sorted level"
    )
    split: Split = Split()
    standardize: bool = Field(True, description="scale inputs and target for training; results are reported in original units")
    dropna: bool = Field(False, description="drop rows with missing values instead of refusing them")
    streaming: bool = Field(
        False, description="read a Parquet file or directory in row-group batches each epoch instead of into memory"
    )
    weights: Optional[str] = Field(None, description="a column of row weights w >= 0 (not a feature): the loss is sum(w l) / sum(w); for mse statsmodels' WLS")
    weights_are: Literal["weights", "sigma"] = Field("weights", description="sigma: the column holds measurement standard deviations, w = 1/sigma^2 (curve_fit's sigma)")
    absolute_sigma: bool = Field(False, description="known sigmas: standard errors from (J'WJ)^-1 unscaled, as curve_fit(absolute_sigma=True)")

    @field_validator("target", "exclude", "features", "reference", "weights", mode="before")
    @classmethod
    def _names_as_text(cls, v):
        # YAML reads a column named 2010 as a number: a column name is text.
        def text(x):
            return str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x

        if isinstance(v, list):
            return [text(x) for x in v]
        if isinstance(v, dict):
            return {text(k): text(x) for k, x in v.items()}
        return text(v)

    @model_validator(mode="after")
    def _source(self):
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data.path (a .csv or .parquet file) or data.synthetic")
        if self.path is not None and not self.path.lower().endswith((".csv", ".parquet", ".pq")):
            raise ValueError(f"data.path must end in .csv or .parquet, got {self.path!r}")
        if self.streaming and (self.path is None or not self.path.lower().rstrip("/").endswith((".parquet", ".pq"))):
            raise ValueError(
                "streaming reads Parquet files only (a .parquet file, or a directory of them named *.parquet), "
                f"not {self.path or 'synthetic data'!r}; convert the data to Parquet or set data.streaming: false"
            )
        if self.features is not None:
            if len(self.features) == 0:
                raise ValueError("features is empty; list at least one column or leave it out")
            if len(set(self.features)) != len(self.features):
                raise ValueError("features lists a column twice")
            if self.target in self.features:
                raise ValueError(f"the target {self.target!r} is also listed in features")
            if self.exclude:
                raise ValueError("give data.features or data.exclude, not both (exclude trims the default: every column)")
        if self.sep == self.decimal:
            raise ValueError(f"data.sep and data.decimal are both {self.sep!r}; a decimal comma needs another separator, e.g. ';'")
        return self


# ---------------------------------------------------------------- model


class Penalty(_Strict):
    """Minimizes `1/(2n) ||y - b0 - Z w||^2 + l1 ||w||_1 + (l2/2) ||w||^2` over the training rows, with Z the
    standardized design (each term centred, divided by its population SD; linear models: scikit-learn's
    StandardScaler of the features; polynomial models: the standardized Legendre terms) and y in its own units; the
    intercept b0 is not penalized. This is scikit-learn's `ElasticNet(alpha=l1+l2, l1_ratio=l1/(l1+l2))` on Z and
    centred y, `Lasso(alpha=l1)` when l2 = 0, and `Ridge(alpha=l2*n)` when l1 = 0 (n training rows). Solved exactly
    by coordinate descent in float64 (optimizer.kind: exact; L1 zeros are exact zeros); no standard errors are
    reported (the penalty biases the coefficients).

    The paragraph above is the config reference's text (docs/config.md).
    """

    l1: float = Field(0.0, ge=0, description="lasso: weight of the sum of |coefficients| (scikit-learn's Lasso alpha)")
    l2: float = Field(0.0, ge=0, description="ridge: weight of half the sum of squared coefficients (Ridge alpha / n)")


class LinearModel(_Strict):
    kind: Literal["linear"]
    intercept: bool = Field(True, description="fit a constant term; false forces the fit through the origin")
    penalty: Optional[Penalty] = Field(None, description="ridge / lasso / elastic net on the standardized coefficients")
    formula: Optional[str] = Field(None, description="R-style design through formulaic, e.g. 'y ~ x + C(g) + np.log(z)'")

    @field_validator("formula")
    @classmethod
    def _tilde(cls, v):
        if v is not None and "~" not in v:
            raise ValueError(f"a linear model's formula is target ~ terms (a '~'), got {v!r}; "
                             "'y = f(x; p)' is model.kind: formula")
        return v


class PolynomialModel(_Strict):
    kind: Literal["polynomial"]
    degree: int = Field(2, ge=1, le=30, description="highest total power of the terms")
    intercept: bool = Field(True, description="fit a constant term")
    interactions: bool = Field(True, description="products of features (several features only)")
    penalty: Optional[Penalty] = Field(None, description="ridge / lasso / elastic net on the standardized terms")


class MLPModel(_Strict):
    kind: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64], min_length=1, description="sizes of the hidden layers"
    )
    activation: Literal["relu", "tanh", "gelu", "sigmoid", "silu", "elu", "leaky_relu", "softplus"] = "relu"


class FormulaModel(_Strict):
    kind: Literal["formula"]
    formula: str = Field(description="target = expression; data columns are inputs, other names parameters")
    start: dict[str, Union[float, dict]] = Field(default_factory=dict, description="starting values (default 1.0): a number, "
                                                 "or {value, min, max, vary} for bounds (a smooth transform, as lmfit's) and fixed parameters (vary: false)")

    @field_validator("formula")
    @classmethod
    def _parse(cls, v):
        # Parsed (never evaluated) here, so that a formula gradfit refuses stops the run before any
        # data is read; which names are columns is checked once the data's columns are known.
        from gradfit.expr.formula import check_formula  # (imported here for start-up time)

        check_formula(v)
        return v

    @model_validator(mode="after")
    def _start(self):
        from gradfit.expr.formula import check_start  # (imported here for start-up time)

        self.start = check_start(self.formula, self.start)
        return self


# ---------------------------------------------------------------- loss, optimizer, training


Model = Annotated[Union[LinearModel, PolynomialModel, MLPModel, FormulaModel], Field(discriminator="kind")]


class LossConfig(_Strict):
    """Huber without a loss.delta is robust by default: delta = 1.345 * a robust scale, as statsmodels'
    `RLM(y, X, M=HuberT()).fit()`. On linear and polynomial models (optimizer.kind auto or exact, full batch) the
    fit is RLM's IRLS run to its fixed point: the scale is the MAD of the fit's own residuals, median(|r|) / 0.6745,
    updated every iteration; metrics.json `exact` records the `scale` and the `delta` used (target units), and
    the standard errors are RLM's default (H1). Where that iteration does not apply (mlp and formula models, or
    lbfgs/adam asked for), the scale is the training target's MAD about its median, median(|y - median(y)|) /
    0.6745 (the residual scale of a model predicting the median; its mean absolute deviation * sqrt(pi/2) when
    that MAD is 0); never a fixed number. A numeric loss.delta is in the target's units and is refused below
    1e-12 of the target's robust scale (the loss would be delta * |r|). mae on linear and polynomial models is
    solved as its linear program (optimizer.kind auto: exact); elsewhere its optimum is not certified (a warning).

    The paragraph above is the config reference's text (docs/config.md).
    """

    kind: Literal["mse", "mae", "huber", "quantile", "log_cosh", "poisson", "gamma"] = Field(
        "mse", description="mean squared error, mean absolute error, Huber, quantile (pinball loss at loss.q; "
        "q = 0.5 is half the absolute error), log(cosh(residual)), poisson (counts y >= 0) or gamma (y > 0), "
        "both with the log link: the model gives log E[y]")
    delta: Optional[float] = Field(None, gt=0, description="huber: where it turns linear, in target units; default: "
                                   "1.345 * a robust scale of the residuals (statsmodels' RLM with HuberT; see the loss section above)")
    q: Optional[float] = Field(None, gt=0, lt=1, description="quantile: which quantile of the target to fit")

    @model_validator(mode="after")
    def _delta(self):
        if self.delta is not None and self.kind != "huber":
            raise ValueError(f"delta applies to loss kind 'huber' only, not {self.kind!r}; remove loss.delta")
        if self.q is not None and self.kind != "quantile":
            raise ValueError(f"q applies to loss kind 'quantile' only, not {self.kind!r}; remove loss.q")
        if self.kind == "quantile" and self.q is None:
            raise ValueError("loss kind 'quantile' needs loss.q, the quantile to fit (e.g. q: 0.9; 0.5 is the median)")
        return self


class OptimizerConfig(_Strict):
    kind: Literal["auto", "sgd", "adam", "adamw", "lbfgs", "lm", "exact"] = Field(
        "auto",
        description="auto: lbfgs for linear/polynomial models with mse, log_cosh or huber with a loss.delta (full batch, "
        "in memory), exact for those with model.penalty, mae, quantile, poisson or gamma loss or huber without a "
        "loss.delta, lm for formula models with mse, adam otherwise; lm (Levenberg-Marquardt) is for formula models; "
        "exact: a float64 solver to the optimum (coordinate descent for a penalty, a linear program for mae and "
        "quantile, Newton's method for poisson and gamma, statsmodels RLM's IRLS for huber)",
    )
    lr: Union[Literal["auto"], float] = Field("auto", description="a number, or auto (see the README)")
    momentum: Optional[float] = Field(None, ge=0, lt=1, description="sgd: heavy-ball momentum")
    nesterov: Optional[bool] = Field(None, description="sgd: Nesterov momentum (needs momentum)")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (sgd, adam) or decoupled decay (adamw)")
    betas: Optional[tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]] = Field(
        None, description="adam, adamw"
    )
    history_size: Optional[int] = Field(None, ge=1, le=1000, description="lbfgs: curvature pairs kept (default 100)")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, v):
        if v == "auto":
            return v
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"lr must be a positive number or 'auto', got {v!r}") from None
        if isinstance(v, bool) or not x > 0:
            raise ValueError(f"lr must be a positive number or 'auto', got {v!r}")
        return x

    @model_validator(mode="after")
    def _combinations(self):
        if self.kind != "sgd":
            for key in ("momentum", "nesterov"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to optimizer kind 'sgd' only, not {self.kind!r}; remove it")
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov needs momentum > 0; set momentum (e.g. 0.9) or remove nesterov")
        if self.betas is not None and self.kind not in ("adam", "adamw"):
            raise ValueError(f"betas applies to optimizer kinds 'adam' and 'adamw' only, not {self.kind!r}")
        if self.history_size is not None and self.kind != "lbfgs":
            raise ValueError(f"history_size applies to optimizer kind 'lbfgs' only, not {self.kind!r}")
        if self.kind in ("lbfgs", "lm") and self.weight_decay:
            raise ValueError(f"weight_decay is not supported with {self.kind!r}; use adamw or sgd")
        return self


class EarlyStopping(_Strict):
    patience: int = Field(50, ge=1, description="epochs without validation improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest relative improvement that counts")


class TrainConfig(_Strict):
    epochs: int = Field(1000, ge=1, le=100_000_000, description="the most epochs to train (lbfgs: iterations of up to 20 steps)")
    batch_size: Optional[int] = Field(None, ge=1, description="null = full batch")
    tol: float = Field(1e-9, ge=0, description="stop when the loss improves by less than this (relative); 0: never stop on it")
    early_stopping: Optional[EarlyStopping] = None
    checkpoint_every: Optional[int] = Field(None, ge=1, description="save a checkpoint every N epochs")
    starts: int = Field(1, ge=1, le=1000, description="formula models: fits from the start and N-1 seeded "
                        "perturbations of it (log-uniform, x0.1 to x10), keeping the best (metrics.json: starts)")


class MlflowConfig(_Strict):
    tracking_uri: Optional[str] = Field(
        None, min_length=1, description="MLflow store or server; default: $MLFLOW_TRACKING_URI, else sqlite:///OUTPUT_DIR/mlflow.db"
    )
    experiment: str = Field("gradfit", min_length=1, description="the MLflow experiment (created when missing)")


class OutputConfig(_Strict):
    dir: str = Field("runs", description="run directories are made under it, relative to the working directory")
    mlflow: Optional[MlflowConfig] = Field(None, description="log the run to MLflow (train/tracking.py); off when null")
    tensorboard: bool = Field(False, description="write TensorBoard event files in RUN/tensorboard")


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Config(_Strict):
    """A gradfit experiment."""

    name: str = Field("run", min_length=1, max_length=100, description="names the run directory")
    seed: int = Field(0, ge=0, lt=2**63, description="every random choice derives from it")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N; auto = cuda when available")
    dtype: Literal["auto", "float32", "float64"] = Field(
        "auto", description="precision of training; auto: float64 where the optimizer is lbfgs or lm, float32 otherwise"
    )
    data: DataConfig
    model: Model
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(
                f"name {v!r} must be usable as a directory name: letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if not _DEVICE.match(v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    # What ``auto`` resolved to ({"dtype": "float64", "optimizer.kind": "lbfgs"}), for the summary;
    # the config itself (and config.yaml) holds the concrete values.
    _auto: dict = PrivateAttr(default_factory=dict)

    def _resolve_auto(self) -> None:
        """dtype: auto and optimizer.kind: auto, decided here once (see auto_optimizer)."""
        chosen = {}
        if self.optimizer.kind == "auto":
            chosen["optimizer.kind"] = auto_optimizer(self)
            self.optimizer = self.optimizer.model_copy(update={"kind": chosen["optimizer.kind"]})
        if self.dtype == "auto":
            # float64 where the optimizer reaches the optimum to the dtype's precision (second-order
            # information: lbfgs, lm); first-order steps on float32 are as accurate as their noise allows.
            # Formula models keep float32, as before auto existed.
            full = self.optimizer.kind in ("lbfgs", "exact") and self.model.kind in ("linear", "polynomial")
            chosen["dtype"] = "float64" if full else "float32"
            self.dtype = chosen["dtype"]
        self._auto = chosen

    @model_validator(mode="after")
    def _combinations(self):
        kind = self.model.kind
        self._resolve_auto()
        opt = self.optimizer
        if opt.kind == "lm" and (opt.lr != "auto" or opt.weight_decay):
            raise ValueError(
                "optimizer 'lm' (Levenberg-Marquardt) takes no learning rate or weight_decay: its damping "
                "adapts itself; remove optimizer.lr/weight_decay, or set optimizer.kind: adam to use them"
            )
        if opt.kind == "lm" and (kind != "formula" or self.loss.kind != "mse"):
            raise ValueError(
                "optimizer 'lm' (Levenberg-Marquardt) fits formula models with mse loss only; "
                "use lbfgs, adam or sgd here"
            )
        if self.train.starts > 1 and kind != "formula":
            raise ValueError(f"train.starts applies to formula models only (model.kind 'formula'), not {kind!r}; "
                             "remove it or set train.starts: 1")
        _check_exact(self)
        check_weights(self)
        if opt.kind in ("lbfgs", "lm") and self.train.batch_size is not None:
            raise ValueError(f"optimizer {opt.kind!r} needs full batches; set train.batch_size: null")
        if self.train.early_stopping is not None and self.data.split.val == 0:
            raise ValueError("train.early_stopping needs a validation split; set data.split.val > 0")
        if self.data.streaming:
            if opt.kind in ("lbfgs", "lm") or kind == "formula":
                what = f"optimizer {opt.kind!r}" if opt.kind in ("lbfgs", "lm") else "formula models"
                raise ValueError(f"data.streaming does not support {what}; use optimizer adam, adamw or sgd "
                                 "on a linear, polynomial or mlp model, or set data.streaming: false")
            if opt.kind == "sgd" and opt.lr == "auto":
                raise ValueError("optimizer.lr: 'auto' for sgd needs the data in memory; with data.streaming "
                                 "give optimizer.lr a number (e.g. 0.01) or use optimizer.kind: adam")
        return self

    def auto_chosen(self) -> dict:
        """{"dtype": ..., "optimizer.kind": ...}: the values ``auto`` chose (empty when none was auto)."""
        return dict(self._auto)

    # Where the config was read from: relative data paths resolve against it.
    _base_dir: Path = Path(".")

    def resolved_data_path(self) -> Optional[Path]:
        if self.data.path is None:
            return None
        p = Path(self.data.path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _check_exact(cfg: Config) -> None:
    """model.penalty and optimizer.kind: exact go together: penalized least squares on a linear or
    polynomial model, solved by coordinate descent in float64 (optim/coordinate.py)."""
    penalized = getattr(cfg.model, "penalty", None) is not None
    if cfg.loss.kind in ("poisson", "gamma") and cfg.model.kind == "formula":
        raise ValueError(f"loss kind {cfg.loss.kind!r} needs a model with a log link (linear, polynomial or mlp), not a "
                         "formula model; write the formula for the mean and use loss.kind: mse")
    if cfg.optimizer.kind == "exact" and not penalized and cfg.loss.kind not in EXACT_ON_REQUEST:
        raise ValueError("optimizer.kind: exact solves penalized fits (model.penalty), mae, quantile, huber, poisson and gamma loss only; "
                         "use optimizer.kind: auto (lbfgs in float64 for least squares)")
    if cfg.optimizer.kind == "exact" and cfg.model.kind not in ("linear", "polynomial"):
        raise ValueError(f"optimizer.kind: exact fits linear and polynomial models only, not {cfg.model.kind!r}; "
                         "use optimizer.kind: auto")
    if cfg.optimizer.kind == "exact" and not penalized:
        if cfg.data.streaming or cfg.train.batch_size is not None or cfg.train.early_stopping is not None:
            raise ValueError("optimizer.kind: exact solves over all the training rows at once: remove "
                             "data.streaming, train.batch_size and train.early_stopping")
        return
    if not penalized:
        return
    if cfg.optimizer.kind != "exact":
        raise ValueError(f"model.penalty is solved exactly by coordinate descent (optimizer.kind: exact), not by "
                         f"{cfg.optimizer.kind!r}; set optimizer.kind: auto or exact")
    if cfg.loss.kind != "mse":
        raise ValueError(f"model.penalty applies to loss kind 'mse' only, not {cfg.loss.kind!r}; "
                         "remove model.penalty or set loss.kind: mse")
    if cfg.data.streaming or cfg.train.batch_size is not None or cfg.train.early_stopping is not None:
        raise ValueError("model.penalty is solved from the training rows' Gram matrix in one go: remove "
                         "data.streaming, train.batch_size and train.early_stopping")
    if cfg.optimizer.lr != "auto" or cfg.optimizer.weight_decay:
        raise ValueError("optimizer.kind: exact takes no lr or weight_decay; remove them (model.penalty.l2 is the ridge term)")
