"""Solve a small system of equations by minimizing its squared residuals with autograd.

``solve`` parses each ``LEFT = RIGHT`` with ``gradfit.expr`` (never eval),
minimizes ``sum((LEFT - RIGHT)**2)`` over the unknowns in float64, and
reports what the system is like around the point found:

- ``linear``: decided symbolically from the parsed tree (``Equation.is_affine_in``),
  not numerically, so ``x*y = 1`` is nonlinear and ``2*x/4 = 1`` linear; a
  system linear only after cancellation (``x*y - x*y + x = 1``) counts as nonlinear.
- ``rank``: of the Jacobian at the point, from its singular values.
- for a linear system, consistency from a closed-form least-squares check
  computed beside the optimizer, and the free directions (null space).

By default (``optimizer="auto"``) a linear system is solved directly (``equations.linear``:
the matrix read off the trees, equilibrated, factored, refined) and a nonlinear one by
Levenberg-Marquardt on the autograd Jacobian (``equations.newton``); whether an equation holds
is judged relative to the size of its terms (``equations.point.Judge``), and random starts
come from a box derived from the equations (``equations.starts``) or given (``box``).

The other optimizers are gradfit's own (L-BFGS, Adam, gradient descent from ``gradfit.optim``),
driven by ``equations.minimize`` with the solver's stopping rule. Gradient iterates
started at zero stay in the row space of a linear system, so from the default zero
start an underdetermined consistent system converges to its minimum-norm solution
(and an inconsistent one to its minimum-norm least-squares point); the result is
also projected onto that affine set, which makes it hold for Adam too.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Literal, Mapping, Sequence

from gradfit.equations.files import EquationFile, closest, read_equation_file
from gradfit.equations.linear import read_coefficients, solve_linear
from gradfit.equations.minimize import run_first_order, run_lbfgs
from gradfit.equations.newton import run_lm
from gradfit.equations.point import Judge, Point
from gradfit.equations.report import SolveResult, describe, pick_best
from gradfit.equations.starts import latin_hypercube, start_box
from gradfit.equations.system import Run, System, finite
from gradfit.errors import EquationError, SolveError
from gradfit.expr.nodes import Equation, ExprError
from gradfit.expr.parser import parse_equation

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["SolveResult", "EquationFile", "solve", "read_equation_file"]

# auto: a linear system solved directly (linear.py), a nonlinear one by Levenberg-Marquardt
OPTIMIZERS = ("auto", "lm", "lbfgs", "adam", "sgd")
DEFAULT_MAX_ITER = {"auto": 500, "lm": 500, "lbfgs": 1000, "adam": 5000, "sgd": 5000}
# sgd's None: 1/L, L the largest curvature of the loss at the start (2 sigma_max(J)^2)
DEFAULT_LR = {"auto": None, "lm": None, "lbfgs": 1.0, "adam": 0.1, "sgd": None}
MAX_STARTS = 1000
_DOMAIN_RETRIES = 20  # fresh starts tried when a start gives a non-finite value
_BOX_UNKNOWNS = 20  # up to this many unknowns the box of random starts is derived from the equations
_RECOVERY_STARTS = 10  # random starts tried when no requested start solves a nonlinear system


def solve(
    equations: Sequence[str | Equation],
    *,
    initial: Mapping[str, float] | None = None,
    init: Literal["zero", "random"] = "zero",
    seed: int = 0,
    optimizer: Literal["auto", "lm", "lbfgs", "adam", "sgd"] = "auto",
    lr: float | None = None,
    max_iter: int | None = None,
    tol: float = 1e-9,
    starts: int = 1,
    labels: Sequence[str] | None = None,
    box: tuple[float, float] | None = None,
) -> SolveResult:
    """Solve ``LEFT = RIGHT`` equations for their unknowns by minimizing the squared residuals.

    The unknowns are every name in the equations, in order of first appearance.
    ``initial`` gives starting values (others start at zero, or random with
    ``init="random"``). ``starts > 1`` adds seeded random starts and lists the
    distinct solutions found (linear systems need one start: their solution
    set is described by the free directions). ``labels`` name the equations
    in error messages (default "equation 1", ...). Raises ``EquationError``
    for text that does not parse and ``SolveError`` when no start can be
    evaluated; a system with no solution is a result (``status``), not an error.
    """
    _check_options(optimizer, lr, max_iter, tol, starts, init, box)
    parsed = _parse_all(equations, labels)
    unknowns = list(dict.fromkeys(name for eq in parsed for name in eq.names))
    if not unknowns:
        raise EquationError("the equations have no unknowns", hint="use names, e.g. 'x + y = 3'")
    import torch  # noqa: F401 (only now: a typo is reported without waiting for torch to import)

    t0 = time.perf_counter()  # solver time, torch's import excluded
    system = System(parsed, unknowns)
    names = frozenset(unknowns)  # built once: ten thousand equations ask it
    linear = all(eq.is_affine_in(names) for eq in parsed)
    coefs = read_coefficients(parsed, unknowns) if linear else None
    judge = Judge(system, coefs, tol)
    search = _Search(system, _initial_vector(unknowns, initial or {}), seed, labels, starts, box)
    max_iter = max_iter or DEFAULT_MAX_ITER[optimizer]
    if optimizer == "auto" and coefs is not None:  # linear: solved directly
        x0, moved = search.first_start(init, check=False)
        point, runs = _direct(system, coefs, x0, judge)
    else:
        run = _runner(system, optimizer, lr if lr is not None else DEFAULT_LR[optimizer], max_iter, tol)
        search.residual_steps = optimizer in ("auto", "lm")
        x0, moved = search.first_start(init)
        runs = _runs(search, run, x0, linear, starts, judge)
        point = Point.of(system, pick_best(runs, judge.solves), x0, linear, judge)
    best = pick_best(runs, judge.solves)
    solutions = point.solutions(system, runs, judge)
    status, note, hint = describe(
        linear=linear,
        consistent=point.consistent,
        solved=point.holds,
        run=best,
        rank=point.rank,
        n=len(unknowns),
        from_zero=bool((x0 == 0).all()),
        moved=moved,
        recovered=best is not runs[0],
        starts=starts,
        tried=len(runs),
        found=len(solutions),
        max_iter=max_iter,
        optimizer=optimizer,
        singular=point.singular,
        multiple=sum(point.multiple),
    )
    return SolveResult(
        unknowns=unknowns, equations=[eq.text for eq in parsed], converged=best.converged,
        iterations=best.iterations, status=status, note=note, hint=hint, solutions=solutions,
        starts=starts, tol=tol, seconds=time.perf_counter() - t0, **point.fields(),
    )


def _direct(system: System, coefs, x0: torch.Tensor, judge: Judge) -> tuple[Point, list[Run]]:
    """The direct solve of a linear system, as a point and the one run that found it."""
    solution = solve_linear(coefs, x0.numpy())
    point = Point.direct(system, solution, judge)
    residuals = point.residuals
    return point, [Run(point.x, float((residuals**2).sum()), residuals, solution.iterations, True, "direct")]


def _runner(system: System, optimizer: str, lr: float | None, max_iter: int, tol: float) -> Callable[[torch.Tensor], Run]:
    """One run of the chosen optimizer from a start (auto: Levenberg-Marquardt)."""
    if optimizer in ("auto", "lm"):
        return lambda x0: run_lm(system, x0, max_iter, tol)
    if optimizer == "lbfgs":
        return lambda x0: run_lbfgs(system, x0, lr, max_iter, tol)
    return lambda x0: run_first_order(system, x0, lr, max_iter, tol, adam=optimizer == "adam")


def _runs(search: _Search, run: Callable, x0: torch.Tensor, linear: bool, starts: int, judge: Judge) -> list[Run]:
    """The run from x0, then from random starts: the requested ones and, for a nonlinear system
    that none of them solves, recovery starts."""
    runs = [run(x0)]
    for _ in range(0 if linear else starts - 1):
        search.run_random(run, runs)
    # A nonlinear system can stop at a saddle or local minimum (x*y = 1 from zero):
    # recover with fresh starts until one solves it, unless runs end at the iteration cap
    # (more starts would not help there).
    for _ in range(0 if linear else _RECOVERY_STARTS):
        if any(judge.solves(r) for r in runs) or not runs[-1].converged:
            break
        search.run_random(run, runs)
    return runs


class _Search:
    """Starting points: the configured one, then seeded random draws (a Latin hypercube over a box
    derived from the system, or ``box``); all with finite values."""

    def __init__(self, system: System, start: torch.Tensor, seed: int, labels, starts: int, box):
        import numpy as np  # (imported here for start-up time)
        import torch  # (imported here for start-up time)

        self.system = system
        self.labels = labels
        self.start = start  # NaN where no initial value is given
        self.given = ~torch.isnan(start)
        self.rng = np.random.default_rng(seed)
        self.box = box  # (low, high) for every unknown, or None: derived when first needed
        self.starts = starts
        self.drawn: list = []
        self.residual_steps = False  # set for Levenberg-Marquardt: its starts need finite residuals only

    def draw(self) -> torch.Tensor:
        import numpy as np  # (imported here for start-up time)
        import torch  # (imported here for start-up time)

        if not self.drawn:
            n = len(self.start)
            if self.box is not None:
                low, high = np.full(n, float(self.box[0])), np.full(n, float(self.box[1]))
            else:
                centre = torch.where(self.given, self.start, torch.zeros_like(self.start)).numpy()
                half = start_box(self.system, centre) if n <= _BOX_UNKNOWNS else np.maximum(1.0, np.abs(centre))
                low, high = -half, half
            self.drawn = list(latin_hypercube(max(self.starts, 1), low, high, self.rng)[::-1])
            self.low, self.high = low, high
        if len(self.drawn) > 1:
            return torch.from_numpy(self.drawn.pop())
        return torch.from_numpy(self.low + self.rng.random(len(self.low)) * (self.high - self.low))

    def first_start(self, init: str, check: bool = True) -> tuple[torch.Tensor, bool]:
        """The configured start, or a draw (given values kept) if it is not finite there."""
        import torch  # (imported here for start-up time)

        rest = self.draw() if init == "random" else torch.zeros_like(self.start)
        x0 = torch.where(self.given, self.start, rest)
        return self._finite(x0, self.given) if check else (x0, False)

    def run_random(self, run: Callable, runs: list[Run]) -> None:
        """One more run from a random start; skipped if no finite start turns up."""
        import torch  # (imported here for start-up time)

        try:
            x, _ = self._finite(self.draw(), torch.zeros_like(self.given))
        except SolveError:
            return
        runs.append(run(x))

    def _finite(self, x0: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x0 if the loss and its gradient are finite there, else fresh draws (keeping the
        entries in keep); returns the start and whether it differs from x0."""
        import torch  # (imported here for start-up time)

        x = x0
        for attempt in range(_DOMAIN_RETRIES + 1):
            if self.residual_steps:  # Levenberg-Marquardt needs residuals and Jacobian, not the squared loss
                ok = bool(torch.isfinite(self.system.residuals(x)).all() and torch.isfinite(self.system.jacobian(x)).all())
            else:
                loss, grad, _ = self.system.value_and_grad(x)
                ok = finite(loss, grad)
            if ok:
                return x, attempt > 0
            x = torch.where(keep, x0, self.draw())
        # Name the equations that fail at the first start.
        _, _, res = self.system.value_and_grad(x0)
        equations = self.system.equations
        bad = [i for i, r in enumerate(res.tolist()) if not math.isfinite(r)]
        where = ", ".join(
            f"{self.labels[i] if self.labels is not None else f'equation {i + 1}'} "
            f"({equations[i].text})"
            for i in (bad or range(len(equations)))[:3]
        )
        raise SolveError(
            f"no starting point gives finite values: {where} is not finite (or has no gradient) "
            f"at the start and at {_DOMAIN_RETRIES} random ones",
            hint="check for division by zero, or give starting values inside the domain "
            "(log and sqrt need positive arguments), e.g. --initial x=1",
        )


