"""Safe arithmetic expressions: parse user text into a tree, evaluate it with torch.

The grammar is shared by ``solve-equations`` and formula models: numbers,
identifiers, ``+ - * / **``, parentheses, unary ``-``/``+``, the functions
``sin cos tan exp log sqrt abs tanh`` and the constants ``pi e``. Text goes
through ``ast.parse`` only; the tree is checked against that whitelist and
rebuilt as our own nodes, so nothing the user typed is ever evaluated by
Python. Anything else raises ``ExprError`` (an ``EquationError``) whose message
quotes the offending text and marks it with carets.

    >>> eq = parse_equation("y = b1 * (1 - exp(-b2 * x))")
    >>> eq.names
    ('y', 'b1', 'b2', 'x')
    >>> str(eq.right)
    'b1 * (1 - exp(-b2 * x))'

Importing this module does not import torch; evaluation does.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Union

from gradfit.errors import EquationError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "FUNCTIONS",
    "CONSTANTS",
    "MAX_LENGTH",
    "MAX_DEPTH",
    "Expr",
    "Equation",
    "ExprError",
    "parse_expression",
    "parse_equation",
]

FUNCTIONS = ("sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh")
CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_LENGTH = 10_000  # characters of one expression or equation
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


_Node = Union[_Num, _Name, _Const, _Unary, _Binary, _Call]

# Precedences for printing with the fewest parentheses that re-parse to the same tree.
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "unary": 3, "**": 4, "atom": 5}


def _prec(node: _Node) -> int:
    if isinstance(node, _Binary):
        return _PREC[node.op]
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
    import operator

    import torch

    binary = {
        "+": operator.add,
        "-": operator.sub,
        "*": operator.mul,
        "/": operator.truediv,
        "**": operator.pow,
    }
    funcs = {name: getattr(torch, name) for name in FUNCTIONS}
    return binary, funcs


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _on_scalars(fn: Callable, *args: float) -> float:
    """Apply fn to python floats with IEEE semantics (1/0 = inf, log(-1) = nan), as torch does."""
    import torch

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
    left = _evaluate(node.left, env, binary, funcs)
    right = _evaluate(node.right, env, binary, funcs)
    fn = binary[node.op]
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


# Classes of a subtree with respect to a set of unknowns.
_CONST, _AFFINE, _NONLINEAR = 0, 1, 2


def _classify(node: _Node, unknowns: frozenset[str]) -> int:
    if isinstance(node, (_Num, _Const)):
        return _CONST
    if isinstance(node, _Name):
        return _AFFINE if node.id in unknowns else _CONST
    if isinstance(node, _Unary):
        return _classify(node.operand, unknowns)
    if isinstance(node, _Call):
        return _CONST if _classify(node.arg, unknowns) == _CONST else _NONLINEAR
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
        import torch

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


# --------------------------------------------------------------------------- parsing

_REFUSED = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "indexing is not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.Compare: "comparisons are not allowed; an equation has a single '='",
    ast.BoolOp: "'and'/'or' are not allowed",
    ast.IfExp: "'if ... else' is not allowed",
    ast.NamedExpr: "assignment ':=' is not allowed",
    ast.Tuple: "tuples (a comma) are not allowed",
    ast.List: "lists are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generators are not allowed",
    ast.JoinedStr: "strings are not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
    ast.Slice: "slices are not allowed",
}

_BINARY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_OTHER_OPS = {
    ast.BitXor: ("^", "use ** for powers: x**2"),
    ast.FloorDiv: ("//", "use / for division"),
    ast.Mod: ("%", None),
    ast.MatMult: ("@", None),
    ast.BitAnd: ("&", None),
    ast.BitOr: ("|", None),
    ast.LShift: ("<<", None),
    ast.RShift: (">>", None),
}
_ALLOWED_HELP = (
    "allowed: numbers, names, + - * / **, parentheses, "
    f"{' '.join(FUNCTIONS)}, and the constants {' '.join(CONSTANTS)}"
)


class _Converter:
    """Checks a Python AST against the whitelist and rebuilds it as our nodes."""

    def __init__(self, source: str, offset: int, parsed: str):
        self.source = source  # the full text shown in errors
        self.offset = offset  # character offset of the parsed part in source
        self.parsed = parsed.encode("utf-8")  # ast columns are byte offsets into this

    def fail(self, reason: str, node: ast.AST | None = None, hint: str | None = None):
        if node is None or not hasattr(node, "col_offset"):
            raise ExprError(reason, self.source, hint=hint)
        start = self._char(node.col_offset)
        end = self._char(node.end_col_offset or node.col_offset)
        snippet = self.source[self.offset + start : self.offset + end]
        if f"'{snippet}'" not in reason:
            reason = f"{reason}: '{snippet if len(snippet) <= 40 else snippet[:37] + '...'}'"
        raise ExprError(reason, self.source, self.offset + start + 1, end - start, hint=hint)

    def fail_at(self, reason: str, start: int, width: int, hint: str | None = None):
        raise ExprError(reason, self.source, self.offset + start + 1, width, hint=hint)

    def _char(self, byte_offset: int) -> int:
        return len(self.parsed[:byte_offset].decode("utf-8", errors="ignore"))

    def convert(self, node: ast.AST, depth: int = 0) -> _Node:
        if depth > MAX_DEPTH:
            self.fail(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return _Unary("-", self.convert(node.operand, depth + 1))
            if isinstance(node.op, ast.UAdd):
                return _Unary("+", self.convert(node.operand, depth + 1))
            symbol = "not" if isinstance(node.op, ast.Not) else "~"
            self.fail(f"the operator '{symbol}' is not allowed", node)
        if isinstance(node, ast.BinOp):
            return self.binary(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        reason = _REFUSED.get(type(node), f"this construct ({type(node).__name__}) is not allowed")
        self.fail(reason, node, hint=_ALLOWED_HELP)
        raise AssertionError("unreachable")  # pragma: no cover

    def number(self, node: ast.Constant) -> _Num:
        value = node.value
        if isinstance(value, bool) or value is None or value is Ellipsis:
            self.fail(f"'{value}' is not a number", node)
        if isinstance(value, (str, bytes)):
            self.fail("strings are not allowed", node, hint=_ALLOWED_HELP)
        if isinstance(value, complex):
            self.fail("complex numbers are not allowed", node)
        try:
            number = float(value)
        except OverflowError:
            self.fail("the number is too large", node)
        if not math.isfinite(number):
            self.fail("the number is too large", node)
        return _Num(number)

    def name(self, node: ast.Name) -> _Name | _Const:
        ident = node.id
        if ident in CONSTANTS:
            return _Const(ident)
        if ident in FUNCTIONS:
            self.fail(
                f"'{ident}' is a function, not an unknown",
                node,
                hint=f"call it, e.g. {ident}(x), or rename the unknown",
            )
        if ident.startswith("__") or not _IDENTIFIER.match(ident):
            self.fail(
                "this name is not allowed",
                node,
                hint="names are ASCII letters, digits and _ and do not start with __",
            )
        return _Name(ident)

    def binary(self, node: ast.BinOp, depth: int) -> _Binary:
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            symbol, hint = _OTHER_OPS.get(type(node.op), ("?", None))
            # The operator has no position of its own: find it between the operands.
            gap_start = self._char(node.left.end_col_offset or 0)
            gap_end = self._char(node.right.col_offset)
            gap = self.parsed.decode("utf-8", errors="ignore")[gap_start:gap_end]
            at = gap.find(symbol)
            if at < 0:  # pragma: no cover - the symbol is always in the gap
                self.fail(f"the operator '{symbol}' is not allowed", node, hint=hint)
            self.fail_at(
                f"the operator '{symbol}' is not allowed", gap_start + at, len(symbol), hint
            )
        return _Binary(op, self.convert(node.left, depth + 1), self.convert(node.right, depth + 1))

    def call(self, node: ast.Call, depth: int) -> _Call:
        func = node.func
        if not isinstance(func, ast.Name):
            # Report what is being called (a lambda, an attribute...) when it is refused itself.
            if type(func) in _REFUSED:
                self.fail(_REFUSED[type(func)], func, hint=_ALLOWED_HELP)
            self.fail("only the functions " + ", ".join(FUNCTIONS) + " can be called", node)
        if func.id in CONSTANTS:
            self.fail(f"'{func.id}' is a constant, not a function", func)
        if func.id not in FUNCTIONS:
            self.fail(
                f"unknown function '{func.id}'",
                func,
                hint="the functions are " + ", ".join(FUNCTIONS),
            )
        if node.keywords:
            self.fail("keyword arguments are not allowed", node.keywords[0])
        if len(node.args) != 1:
            self.fail(f"{func.id}() takes exactly one argument", node)
        return _Call(func.id, self.convert(node.args[0], depth + 1))


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise EquationError(f"the {what} must be a string, not {type(text).__name__}")
    if not text.strip():
        raise EquationError(f"the {what} is empty")
    if len(text) > MAX_LENGTH:
        raise EquationError(f"the {what} is longer than {MAX_LENGTH} characters")
    for i, char in enumerate(text):
        if not char.isprintable() and char != "\t":
            raise ExprError(
                f"the {what} contains a control character ({char!r}); write it on one line",
                text,
                i + 1,
            )
    return text


def _parse_part(source: str, start: int, end: int, what: str) -> Expr:
    """Parse source[start:end] (one side of an equation, or a whole expression)."""
    part = source[start:end]
    stripped = part.strip()
    if not stripped:
        column = start + 1 if start < len(source) else len(source)
        raise ExprError(f"the {what} is empty", source, max(column, 1))
    offset = start + (len(part) - len(part.lstrip()))
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as err:
        # SyntaxError offsets are 1-based characters; 0 means "at the end".
        column = err.offset if err.offset and err.offset > 0 else len(stripped) + 1
        column = min(column, len(stripped) + 1)
        width = max(1, (err.end_offset or column) - column)
        hint = None
        if "decimal literal" in (err.msg or ""):
            hint = "write multiplication explicitly, e.g. 2*x"
        raise ExprError(
            f"syntax error: {err.msg}", source, offset + column, width, hint=hint
        ) from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise ExprError(f"cannot parse the {what}: {err}", source) from None
    converter = _Converter(source, offset, stripped)
    try:
        node = converter.convert(tree.body)
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps us below the limit
        raise ExprError(f"the {what} is nested too deeply", source) from None
    return Expr(stripped, node)


def parse_expression(text: str) -> Expr:
    """Parse one expression (no '='); raises ExprError pointing at what is not allowed."""
    _check_text(text, "expression")
    eq_at = _top_level_equals(text)
    if eq_at:
        raise ExprError(
            "an expression has no '='", text, eq_at[0] + 1, hint="did you mean an equation?"
        )
    return _parse_part(text, 0, len(text), "expression")


def parse_equation(text: str) -> Equation:
    """Parse ``LEFT = RIGHT``; raises ExprError pointing at what is not allowed."""
    _check_text(text, "equation")
    positions = _top_level_equals(text)
    if not positions:
        raise ExprError("an equation needs one '=' between its two sides", text)
    if len(positions) > 1:
        second = positions[1]
        if second == positions[0] + 1:
            raise ExprError(
                "'==' is not allowed", text, positions[0] + 1, 2, hint="write a single '='"
            )
        raise ExprError("an equation has exactly one '='; this is another", text, second + 1)
    at = positions[0]
    if at > 0 and text[at - 1] in "<>!":
        raise ExprError("comparisons are not allowed; an equation has a single '='", text, at, 2)
    left = _parse_part(text, 0, at, "left side")
    right = _parse_part(text, at + 1, len(text), "right side")
    return Equation(left, right, text)


def _top_level_equals(text: str) -> list[int]:
    """Positions of '=' outside brackets and quotes (a keyword argument stays inside its call)."""
    positions, depth, quote = [], 0, None
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == "=" and depth == 0:
            positions.append(i)
    return positions
