"""R-style (Wilkinson) formulas for linear models, through formulaic: ``price ~ size + C(city) + np.log(d)``.

The left side names the target column; the right side builds the design with formulaic's
``model_matrix``, its column names (``C(city)[T.b]``, ``size:age``, ``np.log(distance)``) the
model's feature names; an ``Intercept`` column is gradfit's intercept (``- 1`` or ``+ 0`` drops it).
The encoding is stored as JSON (never pickle): the formula text, each categorical factor's levels
and each stateful transform's state (``center``, ``scale``...), from which predict rebuilds
formulaic's ``ModelSpec`` and the same columns from raw rows.

The code in a formula is Python that formulaic evaluates; here it may only name data columns and
the functions of ``NAMESPACE`` (checked on its syntax tree before anything is evaluated).
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from gradfit.errors import ConfigError, DataError

# numpy functions a formula may call as np.NAME (element-wise, no I/O)
NUMPY_FUNCTIONS = frozenset(
    "log log1p log2 log10 exp expm1 sqrt square abs absolute sign sin cos tan arcsin arccos arctan "
    "sinh cosh tanh arcsinh arccosh arctanh power clip maximum minimum where floor ceil round pi e".split()
)
# formulaic's transforms (and contrasts) a formula may call by name
TRANSFORMS = frozenset("C I center scale standardize poly bs cs cr cc lag contr Treatment Sum Helmert Poly Diff".split())
# contrasts a formula may name as contr.KIND: C(city, contr.treatment('b'))
CONTRASTS = frozenset("treatment sum helmert poly diff custom".split())
# bare numpy functions a formula may call by name: log(x), exp(x)...
BARE_FUNCTIONS = frozenset("log log1p log10 log2 exp sqrt abs sin cos tanh".split())

SAFE_HINT = (
    "a formula may use data columns, np.FUNCTION (" + ", ".join(sorted(NUMPY_FUNCTIONS)[:8]) + ", ...), "
    + ", ".join(sorted(BARE_FUNCTIONS)) + " and formulaic's " + ", ".join(sorted(TRANSFORMS)[:8]) + ", ..."
)


def is_wilkinson(formula: Optional[str]) -> bool:
    """A linear model's formula (``y ~ ...``), as opposed to none."""
    return bool(formula) and "~" in formula


def namespace() -> dict:
    """What formulaic may evaluate a formula's code in (besides its own transforms)."""
    ns = {"np": np}
    ns.update({n: getattr(np, n) for n in BARE_FUNCTIONS})
    return ns


_ALLOWED_NODES = (
    ast.Expression, ast.Call, ast.Name, ast.Load, ast.Attribute, ast.Constant, ast.BinOp, ast.UnaryOp,
    ast.operator, ast.unaryop, ast.keyword, ast.List, ast.Tuple, ast.Compare, ast.cmpop,
)


