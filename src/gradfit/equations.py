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

import difflib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Mapping, Sequence

from gradfit.errors import EquationError, SolveError
from gradfit.expr import Equation, ExprError, parse_equation

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["SolveResult", "EquationFile", "solve", "read_equation_file"]

OPTIMIZERS = ("lbfgs", "adam", "sgd")
DEFAULT_MAX_ITER = {"lbfgs": 1000, "adam": 10000, "sgd": 10000}
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.1, "sgd": None}  # sgd: None = 1/L from the Jacobian at the start
MAX_STARTS = 1000
_DOMAIN_RETRIES = 20  # fresh starts tried when a start gives a non-finite value
_HALVINGS = 60  # step halvings per iteration before giving up
_PATIENCE = 100  # adam: iterations without improvement before the lr is halved
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class SolveResult:
    """The best point found and what is known about the system there."""

    unknowns: list[str]
    equations: list[str]
    solution: dict[str, float]
    residuals: list[float]  # LEFT - RIGHT per equation, in input order
    max_abs_residual: float
    converged: bool  # the optimizer met its stopping rule (not the iteration cap)
    iterations: int
    linear: bool
    rank: int
    unique: bool  # the Jacobian has full column rank
    status: Literal["solved", "inconsistent", "no_solution_found", "not_converged"]
    note: str
    hint: str | None = None
    free_directions: list[dict[str, float]] = field(default_factory=list)
    solutions: list[dict[str, float]] = field(default_factory=list)
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
        return out


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EquationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EquationError(f"{path}: cannot read it ({err})") from None
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
    import yaml

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
                f"{path}: unknown key '{key}'", hint=_closest(str(key), ("equations", "initial"))
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


def _closest(word: str, choices: Sequence[str]) -> str | None:
    match = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{match[0]}'?" if match else None


# --------------------------------------------------------------------------- the system


class _System:
    """Residuals of the parsed equations as a function of one float64 vector of unknowns."""

    def __init__(self, equations: list[Equation], unknowns: list[str]):
        self.equations = equations
        self.unknowns = unknowns

    def residuals(self, x: "torch.Tensor") -> "torch.Tensor":
        """(n,) -> (m,): LEFT - RIGHT of each equation."""
        import torch

        env = {name: x[i] for i, name in enumerate(self.unknowns)}
        return torch.stack([eq.residual(env).reshape(()) for eq in self.equations])

    def value_and_grad(self, x: "torch.Tensor"):
        """Loss sum(r**2) as a float, its gradient (n,), and the residuals (m,)."""
        import torch

        x = x.detach().requires_grad_(True)
        r = self.residuals(x)
        loss = (r * r).sum()
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
            grad = torch.zeros_like(x) if grad is None else grad
        else:  # no equation depends on the unknowns
            grad = torch.zeros_like(x)
        return loss.item(), grad.detach(), r.detach()

    def jacobian(self, x: "torch.Tensor") -> "torch.Tensor":
        """(m, n) at x (torch.autograd.functional, which does not import torch._dynamo)."""
        from torch.autograd.functional import jacobian

        return jacobian(self.residuals, x.detach()).reshape(len(self.equations), len(x))


def _finite(loss: float, grad: "torch.Tensor") -> bool:
    import torch

    return math.isfinite(loss) and bool(torch.isfinite(grad).all())


@dataclass
class _Run:
    """One optimizer run from one start."""

    x: "torch.Tensor"
    loss: float
    residuals: "torch.Tensor"
    iterations: int
    converged: bool
    stopped: str  # "residuals", "stationary", "stalled", "max_iter"


class _Stopping:
    """The stopping rule shared by the optimizers."""

    def __init__(self, tol: float, grad0: "torch.Tensor"):
        # Polish well past the tolerance: the residuals are cheap, the point's digits are not.
        self.target = tol * 1e-3
        self.gtol = 1e-12 * max(1.0, float(grad0.abs().max()))

    def reached(self, grad: "torch.Tensor", residuals: "torch.Tensor") -> str | None:
        if float(residuals.abs().max()) <= self.target:
            return "residuals"
        if float(grad.abs().max()) <= self.gtol:
            return "stationary"
        return None

    def stationary_enough(self, grad: "torch.Tensor") -> bool:
        """After the line search stalls: is the gradient down at rounding level?"""
        return float(grad.abs().max()) <= self.gtol * 1e6


