"""The solver's runs: gradfit's optimizers (optim/) on the unknowns, inside the solver's stopping rule.

Each run drives one optimizer of ``gradfit.optim`` (L-BFGS, Adam, gradient descent) on a
float64 parameter tensor of the unknowns, one iteration per call, with the closure
``Objective`` (the loss sum(r**2), gradient by ``backward()``). Around it the solver keeps
its own rules: stop at residuals far below the tolerance, at a vanishing gradient, or when
the loss stalls; a first-order step that fails (non-finite, or uphill for gradient
descent) is taken again with half the learning rate.

The optimizers are gradfit's own, not ``torch.optim``'s: ``torch.optim`` imports
``torch._dynamo`` on first use, which costs over a second, more than a whole solve.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gradfit.equations.system import EPS, Objective, Run, System, finite

if TYPE_CHECKING:  # pragma: no cover
    import torch

_HALVINGS = 60  # step halvings per first-order iteration before giving up
_PATIENCE = 50  # adam: iterations without improvement before the lr is halved
_STALL = 10  # L-BFGS iterations without improvement of the loss before a run stops
_LINE_SEARCH = 25  # L-BFGS: evaluations per line search
_EVALS = 4 * _LINE_SEARCH  # L-BFGS: evaluations per iteration (line search, retries)


class Stopping:
    """The stopping rule shared by the optimizers.

    Stop when the residuals are far below the tolerance (polish past it: the
    point's digits matter, e.g. for the minimum-norm solution), when the gradient
    vanishes (a least-squares point), or when the loss has not improved for
    ``stall`` iterations (rounding noise). ``converged`` is false only at the
    iteration cap or when stalled while the gradient is still large.
    """

    def __init__(self, tol: float, grad0: float, stall: int):
        self.stall = stall
        self.target = tol * 1e-6
        self.gtol = 1e-14 * max(1.0, grad0)
        self.best = math.inf
        self.since_best = 0

    def reached(self, loss: float, grad: float, residuals: torch.Tensor) -> str | None:
        """Why to stop here (``grad``: the largest |gradient| component), or None."""
        if float(residuals.abs().max()) <= self.target:
            return "residuals"
        if grad <= self.gtol:
            return "stationary"
        if loss < self.best * (1 - 1e-12):
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
            if self.since_best >= self.stall:
                return "stalled"
        return None

    def run(self, x, loss: float, residuals, grad: float, iterations: int, reason: str | None) -> Run:
        converged = reason in ("residuals", "stationary") or (reason == "stalled" and grad <= self.gtol * 1e8)
        return Run(x, loss, residuals, iterations, converged, reason or "max_iter")


def _parameter(x0: torch.Tensor) -> torch.Tensor:
    return x0.detach().clone().requires_grad_(True)


def _grad_max(x: torch.Tensor) -> float:
    return float(x.grad.abs().max()) if x.grad.numel() else 0.0


def run_lbfgs(system: System, x0: torch.Tensor, lr: float, max_iter: int, tol: float, memory: int = 10) -> Run:
    """gradfit's L-BFGS (optim.lbfgs), one iteration per step, from x0."""
    import torch  # (imported here for start-up time)

    from gradfit.optim.lbfgs import LBFGS  # here, not at the top: torch, once a solve starts

    x = _parameter(x0)
    objective = Objective(system, x)
    loss = float(objective())
    grad, res = _grad_max(x), objective.residuals
    optimizer = LBFGS([x], lr=lr, max_iter=1, max_eval=_EVALS, history_size=memory, max_ls=_LINE_SEARCH)
    stop = Stopping(tol, grad, _STALL)
    for it in range(max_iter):
        reason = stop.reached(loss, grad, res)
        if reason:
            return stop.run(x.detach().clone(), loss, res, grad, it, reason)
        before = x.detach().clone()
        optimizer.step(objective)
        after = x.detach().clone()
        if optimizer.state[x]["stalled"] or torch.equal(before, after):  # no decrease possible along the direction
            return stop.run(before, loss, res, grad, it, "stalled")
        (loss, grad), res = optimizer.last, objective.residuals_here()
        if float((after - before).abs().max()) <= 4 * EPS * max(1.0, float(before.abs().max())):
            return stop.run(after, loss, res, grad, it + 1, "stalled")  # rounding level
    return stop.run(x.detach().clone(), loss, res, grad, max_iter, stop.reached(loss, grad, res))


def run_first_order(system: System, x0: torch.Tensor, lr: float | None, max_iter: int, tol: float, *, adam: bool) -> Run:
    """gradfit's Adam or gradient descent (optim.first_order) from x0. A step that fails (non-finite,
    or uphill for gradient descent) is taken again with half the learning rate; Adam also halves it
    on a plateau."""
    import torch  # (imported here for start-up time)

    from gradfit.optim.first_order import SGD, Adam  # here, not at the top: torch, once a solve starts

    x = _parameter(x0)
    objective = Objective(system, x)
    loss = float(objective())
    stop = Stopping(tol, _grad_max(x), 10 * _PATIENCE)  # Adam gets plateaus to lower its lr
    if lr is None:  # gradient descent: 1/L with L = 2 * sigma_max(J)^2 at the start
        sigma = float(torch.linalg.matrix_norm(system.jacobian(x0), ord=2))
        lr = 0.5 / sigma**2 if sigma > 0 else 1.0
    optimizer = Adam([x], lr=lr, eps=1e-12) if adam else SGD([x], lr=lr)
    best, since_best = loss, 0
    for it in range(max_iter):
        res = objective.residuals
        reason = stop.reached(loss, _grad_max(x), res)
        if reason:
            return stop.run(x.detach().clone(), loss, res, _grad_max(x), it, reason)
        new = _first_order_step(optimizer, objective, loss, uphill=adam)
        if new is None:
            return stop.run(x.detach().clone(), loss, res, _grad_max(x), it, "stalled")
        loss = new
        if adam:  # oscillating around the minimum: smaller steps
            if loss < best * (1 - 1e-9):
                best, since_best = loss, 0
            else:
                since_best += 1
                if since_best >= _PATIENCE:
                    optimizer.param_groups[0]["lr"] *= 0.5
                    since_best = 0
    res, grad = objective.residuals, _grad_max(x)
    return stop.run(x.detach().clone(), loss, res, grad, max_iter, stop.reached(loss, grad, res))


def _first_order_step(optimizer, objective: Objective, loss: float, *, uphill: bool) -> float | None:
    """One step from the parameter's value, its gradient in ``.grad``: the loss after it, or None
    (parameter, gradient and optimizer state as before) when no halving of the lr gives a finite
    point (that is not uphill, unless ``uphill``)."""
    import torch  # (imported here for start-up time)

    x = objective.x
    start, grad, residuals = x.detach().clone(), x.grad.clone(), objective.residuals
    saved = _copy_state(optimizer.state_dict())
    for _ in range(_HALVINGS):
        optimizer.step()
        new = float(objective())
        if finite(new, x.grad) and (uphill or new <= loss):
            return new
        lr = optimizer.param_groups[0]["lr"] * 0.5
        with torch.no_grad():
            x.copy_(start)
        x.grad = grad.clone()
        optimizer.load_state_dict(saved)  # the moments as before the step (load copies them)
        optimizer.param_groups[0]["lr"] = lr
    objective.at, objective.residuals = start, residuals
    return None


def _copy_state(state_dict: dict) -> dict:
    """The optimizer's state_dict with its tensors copied (a step updates them in place)."""
    state = {i: {k: (v.clone() if hasattr(v, "clone") else v) for k, v in s.items()} for i, s in state_dict["state"].items()}
    return {"state": state, "param_groups": [dict(g) for g in state_dict["param_groups"]]}
