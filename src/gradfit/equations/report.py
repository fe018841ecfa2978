"""What a solve found, in words and numbers: rank, free directions, consistency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gradfit.equations.system import EPS, Run, System

if TYPE_CHECKING:  # pragma: no cover
    import torch


_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class SolveResult:
    """The best point found and what is known about the system there."""

    unknowns: list[str]
    equations: list[str]
    solution: dict[str, float]
    residuals: list[float]  # LEFT - RIGHT per equation, in input order
    max_abs_residual: float
    converged: bool  # stopped at a solution or a stationary point (not the cap, not stuck)
    iterations: int
    linear: bool
    rank: int
    unique: bool  # the Jacobian has full column rank
    status: Literal["solved", "inconsistent", "no_solution_found", "not_converged"]
    note: str
    hint: str | None = None
    free_directions: list[dict[str, float]] = field(default_factory=list)
    solutions: list[dict[str, float]] = field(default_factory=list)
    multiple: list[bool] = field(default_factory=list)  # per solution: a multiple (singular) root
    starts: int = 1
    tol: float = 1e-9
    seconds: float = 0.0

    @property
    def solved(self) -> bool:
        """Every equation holds within the tolerance."""
        return self.status == "solved"

    def to_dict(self) -> dict:
        """The JSON object of ``gradfit solve-equations --json``."""
        out = {
            "solution": self.solution,
            "residuals": self.residuals,
            "max_abs_residual": self.max_abs_residual,
            "converged": self.converged,
            "iterations": self.iterations,
            "linear": self.linear,
            "rank": self.rank,
            "unknowns": len(self.unknowns),
            "unique": self.unique,
            "note": self.note,
            "status": self.status,
            "free_directions": self.free_directions,
        }
        if self.starts > 1:
            out["solutions"] = self.solutions
            out["multiple"] = self.multiple
        return out


def max_residual(run: Run) -> float:
    """The largest |residual| of a run (0 for no equations)."""
    return float(run.residuals.abs().max()) if run.residuals.numel() else 0.0


def pick_best(runs: list[Run], solves) -> Run:
    """The first run that solves the system (``solves(run)``; the configured start first), else the lowest loss."""
    for r in runs:
        if solves(r):
            return r
    return min(runs, key=lambda r: r.loss)


def jacobian_rank(sv: torch.Tensor, shape, linear: bool) -> int:
    """Singular values above a relative tolerance: rounding level for a linear system's exact
    Jacobian; 1e-8 of max(sigma_max, 1) at an approximate nonlinear solution."""
    if float(sv[0]) == 0.0:
        return 0
    top = float(sv[0])
    cutoff = max(shape) * EPS * top if linear else 1e-8 * max(top, 1.0)
    return int((sv > cutoff).sum())


def free_direction(unknowns: list[str], v: torch.Tensor) -> dict[str, float]:
    """A unit null-space vector, its largest component made positive, rounding noise cleared."""
    values = v.tolist()
    if values[max(range(len(values)), key=lambda i: (abs(values[i]) > 1e-9, -i))] < 0:
        values = [-a for a in values]
    return {name: (round(a, 12) if abs(a) > 1e-12 else 0.0) for name, a in zip(unknowns, values)}


def is_consistent(system: System, jac: torch.Tensor, tol: float) -> bool:
    """Closed-form check of a linear system: does the least-squares point satisfy every equation?

    Computed beside the optimizer (as exact.py does for fits), never instead of it.
    """
    import torch  # (imported here for start-up time)

    n = jac.shape[1]
    b = -system.residuals(torch.zeros(n, dtype=torch.float64)).detach()  # J x - b = residuals
    point = torch.linalg.pinv(jac) @ b
    return float(system.residuals(point).abs().max()) <= tol


def _count(k: int, noun: str) -> str:
    word = _NUMBER_WORDS[k] if k < len(_NUMBER_WORDS) else str(k)
    return f"{word} {noun}" + ("" if k == 1 else "s")


def describe(
    *,
    linear,
    consistent,
    solved,
    run,
    rank,
    n,
    from_zero,
    moved,
    recovered,
    starts,
    tried,
    found,
    max_iter,
    optimizer,
    singular=False,
    multiple=0,
):
    """status, note and hint for the result."""
    free = 0 if rank is None else n - rank

    def which(noun: str) -> str:
        return f"the minimum-norm {noun}" if from_zero else f"the {noun} nearest the starting point"

    if linear and consistent is False:
        point = f"{which('least-squares point')} ({_count(free, 'free direction')})"
        note = "inconsistent: no point satisfies every equation; this is " + (
            point if free else "the least-squares point"
        )
        return "inconsistent", note, "check the equations: some of them contradict each other"
    if not solved:
        if not run.converged:
            note = (
                f"not converged: the equations do not hold within the tolerance after "
                f"{run.iterations} iterations"
                + (" (the iteration cap)" if run.stopped == "max_iter" else " (no more progress)")
            )
            hint = (
                f"try --max-iter {max_iter * 10}"
                if run.stopped == "max_iter"
                else "try another start"
            )
            if optimizer != "lbfgs":
                hint += " or --optimizer lbfgs"
            return "not_converged", note, hint
        note = (
            "no solution found: the squared error stopped decreasing where the equations do not "
            "hold (a local minimum, or the system has no real solution)"
            + (f"; {_count(tried, 'start')} tried" if tried > 1 else "")
        )
        return (
            "no_solution_found",
            note,
            "try --starts 20, or other starting values (--initial NAME=VALUE)",
        )
    if linear:
        if rank is None:
            note = "linear; solved by sparse least squares (the rank of a system this large is not determined)"
        elif free:
            note = f"underdetermined: {_count(free, 'free direction')}; this is {which('solution')}"
        else:
            note = "linear; the solution is unique"
        return "solved", note, None
    note = _nonlinear_note(rank, n, singular, starts, found, tried, multiple, recovered, moved)
    return "solved", note, None


def _nonlinear_note(rank, n, singular, starts, found, tried, multiple, recovered, moved) -> str:
    """The note on a solved nonlinear system: rank there, solutions found, which start."""
    if rank == n:
        note = "nonlinear; the Jacobian has full rank here, so this solution is locally unique"
    elif singular:
        note = (
            f"nonlinear; singular solution: the Jacobian has rank {rank} of {n} here "
            "(a multiple root, or a root where the equations are dependent)"
        )
    else:
        note = (
            f"nonlinear; the Jacobian has rank {rank} of {n} here, "
            "so the solution may not be isolated"
        )
    if starts > 1:
        note += f"; {_count(found, 'distinct solution')} found in {_count(tried, 'start')}"
        if multiple:
            note += f" ({multiple} of them multiple: the Jacobian is singular there)"
    else:
        note += "; other solutions may exist (try --starts 10)"
    if recovered:
        note += (
            "; found from a random start (the first start stopped where the equations do not hold)"
        )
    elif moved:
        note += "; found from a random start (the first start gave non-finite values)"
    return note
