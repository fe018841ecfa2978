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
        st["mu"].fill_(mu)
        st["nu"].fill_(nu)
        if accepted:
            self._write(theta)
            theta = self._theta()  # as stored (the run's dtype)
            what = f"after iteration {self.iterations}"
            r, J = dist.agree(lambda: self._evaluate(residuals, theta, head, what))
            g = total(J.T @ r)
        self._cache = (theta, r, J, g)
        return float(g.abs().max())


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


def _lstsq(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min ||A x - b|| by Householder QR (A has full column rank: its damping rows see to it)."""
    Q, R = torch.linalg.qr(A)
    return torch.linalg.solve_triangular(R, (Q.T @ b)[:, None], upper=True).reshape(-1)
