"""The experiment config: a strict pydantic schema, safe YAML loading, --set overrides.

Everything a user can get wrong in a config is caught here, before any data is
read, with a message that names the key's dotted path and the fix.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gradfit.errors import ConfigError


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
    path: Optional[str] = Field(None, description=".csv or .parquet file, relative to the config file")
    synthetic: Optional[Synthetic] = None
    target: str = Field("y", description="the column to predict")
    features: Optional[list[str]] = Field(None, description="default: every column but the target")
    split: Split = Split()
    standardize: bool = Field(True, description="scale inputs and target for training; results are reported in original units")
    dropna: bool = Field(False, description="drop rows with missing values instead of refusing them")
    streaming: bool = Field(
        False, description="read a Parquet file or directory in row-group batches each epoch instead of into memory"
    )

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
        return self


# ---------------------------------------------------------------- model


class LinearModel(_Strict):
    kind: Literal["linear"]
    intercept: bool = Field(True, description="fit a constant term; false forces the fit through the origin")


class PolynomialModel(_Strict):
    kind: Literal["polynomial"]
    degree: int = Field(2, ge=1, le=30, description="highest total power of the terms")
    intercept: bool = Field(True, description="fit a constant term")
    interactions: bool = Field(True, description="products of features (several features only)")


class MLPModel(_Strict):
    kind: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64], min_length=1, description="sizes of the hidden layers"
    )
    activation: Literal["relu", "tanh", "gelu", "sigmoid", "silu", "elu", "leaky_relu", "softplus"] = "relu"


class FormulaModel(_Strict):
    kind: Literal["formula"]
    formula: str = Field(description="target = expression; data columns are inputs, other names parameters")
    start: dict[str, float] = Field(default_factory=dict, description="starting values (default 1.0)")

    @field_validator("formula")
    @classmethod
    def _parse(cls, v):
        # Parsed (never evaluated) here, so that a formula gradfit refuses stops the run before any
        # data is read; which names are columns is checked once the data's columns are known.
        from gradfit.formula import check_formula

        check_formula(v)
        return v

    @model_validator(mode="after")
    def _start(self):
        from gradfit.formula import check_start

        check_start(self.formula, self.start)
        return self


Model = Annotated[Union[LinearModel, PolynomialModel, MLPModel, FormulaModel], Field(discriminator="kind")]


# ---------------------------------------------------------------- loss, optimizer, training


class LossConfig(_Strict):
    kind: Literal["mse", "mae", "huber"] = Field("mse", description="mean squared error, mean absolute error, or Huber")
    delta: Optional[float] = Field(None, gt=0, description="huber: where it turns linear, in target units")

    @model_validator(mode="after")
    def _delta(self):
        if self.delta is not None and self.kind != "huber":
            raise ValueError(f"delta applies to loss kind 'huber' only, not {self.kind!r}; remove loss.delta")
        return self


class OptimizerConfig(_Strict):
    kind: Literal["sgd", "adam", "adamw", "lbfgs", "lm"] = Field(
        "adam", description="lm (Levenberg-Marquardt) is for formula models, and their default with mse"
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


class OutputConfig(_Strict):
    dir: str = Field("runs", description="run directories are made under it, relative to the working directory")


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Config(_Strict):
    """A gradfit experiment."""

    name: str = Field("run", min_length=1, max_length=100, description="names the run directory")
    seed: int = Field(0, ge=0, lt=2**63, description="every random choice derives from it")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N; auto = cuda when available")
    dtype: Literal["float32", "float64"] = Field("float32", description="precision of training")
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

    @model_validator(mode="after")
    def _combinations(self):
        kind = self.model.kind
        opt = self.optimizer
        if kind == "formula" and self.loss.kind == "mse" and "kind" not in opt.model_fields_set:
            # Formula models with mse loss default to Levenberg-Marquardt (docs/formula.md).
            opt = self.optimizer = opt.model_copy(update={"kind": "lm"})
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

    # Where the config was read from: relative data paths resolve against it.
    _base_dir: Path = Path(".")

    def resolved_data_path(self) -> Optional[Path]:
        if self.data.path is None:
            return None
        p = Path(self.data.path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- loading and errors


class _SafeLoader(yaml.SafeLoader):
    """yaml's SafeLoader, with 1e-3 read as a float (YAML 1.1 wants 1.0e-3)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader, node, deep=False):
    """A mapping that refuses a key given twice (the second would silently win)."""
    seen: dict = {}
    for key_node, _ in node.value:  # the mapping's own keys (before '<<' merges, which may be overridden)
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"the key {key_node.value!r} is given twice"
                + (f" (lines {seen[key] + 1} and {key_node.start_mark.line + 1})" if seen[key] != key_node.start_mark.line else ""),
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_SafeLoader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: _construct_mapping(loader, node))

