"""Levenberg-Marquardt for nonlinear least squares, its Jacobian from autograd.

Minimizes 0.5 * ||r(theta)||^2 with r = head(Z) - y. Each iteration (one training
"epoch") computes the Jacobian J = dr/dtheta by reverse mode applied twice
(``jacobian`` below: one backward pass per parameter, memory n x p, instead of one
per row), then tries damped Gauss-Newton steps

    minimize ||J delta + r||^2 + mu * ||D delta||^2

with D^2 the largest diag(J^T J) seen so far (Marquardt's scaling, as in MINPACK: invariant to
the parameters' units), as a trust region, MINPACK's lmder: the step's scaled length ||D delta||
is at most the radius, which starts at ||D theta_0|| (MINPACK's factor 1, not its default 100,
whose first step sends BoxBOD from NIST's start 1 onto a plateau) and follows lmder's update on
rho, the actual over the predicted decrease (shrunk below 0.25, doubled above 0.75); mu is 0
(Gauss-Newton) when that step fits, else the mu that fits the radius (lmpar), found on the SVD of
J D^-1 (backward stable, as QR; never the normal equations). A step is taken when rho >= 1e-4.
Everything is float64 whatever the run's dtype; the result is written back in the parameters' dtype.
The state (radius, mu, D) lives in the optimizer's ``state_dict``, so runs resume.

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
Near the minimum the sum of squares no longer resolves progress (it moves by rounding while the
parameters still have digits to gain), so before the first and third of these are taken, Newton
"polishing" steps (the exact Hessian, ``_newton_step``) go on while the gradient cosine falls and
the sum of squares stays within its rounding (``_rounding``), at most POLISH_MAX.
Stuck (``finished`` starts with "stuck"): no step lowers the sum of squares far from a minimum,
parameters running off to infinity (|theta| > RUNAWAY), STALL_ITERATIONS iterations in a row
each lowering the sum of squares by less than STALL_DECREASE (relative) with the gradient test
far from holding, or a "minimum" where a parameter has no effect on any prediction (a plateau).

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
from typing import Optional

import torch

from gradfit.errors import TrainingError
from gradfit.optim.first_order import OptimizerBase
from gradfit.parallel import SINGLE, Dist

RADIUS_FACTOR = 1.0  # the initial trust radius, times ||D theta|| (MINPACK's factor; its 100 sends BoxBOD onto a plateau)
MAX_TRIALS = 60  # damped steps tried per iteration before giving up on it
ACCEPT = 1e-4  # a step is taken when it achieves this share of the predicted decrease (MINPACK's)
LMPAR_ITERATIONS = 60  # at most, to find the damping that fits the trust radius
XTOL = 1e-12  # relative scaled step (MINPACK's default, sqrt(eps) = 1.5e-8, leaves 6-7 digits on Thurber)
FTOL = 1e-15  # relative actual and predicted decrease of the sum of squares
GTOL = 1e-12  # cosine of the angle between the residuals and every column of J
POLISH_MAX = 20  # polishing steps at most
ROUNDING_ULPS = 64.0  # a polishing step may raise the sum of squares by this many times its rounding (_rounding)
ROUNDING_GTOL = 1e-6  # no decrease possible and the cosine under this: the minimum, at float64's resolution
RUNAWAY = 1e150  # a parameter beyond this is running off to infinity
STALL_ITERATIONS = 200  # iterations in a row with almost no decrease ...
STALL_DECREASE = 1e-6  # ... (relative), the gradient test far from holding: stuck
NO_EFFECT = 1e-10  # a parameter moving the predictions by less than this share of their size: a plateau (results.identify's)


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
        cols = _each_derivative(g, th.numel(), u, out)
    J = torch.stack(cols, 1) if cols else out.new_zeros((out.numel(), 0))
    return out.detach(), J.detach()


class LevenbergMarquardt(OptimizerBase):
    """LM on the residuals of a head; call ``iterate(head, Z, y)`` once per epoch (not ``step``).

    Not a ``torch.optim.Optimizer``, whose constructor imports torch._dynamo (over a second);
    the same ``param_groups``, ``state`` and ``state_dict`` layout (optim.first_order.OptimizerBase).
    """

    def __init__(self, params, factor: float = RADIUS_FACTOR):
        super().__init__(params, {"factor": factor})
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

    def _residual_fn(self, head, Z, y, w=None):
        """theta -> r(theta) = head(Z) - y, times sqrt(w) with row weights w (n,) (data.weights: weighted
        least squares, as scipy's ``curve_fit(sigma=1/sqrt(w))`` weighs the residuals)."""
        names = {id(p): n for n, p in head.named_parameters()}
        params = self._params()
        keys = [names[id(p)] for p in params]
        shapes = [p.shape for p in params]
        sizes = [p.numel() for p in params]
        Z64, y64 = Z.to(torch.float64), y.to(torch.float64)
        root = None if w is None else w.to(torch.float64).sqrt()  # (n,)

        def residuals(theta: torch.Tensor) -> torch.Tensor:
            parts = torch.split(theta, sizes)
            values = {k: t.reshape(s) for k, t, s in zip(keys, parts, shapes)}
            r = torch.func.functional_call(head, values, (Z64,)) - y64
            return r if root is None else r * root

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
        if "radius" not in st:  # (0: set from the start point at the first iteration)
            st["radius"] = torch.tensor(0.0, dtype=torch.float64)
            st["mu"] = torch.tensor(0.0, dtype=torch.float64)
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

    def iterate(self, head, Z: torch.Tensor, y: torch.Tensor, dist: Dist = SINGLE, w=None) -> float:
        """One LM iteration: an accepted step when one lowers the sum of squares. Returns max |J^T r| after it.

        ``dist`` (parallel.Dist): Z and y are this rank's rows; every rank takes the same step, and
        an error on one rank is raised on every rank (SINGLE, one process: the identity). ``w``: row weights (_residual_fn).
        """
        total = dist.sum  # a sum over all rows

        residuals = self._residual_fn(head, Z, y, w)
        y = y.reshape(-1).to(torch.float64) * (1.0 if w is None else w.reshape(-1).to(torch.float64).sqrt())  # r + y: predictions (weighted alike)
        st = self._state()
        theta = self._theta()
        cache = self._cache
        if cache is not None and cache[0].shape == theta.shape and torch.equal(cache[0], theta):
            r, J, g = cache[1:]
        else:
            where = "at the start point" if self.iterations == 0 else f"at iteration {self.iterations}"
            r, J = dist.agree(lambda: self._start(residuals, theta, head, where))
            g = total(J.T @ r)  # (p,)
        first = self.iterations == 0 or float(st["radius"]) <= 0
        self.iterations += 1
        F = 0.5 * total(float(r @ r))
        st["diag"] = torch.maximum(st["diag"], total((J * J).sum(0)))
        d = torch.sqrt(torch.where(st["diag"] > 0, st["diag"], torch.ones_like(st["diag"])))
        if first:  # MINPACK's initial step bound, factor * ||D theta|| (factor when that is 0)
            st["radius"].fill_(self.defaults["factor"] * (float((d * theta).norm()) or 1.0))
        radius, mu = float(st["radius"]), 0.0
        # min ||J delta + r||: on the rows themselves, or on every rank's R_k and Q_k^T r_k (see above)
        J_ls, r_ls = stacked_factors(J, r, dist)
        theta, delta, accepted, radius, mu, predicted = _trials(
            residuals, theta, g, F, d, _scaled_svd(J_ls, r_ls, d), radius, first, dist)
        step = delta if accepted else None
        polished = None
        if not accepted and self._polishes < POLISH_MAX and _cosine(J, r, g, total) <= ROUNDING_GTOL:
            self._polishes += 1
            polished = self._polish(residuals, theta, head, r, J_ls, r_ls, d, F + _rounding(r, y, total),
                                    _cosine(J, r, g, total), dist)
            if polished is not None:
                radius = max(radius, float((d * polished[1]).norm()))
        st["radius"].fill_(radius)
        st["mu"].fill_(mu)
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
            if self.finished is not None and self.finished.startswith("converged: the relative"):
                g = self._endgame(residuals, head, theta, r, J, g, y, d, dist)
        if self.finished is not None and self.finished.startswith("converged"):
            theta, r, J, g = self._cache
            self.finished = _plateau(head, theta, r, J, y, total) or self.finished
        return float(g.abs().max())

    def _endgame(self, residuals, head, theta, r, J, g, y, d, dist) -> torch.Tensor:
        """The step or the decrease has become small, the gradient cosine not yet under GTOL: Newton
        polishing steps (``_polish``) while they bring it down; converged where they stop. Returns J^T r."""
        total = dist.sum
        F = 0.5 * total(float(r @ r))
        while self._polishes < POLISH_MAX:
            cos = _cosine(J, r, g, total, F)
            if cos <= GTOL:
                break
            self._polishes += 1
            J_ls, r_ls = stacked_factors(J, r, dist)
            polished = self._polish(residuals, theta, head, r, J_ls, r_ls, d, F + _rounding(r, y, total), cos, dist)
            if polished is None:
                break
            theta, _, r, J, g = polished
            self._write(theta)
            self._cache = (theta, r, J, g)
            F = 0.5 * total(float(r @ r))
        if _cosine(J, r, g, total, F) <= GTOL:
            self.finished = "converged: the gradient is orthogonal to the residuals"
        return g

    def _polish(self, residuals, theta, head, r, J_ls, r_ls, d, F_max, cos, dist):
        """Near a minimum where no step lowers the sum of squares at float64's resolution (it moves by
        rounding there while the parameters still have digits to gain): a Newton step (``_newton_step``),
        taken when the sum of squares stays under F_max (F plus its rounding) and the gradient cosine
        falls by a tenth. (theta, step, r, J, g) or None."""
        total = dist.sum
        delta = dist.broadcast(_newton_step(residuals, theta, r, J_ls, r_ls, d, dist))
        if not bool(torch.isfinite(delta).all()):
            return None
        trial = theta + delta
        r_new = residuals(trial)
        F_new = 0.5 * total(float(r_new @ r_new))
        if not (math.isfinite(F_new) and F_new <= F_max):
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


def _trials(residuals, theta, g, F, d, svd, radius, first, dist):
    """Trial steps in the trust region until one is taken (rho >= ACCEPT), the step no longer changes
    theta, or the radius has shrunk to rounding; MAX_TRIALS at most. The first iteration's radius is
    cut to its Gauss-Newton step's length, as lmder does. (theta, delta, accepted, radius, mu, predicted)."""
    eps = torch.finfo(torch.float64).eps
    delta, mu, predicted = torch.zeros_like(theta), 0.0, 0.0
    for _ in range(MAX_TRIALS):
        z, mu = _trust_step(*svd, radius)
        both = dist.broadcast(torch.cat([z, z.new_tensor([mu])]))  # rank 0's step everywhere
        z, mu = both[:-1], float(both[-1])
        delta, pnorm = z / d, float(z.norm())
        if first:
            radius, first = min(radius, pnorm), False
        if not bool(torch.isfinite(delta).all()) or float(delta.abs().max()) <= 4 * eps * float(theta.abs().max() + 1e-300):
            break  # the step no longer changes theta: converged (or stuck) here
        trial = theta + delta
        r_new = residuals(trial)
        F_new = 0.5 * dist.sum(float(r_new @ r_new))
        predicted = 0.5 * float(delta @ (mu * d * d * delta - g))
        actual = F - F_new if math.isfinite(F_new) else -math.inf
        radius = _new_radius(radius, pnorm, mu, F, F_new, actual, predicted, g, delta)
        if predicted > 0 and actual > 0 and actual >= ACCEPT * predicted:
            return trial, delta, True, radius, mu, predicted
        if radius <= 4 * eps * float((d * theta).norm()):
            break  # the trust region has shrunk to rounding: no step lowers the sum of squares
    return theta, delta, False, radius, mu, predicted


def _scaled_svd(J: torch.Tensor, r: torch.Tensor, d: torch.Tensor):
    """(s, V, s * U^T r) of the scaled Jacobian J D^-1 = U diag(s) V^T: the damped step for any mu
    from one factorization (backward stable, as QR is); singular values at rounding level count as 0."""
    U, s, Vh = torch.linalg.svd(J / d, full_matrices=False)
    c = U.T @ r
    keep = s > torch.finfo(torch.float64).eps * max(J.shape) * (float(s[0]) if s.numel() else 0.0)
    s = torch.where(keep, s, torch.zeros_like(s))
    return s, Vh.T, s * c


def _trust_step(s: torch.Tensor, V: torch.Tensor, sc: torch.Tensor, radius: float) -> tuple[torch.Tensor, float]:
    """(z, mu): the scaled step z = D delta minimizing ||J delta + r||^2 + mu ||D delta||^2, with mu = 0
    (Gauss-Newton) when that step is within 1.1 radius, else the mu that puts ||z|| within 10% of the
    radius (MINPACK's lmpar, solved on the singular values: Newton on 1/||z||, safeguarded by bisection)."""
    pos = s > 0
    s2, w = (s * s)[pos], sc[pos]
    if w.numel() == 0 or float(w.abs().max()) == 0:
        return torch.zeros(V.shape[0], dtype=V.dtype, device=V.device), 0.0

    def z_of(mu: float) -> torch.Tensor:
        return -(V[:, pos] @ (w / (s2 + mu)))

    z = z_of(0.0)
    if float(z.norm()) <= 1.1 * radius:
        return z, 0.0
    lo, hi = 0.0, float(w.norm()) / radius  # ||z(hi)|| <= radius
    mu = hi * 1e-3
    for _ in range(LMPAR_ITERATIONS):
        q = w / (s2 + mu)
        n = float(q.norm())
        if abs(n - radius) <= 0.1 * radius:
            break
        lo, hi = (mu, hi) if n > radius else (lo, mu)
        dn = -float((q * q / (s2 + mu)).sum()) / n  # d||z||/dmu
        new = mu - (n - radius) * n / (radius * dn)
        mu = new if lo < new < hi else (math.sqrt(lo * hi) if lo > 0 else 0.5 * hi)
    return z_of(mu), mu


def _new_radius(radius, pnorm, mu, F, F_new, actual, predicted, g, delta) -> float:
    """MINPACK's (lmder's) update of the trust region's radius after a trial step of scaled length pnorm."""
    ratio = actual / predicted if predicted > 0 and math.isfinite(actual) else -1.0
    if ratio <= 0.25:
        dirder = float(g @ delta)  # the directional derivative of F along the step (negative)
        temp = 0.5 if actual >= 0 else 0.5 * dirder / (dirder + actual)  # (MINPACK's, in absolute terms)
        if not math.isfinite(F_new) or F_new >= 100 * F or not temp >= 0.1:
            temp = 0.1
        return temp * min(radius, pnorm / 0.1)
    if mu == 0 or ratio >= 0.75:
        return pnorm / 0.5
    return radius


def _newton_step(residuals, theta, r, J, r_ls, d, dist) -> torch.Tensor:
    """Newton's step on 0.5 ||r||^2 for polishing: Gauss-Newton's alone converges slowly, or not at
    all, where the residuals are large (MGH09). The Hessian is J^T J + S, S = sum_i r_i Hess(r_i) (by
    autograd, over every rank's rows); with J D^-1 = Q R (the stacked factors on several ranks) the
    step is -D^-1 R^-1 (I + M)^-1 Q^T r, M = R^-T D^-1 S D^-1 R^-1, so J's condition number enters
    once, as in Gauss-Newton's QR solve, not squared. Gauss-Newton's step (M = 0) when I + M is not
    positive definite (not near a minimum) or R is singular."""
    S = dist.sum(_second_order(residuals, theta, r.detach())) / d / d[:, None]
    Q, R = torch.linalg.qr(J / d)
    c = Q.T @ r_ls
    try:
        Rinv_T_S = torch.linalg.solve_triangular(R.T, S, upper=False)  # R^-T S
        M = torch.linalg.solve_triangular(R.T, Rinv_T_S.T, upper=False).T  # R^-T S R^-1 (S symmetric)
        M = 0.5 * (M + M.T)
        L, info = torch.linalg.cholesky_ex(torch.eye(M.shape[0], dtype=M.dtype, device=M.device) + M)
        w = torch.cholesky_solve(c[:, None], L).reshape(-1) if int(info) == 0 else c
        z = torch.linalg.solve_triangular(R, -w[:, None], upper=True).reshape(-1)
    except RuntimeError:
        return torch.full_like(theta, math.nan)
    return z / d


def _second_order(residuals, theta, c) -> torch.Tensor:
    """S = sum_i c_i Hess(r_i) at theta (p, p): the Hessian of c . r(theta), by reverse mode twice."""
    th = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad((c * residuals(th)).sum(), th, create_graph=True, allow_unused=True)
        rows = _each_derivative(g, th.numel(), th, th)
    return torch.stack(rows).detach()


def _each_derivative(g, p: int, wrt: torch.Tensor, like: torch.Tensor) -> list[torch.Tensor]:
    """d g[i] / d wrt for i < p, g a differentiable (p,) or None, by reverse mode (zeros, shaped as
    ``like``, where g does not depend on wrt)."""
    out = []
    for i in range(p):
        d = None
        if g is not None and g.requires_grad:
            (d,) = torch.autograd.grad(g[i], wrt, retain_graph=i + 1 < p, allow_unused=True)
        out.append(torch.zeros_like(like) if d is None else d)
    return out


def _plateau(head, theta, r, J, y, total) -> Optional[str]:
    """"stuck: ..." when a parameter has no effect on any prediction (doubling it, or moving it by 1 from
    0, moves them by under NO_EFFECT of their size) where the tests see a minimum: a plateau (BoxBOD
    from b2 = 30, exp(-b2 x) = 0 on every row), not the minimum. Else None."""
    col = torch.sqrt(total((J * J).sum(0)))
    reach = col * torch.where(theta != 0, theta.abs(), torch.ones_like(theta))
    size = math.sqrt(total(float(((r + y.reshape(-1).to(r.dtype)) ** 2).sum())))
    dead = (reach <= NO_EFFECT * size).nonzero().reshape(-1).tolist()
    if not dead or size == 0:
        return None
    names = getattr(head, "parameters_names", None) or [f"parameter {i}" for i in range(theta.numel())]
    return (f"stuck: on a plateau where {', '.join(names[i] for i in dead)} "
            f"{'have' if len(dead) > 1 else 'has'} no effect on any prediction")


def _rounding(r: torch.Tensor, y: torch.Tensor, total) -> float:
    """How much 0.5 ||r||^2 moves by rounding alone: each r_i = f_i - y_i carries an error of about
    eps (|f_i| + |y_i|), so the sum of squares one of about eps sum |r_i| (|f_i| + |y_i|) (ROUNDING_ULPS
    times that): far above eps * F when the residuals are small beside the data (Lanczos3: 1e-11 of F)."""
    y = y.reshape(-1).to(r.dtype)
    eps = torch.finfo(torch.float64).eps
    return ROUNDING_ULPS * eps * total(float((r.abs() * ((r + y).abs() + y.abs())).sum()))


def _cosine(J, r, g, total, F=None) -> float:
    """max_i |J_i . r| / (||J_i|| ||r||): 0 at a stationary point, whatever the units (``F``: 0.5 ||r||^2 if known)."""
    if g.numel() == 0:
        return 0.0
    rnorm = math.sqrt(2 * F) if F is not None else math.sqrt(total(float(r @ r)))
    if rnorm == 0:
        return 0.0
    col = torch.sqrt(total((J * J).sum(0)))  # (p,)
    return float((g.abs() / (col * rnorm).clamp_min(1e-300)).max())

