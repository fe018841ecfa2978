"""Levenberg-Marquardt for nonlinear least squares, its Jacobian from autograd.

Minimizes 0.5 * ||r(theta)||^2 with r = head(Z) - y. Each iteration (one training
"epoch") computes the Jacobian J = dr/dtheta by reverse mode applied twice
(``jacobian`` below: one backward pass per parameter, memory n x p, instead of one
per row), then tries damped Gauss-Newton steps

    minimize ||J delta + r||^2 + mu * ||D delta||^2

solved as a least-squares problem by QR (never the normal equations, which square
the condition number), with D^2 the largest diag(J^T J) seen so far (Marquardt's
scaling, as in MINPACK: invariant to the parameters' units). A step is accepted
when it lowers the sum of squares; the damping follows Nielsen's rule
(mu *= max(1/3, 1 - (2 rho - 1)^3) on success, mu *= nu, nu *= 2 on failure),
rho being the actual over the predicted decrease. Everything is float64
whatever the run's dtype; the result is written back in the parameters' dtype.

The state (mu, nu, D) lives in the optimizer's ``state_dict``, so runs resume.

When to stop is LM's own test, as MINPACK's lmder has it, not ``train.tol`` (a loss tolerance
meant for SGD stopped Thurber at 5 digits): after each iteration ``finished`` is None (go on),
or says why to stop. Converged when (relative to the point, so the units do not matter)
- the scaled step is small: ||D delta|| <= XTOL ||D theta||, or both the actual and the predicted
  relative decrease of the sum of squares are <= FTOL; either with the gradient cosine (below)
  under ROUNDING_GTOL (far from stationarity a tiny step is a crawl, not a minimum);
- or the gradient is orthogonal to the residuals: max_i |J_i . r| / (||J_i|| ||r||) <= GTOL
  (also a zero residual);
- or no damped step lowers the sum of squares any more while the gradient cosine is below
  ROUNDING_GTOL: the minimum at float64's resolution.
Stuck (``finished`` starts with "stuck"): no step lowers the sum of squares far from a minimum,
parameters running off to infinity (|theta| > RUNAWAY), or STALL_ITERATIONS iterations in a row
each lowering the sum of squares by less than STALL_DECREASE (relative) with the gradient test
far from holding.

Several processes (torchrun, ``dist``): each rank holds some of the rows. The sum of
squares, J^T r and diag(J^T J) are summed over the ranks; the least-squares problem is
reduced to a small one without forming J^T J, by the "tall-skinny QR": each rank
factors its rows J_k = Q_k R_k and sends R_k (p x p) and c_k = Q_k^T r_k; then
sum_k ||J_k delta + r_k||^2 = ||[R_1; ...; R_W] delta + [c_1; ...; c_W]||^2 + const,
so the damped step solved from the stacked R's is the one-process step up to rounding.
Rank 0's step is sent to every rank, which then all hold the same parameters.
"""

from __future__ import annotations

import math

import torch

from gradfit.errors import TrainingError
from gradfit.optim.first_order import OptimizerBase
from gradfit.parallel import SINGLE, Dist

MU_START = 1e-3  # initial damping, relative to D^2
MAX_TRIALS = 60  # damped steps tried per iteration before giving up on it
MU_MAX = 1e40
XTOL = 1e-12  # relative scaled step (MINPACK's default, sqrt(eps) = 1.5e-8, leaves 6-7 digits on Thurber)
FTOL = 1e-15  # relative actual and predicted decrease of the sum of squares
GTOL = 1e-12  # cosine of the angle between the residuals and every column of J
POLISH_MAX = 20  # polishing steps at most
POLISH_MU = 1e-12  # the damping of the polishing Gauss-Newton step (relative to D^2)
ROUNDING_GTOL = 1e-6  # no decrease possible and the cosine under this: the minimum, at float64's resolution
RUNAWAY = 1e150  # a parameter beyond this is running off to infinity
STALL_ITERATIONS = 200  # iterations in a row with almost no decrease ...
STALL_DECREASE = 1e-6  # ... (relative), the gradient test far from holding: stuck