# YAML aliases share one object; expanded, a few lines can stand for billions of values
# (the "billion laughs"), or for a value that contains itself. Refuse both.
MAX_CONFIG_NODES = 100_000


def _check_size(obj: Any, source: str) -> None:
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(v: Any, depth: int) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        if id(v) in on_path:
            raise ConfigError(f"{source}: a YAML alias makes a value contain itself", hint="remove the '*alias' that refers to its own anchor")
        if id(v) in sizes:
            return sizes[id(v)]
        if depth > 100:
            raise ConfigError(f"{source}: the config is nested more than 100 levels deep")
        on_path.add(id(v))
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
        n = 1 + sum(size(x, depth + 1) for x in items)
        on_path.discard(id(v))
        if n > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{source}: the config expands to more than {MAX_CONFIG_NODES:,} values (through YAML aliases?)",
                hint="a gradfit config is a few dozen keys; write it out without '&anchor'/'*alias' chains",
            )
        sizes[id(v)] = n
        return n

    size(obj, 0)


def yaml_load(text: str, source: str) -> Any:
    """Parse YAML safely; errors name the source and the line."""
    try:
        data = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(exc.problem)
        if "constructor for the tag" in problem:
            raise ConfigError(
                f"{source}:{where}: YAML tags that construct objects are not allowed ({problem})",
                hint="a gradfit config holds plain values only: numbers, strings, lists and mappings",
            ) from None
        hint = "keep one of them" if "given twice" in problem else "a gradfit config holds plain values only: numbers, strings, lists and mappings"
        raise ConfigError(f"{source}:{where}: {problem}", hint=hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{source}:{where} YAML syntax error: {problem}",
            hint="check the indentation and the ':' after each key",
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to read") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # e.g. an explicit '!!float abc' or '!!int x': the safe constructors raise plain errors.
        raise ConfigError(f"{source}: a YAML value cannot be read: {exc}", hint="write plain numbers and strings, without '!!' tags") from None
    _check_size(data, source)
    return data


def _parse_scalar(text: str) -> Any:
    try:
        return yaml_load(text, "--set value") if text.strip() else text
    except ConfigError:
        return text


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply KEY=VALUE overrides (dotted paths, YAML scalars) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optimizer.lr=0.05")
        key, _, value = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: the key {key!r} is not a dotted path like optimizer.lr")
        node = raw
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                _check_path(parts[: i + 1], raw, item)
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = nxt
        _check_path(parts, raw, item)
        node[parts[-1]] = _parse_scalar(value)
    return raw


def _check_path(parts: list[str], raw: dict, item: str) -> None:
    """Refuse a --set path that names no config key, suggesting the closest one."""
    cls: Any = Config
    node: Any = raw
    for i, part in enumerate(parts):
        fields = _fields_of(cls, node)
        if fields is None:
            return  # a free-form mapping (e.g. model.start): anything goes
        if part not in fields:
            here = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a config key{_suggest(part, fields)}",
                hint=f"keys at {here}: {', '.join(sorted(fields))}",
            )
        cls = fields[part]
        node = node.get(part) if isinstance(node, dict) else None


def _model_classes(annotation) -> list:
    """The BaseModel classes an annotation can hold (through Optional/Union/Annotated)."""
    import typing

    out = []
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            out.append(a)
            continue
        for arg in typing.get_args(a):
            stack.append(arg)
    return out