def _lbfgs(system: _System, x, lr: float, max_iter: int, tol: float, memory: int = 10) -> _Run:
    """L-BFGS (two-loop recursion) with a backtracking Armijo line search."""
    loss, grad, res = system.value_and_grad(x)
    stop = _Stopping(tol, grad)
    pairs: deque = deque(maxlen=memory)  # (s, y, 1 / s.y)
    for it in range(max_iter):
        reason = stop.reached(grad, res)
        if reason:
            return _Run(x, loss, res, it, True, reason)
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
            if _finite(loss_new, grad_new) and loss_new <= loss + 1e-4 * step * slope:
                break
            step *= 0.5
        else:  # no decrease possible along the direction
            return _Run(x, loss, res, it, stop.stationary_enough(grad), "stalled")
        s, y = x_new - x, grad_new - grad
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):  # keep the curvature pair only where it is positive
            pairs.append((s, y, 1.0 / sy))
        x, loss, grad, res = x_new, loss_new, grad_new, res_new
    reason = stop.reached(grad, res)
    return _Run(x, loss, res, max_iter, bool(reason), reason or "max_iter")


def _first_order(
    system: _System, x, lr: float | None, max_iter: int, tol: float, *, adam: bool
) -> _Run:
    """Adam or plain gradient descent; a step that fails (non-finite or, for sgd, uphill) is
    retried with half the learning rate, and Adam halves it after a plateau."""
    import torch

    loss, grad, res = system.value_and_grad(x)
    stop = _Stopping(tol, grad)
    if lr is None:  # gradient descent: 1/L with L = 2 * sigma_max(J)^2 at the start
        sigma = float(torch.linalg.matrix_norm(system.jacobian(x), ord=2))
        lr = 0.5 / sigma**2 if sigma > 0 else 1.0
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    best, since_best = loss, 0
    for it in range(max_iter):
        reason = stop.reached(grad, res)
        if reason:
            return _Run(x, loss, res, it, True, reason)
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
            return _Run(x, loss, res, it, stop.stationary_enough(grad), "stalled")
        x, loss, grad, res = x_new, loss_new, grad_new, res_new
        if loss < best * (1 - 1e-9):
            best, since_best = loss, 0
        else:
            since_best += 1
            if adam and since_best >= _PATIENCE:  # oscillating around the minimum
                lr *= 0.5
                since_best = 0
    reason = stop.reached(grad, res)
    return _Run(x, loss, res, max_iter, bool(reason), reason or "max_iter")


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
    import torch

    t0 = time.perf_counter()
    _check_options(optimizer, lr, max_iter, tol, starts, init)
    parsed = _parse_all(equations, labels)
    unknowns = list(dict.fromkeys(name for eq in parsed for name in eq.names))
    if not unknowns:
        raise EquationError("the equations have no unknowns", hint="use names, e.g. 'x + y = 3'")
    start = _initial_vector(unknowns, initial or {})
    system = _System(parsed, unknowns)
    linear = all(eq.is_affine_in(unknowns) for eq in parsed)
    max_iter = max_iter or DEFAULT_MAX_ITER[optimizer]
    lr = lr if lr is not None else DEFAULT_LR[optimizer]
    generator = torch.Generator().manual_seed(seed)
    given = torch.tensor([not math.isnan(v) for v in start.tolist()])
    scale = max([1.0] + [abs(v) for v in start.tolist() if not math.isnan(v)])

    def draw() -> "torch.Tensor":
        return torch.randn(len(unknowns), generator=generator, dtype=torch.float64) * scale

    def run(x0: "torch.Tensor") -> _Run:
        if optimizer == "lbfgs":
            return _lbfgs(system, x0, lr, max_iter, tol)
        return _first_order(system, x0, lr, max_iter, tol, adam=optimizer == "adam")

    first = torch.where(given, start, draw() if init == "random" else torch.zeros(len(unknowns), dtype=torch.float64))
    x0, moved = _finite_start(system, first, given, draw, parsed, labels)
    runs = [run(x0)]
    for _ in range(1 if linear else starts - 1):
        if linear:
            break
        try:
            x_k, _ = _finite_start(system, draw(), torch.zeros_like(given), draw, parsed, labels)
        except SolveError:
            continue  # every extra start is optional
        runs.append(run(x_k))

    best = _pick(runs, tol)
    x = best.x
    jac = system.jacobian(x)
    n = len(unknowns)
    sv = torch.linalg.svdvals(jac) if jac.numel() else torch.zeros(0, dtype=torch.float64)
    rank = _rank(sv, jac.shape, linear)
    free: list[dict[str, float]] = []
    consistent = None
    if linear:
        _, _, vh = torch.linalg.svd(jac, full_matrices=True)
        null = vh[rank:]  # (n - rank, n): orthonormal basis of the free directions
        if len(null):
            # Remove any drift along the null space: the point nearest the start (x0 = 0:
            # minimum norm). Residuals do not change.
            x = x - null.T @ (null @ (x - x0))
            best.residuals = system.residuals(x).detach()
        free = [_direction(unknowns, v) for v in null]
        consistent = _consistent(system, jac, tol)
    residuals = best.residuals.tolist()
    max_res = max(abs(r) for r in residuals) if residuals else 0.0
    solved = max_res <= tol
    solution = dict(zip(unknowns, (float(v) for v in x)))
    solutions = _distinct([r for r in runs if _max_abs(r) <= tol], unknowns)
    if solved and not any(_same(list(solution.values()), list(s.values())) for s in solutions):
        solutions.insert(0, solution)
    status, note, hint = _describe(
        linear=linear,
        consistent=consistent,
        solved=solved,
        run=best,
        rank=rank,
        n=n,
        from_zero=bool((x0 == 0).all()),
        moved=moved,
        starts=len(runs) if not linear else starts,
        found=len(solutions),
        max_iter=max_iter,
        optimizer=optimizer,
    )
    return SolveResult(
        unknowns=unknowns,
        equations=[eq.text for eq in parsed],
        solution=solution,
        residuals=residuals,
        max_abs_residual=max_res,
        converged=best.converged,
        iterations=best.iterations,
        linear=linear,
        rank=rank,
        unique=rank == n,
        status=status,
        note=note,
        hint=hint,
        free_directions=free,
        solutions=solutions,
        starts=starts,
        tol=tol,
        seconds=time.perf_counter() - t0,
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
        raise EquationError("no equations given", hint="e.g. gradfit solve-equations 'x + y = 3' 'x - y = 1'")
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


def _initial_vector(unknowns: list[str], initial: Mapping[str, float]) -> "torch.Tensor":
    """Starting values by unknown; NaN where none is given."""
    import torch

    values = [math.nan] * len(unknowns)
    for name, value in initial.items():
        if name not in unknowns:
            raise EquationError(
                f"initial value for '{name}', which is not an unknown of the equations",
                hint=_closest(name, unknowns) or f"the unknowns are {', '.join(unknowns)}",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EquationError(f"the initial value of '{name}' must be a finite number, not {value!r}")
        values[unknowns.index(name)] = float(value)
    return torch.tensor(values, dtype=torch.float64)


def _finite_start(system, x0, given, draw, parsed, labels):
    """A start where the loss and its gradient are finite: x0, or fresh draws (given values kept).

    Returns the start and whether it differs from x0.
    """
    import torch

    x = x0
    for attempt in range(_DOMAIN_RETRIES + 1):
        loss, grad, _ = system.value_and_grad(x)
        if _finite(loss, grad):
            return x, attempt > 0
        x = torch.where(given, x0, draw())
    # Name the equations that fail at the first start.
    loss, grad, res = system.value_and_grad(x0)
    bad = [i for i, r in enumerate(res.tolist()) if not math.isfinite(r)] or list(range(len(parsed)))
    where = ", ".join(
        f"{labels[i] if labels is not None else f'equation {i + 1}'} ({parsed[i].text})" for i in bad[:3]
    )
    raise SolveError(
        f"no starting point gives finite values: {where} is not finite (or has no gradient) "
        f"at the start and at {_DOMAIN_RETRIES} random ones",
        hint="check for division by zero, or give starting values inside the domain "
        "(log and sqrt need positive arguments), e.g. --initial x=1",
    )


def _max_abs(run: _Run) -> float:
    return float(run.residuals.abs().max()) if run.residuals.numel() else 0.0


def _pick(runs: list[_Run], tol: float) -> _Run:
    """The first run that solves the system (the configured start comes first), else the lowest loss."""
    for r in runs:
        if _max_abs(r) <= tol:
            return r
    return min(runs, key=lambda r: r.loss)


def _same(a: list[float], b: list[float]) -> bool:
    scale = max([1.0] + [abs(v) for v in a])
    return max(abs(p - q) for p, q in zip(a, b)) <= 1e-6 * scale


def _distinct(runs: list[_Run], unknowns: list[str]) -> list[dict[str, float]]:
    points: list[list[float]] = []
    for r in runs:
        p = r.x.tolist()
        if not any(_same(p, q) for q in points):
            points.append(p)
    return [dict(zip(unknowns, p)) for p in points]


def _rank(sv: "torch.Tensor", shape, linear: bool) -> int:
    """Singular values above a relative tolerance: rounding level for a linear system's exact
    Jacobian; 1e-8 of max(sigma_max, 1) at an approximate nonlinear solution."""
    if not len(sv) or float(sv[0]) == 0.0:
        return 0
    top = float(sv[0])
    cutoff = max(shape) * 2.2e-16 * top if linear else 1e-8 * max(top, 1.0)
    return int((sv > cutoff).sum())


def _direction(unknowns: list[str], v: "torch.Tensor") -> dict[str, float]:
    """A unit null-space vector, its largest component made positive, rounding noise cleared."""
    values = v.tolist()
    if values[max(range(len(values)), key=lambda i: (abs(values[i]) > 1e-9, -i))] < 0:
        values = [-a for a in values]
    return {name: (round(a, 12) if abs(a) > 1e-12 else 0.0) for name, a in zip(unknowns, values)}


def _consistent(system: _System, jac: "torch.Tensor", tol: float) -> bool:
    """Closed-form check for a linear system: does the least-squares point satisfy every equation?"""
    import torch

    n = jac.shape[1]
    b = -system.residuals(torch.zeros(n, dtype=torch.float64)).detach()  # J x - b = residuals
    point = torch.linalg.pinv(jac) @ b
    return float(system.residuals(point).abs().max()) <= tol


def _count(k: int, noun: str) -> str:
    word = _NUMBER_WORDS[k] if k < len(_NUMBER_WORDS) else str(k)
    return f"{word} {noun}" + ("" if k == 1 else "s")


def _describe(*, linear, consistent, solved, run, rank, n, from_zero, moved, starts, found, max_iter, optimizer):
    """status, note and hint for the result."""
    free = n - rank
    nearest = "the minimum-norm" if from_zero else "the one nearest the starting point"
    moved_note = "; the first start gave non-finite values, so another was drawn" if moved else ""
    if linear and consistent is False:
        tail = f" ({_count(free, 'free direction')}; {nearest} point)" if free else ""
        note = f"inconsistent: no point satisfies every equation; this is the least-squares point{tail}"
        return "inconsistent", note, "check the equations: some of them contradict each other"
    if not solved:
        if run.stopped == "max_iter" or not run.converged:
            note = (
                f"not converged: the equations do not hold within the tolerance after "
                f"{run.iterations} iterations ({run.stopped}){moved_note}"
            )
            hint = f"try --max-iter {max_iter * 10}" if run.stopped == "max_iter" else "try another start"
            if optimizer != "lbfgs":
                hint += " or --optimizer lbfgs"
            return "not_converged", note, hint
        note = (
            "no solution found: the squared error stopped decreasing where the equations do not "
            "hold (a local minimum, or the system has no real solution)"
            + (f"; {starts} starts tried" if starts > 1 else "")
        )
        return "no_solution_found", note, "try --starts 20, or other starting values (--initial NAME=VALUE)"
    if linear:
        if free:
            note = f"underdetermined: {_count(free, 'free direction')}; this is {nearest} solution"
        else:
            note = "linear; the solution is unique"
    elif rank == n:
        note = "nonlinear; the Jacobian has full rank here, so this solution is locally unique"
    else:
        note = (
            f"nonlinear; the Jacobian has rank {rank} of {n} here, so the solution may not be "
            "isolated"
        )
    if not linear:
        if starts > 1:
            note += f"; {_count(found, 'distinct solution')} found in {starts} starts"
        else:
            note += "; other solutions may exist (try --starts 10)"
    return "solved", note + moved_note, None
