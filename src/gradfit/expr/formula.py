"""A formula model's text: ``target = expression``, parsed by the safe grammar."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradfit.errors import (
    EquationError,
)
from gradfit.expr.nodes import Equation
from gradfit.expr.parser import parse_equation

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


START_KEYS = ("value", "min", "max", "vary")


def check_start(text: str, start: dict) -> dict:
    """For config validation: every key of ``start`` must name a parameter candidate of the formula;
    each value a number or ``{value, min, max, vary}``. Returns ``start`` with each mapping completed
    (value 1.0 when not given, vary true; min and max only when given)."""
    try:
        parsed = parse_formula(text)
    except EquationError:
        return start  # reported by check_formula
    for key in start:
        if key == parsed.target:
            raise ValueError(f"start: {key!r} is the formula's target, not a parameter; remove it")
        if key not in parsed.names:
            raise ValueError(
                f"start: {key!r} does not appear in the formula (its names: {', '.join(parsed.names)}); "
                "remove it or fix the name"
            )
    return {k: (start_entry(k, v) if isinstance(v, dict) else float(v)) for k, v in start.items()}


def start_entry(name: str, entry: dict) -> dict:
    """One ``start`` mapping checked: {value, vary[, min][, max]}, min < max, the value within them."""
    unknown = [k for k in entry if k not in START_KEYS]
    if unknown:
        raise ValueError(f"start.{name}: unknown key {unknown[0]!r}; a parameter's start takes {', '.join(START_KEYS)} "
                         f"(e.g. {{value: 2, min: 0, max: 10}} or {{value: 2, vary: false}})")
    out = {"value": entry.get("value", 1.0), "vary": entry.get("vary", True)}
    for k in ("value", "min", "max"):
        v = entry.get(k, out.get(k))
        if k in entry or k == "value":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ValueError(f"start.{name}.{k} must be a number, got {v!r}")
            out[k] = float(v)
    if not isinstance(out["vary"], bool):
        raise ValueError(f"start.{name}.vary must be true or false, got {out['vary']!r}")
    lo, hi, x = out.get("min", -math.inf), out.get("max", math.inf), out["value"]
    if not lo < hi:
        raise ValueError(f"start.{name}: min ({lo:g}) must be below max ({hi:g}); swap them or widen the range")
    if not (math.isfinite(x) and lo <= x <= hi):
        where = "(1.0 when not given) " if "value" not in entry else ""
        raise ValueError(f"start.{name}.value {x:g} {where}is outside [min, max] = [{lo:g}, {hi:g}]; "
                         "give a start value within the bounds")
    for k in ("min", "max"):
        if k in out and math.isinf(out[k]):
            del out[k]  # (-inf or inf: no bound on that side)
    return out
