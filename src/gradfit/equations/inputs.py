"""What solve-equations is given: equations from a file and as arguments, and starting values.

Importing this module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from gradfit.equations.files import read_equation_file
from gradfit.errors import EquationError


@dataclass
class EquationInputs:
    """The equations to solve, a label for each (``equation 2``, ``argument 1``, file and line), starting values."""

    equations: list[str]
    labels: list[str]
    initial: dict[str, float]


def gather_inputs(arguments: Sequence[str] = (), file: Optional[Path] = None,
                  initial: Sequence[str] = ()) -> EquationInputs:
    """The file's equations (if any), then the arguments; starting values from the file, then
    ``NAME=VALUE`` items (which win). EquationError when there is no equation at all."""
    texts: list[str] = []
    labels: list[str] = []
    start: dict[str, float] = {}
    if file is not None:
        loaded = read_equation_file(file)
        texts, labels, start = list(loaded.equations), list(loaded.labels), dict(loaded.initial)
    for i, text in enumerate(arguments, 1):
        texts.append(text)
        labels.append(f"equation {i}" if file is None else f"argument {i}")
    start.update(assignments(initial))
    if not texts:
        raise EquationError(
            "no equations given",
            hint="gradfit solve-equations 'x + y = 3' 'x - y = 1', or --file FILE",
        )
    return EquationInputs(texts, labels, start)


def assignments(items: Sequence[str]) -> dict[str, float]:
    """--initial NAME=VALUE options as a dict."""
    values: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise EquationError(
                f"--initial expects NAME=VALUE, not '{item}'", hint="e.g. --initial x=1.5"
            )
        values[name.strip()] = number
    return values