def _fields_of(cls_or_ann, node) -> Optional[dict]:
    """Field name -> annotation at this level, picking a union member by the node's kind."""
    classes = _model_classes(cls_or_ann) if not (isinstance(cls_or_ann, type) and issubclass(cls_or_ann, BaseModel)) else [cls_or_ann]
    if not classes:
        return None
    chosen = classes[0]
    if len(classes) > 1:
        kind = node.get("kind") if isinstance(node, dict) else None
        for c in classes:
            f = c.model_fields.get("kind")
            if f is not None and kind in getattr(f.annotation, "__args__", ()):
                chosen = c
                break
        else:
            merged: dict = {}
            for c in classes:
                merged.update({k: v.annotation for k, v in c.model_fields.items()})
            return merged
    return {k: v.annotation for k, v in chosen.model_fields.items()}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _short_repr(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _format_errors(exc: ValidationError, raw: dict, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        # Drop discriminator tags pydantic inserts into the location ('model', 'polynomial', 'degree').
        path: list = []
        node: Any = raw
        tagged: set = set()  # the tag comes once, right after its field; 'formula' is a kind and a key
        for part in loc:
            if isinstance(node, dict) and isinstance(node.get("kind"), str) and part == node.get("kind") and (
                part not in node or id(node) not in tagged
            ):
                tagged.add(id(node))
                continue
            if isinstance(part, str) and part.startswith("function-"):
                continue
            path.append(part)
            node = node.get(part) if isinstance(node, dict) else (node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
        dotted = ".".join(str(p) for p in path) or "(top level)"
        typ = err["type"]
        if typ == "extra_forbidden":
            parent: Any = raw
            cls: Any = Config
            for p in path[:-1]:
                fields = _fields_of(cls, parent)
                cls = fields.get(p) if fields else None
                parent = parent.get(p) if isinstance(parent, dict) else None
            fields = _fields_of(cls, parent) or {}
            valid = ", ".join(sorted(fields)) if fields else ""
            lines.append(
                f"{dotted}: unknown key{_suggest(str(path[-1]), fields)}" + (f" (valid keys here: {valid})" if valid else "")
            )
        elif typ == "missing":
            lines.append(f"{dotted}: required key is missing")
        elif typ == "union_tag_invalid":
            ctx = err.get("ctx", {})
            lines.append(
                f"{dotted}.kind: unknown kind {ctx.get('tag')!r}; choose one of {ctx.get('expected_tags')}"
            )
        elif typ == "union_tag_not_found":
            lines.append(f"{dotted}.kind: required key is missing (it says which {dotted} to use)")
        elif typ == "literal_error":
            lines.append(f"{dotted}: {err['input']!r} is not allowed; {err['msg'].replace('Input should be', 'expected')}")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            # pydantic's "Input should be ..." reads better as "must be ...".
            msg = msg.replace("Input should be", "must be").replace("String should have", "must have")
            msg = msg.replace("List should have", "must have").replace("Tuple should have", "must have")
            inp = err.get("input")
            shown = "" if isinstance(inp, (dict, list)) or typ.startswith("value_error") else f" (got {_short_repr(inp)})"
            lines.append(f"{dotted}: {msg}{shown}")
    n = len(lines)
    head = f"{source}: invalid config ({n} problem{'s' if n > 1 else ''})" if n > 1 else f"{source}: invalid config"
    return ConfigError(head + "\n" + "\n".join(f"  - {l}" for l in lines))


def validate_config(raw: Any, source: str = "config", base_dir: Path | str = ".") -> Config:
    """Validate a raw mapping into a Config, or raise ConfigError naming every problem."""
    if raw is None:
        raise ConfigError(f"{source}: the config is empty", hint="run 'gradfit init' for a commented example")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping of keys to values, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise _format_errors(exc, raw, source) from None
    cfg._base_dir = Path(base_dir)
    _check_numbers(cfg, source)
    return cfg


def _check_numbers(cfg: Config, source: str) -> None:
    """Refuse inf/nan anywhere in the config (pydantic accepts them as floats)."""

    def walk(v, path):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{source}: {path}: must be a finite number, got {v}")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}" if path else k)
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(cfg.model_dump(), "")


def load_config(path: str | Path, overrides=()) -> Config:
    """Read a YAML experiment file, apply --set overrides, validate; raise ConfigError on any problem."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}", hint="check the path, or run 'gradfit init' to write one")
    if p.is_dir():
        raise ConfigError(f"{p} is a directory, not a config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (it is not valid UTF-8)") from None
    raw = yaml_load(text, str(p))
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return validate_config(raw, str(p), p.parent)


def config_from_dict(raw: dict, overrides=(), base_dir: Path | str = ".") -> Config:
    """Validate a mapping (e.g. from Python code) as a config."""
    import copy

    raw = apply_overrides(copy.deepcopy(raw), overrides)
    return validate_config(raw, "config", base_dir)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML, keys in schema order."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None)
