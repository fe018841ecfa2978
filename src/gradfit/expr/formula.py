"""A formula model's text: ``target = expression``, parsed by the safe grammar."""

from __future__ import annotations

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


def check_start(text: str, start: dict) -> None:
    """For config validation: every key of ``start`` must name a parameter candidate of the formula."""
    try:
        parsed = parse_formula(text)
    except EquationError:
        return  # reported by check_formula
    for key in start:
        if key == parsed.target:
            raise ValueError(f"start: {key!r} is the formula's target, not a parameter; remove it")
        if key not in parsed.names:
            raise ValueError(
                f"start: {key!r} does not appear in the formula (its names: {', '.join(parsed.names)}); "
                "remove it or fix the name"
            )
