"""Equation files: one equation per line, or YAML with equations and initial values."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gradfit.errors import EquationError
from gradfit.files import read_text_input


@dataclass
class EquationFile:
    """Equations read from a file, with a label for each (file and line) and starting values."""

    equations: list[str]
    labels: list[str]
    initial: dict[str, float]


# --------------------------------------------------------------------------- reading


def read_equation_file(path: str | Path) -> EquationFile:
    """One equation per line (``#`` comments), or YAML ``{equations: [...], initial: {A: 0}}``."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise EquationError(f"{path}: no such file")
    # A FIFO or a device (/dev/zero) is refused at once instead of blocking or filling memory.
    text = read_text_input(path, "equation file", EquationError)
    lines = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    is_yaml = path.suffix.lower() in (".yaml", ".yml") or (
        bool(lines) and lines[0][1].replace(" ", "").startswith("equations:")
    )
    if is_yaml:
        return _read_yaml(path, text)
    if not lines:
        raise EquationError(f"{path}: no equations in the file", hint="write one equation per line")
    return EquationFile(
        equations=[line for _, line in lines],
        labels=[f"{path.name} line {n}" for n, _ in lines],
        initial={},
    )


def _read_yaml(path: Path, text: str) -> EquationFile:
    import yaml  # (imported here for start-up time)

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise EquationError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise EquationError(
            f"{path}: expected a mapping with the key 'equations'",
            hint="equations: ['A + B = 9', 'A - B = 1']",
        )
    for key in doc:
        if key not in ("equations", "initial"):
            raise EquationError(
                f"{path}: unknown key '{key}'", hint=closest(str(key), ("equations", "initial"))
            )
    equations = doc.get("equations")
    if not isinstance(equations, list) or not equations:
        raise EquationError(f"{path}: 'equations' must be a non-empty list of strings")
    for i, item in enumerate(equations):
        if not isinstance(item, str):
            raise EquationError(
                f"{path}: equations[{i}] must be a string like 'A + B = 9', not {item!r}",
                hint="quote the equation",
            )
    initial = doc.get("initial") or {}
    if not isinstance(initial, dict):
        raise EquationError(f"{path}: 'initial' must be a mapping like {{A: 0, B: 1}}")
    return EquationFile(
        equations=list(equations),
        labels=[f"{path.name} equations[{i}]" for i in range(len(equations))],
        initial={str(k): v for k, v in initial.items()},
    )


def closest(word: str, choices: Sequence[str]) -> str | None:
    """A "did you mean" hint naming the choice nearest ``word``, or None."""
    match = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{match[0]}'?" if match else None
