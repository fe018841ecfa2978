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

The optimizers (L-BFGS, Adam, gradient descent) are small implementations in
plain tensor ops: ``torch.optim`` imports ``torch._dynamo`` on first use, which
costs over a second, more than a whole solve. Gradient iterates started at
zero stay in the row space of a linear system, so from the default zero start
an underdetermined consistent system converges to its minimum-norm solution
(and an inconsistent one to its minimum-norm least-squares point); the result
is also projected onto that affine set, which makes it hold for Adam too.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Literal, Mapping, Sequence

from gradfit.equations.files import EquationFile, _closest, read_equation_file
from gradfit.equations.report import SolveResult, _consistent, _describe, _direction, _distinct, _max_abs, _pick, _rank
from gradfit.equations.system import _EPS, _finite, _Run, _System
from gradfit.errors import EquationError, SolveError
from gradfit.expr.nodes import Equation, ExprError
from gradfit.expr.parser import parse_equation

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["SolveResult", "EquationFile", "solve", "read_equation_file"]

OPTIMIZERS = ("lbfgs", "adam", "sgd")
DEFAULT_MAX_ITER = {"lbfgs": 1000, "adam": 5000, "sgd": 5000}
# sgd's None: 1/L, L the largest curvature of the loss at the start (2 sigma_max(J)^2)
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.1, "sgd": None}
MAX_STARTS = 1000
_DOMAIN_RETRIES = 20  # fresh starts tried when a start gives a non-finite value
_HALVINGS = 60  # step halvings per iteration before giving up
_PATIENCE = 50  # adam: iterations without improvement before the lr is halved
_STALL = 10  # L-BFGS iterations without improvement of the loss before a run stops
_RECOVERY_STARTS = 10  # random starts tried when no requested start solves a nonlinear system


# --------------------------------------------------------------------------- the system


class _Stopping:
    """The stopping rule shared by the optimizers.

    Stop when the residuals are far below the tolerance (polish past it: the
    point's digits matter, e.g. for the minimum-norm solution), when the gradient
    vanishes (a least-squares point), or when the loss has not improved for
    ``stall`` iterations (rounding noise). ``converged`` is false only at the
    iteration cap or when stalled while the gradient is still large.
    """

    def __init__(self, tol: float, grad0: torch.Tensor, stall: int):
        self.stall = stall
        self.target = tol * 1e-6
        self.gtol = 1e-14 * max(1.0, float(grad0.abs().max()))
        self.best = math.inf
        self.since_best = 0

    def reached(self, loss: float, grad: torch.Tensor, residuals: torch.Tensor) -> str | None:
        if float(residuals.abs().max()) <= self.target:
            return "residuals"
        if float(grad.abs().max()) <= self.gtol:
            return "stationary"
        if loss < self.best * (1 - 1e-12):
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
            if self.since_best >= self.stall:
                return "stalled"
        return None

    def run(self, x, loss, residuals, grad, iterations: int, reason: str | None) -> _Run:
        converged = reason in ("residuals", "stationary") or (
            reason == "stalled" and float(grad.abs().max()) <= self.gtol * 1e8
        )
        return _Run(x, loss, residuals, iterations, converged, reason or "max_iter")


def _lbfgs(system: _System, x, lr: float, max_iter: int, tol: float, memory: int = 10) -> _Run:
    """L-BFGS (two-loop recursion) with a backtracking Armijo line search."""
    loss, grad, res = system.value_and_grad(x)
    stop = _Stopping(tol, grad, _STALL)
    pairs: deque = deque(maxlen=memory)  # (s, y, 1 / s.y)
    for it in range(max_iter):
        reason = stop.reached(loss, grad, res)
        if reason:
            return stop.run(x, loss, res, grad, it, reason)
        # d = -H grad; H0 = (s.y / y.y) I keeps every direction in span(gradients)
        q = grad.clone()
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * float(s @ q)
            q -= a * y
            alphas.append(a)
        if pairs:
            s, y, _ = pairs[-1]
            q *= float(s @ y) / float(y @ y)
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            q += (a - rho * float(y @ q)) * s
        direction = -q
        slope = float(grad @ direction)
        if not slope < 0:  # not a descent direction: restart from steepest descent
            pairs.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = lr if pairs else lr * min(1.0, 1.0 / max(float(grad.abs().sum()), 1e-300))
        for _ in range(_HALVINGS):
            x_new = x + step * direction
            loss_new, grad_new, res_new = system.value_and_grad(x_new)
            finite = _finite(loss_new, grad_new)
            if finite and loss_new <= loss + 1e-4 * step * slope:
                break
            # minimum of the quadratic through f(0), f'(0), f(step), kept within [0.1, 0.5] step
            curve = loss_new - loss - slope * step if finite else 0.0
            shrink = -slope * step / (2 * curve) if curve > 0 else 0.5
            step *= min(0.5, max(0.1, shrink))
        else:  # no decrease possible along the direction
            return stop.run(x, loss, res, grad, it, "stalled")
        s, y = x_new - x, grad_new - grad
        if float(s.abs().max()) <= 4 * _EPS * max(1.0, float(x.abs().max())):
            return stop.run(x_new, loss_new, res_new, grad_new, it + 1, "stalled")  # rounding level
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):  # keep the curvature pair only where it is positive
            pairs.append((s, y, 1.0 / sy))
        x, loss, grad, res = x_new, loss_new, grad_new, res_new
    return stop.run(x, loss, res, grad, max_iter, stop.reached(loss, grad, res))


