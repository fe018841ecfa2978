"""gradfit solve-equations: solve a small system of equations by gradient descent."""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from gradfit.cli.common import app, imports_done, stdout_console, user_errors
from gradfit.errors import SolveError


class Optimizer(str, Enum):
    auto = "auto"
    lm = "lm"
    lbfgs = "lbfgs"
    adam = "adam"
    sgd = "sgd"


class Init(str, Enum):
    zero = "zero"
    random = "random"


# Equations may start with a minus ("-3*x + y = 1"): pass unknown "options" on as
# arguments, and refuse the ones that look like misspelled long options.
@app.command("solve-equations", context_settings={"ignore_unknown_options": True})
@user_errors
def solve_equations(
    equations: Optional[List[str]] = typer.Argument(
        None,
        metavar="EQUATION",
        help="Equations like 'A + B = 9' (quote each one).",
        show_default=False,
    ),
    file: Optional[Path] = typer.Option(
        None,
        "--file",
        "-f",
        help="Read equations from FILE: one per line (# comments), or YAML "
        "{equations: [...], initial: {A: 0}}.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    optimizer: Optimizer = typer.Option(
        Optimizer.auto, "--optimizer",
        help="auto: a linear system solved directly, a nonlinear one by Levenberg-Marquardt (lm).",
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Learning rate (default: 1 for lbfgs, 0.1 for adam, 1/L for sgd)."
    ),
    max_iter: Optional[int] = typer.Option(
        None,
        "--max-iter",
        min=1,
        help="Iteration cap per start (default: 500 auto/lm, 1000 lbfgs, 5000 adam/sgd).",
    ),
    tol: float = typer.Option(
        1e-9, "--tol", help="Largest residual (LEFT - RIGHT) accepted, relative to the size of the "
        "equation's terms (at least 1 for a nonlinear equation).",
    ),
    init: Init = typer.Option(
        Init.zero,
        "--init",
        help="Start unknowns at zero (minimum-norm for linear systems) or at random.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random starts."),
    starts: int = typer.Option(
        1, "--starts", min=1, max=1000, help="Number of starts; lists the distinct solutions found."
    ),
    initial: List[str] = typer.Option(
        [], "--initial", metavar="NAME=VALUE", help="Starting value of one unknown (repeatable)."
    ),
    box: Optional[Tuple[float, float]] = typer.Option(
        None, "--range", metavar="LOW HIGH",
        help="Draw random starts in [LOW, HIGH] (default: a range derived from the equations).",
    ),
) -> None:
    """Solve a system of equations by minimizing its squared residuals with autograd.

    Example: gradfit solve-equations "A + B = 9" "C - D = 1" "A + C = 8" "B - D = 2"
    """
    from gradfit.equations.inputs import gather_inputs  # (imported here for start-up time)
    from gradfit.equations.solver import solve  # (imported here for start-up time)

    imports_done()
    for text in equations or []:
        if re.match(r"--[A-Za-z]", text):
            raise typer.BadParameter(f"no such option: {text.split('=')[0]}")
    given = gather_inputs(equations or [], file, initial)
    result = solve(given.equations, initial=given.initial, init=init.value, seed=seed, optimizer=optimizer.value,
                   lr=lr, max_iter=max_iter, tol=tol, starts=starts, labels=given.labels, box=box)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        _render(result)
    if not result.solved:
        raise SolveError(result.note, hint=result.hint)


def _number(value: float) -> str:
    return f"{value:.12g}"


def _render(result) -> None:
    """Tables of the unknowns and residuals, then the diagnostic note."""
    from rich.markup import escape  # (imported here for start-up time)
    from rich.table import Table  # (imported here for start-up time)

    console = stdout_console()
    values = Table()
    values.add_column("unknown")
    values.add_column("value", justify="right")
    for name, value in result.solution.items():
        values.add_row(escape(name), _number(value))
    console.print("[bold]Solution[/]")
    console.print(values)

    residuals = Table()
    residuals.add_column("#", justify="right")
    residuals.add_column("equation")
    residuals.add_column("residual", justify="right")
    for i, (text, r) in enumerate(zip(result.equations, result.residuals), 1):
        residuals.add_row(str(i), escape(text), f"{r:.3g}")
    console.print("[bold]Residuals[/] (LEFT - RIGHT)")
    console.print(residuals)

    if len(result.solutions) > 1:
        found = Table()
        for name in result.unknowns:
            found.add_column(escape(name), justify="right")
        found.add_column("multiple")
        for point, multiple in zip(result.solutions, result.multiple):
            found.add_row(*(_number(v) for v in point.values()), "yes" if multiple else "")
        console.print(f"[bold]Distinct solutions found[/] ({len(result.solutions)})")
        console.print(found)

    names = ", ".join(result.unknowns)
    for direction in result.free_directions:
        console.print(
            f"free direction: ({escape(names)}) + t * "
            f"({', '.join(_number(v) for v in direction.values())})"
        )
    kind = "linear" if result.linear else "nonlinear"
    console.print(
        f"{kind}; rank {result.rank} of {len(result.unknowns)} unknowns; "
        f"max |residual| {result.max_abs_residual:.3g} (tol {result.tol:g}); "
        f"{result.iterations} iterations"
    )
    if result.solved:
        console.print(f"[green]solved:[/] {escape(result.note)}")