def _check_code(code: str, formula: str) -> set[str]:
    """The names a factor's Python code reads; ConfigError for anything outside the safe subset."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        raise ConfigError(f"model.formula {formula!r}: cannot read the term {code!r}", hint=SAFE_HINT) from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ConfigError(f"model.formula {formula!r}: {type(node).__name__} is not allowed in the term {code!r}", hint=SAFE_HINT)
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if not (owner == "np" and node.attr in NUMPY_FUNCTIONS or owner == "contr" and node.attr in CONTRASTS):
                raise ConfigError(f"model.formula {formula!r}: {ast.unparse(node)!r} is not allowed in the term {code!r}",
                                  hint=SAFE_HINT)
        elif isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise ConfigError(f"model.formula {formula!r}: the name {node.id!r} is not allowed", hint=SAFE_HINT)
            names.add(node.id)
    # np and contr only as np.FUNCTION and contr.KIND (checked above); bare, they are refused
    for owner in ("np", "contr"):
        bare = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == owner]
        attrs = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", None) == owner]
        if len(bare) > len(attrs):
            raise ConfigError(f"model.formula {formula!r}: {owner!r} may only be used as {owner}.NAME", hint=SAFE_HINT)
    return names - {"np", "contr"}


def parse(formula: str, columns: list[str]) -> tuple[str, list[str]]:
    """(target, the data columns the right side reads, in the file's order), after the safety check."""
    from formulaic import Formula  # (imported here for start-up time)
    from formulaic.parser.types import Factor  # (imported here for start-up time)

    try:
        f = Formula(formula)
    except Exception as exc:
        raise ConfigError(f"model.formula {formula!r} is not a Wilkinson formula: {exc}",
                          hint="write it as target ~ term + term, e.g. price ~ size + C(city)") from None
    if not hasattr(f, "lhs"):
        raise ConfigError(f"model.formula {formula!r} has no left side", hint="name the target left of '~'")
    lhs = [fa for t in f.lhs for fa in t.factors]
    if len(lhs) != 1 or lhs[0].eval_method != Factor.EvalMethod.LOOKUP:
        raise ConfigError(f"model.formula {formula!r}: the left side must be one column, the target",
                          hint="transform the target in the data file; e.g. price ~ size, not np.log(price) ~ size")
    target = str(lhs[0].expr)
    used: set[str] = set()
    for t in f.rhs:
        for fa in t.factors:
            if fa.eval_method == Factor.EvalMethod.LOOKUP:
                used.add(str(fa.expr))
            elif fa.eval_method == Factor.EvalMethod.PYTHON:
                used |= _check_code(str(fa.expr), formula)
    allowed = set(columns) | TRANSFORMS | BARE_FUNCTIONS
    unknown = sorted(n for n in used if n not in allowed)
    if unknown:
        raise ConfigError(
            f"model.formula {formula!r} names {', '.join(map(repr, unknown))}, neither a column nor an allowed function; "
            f"columns found: {', '.join(map(repr, columns[:30]))}", hint=SAFE_HINT)
    if target not in columns:
        raise DataError(f"model.formula's target {target!r} is not a column; columns found: {', '.join(map(repr, columns[:30]))}",
                        hint="the name left of '~' must be the target column")
    inputs = [c for c in columns if c in used and c != target]
    if target in used:
        raise ConfigError(f"model.formula {formula!r} uses its target {target!r} on the right side")
    return target, inputs


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    raise DataError(f"model.formula: a transform keeps state gradfit cannot store ({type(v).__name__})",
                    hint="use C, I, center, scale or numpy functions in the formula")


@dataclass
class WilkinsonEncoding:
    """A formula's design, as data/encoding.Encoding: raw columns in, named design columns out."""

    formula: str  # the config's formula, e.g. 'price ~ size + C(city) - 1' (its right side builds the design)
    raw_columns: list[str]
    names: list[str]  # the design columns, without Intercept
    intercept: bool
    levels: dict[str, list] = field(default_factory=dict)  # categorical factor -> its levels, reference first
    transform_state: dict = field(default_factory=dict)

    is_numeric = False

    @property
    def keys(self) -> list[str]:
        return self.names

    def to_json(self) -> dict:
        return {"formula": self.formula, "raw_columns": self.raw_columns, "names": self.names, "intercept": self.intercept,
                "levels": self.levels, "transform_state": self.transform_state}

    @classmethod
    def from_json(cls, rec: dict) -> "WilkinsonEncoding":
        return cls(str(rec["formula"]), [str(c) for c in rec["raw_columns"]], [str(n) for n in rec["names"]],
                   bool(rec["intercept"]), dict(rec.get("levels") or {}), dict(rec.get("transform_state") or {}))

    def _spec(self):
        from formulaic import Formula, ModelSpec  # (imported here for start-up time)
        from formulaic.parser.types import Factor  # (imported here for start-up time)

        enc = {k: (Factor.Kind.CATEGORICAL, {"categories": list(v)}) for k, v in self.levels.items()}
        f = Formula(self.formula)
        return ModelSpec(formula=getattr(f, "rhs", f), ensure_full_rank=True, na_action="ignore",
                         encoder_state=enc, transform_state=self.transform_state)

    def apply(self, frame, source, first_line: int = 2):
        """The design columns (``names``) of ``frame``'s rows, float64; a level not in training: DataError."""
        missing = [c for c in self.raw_columns if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
                            hint=f"the model's formula reads {self.raw_columns}")
        self._check_levels(frame, source, first_line)
        mm = _evaluate(lambda: self._spec().get_model_matrix(frame[self.raw_columns], context=namespace()), source)
        out = _design_frame(mm, self.names, source)
        # a row missing any raw value is missing in the design (formulaic codes a missing level as the
        # reference): refused, or dropped with data.dropna, as a plain column's missing value
        gaps = frame[self.raw_columns].isna().any(axis=1).to_numpy()
        if gaps.any():
            out.loc[gaps, :] = np.nan
        return out

    def _check_levels(self, frame, source, first_line: int) -> None:
        for factor, levels in self.levels.items():
            # the factor's values, evaluated as formulaic would (C(city) -> city's values)
            col = _factor_column(factor, self.raw_columns)
            if col is None:
                continue
            s = frame[col]
            text = s.astype("object").where(s.notna())
            known = [str(v) for v in levels]
            bad = s.notna() & ~text.isin(levels) & ~text.map(str).isin(known)
            if bool(bad.any()):
                i = int(np.argmax(bad.to_numpy()))
                raise DataError(
                    f"{source}: column {col!r} holds the level {text.iloc[i]!r} at row {i + first_line}, which the model "
                    f"was not trained on (levels of {factor}: {', '.join(map(repr, known[:20]))})",
                    hint="predict only rows whose levels were in the training data, or retrain with them")


def _factor_column(factor: str, columns: list[str]) -> Optional[str]:
    """The one data column a categorical factor reads (``C(city)`` -> ``city``), or None."""
    if factor in columns:
        return factor
    try:
        names = {n.id for n in ast.walk(ast.parse(factor, mode="eval")) if isinstance(n, ast.Name)}
    except SyntaxError:
        return None
    hits = [c for c in columns if c in names]
    return hits[0] if len(hits) == 1 else None


def _evaluate(make, source):
    """formulaic's model matrix; its errors as DataError (the formula passed the safety check)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()
    except (DataError, ConfigError):
        raise
    except Exception as exc:
        raise DataError(f"{source}: model.formula cannot be evaluated on these rows: {type(exc).__name__}: {exc}") from None


def _design_frame(mm, names: list[str], source):
    import pandas as pd  # (imported here for start-up time)

    cols = [str(c) for c in mm.columns]
    lost = [n for n in names if n not in cols]
    if lost:
        raise DataError(f"{source}: the formula's design lacks the columns {lost} (it has {cols})")
    return pd.DataFrame({n: np.asarray(mm[n], dtype=np.float64) for n in names}, index=mm.index)


def fit_wilkinson(frame, formula: str, source) -> WilkinsonEncoding:
    """The formula's design fitted on the training table: its columns, levels and transform state."""
    from formulaic import model_matrix  # (imported here for start-up time)

    target, inputs = parse(formula, [str(c) for c in frame.columns])
    mm = _evaluate(lambda: model_matrix(formula, frame, context=namespace(), na_action="ignore", ensure_full_rank=True), source)
    rhs = mm.rhs
    spec = rhs.model_spec
    cols = [str(c) for c in rhs.columns]
    levels = {str(k): _jsonable(list(v[1]["categories"])) for k, v in spec.encoder_state.items()
              if getattr(v[0], "value", v[0]) == "categorical" and "categories" in v[1]}
    names = [c for c in cols if c != "Intercept"]
    if not names:
        raise ConfigError(f"model.formula {formula!r} has no terms besides the intercept", hint="add a column, e.g. y ~ x")
    return WilkinsonEncoding(formula, inputs, names, "Intercept" in cols, levels, _jsonable(dict(spec.transform_state)))


def resolve_wilkinson(cfg, columns: list[str]):
    """The config with data.target, data.features and model.intercept taken from the formula (``~``)."""
    mc, dc = cfg.model, cfg.data
    if dc.synthetic is not None:
        raise ConfigError("model.formula with '~' needs a data file (data.path), not synthetic data",
                          hint="write the synthetic rows to a CSV, or list data.features instead of a formula")
    if dc.streaming:
        raise ConfigError("model.formula with '~' reads the table into memory; data.streaming is not supported with it",
                          hint="set data.streaming: false, or list data.features instead of a formula")
    target, inputs = parse(mc.formula, columns)
    if "target" in dc.model_fields_set and dc.target != target:
        raise ConfigError(f"model.formula predicts {target!r} but data.target is {dc.target!r}",
                          hint="remove data.target (the formula names the target) or make them agree")
    if dc.features is not None:
        raise ConfigError("give model.formula or data.features, not both (the formula picks its own columns)",
                          hint="remove data.features")
    rhs_intercept = _has_intercept(mc.formula)
    if "intercept" in mc.model_fields_set and mc.intercept != rhs_intercept:
        raise ConfigError(f"model.intercept is {mc.intercept} but model.formula {'keeps' if rhs_intercept else 'drops'} the intercept",
                          hint="write '- 1' in the formula to drop it, and remove model.intercept")
    new = cfg.model_copy(update={"data": dc.model_copy(update={"target": target, "features": inputs, "exclude": None}),
                                 "model": mc.model_copy(update={"intercept": rhs_intercept})})
    new._base_dir = cfg._base_dir
    return new


def _has_intercept(formula: str) -> bool:
    from formulaic import Formula  # (imported here for start-up time)

    return any(str(t) == "1" for t in Formula(formula).rhs)