def _first_order(
    system: _System, x, lr: float | None, max_iter: int, tol: float, *, adam: bool
) -> _Run:
    """Adam or plain gradient descent. A step that fails (non-finite, or uphill for gradient
    descent) is retried with half the learning rate; Adam also halves it on a plateau."""
    import torch

    loss, grad, res = system.value_and_grad(x)
    stop = _Stopping(tol, grad, 10 * _PATIENCE)  # Adam gets plateaus to lower its lr
    if lr is None:  # gradient descent: 1/L with L = 2 * sigma_max(J)^2 at the start
        sigma = float(torch.linalg.matrix_norm(system.jacobian(x), ord=2))
        lr = 0.5 / sigma**2 if sigma > 0 else 1.0
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    best, since_best = loss, 0
    for it in range(max_iter):
        reason = stop.reached(loss, grad, res)
        if reason:
            return stop.run(x, loss, res, grad, it, reason)
        if adam:
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            m_hat, v_hat = m / (1 - 0.9 ** (it + 1)), v / (1 - 0.999 ** (it + 1))
            direction = -m_hat / (v_hat.sqrt() + 1e-12)
        else:
            direction = -grad
        for _ in range(_HALVINGS):
            x_new = x + lr * direction
            loss_new, grad_new, res_new = system.value_and_grad(x_new)
            if _finite(loss_new, grad_new) and (adam or loss_new <= loss):
                break
            lr *= 0.5
        else:
            return stop.run(x, loss, res, grad, it, "stalled")
        x, loss, grad, res = x_new, loss_new, grad_new, res_new
        if adam:  # oscillating around the minimum: smaller steps
            if loss < best * (1 - 1e-9):
                best, since_best = loss, 0
            else:
                since_best += 1
                if since_best >= _PATIENCE:
                    lr, since_best = lr * 0.5, 0
    return stop.run(x, loss, res, grad, max_iter, stop.reached(loss, grad, res))


# --------------------------------------------------------------------------- solve