def _check_options(optimizer, lr, max_iter, tol, starts, init, box) -> None:
    if box is not None and not (len(box) == 2 and all(math.isfinite(v) for v in box) and box[0] < box[1]):
        raise SolveError(f"range must be two finite numbers LOW < HIGH, not {box!r}", hint="e.g. --range -10 10")
    if optimizer not in OPTIMIZERS:
        raise SolveError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}",
            hint=closest(str(optimizer), OPTIMIZERS),
        )
    if init not in ("zero", "random"):
        raise SolveError(f"init must be 'zero' or 'random', not {init!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise SolveError(f"lr must be a positive number, not {lr!r}")
    if max_iter is not None and not (isinstance(max_iter, int) and max_iter >= 1):
        raise SolveError(f"max_iter must be a positive integer, not {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise SolveError(f"tol must be a positive number, not {tol!r}")
    if not (isinstance(starts, int) and 1 <= starts <= MAX_STARTS):
        raise SolveError(f"starts must be an integer from 1 to {MAX_STARTS}, not {starts!r}")


def _parse_all(equations, labels) -> list[Equation]:
    if isinstance(equations, str):
        equations = [equations]
    if not equations:
        raise EquationError(
            "no equations given", hint="e.g. gradfit solve-equations 'x + y = 3' 'x - y = 1'"
        )
    if labels is not None and len(labels) != len(equations):
        raise ValueError("labels must have one entry per equation")
    parsed = []
    for i, eq in enumerate(equations):
        label = labels[i] if labels is not None else f"equation {i + 1}"
        if isinstance(eq, Equation):
            parsed.append(eq)
            continue
        try:
            parsed.append(parse_equation(eq))
        except ExprError as err:
            raise err.with_label(label) from None
        except EquationError as err:
            raise EquationError(f"{label}: {err.message}", hint=err.hint) from None
    return parsed


def _initial_vector(unknowns: list[str], initial: Mapping[str, float]) -> torch.Tensor:
    """Starting values by unknown; NaN where none is given."""
    import torch  # (imported here for start-up time)

    values = [math.nan] * len(unknowns)
    for name, value in initial.items():
        if name not in unknowns:
            raise EquationError(
                f"the initial values name '{name}', which is not an unknown of the equations",
                hint=closest(name, unknowns) or f"the unknowns are {', '.join(unknowns)}",
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise EquationError(
                f"the initial value of '{name}' must be a finite number, not {value!r}"
            )
        values[unknowns.index(name)] = float(value)
    return torch.tensor(values, dtype=torch.float64)
