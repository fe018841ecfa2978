"""The point a solve reports and what is true there: do the equations hold (relative to the size
of each equation's terms), the rank of the Jacobian, free directions, distinct solutions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gradfit.equations.linear import Coefficients, LinearSolution, solve_linear
from gradfit.equations.report import free_direction, is_consistent, jacobian_rank
from gradfit.equations.system import EPS, Run, System

if TYPE_CHECKING:  # pragma: no cover
    import torch

_SAME = 1e-6  # relative distance under which two solutions are one
_SAME_SINGULAR = 1e-4  # ... when one is a singular (multiple) root, which converges slowly


class Judge:
    """Whether the equations hold at a point: |r_i| <= tol * size_i, where size_i is the size of
    equation i's terms (sum |a_ij x_j| + |c_i| for a linear system; max(1, |LEFT|, |RIGHT|)
    otherwise), so that multiplying an equation by 1e8 does not change the verdict."""

    def __init__(self, system: System, coefs: Coefficients | None, tol: float):
        self.system, self.coefs, self.tol = system, coefs, tol

    def sizes(self, x: torch.Tensor) -> torch.Tensor:
        import torch  # (imported here for start-up time)

        if self.coefs is not None:
            return torch.from_numpy(self.coefs.term_sizes(x.detach().numpy()))
        return self.system.sizes(x)

    def holds(self, x: torch.Tensor, residuals: torch.Tensor) -> bool:
        return bool((residuals.abs() <= self.tol * self.sizes(x)).all())

    def solves(self, run: Run) -> bool:
        return bool(run.residuals.isfinite().all()) and self.holds(run.x, run.residuals)


def nonlinear_rank(system: System, x: torch.Tensor, residuals: torch.Tensor, sizes: torch.Tensor) -> int:
    """Rank of the Jacobian at x, rows scaled by the equations' sizes and columns by max(1, |x_j|);
    singular values count above max(1e-8, 100 sqrt(achieved relative residual)) of max(1, the
    largest): a point within d of a multiple root has singular values of order d, and d is
    about the square root of the residual there."""
    import torch  # (imported here for start-up time)

    jac = system.jacobian(x) / sizes[:, None] * torch.clamp(x.abs(), min=1.0)[None, :]  # (m, n)
    sv = torch.linalg.svdvals(jac)
    if sv.numel() == 0 or float(sv[0]) == 0.0 or not bool(torch.isfinite(sv).all()):
        return 0
    achieved = float((residuals.abs() / sizes).max()) if residuals.numel() else 0.0
    cutoff = max(1e-8, 100 * math.sqrt(achieved + EPS)) * max(float(sv[0]), 1.0)
    return int((sv > cutoff).sum())


@dataclass
class Point:
    """The point reported, and the system around it: rank, free directions, consistency."""

    unknowns: list[str]
    linear: bool
    x: torch.Tensor
    residuals: torch.Tensor
    rank: int | None  # None: not determined (a large, non-square linear system)
    free: list[dict[str, float]]
    holds: bool
    consistent: bool | None  # None for a nonlinear system
    singular: bool = False  # an isolated-looking root where the Jacobian is rank-deficient
    multiple: list[bool] = field(default_factory=list)  # per distinct solution

    @classmethod
    def direct(cls, system: System, solution: LinearSolution, judge: Judge) -> Point:
        """The point of the direct linear solve; residuals evaluated on the expression trees."""
        import torch  # (imported here for start-up time)

        x = torch.from_numpy(solution.x)
        residuals = system.residuals(x).detach()
        free = [free_direction(system.unknowns, torch.from_numpy(v)) for v in solution.null]
        holds = judge.holds(x, residuals)
        return cls(system.unknowns, True, x, residuals, solution.rank, free, holds, holds)

    @classmethod
    def of(cls, system: System, best: Run, x0: torch.Tensor, linear: bool, judge: Judge) -> Point:
        """The point of an optimizer's run."""
        import torch  # (imported here for start-up time)

        x, residuals = best.x, best.residuals
        if not linear:
            sizes = judge.sizes(x)
            rank = nonlinear_rank(system, x, residuals, sizes)
            singular = rank < len(x) <= len(residuals)
            return cls(system.unknowns, False, x, residuals, rank, [], judge.holds(x, residuals), None, singular)
        jac = system.jacobian(x)  # (m, n)
        _, sv, vh = torch.linalg.svd(jac, full_matrices=True)
        rank = jacobian_rank(sv, jac.shape, linear)
        null = vh[rank:]  # (n - rank, n): orthonormal basis of the free directions
        # Remove any drift along the null space (Adam's can be real): the point nearest
        # the start, the minimum-norm one from zero. The residuals do not change.
        x = x - null.T @ (null @ (x - x0))
        free = [free_direction(system.unknowns, v) for v in null]
        residuals = system.residuals(x).detach()
        if judge.coefs is not None:  # consistency from the direct solve, judged relatively
            exact = torch.from_numpy(solve_linear(judge.coefs, x0.numpy()).x)
            consistent = judge.holds(exact, system.residuals(exact).detach())
        else:
            consistent = is_consistent(system, jac, judge.tol)
        return cls(system.unknowns, True, x, residuals, rank, free, judge.holds(x, residuals), consistent)

    def fields(self) -> dict:
        """The SolveResult fields that describe the point."""
        rank = self.rank if self.rank is not None else min(len(self.residuals), len(self.unknowns))
        return dict(
            solution=self.solution,
            residuals=self.residuals.tolist(),
            max_abs_residual=self.max_abs_residual,
            linear=self.linear,
            rank=rank,
            unique=self.rank == len(self.unknowns),
            free_directions=self.free,
            multiple=self.multiple,
        )

    @property
    def max_abs_residual(self) -> float:
        return float(self.residuals.abs().max()) if self.residuals.numel() else 0.0

    @property
    def solution(self) -> dict[str, float]:
        return dict(zip(self.unknowns, self.x.tolist()))

    def solutions(self, system: System, runs: list[Run], judge: Judge) -> list[dict[str, float]]:
        """The solutions found: this one (linear), or the distinct points of the runs that solve
        it, each listed once (``multiple`` flags the singular ones: multiple roots)."""
        if self.linear:
            return [self.solution] if self.holds else []
        points: list[tuple[list[float], bool]] = []
        n = len(self.unknowns)
        for run in (r for r in runs if judge.solves(r)):
            p = run.x.tolist()
            singular = nonlinear_rank(system, run.x, run.residuals, judge.sizes(run.x)) < n <= len(run.residuals)
            for i, (q, flag) in enumerate(points):
                scale = max([1.0] + [abs(v) for v in q])
                radius = _SAME_SINGULAR if (singular or flag) else _SAME
                if max(abs(a - b) for a, b in zip(p, q)) <= radius * scale:
                    points[i] = (q, flag or singular)
                    break
            else:
                points.append((p, singular))
        self.multiple = [flag for _, flag in points]
        return [dict(zip(self.unknowns, p)) for p, _ in points]