def solve(
    equations: Sequence[str | Equation],
    *,
    initial: Mapping[str, float] | None = None,
    init: Literal["zero", "random"] = "zero",
    seed: int = 0,
    optimizer: Literal["lbfgs", "adam", "sgd"] = "lbfgs",
    lr: float | None = None,
    max_iter: int | None = None,
    tol: float = 1e-9,
    starts: int = 1,
    labels: Sequence[str] | None = None,
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
    _check_options(optimizer, lr, max_iter, tol, starts, init)
    parsed = _parse_all(equations, labels)
    unknowns = list(dict.fromkeys(name for eq in parsed for name in eq.names))
    if not unknowns:
        raise EquationError("the equations have no unknowns", hint="use names, e.g. 'x + y = 3'")
    import torch  # only now: a typo is reported without waiting for torch to import

    t0 = time.perf_counter()  # solver time, torch's import excluded
    system = _System(parsed, unknowns)
    linear = all(eq.is_affine_in(unknowns) for eq in parsed)
    max_iter = max_iter or DEFAULT_MAX_ITER[optimizer]
    lr = lr if lr is not None else DEFAULT_LR[optimizer]

    def run(x0: torch.Tensor) -> _Run:
        if optimizer == "lbfgs":
            return _lbfgs(system, x0, lr, max_iter, tol)
        return _first_order(system, x0, lr, max_iter, tol, adam=optimizer == "adam")

    search = _Search(system, _initial_vector(unknowns, initial or {}), seed, labels)
    x0, moved = search.first_start(init)
    runs = [run(x0)]
    for _ in range(0 if linear else starts - 1):
        search.run_random(run, runs)
    # A nonlinear system can stop at a saddle or local minimum (x*y = 1 from zero):
    # recover with fresh starts until one solves it, unless runs end at the iteration cap
    # (more starts would not help there).
    for _ in range(0 if linear else _RECOVERY_STARTS):
        if any(_max_abs(r) <= tol for r in runs) or not runs[-1].converged:
            break
        search.run_random(run, runs)

    best = _pick(runs, tol)
    x, residuals = best.x, best.residuals
    jac = system.jacobian(x)  # (m, n)
    _, sv, vh = torch.linalg.svd(jac, full_matrices=True)
    rank = _rank(sv, jac.shape, linear)
    free: list[dict[str, float]] = []
    consistent = None
    if linear:
        null = vh[rank:]  # (n - rank, n): orthonormal basis of the free directions
        # Remove any drift along the null space (Adam's can be real): the point nearest
        # the start, the minimum-norm one from zero. The residuals do not change.
        x = x - null.T @ (null @ (x - x0))
        residuals = system.residuals(x).detach()
        free = [_direction(unknowns, v) for v in null]
        consistent = _consistent(system, jac, tol)
    max_res = float(residuals.abs().max())
    solution = dict(zip(unknowns, x.tolist()))
    if linear:
        solutions = [solution] if max_res <= tol else []
    else:
        solutions = _distinct([r for r in runs if _max_abs(r) <= tol], unknowns)
    status, note, hint = _describe(
        linear=linear,
        consistent=consistent,
        solved=max_res <= tol,
        run=best,
        rank=rank,
        n=len(unknowns),
        from_zero=bool((x0 == 0).all()),
        moved=moved,
        recovered=best is not runs[0],
        starts=starts,
        tried=len(runs),
        found=len(solutions),
        max_iter=max_iter,
        optimizer=optimizer,
    )
    return SolveResult(
        unknowns=unknowns,
        equations=[eq.text for eq in parsed],
        solution=solution,
        residuals=residuals.tolist(),
        max_abs_residual=max_res,
        converged=best.converged,
        iterations=best.iterations,
        linear=linear,
        rank=rank,
        unique=rank == len(unknowns),
        status=status,
        note=note,
        hint=hint,
        free_directions=free,
        solutions=solutions,
        starts=starts,
        tol=tol,
        seconds=time.perf_counter() - t0,
    )


class _Search:
    """Starting points: the configured one, then seeded random draws; all with finite values."""

    def __init__(self, system: _System, start: torch.Tensor, seed: int, labels):
        import torch

        self.system = system
        self.labels = labels
        self.start = start  # NaN where no initial value is given
        self.given = ~torch.isnan(start)
        self.generator = torch.Generator().manual_seed(seed)
        # random starts on the scale of the given values (at least 1)
        self.scale = max([1.0] + start[self.given].abs().tolist())

    def draw(self) -> torch.Tensor:
        import torch

        n = len(self.start)
        return torch.randn(n, generator=self.generator, dtype=torch.float64) * self.scale

    def first_start(self, init: str) -> tuple[torch.Tensor, bool]:
        """The configured start, or a draw (given values kept) if it is not finite there."""
        import torch

        rest = self.draw() if init == "random" else torch.zeros_like(self.start)
        return self._finite(torch.where(self.given, self.start, rest), self.given)

    def run_random(self, run: Callable, runs: list[_Run]) -> None:
        """One more run from a random start; skipped if no finite start turns up."""
        import torch

        try:
            x, _ = self._finite(self.draw(), torch.zeros_like(self.given))
        except SolveError:
            return
        runs.append(run(x))

    def _finite(self, x0: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x0 if the loss and its gradient are finite there, else fresh draws (keeping the
        entries in keep); returns the start and whether it differs from x0."""
        import torch

        x = x0
        for attempt in range(_DOMAIN_RETRIES + 1):
            loss, grad, _ = self.system.value_and_grad(x)
            if _finite(loss, grad):
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


def _check_options(optimizer, lr, max_iter, tol, starts, init) -> None:
    if optimizer not in OPTIMIZERS:
        raise SolveError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}",
            hint=_closest(str(optimizer), OPTIMIZERS),
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
    import torch

    values = [math.nan] * len(unknowns)
    for name, value in initial.items():
        if name not in unknowns:
            raise EquationError(
                f"the initial values name '{name}', which is not an unknown of the equations",
                hint=_closest(name, unknowns) or f"the unknowns are {', '.join(unknowns)}",
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
