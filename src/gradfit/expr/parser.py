"""Safe arithmetic expressions: parse user text into a tree (expr/nodes.py evaluates it with torch).

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
import math

from gradfit.errors import EquationError
from gradfit.expr.nodes import _IDENTIFIER, CONSTANTS, FUNCTIONS, MAX_DEPTH, MAX_LENGTH, Equation, Expr, ExprError, _Binary, _Call, _Const, _Name, _Node, _Num, _Sum, _Unary

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


# Classes of a subtree with respect to a set of unknowns.


# --------------------------------------------------------------------------- parsing

# Sums with more terms than this are split at their top-level signs before Python parses them.
LONG_SUM_TERMS = 100

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

    def binary(self, node: ast.BinOp, depth: int) -> _Binary | _Sum:
        if isinstance(node.op, (ast.Add, ast.Sub)) and isinstance(node.left, ast.BinOp) and isinstance(node.left.op, (ast.Add, ast.Sub)):
            return self.sum(node, depth)
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

    def sum(self, node: ast.BinOp, depth: int) -> _Sum:
        """a + b - c + ...: one flat node, its terms one level down (a long sum is not deep)."""
        chain = []
        while isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            chain.append(node)
            node = node.left
        first = self.convert(node, depth + 1)
        return _Sum(first, tuple((_BINARY_OPS[type(b.op)], self.convert(b.right, depth + 1)) for b in reversed(chain)))

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
    terms = _top_level_terms(stripped)
    if len(terms) > LONG_SUM_TERMS:
        return _parse_long_sum(source, offset, stripped, terms, what)
    return Expr(stripped, _parse_node(source, offset, stripped, what))


def _parse_long_sum(source: str, offset: int, stripped: str, terms: list[tuple[str, int, int]], what: str) -> Expr:
    """A sum of very many terms, each parsed on its own (Python's parser recurses on long chains)."""
    nodes = []
    for op, lo, hi in terms:
        text = stripped[lo:hi]
        lead = len(text) - len(text.lstrip())
        if not text.strip():
            raise ExprError(f"a term of the {what} is empty", source, offset + lo + 1)
        nodes.append((op, _parse_node(source, offset + lo + lead, text.strip(), what)))
    return Expr(stripped, _Sum(nodes[0][1], tuple(nodes[1:])))


def _top_level_terms(text: str) -> list[tuple[str, int, int]]:
    """(sign, start, end) of the terms of ``text`` split at its binary + and - outside brackets."""
    terms, depth, start, op = [], 0, 0, "+"
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char in "+-" and depth == 0 and _binary_sign(text, i):
            terms.append((op, start, i))
            op, start = char, i + 1
    terms.append((op, start, len(text)))
    return terms


def _binary_sign(text: str, i: int) -> bool:
    """Whether the + or - at ``i`` joins two operands (not a unary sign, not a number's exponent)."""
    j = i - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    if j < 0 or not (text[j].isalnum() or text[j] in "_).]}"):
        return False
    if text[j] in "eE" and j == i - 1:  # 1e-5, 2.5E+3: the sign of an exponent
        k = j - 1
        while k >= 0 and (text[k].isdigit() or text[k] == "."):
            k -= 1
        literal = text[k + 1 : j]
        if literal and any(c.isdigit() for c in literal) and (k < 0 or not (text[k].isalnum() or text[k] == "_")):
            return False
    return True


def _parse_node(source: str, offset: int, stripped: str, what: str) -> _Node:
    """The tree of ``stripped`` (which starts at ``offset`` of ``source``)."""
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
        return converter.convert(tree.body)
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps us below the limit
        raise ExprError(f"the {what} is nested too deeply", source) from None


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
