"""The expression tree of gradfit's safe grammar: nodes, printing, evaluation on tensors or floats."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Union

from gradfit.errors import EquationError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# How an expression depends on the unknowns (Expr.kind).
_CONST, _AFFINE, _NONLINEAR = 0, 1, 2


FUNCTIONS = ("sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh",
             "asin", "acos", "atan", "arcsin", "arccos", "arctan", "sinh", "cosh", "log10", "log2", "erf")
# The torch function each name evaluates to, where the names differ (numpy's spellings of the inverses).
_TORCH_NAMES = {"arcsin": "asin", "arccos": "acos", "arctan": "atan"}
CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_LENGTH = 1_000_000  # characters of one expression or equation (long flat sums are fine; depth is limited)
MAX_DEPTH = 200  # nesting levels of the tree (keeps every recursion far from Python's limit)

_SHOWN = 72  # characters of the source quoted in an error message
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ExprError(EquationError):
    """An expression or equation that cannot be parsed; points at the offending text."""

    def __init__(
        self,
        reason: str,
        source: str,
        column: int | None = None,
        width: int = 1,
        *,
        label: str | None = None,
        hint: str | None = None,
    ):
        self.reason = reason
        self.source = source
        self.column = column  # 1-based character column in source, or None
        self.width = max(1, width)
        self.label = label
        super().__init__(self._compose(), hint=hint)

    def _compose(self) -> str:
        head = f"{self.label}: {self.reason}" if self.label else self.reason
        index = 0 if self.column is None else self.column - 1
        # Show at most _SHOWN characters of a long source, around the offending column.
        start = max(0, min(index - _SHOWN // 2, len(self.source) - _SHOWN))
        shown = self.source[start : start + _SHOWN]
        lead = "..." if start > 0 else ""
        tail = "..." if start + _SHOWN < len(self.source) else ""
        line = f"    {lead}{shown}{tail}"
        if self.column is None:
            return f"{head}\n{line}"
        width = min(self.width, len(shown) - (index - start))
        caret = " " * (4 + len(lead) + index - start) + "^" * max(1, width)
        return f"{head} (column {self.column})\n{line}\n{caret}"

    def with_label(self, label: str) -> ExprError:
        """The same error, its message prefixed by where the text came from (e.g. 'equation 2')."""
        return ExprError(
            self.reason, self.source, self.column, self.width, label=label, hint=self.hint
        )


# --------------------------------------------------------------------------- nodes
# Our own immutable tree: the only thing ever evaluated.


@dataclass(frozen=True)
class _Num:
    value: float


@dataclass(frozen=True)
class _Name:
    id: str


@dataclass(frozen=True)
class _Const:
    name: str


@dataclass(frozen=True)
class _Unary:
    op: str  # "-" or "+"
    operand: _Node


@dataclass(frozen=True)
class _Binary:
    op: str  # "+", "-", "*", "/", "**"
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Call:
    func: str
    arg: _Node


@dataclass(frozen=True)
class _Sum:
    """A chain ``first op term op term ...`` of + and -, evaluated left to right exactly as nested
    binary nodes would be, but flat: a sum of thousands of terms is not thousands of levels deep."""

    first: _Node
    rest: tuple[tuple[str, _Node], ...]  # ("+" or "-", term)


_Node = Union[_Num, _Name, _Const, _Unary, _Binary, _Call, _Sum]

# Precedences for printing with the fewest parentheses that re-parse to the same tree.
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "unary": 3, "**": 4, "atom": 5}


def _prec(node: _Node) -> int:
    if isinstance(node, _Binary):
        return _PREC[node.op]
    if isinstance(node, _Sum):
        return _PREC["+"]
    if isinstance(node, _Unary):
        return _PREC["unary"]
    return _PREC["atom"]


def _format_number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _to_text(node: _Node) -> str:
    if isinstance(node, _Num):
        return _format_number(node.value)
    if isinstance(node, _Name):
        return node.id
    if isinstance(node, _Const):
        return node.name
    if isinstance(node, _Call):
        return f"{node.func}({_to_text(node.arg)})"
    if isinstance(node, _Unary):
        inner = _to_text(node.operand)
        # -(-x) rather than --x; -(a + b) needs them anyway; -x**2 is -(x**2) already.
        if _prec(node.operand) <= _PREC["unary"]:
            inner = f"({inner})"
        return f"{node.op}{inner}"
    if isinstance(node, _Sum):  # as the nested binary nodes print: right operands of +/- in parentheses
        terms = (f"({t})" if _prec(n) <= _PREC["+"] else t for n, t in ((n, _to_text(n)) for _, n in node.rest))
        return " ".join([_to_text(node.first), *(f"{op} {t}" for (op, _), t in zip(node.rest, terms))])
    p = _PREC[node.op]
    left, right = _to_text(node.left), _to_text(node.right)
    if node.op == "**":  # right-associative, binds tighter than unary minus on its left
        if _prec(node.left) <= p:
            left = f"({left})"
        if _prec(node.right) < p:
            right = f"({right})"
        return f"{left}**{right}"
    if _prec(node.left) < p:
        left = f"({left})"
    if _prec(node.right) <= p:
        right = f"({right})"
    return f"{left} {node.op} {right}"


# --------------------------------------------------------------------------- evaluation


@functools.cache
def _torch_ops() -> tuple[dict[str, Callable], dict[str, Callable]]:
    import operator  # (imported here for start-up time)

    import torch  # (imported here for start-up time)

    binary = {
        "+": operator.add,
        "-": operator.sub,
        "*": operator.mul,
        "/": operator.truediv,
        "**": operator.pow,
    }
    funcs = {name: getattr(torch, _TORCH_NAMES.get(name, name)) for name in FUNCTIONS}
    return binary, funcs


def _is_tensor(value) -> bool:
    import torch  # (imported here for start-up time)

    return isinstance(value, torch.Tensor)


def _on_scalars(fn: Callable, *args: float) -> float:
    """Apply fn to python floats with IEEE semantics (1/0 = inf, log(-1) = nan), as torch does."""
    import torch  # (imported here for start-up time)

    first = torch.tensor(args[0], dtype=torch.float64)
    return float(fn(first, *args[1:]))


def _evaluate(node: _Node, env: Mapping[str, object], binary, funcs):
    """A tensor where the node depends on a tensor in env, else a python float."""
    if isinstance(node, _Num):
        return node.value
    if isinstance(node, _Const):
        return CONSTANTS[node.name]
    if isinstance(node, _Name):
        try:
            value = env[node.id]
        except KeyError:
            raise EquationError(f"no value given for '{node.id}'") from None
        return value if _is_tensor(value) else float(value)
    if isinstance(node, _Unary):
        value = _evaluate(node.operand, env, binary, funcs)
        return -value if node.op == "-" else value
    if isinstance(node, _Call):
        value = _evaluate(node.arg, env, binary, funcs)
        fn = funcs[node.func]
        return fn(value) if _is_tensor(value) else _on_scalars(fn, value)
    if isinstance(node, _Sum):
        acc = _evaluate(node.first, env, binary, funcs)
        for op, term in node.rest:
            acc = _combine(binary[op], acc, _evaluate(term, env, binary, funcs))
        return acc
    left = _evaluate(node.left, env, binary, funcs)
    right = _evaluate(node.right, env, binary, funcs)
    return _combine(binary[node.op], left, right)


def _combine(fn, left, right):
    if _is_tensor(left) or _is_tensor(right):
        return fn(left, right)
    return _on_scalars(fn, left, right)


def _constant_value(node: _Node) -> float | None:
    """The value of a subtree without names, computed in plain Python; None if undefined."""
    try:
        if isinstance(node, _Num):
            return node.value
        if isinstance(node, _Const):
            return CONSTANTS[node.name]
        if isinstance(node, _Unary):
            value = _constant_value(node.operand)
            return None if value is None else (-value if node.op == "-" else value)
        if isinstance(node, _Sum):
            acc = _constant_value(node.first)
            for op, term in node.rest:
                b = _constant_value(term)
                if acc is None or b is None:
                    return None
                acc = acc + b if op == "+" else acc - b
                if not math.isfinite(acc):
                    return None
            return acc
        if isinstance(node, _Binary):
            a, b = _constant_value(node.left), _constant_value(node.right)
            if a is None or b is None:
                return None
            result = {
                "+": lambda: a + b,
                "-": lambda: a - b,
                "*": lambda: a * b,
                "/": lambda: a / b,
                "**": lambda: a**b,
            }[node.op]()
            return result if isinstance(result, float) and math.isfinite(result) else None
    except (ArithmeticError, ValueError):
        return None
    return None  # names and calls: not needed for the linearity check


def _classify(node: _Node, unknowns: frozenset[str]) -> int:
    if isinstance(node, (_Num, _Const)):
        return _CONST
    if isinstance(node, _Name):
        return _AFFINE if node.id in unknowns else _CONST
    if isinstance(node, _Unary):
        return _classify(node.operand, unknowns)
    if isinstance(node, _Call):
        return _CONST if _classify(node.arg, unknowns) == _CONST else _NONLINEAR
    if isinstance(node, _Sum):
        return max(_classify(n, unknowns) for n in (node.first, *(t for _, t in node.rest)))
    left, right = _classify(node.left, unknowns), _classify(node.right, unknowns)
    if node.op in "+-":
        return max(left, right)
    if node.op == "*":
        return max(left, right) if _CONST in (left, right) else _NONLINEAR
    if node.op == "/":
        return left if right == _CONST else _NONLINEAR
    # "**"
    if left == _CONST and right == _CONST:
        return _CONST
    if right == _CONST and left == _AFFINE:
        exponent = _constant_value(node.right)
        if exponent == 1.0:
            return _AFFINE
        if exponent == 0.0:
            return _CONST
    return _NONLINEAR


# --------------------------------------------------------------------------- public classes


@dataclass(frozen=True)
class Expr:
    """A parsed expression: its source text and a tree that only this module evaluates."""

    text: str
    node: _Node

    @property
    def names(self) -> tuple[str, ...]:
        """Identifiers used (not functions or constants), in order of first appearance."""
        found: dict[str, None] = {}
        stack = [self.node]
        while stack:  # pre-order, left to right
            node = stack.pop()
            if isinstance(node, _Name):
                found.setdefault(node.id)
            elif isinstance(node, _Unary):
                stack.append(node.operand)
            elif isinstance(node, _Call):
                stack.append(node.arg)
            elif isinstance(node, _Binary):
                stack.extend((node.right, node.left))
            elif isinstance(node, _Sum):
                stack.extend(reversed((node.first, *(t for _, t in node.rest))))
        return tuple(found)

    @property
    def name(self) -> str | None:
        """The identifier when the whole expression is one name (e.g. a formula's target)."""
        return self.node.id if isinstance(self.node, _Name) else None

    def to_torch(self, env: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """Evaluate elementwise; tensors broadcast, and the result takes their dtype and device.

        env maps every name in ``names`` to a tensor (or a number). Numbers in the
        expression stay python floats, so they follow the tensors' dtype. An
        expression that uses no tensor gives a 0-dim tensor of the dtype and
        device of the first tensor in env (torch's default dtype if none).
        """
        import torch  # (imported here for start-up time)

        binary, funcs = _torch_ops()
        value = _evaluate(self.node, env, binary, funcs)
        if isinstance(value, torch.Tensor):
            return value
        like = next((v for v in env.values() if isinstance(v, torch.Tensor)), None)
        if like is None:
            return torch.tensor(value, dtype=torch.get_default_dtype())
        dtype = like.dtype if like.dtype.is_floating_point else torch.get_default_dtype()
        return torch.tensor(value, dtype=dtype, device=like.device)

    def is_affine_in(self, unknowns: Iterable[str]) -> bool:
        """Symbolic check: a constant plus a linear combination of the unknowns.

        Other names count as constants (data columns of a formula). The check is
        exact for sums, products by constants, division by constants and powers
        with constant exponent 0 or 1; an expression that is linear only after
        cancellation (``x*y - x*y``) counts as nonlinear.
        """
        return _classify(self.node, frozenset(unknowns)) != _NONLINEAR

    def __str__(self) -> str:
        return _to_text(self.node)


@dataclass(frozen=True)
class Equation:
    """``left = right``, parsed; ``text`` is the source as given."""

    left: Expr
    right: Expr
    text: str

    @property
    def names(self) -> tuple[str, ...]:
        """Identifiers of both sides, in order of first appearance."""
        return tuple(dict.fromkeys(self.left.names + self.right.names))

    def residual(self, env: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """LEFT - RIGHT, evaluated as ``Expr.to_torch`` does."""
        return self.left.to_torch(env) - self.right.to_torch(env)

    def is_affine_in(self, unknowns: Iterable[str]) -> bool:
        """Whether LEFT - RIGHT is affine in the unknowns (see ``Expr.is_affine_in``)."""
        unknowns = frozenset(unknowns)
        return self.left.is_affine_in(unknowns) and self.right.is_affine_in(unknowns)

    def __str__(self) -> str:
        return f"{self.left} = {self.right}"


# --------------------------------------------------------------------------- affine coefficients


def affine_coefficients(expr: Expr, unknowns: Iterable[str]) -> tuple[dict[str, float], float] | None:
    """``expr`` as ``sum(coef[name] * name) + constant`` over the unknowns, read off the tree
    (no autograd), or None when it is not affine in them (see ``Expr.is_affine_in``) or uses
    another name. Coefficients follow the tree's own operations, so rounding is the tree's."""
    return _affine(expr.node, frozenset(unknowns))


def _affine(node: _Node, unknowns: frozenset[str]):
    if isinstance(node, (_Num, _Const)):
        return {}, float(node.value if isinstance(node, _Num) else CONSTANTS[node.name])
    if isinstance(node, _Name):
        return ({node.id: 1.0}, 0.0) if node.id in unknowns else None
    if isinstance(node, _Unary):
        inner = _affine(node.operand, unknowns)
        return inner if inner is None or node.op == "+" else _scaled(inner, -1.0)
    if isinstance(node, _Call):
        inner = _affine(node.arg, unknowns)
        if inner is None or inner[0]:
            return None
        _, funcs = _torch_ops()
        return {}, _on_scalars(funcs[node.func], inner[1])
    if isinstance(node, _Sum):
        acc = _affine(node.first, unknowns)
        for op, term in node.rest:
            acc = _added(acc, _affine(term, unknowns), op)
        return acc
    left, right = _affine(node.left, unknowns), _affine(node.right, unknowns)
    if left is None or right is None:
        return None
    if node.op in "+-":
        return _added(left, right, node.op)
    if node.op == "*":
        if left[0] and right[0]:
            return None
        return _scaled(left, right[1]) if not right[0] else _scaled(right, left[1])
    if right[0]:
        return None
    if node.op == "/":
        if right[1] == 0.0:
            return None  # left to the evaluation, which names the equation
        return {k: v / right[1] for k, v in left[0].items()}, left[1] / right[1]
    if not left[0]:  # "**" of constants
        return {}, _on_scalars(lambda a, b: a**b, left[1], right[1])
    return left if right[1] == 1.0 else ({}, 1.0) if right[1] == 0.0 else None


def _scaled(term, factor: float):
    coefs, constant = term
    return {k: v * factor for k, v in coefs.items()}, constant * factor


def _added(acc, term, op: str):
    if acc is None or term is None:
        return None
    coefs = dict(acc[0])
    sign = 1.0 if op == "+" else -1.0
    for k, v in term[0].items():
        coefs[k] = coefs.get(k, 0.0) + sign * v
    return coefs, acc[1] + sign * term[1]