def jacobian(f, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(theta) (n,), J = df/dtheta (n, p)) for theta (p,), by reverse mode applied twice.

    g(u) = d/dtheta sum_k u_k f_k(theta) = J^T u is linear in u, so column i of J is
    d g_i / du: one forward pass, one backward pass and one more per parameter. Not
    ``torch.func.jacfwd`` nor ``torch.autograd.forward_ad``: the first time a dual tensor
    meets a plain tensor or a number (the data, any constant), torch runs a Python
    decomposition that imports torch._dynamo (measured: 1.5 s, more than the fit).
    Nor ``autograd.grad`` with a ``grad_outputs`` tensor, which imports sympy (0.6 s):
    every gradient here is of a scalar.
    """
    th = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        out = f(th)
        u = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad((out * u).sum(), th, create_graph=True, allow_unused=True)  # J^T u, (p,)
        cols = []
        for i in range(th.numel()):
            c = None
            if g is not None and g.requires_grad:
                (c,) = torch.autograd.grad(g[i], u, retain_graph=i + 1 < th.numel(), allow_unused=True)
            cols.append(torch.zeros_like(out) if c is None else c)
    J = torch.stack(cols, 1) if cols else out.new_zeros((out.numel(), 0))
    return out.detach(), J.detach()


class LevenbergMarquardt(OptimizerBase):
    """LM on the residuals of a head; call ``iterate(head, Z, y)`` once per epoch (not ``step``).

    Not a ``torch.optim.Optimizer``, whose constructor imports torch._dynamo (over a second);
    the same ``param_groups``, ``state`` and ``state_dict`` layout (optim.first_order.OptimizerBase).
    """

    def __init__(self, params, mu: float = MU_START):
        super().__init__(params, {"mu_start": mu})
        self._cache = None  # (theta, r, J, J^T r over all rows) at the current point, for the next iteration
        self.iterations = 0
        self.finished = None  # None: go on; else why to stop ("converged: ..." or "stuck: ...")
        self._slow = 0  # consecutive iterations with almost no decrease
        self._polishes = 0  # Gauss-Newton polishing steps taken (see _polish)

    def step(self, closure=None):  # pragma: no cover - the loop calls iterate()
        raise RuntimeError("LevenbergMarquardt works on residuals: call iterate(head, Z, y)")

    # ------------------------------------------------------------ helpers

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _residual_fn(self, head, Z, y):
        names = {id(p): n for n, p in head.named_parameters()}
        params = self._params()
        keys = [names[id(p)] for p in params]
        shapes = [p.shape for p in params]
        sizes = [p.numel() for p in params]
        Z64, y64 = Z.to(torch.float64), y.to(torch.float64)

        def residuals(theta: torch.Tensor) -> torch.Tensor:
            parts = torch.split(theta, sizes)
            values = {k: t.reshape(s) for k, t, s in zip(keys, parts, shapes)}
            return torch.func.functional_call(head, values, (Z64,)) - y64

        return residuals

    def _theta(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in self._params()])

    def _write(self, theta: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in self._params():
                k = p.numel()
                p.copy_(theta[offset : offset + k].reshape(p.shape).to(p.dtype))
                offset += k

    def _state(self) -> dict:
        first = self._params()[0]
        st = self.state.setdefault(first, {})
        if "mu" not in st:
            st["mu"] = torch.tensor(self.defaults["mu_start"], dtype=torch.float64)
            st["nu"] = torch.tensor(2.0, dtype=torch.float64)
            theta = self._theta()
            st["diag"] = torch.zeros(theta.numel(), dtype=torch.float64, device=theta.device)
        return st

    def _evaluate(self, residuals, theta, head, what: str):
        """(r, J) at theta; a non-finite Jacobian is an error that names the parameters."""
        r, J = jacobian(residuals, theta)  # (n,), (n, p)
        if not bool(torch.isfinite(J).all()):
            bad = (~torch.isfinite(J)).any(0).nonzero().reshape(-1).tolist()
            names = getattr(head, "parameters_names", None) or [f"parameter {i}" for i in range(theta.numel())]
            point = ", ".join(f"{n}={v:.6g}" for n, v in zip(names, theta.tolist()))
            raise TrainingError(
                f"the formula's derivative with respect to {', '.join(names[i] for i in bad)} is not finite "
                f"{what} ({point})",
                hint="start elsewhere (model.start), away from points where the formula has no derivative "
                "(sqrt or abs at 0, log at 0, a power of 0)",
            )
        return r, J

    # ------------------------------------------------------------ one iteration

    def _start(self, residuals, theta, head, where: str):
        """(r, J) at the start of an iteration; a formula not finite on some row is an error."""
        r = residuals(theta)
        if not bool(torch.isfinite(r).all()):
            raise TrainingError(
                f"the formula is not finite {where}",
                hint="give model.start values where the formula is finite on every row",
            )
        return self._evaluate(residuals, theta, head, where)

    def iterate(self, head, Z: torch.Tensor, y: torch.Tensor, dist: Dist = SINGLE) -> float:
        """One LM iteration: an accepted step when one lowers the sum of squares. Returns max |J^T r| after it.

        ``dist`` (parallel.Dist): Z and y are this rank's rows; every rank takes the same step, and
        an error on one rank is raised on every rank (SINGLE, one process: the identity).
        """
        total = dist.sum  # a sum over all rows

        residuals = self._residual_fn(head, Z, y)
        st = self._state()
        theta = self._theta()
        cache = self._cache
        if cache is not None and cache[0].shape == theta.shape and torch.equal(cache[0], theta):
            r, J, g = cache[1:]
        else:
            where = "at the start point" if self.iterations == 0 else f"at iteration {self.iterations}"
            r, J = dist.agree(lambda: self._start(residuals, theta, head, where))
            g = total(J.T @ r)  # (p,)
        self.iterations += 1
        F = 0.5 * total(float(r @ r))
        st["diag"] = torch.maximum(st["diag"], total((J * J).sum(0)))
        d2 = torch.where(st["diag"] > 0, st["diag"], torch.ones_like(st["diag"]))
        mu, nu = float(st["mu"]), float(st["nu"])
        p = theta.numel()
        zeros = torch.zeros(p, dtype=torch.float64, device=J.device)
        # min ||J delta + r||: on the rows themselves, or on every rank's R_k and Q_k^T r_k (see above)
        J_ls, r_ls = stacked_factors(J, r, dist)
        accepted = False
        actual = predicted = 0.0
        for _ in range(MAX_TRIALS):
            A = torch.cat([J_ls, torch.diag(torch.sqrt(mu * d2))])  # (n + p, p)
            b = torch.cat([-r_ls, zeros])
            delta = _lstsq(A, b)
            delta = dist.broadcast(delta)  # rank 0's step everywhere: the parameters stay the same on every rank
            if not bool(torch.isfinite(delta).all()):
                mu, nu = min(mu * nu, MU_MAX), nu * 2
                continue
            if float(delta.abs().max()) <= 4 * torch.finfo(torch.float64).eps * float(theta.abs().max() + 1e-300):
                break  # the step no longer changes theta: converged (or stuck) here
            trial = theta + delta
            r_new = residuals(trial)
            F_new = 0.5 * total(float(r_new @ r_new))
            predicted = 0.5 * float(delta @ (mu * d2 * delta - g))
            actual = F - F_new
            if math.isfinite(F_new) and actual > 0 and predicted > 0:
                rho = actual / predicted
                mu = mu * max(1 / 3, 1 - (2 * rho - 1) ** 3)
                nu = 2.0
                theta, accepted = trial, True
                break
            mu, nu = min(mu * nu, MU_MAX), nu * 2
            if mu >= MU_MAX:
                break
        step = delta if accepted else None
        polished = None
        if not accepted and self._polishes < POLISH_MAX and _cosine(J, r, g, total) <= ROUNDING_GTOL:
            self._polishes += 1
            polished = self._polish(residuals, theta, head, J_ls, r_ls, d2, F, _cosine(J, r, g, total), dist)
            if polished is not None:
                mu, nu = self.defaults["mu_start"], 2.0
        st["mu"].fill_(mu)
        st["nu"].fill_(nu)
        if polished is not None:
            theta, step, r, J, g = polished
            self._write(theta)
        elif accepted:
            self._write(theta)
            theta = self._theta()  # as stored (the run's dtype)
            what = f"after iteration {self.iterations}"
            r, J = dist.agree(lambda: self._evaluate(residuals, theta, head, what))
            g = total(J.T @ r)
        self._cache = (theta, r, J, g)
        F_end = 0.5 * total(float(r @ r))
        if polished is not None:  # (the sum of squares no longer resolves progress: the gradient does)
            self.finished = "converged: the gradient is orthogonal to the residuals" if _cosine(J, r, g, total) <= GTOL else None
        else:
            self.finished = self._verdict(theta, step, J, g, F, F_end, predicted, accepted, total)
        return float(g.abs().max())

    def _polish(self, residuals, theta, head, J_ls, r_ls, d2, F, cos, dist):
        """Near a minimum where no step lowers the sum of squares at float64's resolution (it varies by
        about eps there while the parameters still have digits to gain): a Gauss-Newton step, taken when
        the sum of squares stays within rounding and the gradient cosine falls by a tenth; at most POLISH_MAX. (theta, step, r, J, g) or None."""
        total = dist.sum
        A = torch.cat([J_ls, torch.diag(torch.sqrt(POLISH_MU * d2))])
        b = torch.cat([-r_ls, torch.zeros(theta.numel(), dtype=torch.float64, device=J_ls.device)])
        delta = dist.broadcast(_lstsq(A, b))
        if not bool(torch.isfinite(delta).all()):
            return None
        trial = theta + delta
        r_new = residuals(trial)
        F_new = 0.5 * total(float(r_new @ r_new))
        if not (math.isfinite(F_new) and F_new <= F * (1 + 64 * torch.finfo(torch.float64).eps)):
            return None
        what = f"after iteration {self.iterations}"
        r_new, J_new = dist.agree(lambda: self._evaluate(residuals, trial, head, what))
        g_new = total(J_new.T @ r_new)
        if not _cosine(J_new, r_new, g_new, total) < 0.9 * cos:
            return None
        return trial, delta, r_new, J_new, g_new

    def _verdict(self, theta, step, J, g, F, F_end, predicted, accepted, total):
        """Why to stop after this iteration (None: go on); see the module docstring."""
        cos = _cosine(J, None, g, total, F_end)
        if not bool(torch.isfinite(theta).all()) or float(theta.abs().max()) > RUNAWAY:
            return "stuck: the parameters run off to infinity"
        if cos <= GTOL:
            return "converged: the gradient is orthogonal to the residuals"
        if accepted:
            d = torch.sqrt(self._state()["diag"])
            # (a small step or decrease far from stationarity is a slow crawl, not a minimum: the stall count)
            near = cos <= ROUNDING_GTOL
            if near and float((d * step).norm()) <= XTOL * float((d * theta).norm()):
                return "converged: the relative step is below 1e-12"
            if near and F > 0 and (F - F_end) <= FTOL * F and predicted <= FTOL * F:
                return "converged: the relative decrease of the sum of squares is below 1e-15"
            self._slow = self._slow + 1 if F - F_end <= STALL_DECREASE * F and cos > ROUNDING_GTOL else 0
            if self._slow >= STALL_ITERATIONS:
                return (f"stuck: {STALL_ITERATIONS} iterations in a row lowered the sum of squares by less than "
                        f"{STALL_DECREASE:g} (relative) each, the gradient still far from zero")
            return None
        if cos <= ROUNDING_GTOL:
            return "converged: no step lowers the sum of squares at float64's resolution"
        return "stuck: no damped step lowers the sum of squares, far from a minimum"


def stacked_factors(J: torch.Tensor, r: torch.Tensor, dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (R_k, Q_k^T r_k) of its rows J_k = Q_k R_k, stacked in rank order: (W p, p), (W p,).

    ||J delta + r||^2 over all rows equals ||R delta + c||^2 over the stack plus a constant (the
    part of r outside J's columns), so the same least-squares step comes from p rows per rank.
    A rank with fewer rows than parameters sends its R padded with zero rows. One process: (J, r)
    themselves, the same least-squares problem.
    """
    if not dist.enabled:
        return J, r
    p = J.shape[1]
    Q, R = torch.linalg.qr(J)  # reduced: Q (n_k, k), R (k, p), k = min(n_k, p)
    Rk = J.new_zeros((p, p))
    ck = J.new_zeros(p)
    Rk[: R.shape[0]] = R
    ck[: R.shape[0]] = Q.T @ r
    parts = dist.gather((Rk.cpu(), ck.cpu()))
    return (torch.cat([a for a, _ in parts]).to(J.device), torch.cat([c for _, c in parts]).to(J.device))


def _cosine(J, r, g, total, F=None) -> float:
    """max_i |J_i . r| / (||J_i|| ||r||): 0 at a stationary point, whatever the units (``F``: 0.5 ||r||^2 if known)."""
    if g.numel() == 0:
        return 0.0
    rnorm = math.sqrt(2 * F) if F is not None else math.sqrt(total(float(r @ r)))
    if rnorm == 0:
        return 0.0
    col = torch.sqrt(total((J * J).sum(0)))  # (p,)
    return float((g.abs() / (col * rnorm).clamp_min(1e-300)).max())


def _lstsq(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min ||A x - b|| by Householder QR (A has full column rank: its damping rows see to it)."""
    Q, R = torch.linalg.qr(A)
    return torch.linalg.solve_triangular(R, (Q.T @ b)[:, None], upper=True).reshape(-1)
