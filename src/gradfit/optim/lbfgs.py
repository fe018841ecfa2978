"""L-BFGS that converges to the last digits the dtype allows.

torch's ``LBFGS`` accepts a step only when the loss shows a sufficient decrease (strong
Wolfe). Near a minimum the decrease a step can bring (about |gradient|^2 / curvature)
falls below the rounding of the loss (about eps * loss) once the gradient is near
sqrt(eps): the line search fails, and the parameters stop at roughly half the digits the
dtype holds. Here the line search also accepts Hager and Zhang's *approximate Wolfe*
conditions (CG_DESCENT, 2005): the loss did not rise beyond its rounding, and the
directional derivative shows the decrease the loss can no longer resolve. For a quadratic
the two are the same test, so the iterates keep converging until the gradient itself is
rounding noise.

One ``step()`` is up to ``max_iter`` iterations (full batch; the closure returns the loss
after ``backward()``). ``state["stalled"]`` says the last step found no acceptable move
along the quasi-Newton direction nor along the steepest descent: the point is stationary
to the dtype's precision.
"""

from __future__ import annotations

import math

import torch

# Strong Wolfe (sufficient decrease, curvature) and the approximate Wolfe bound 2*DELTA - 1.
C1, C2, DELTA = 1e-4, 0.9, 0.1
# A rise of the loss below NOISE * |loss| counts as rounding, not as a rise. Rounding in the
# loss is not a few ulps of the loss: a good fit's residuals are small differences of O(1)
# numbers, so its loss carries far larger relative noise. Hager and Zhang take 1e-6; here
# sqrt(eps) of the dtype (1.5e-8 in float64), still well above the noise of such fits.
def _noise(dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps)


class LBFGS:
    """Full-batch L-BFGS with a strong/approximate-Wolfe line search (see the module docstring).

    The optimizer interface the loop and the resume state use (``param_groups``, ``state``,
    ``zero_grad``, ``step``, ``state_dict``/``load_state_dict``, laid out as torch's), without
    subclassing ``torch.optim.Optimizer``, whose constructor imports torch._dynamo (seconds).
    """

    def __init__(self, params, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None, history_size: int = 100, max_ls: int = 25):
        params = list(params)
        if not params:
            raise ValueError("LBFGS got an empty parameter list")
        # max_eval caps the loss evaluations of one step (torch's default: 1.25 per iteration).
        max_eval = max_eval if max_eval is not None else max_iter * 5 // 4
        self.defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, history_size=history_size, max_ls=max_ls)
        self.param_groups = [dict(self.defaults, params=params)]
        self._params = params
        self.state: dict = {}  # {first parameter: the global state}, as torch's LBFGS keeps it
        self.last: tuple[float, float] | None = None  # after step(): (loss, largest |gradient| component) at the point it ends on
        self._end = None  # (parameters, loss, gradient) where the last step ended

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            p.grad = None

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self._params)))
        state = {0: dict(self.state[self._params[0]])} if self._params[0] in self.state else {}
        if state and self._end is not None:  # where the last step ended: a resumed run starts from it alike
            state[0].update(end_x=self._end[0], end_f=self._end[1], end_g=self._end[2])
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self._params):
            raise ValueError("optimizer state does not match the parameters")
        self.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
        p0 = self._params[0]

        def move(v):
            if torch.is_tensor(v):
                return v.to(device=p0.device, dtype=p0.dtype).clone()
            if isinstance(v, list):
                return [move(x) for x in v]
            return v

        saved = dict(state_dict["state"].get(0, state_dict["state"].get("0")) or {})
        end = [saved.pop(k, None) for k in ("end_x", "end_f", "end_g")]
        self.state = {p0: {k: move(v) for k, v in saved.items()}} if saved else {}
        self._end = (move(end[0]), float(end[1]), move(end[2])) if all(v is not None for v in end) else None

    # -------------------------------------------------------------- flat views

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat([torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1) for p in self._params])

    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _set_params(self, x: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.copy_(x[offset : offset + n].view_as(p))
            offset += n

    # -------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """Up to max_iter L-BFGS iterations; returns the loss at the starting point."""
        group = self.param_groups[0]
        # A closure that says its loss is a quadratic (models.passes.LinearMSE: a linear model's mean squared
        # error) gets exact line searches from one evaluation each (see _exact_step).
        quadratic = bool(getattr(closure, "quadratic", False))
        state = self.state.setdefault(self._params[0], {})
        for key, empty in (("s", []), ("y", []), ("n_iter", 0), ("func_evals", 0)):
            state.setdefault(key, empty)
        state["stalled"] = False
        evals = _Evaluations(self, torch.enable_grad()(closure), state)
        x = self._flat_params()
        reused, f, g, f0_loss = self._start(x, evals)
        it = 0
        while it < group["max_iter"]:
            it += 1
            if evals.budget() <= 0:
                break
            if not math.isfinite(f) or not bool(g.abs().max() > 0):
                break  # a non-finite loss is the caller's to report; a zero gradient is a minimum
            found, d = self._search(evals, x, f, g, quadratic)
            if found is None and reused and evals.budget() > 0:
                # Nothing acceptable from a starting point that was taken over, not evaluated:
                # evaluate it and try again before calling the point stationary.
                reused, it = False, it - 1
                f, g = evals(x)
                continue
            if found is None and state["s"] and evals.budget() > 0:
                found, d = self._steepest(evals, x, f, g)
            if found is None:
                state["stalled"] = evals.budget() > 0  # not merely out of evaluations
                break
            reused = False
            x, f, g = self._accept(state, x, d, g, found)
        # The parameters hold the last accepted point (a line search leaves them at its last trial).
        self._set_params(x)
        # The loss and largest gradient component there (evaluated, or exact for a quadratic), for
        # the loop's stopping rule without another evaluation.
        self.last = (f, float(g.abs().max()))
        self._end = (x.clone(), f, g.clone())
        return f0_loss

    def _start(self, x: torch.Tensor, evals: _Evaluations):
        """(reused, loss, gradient, loss as a tensor) at the starting point x."""
        end = self._end
        reused = end is not None and end[0].shape == x.shape and torch.equal(end[0], x)
        if reused:
            # Where the last step ended (nothing moved the parameters since): its loss and gradient
            # are known, even where that point was never evaluated (see _exact_step).
            f0_loss = torch.tensor(end[1], dtype=x.dtype)
            evals.count = 0
            return True, end[1], end[2], f0_loss
        f0_loss = evals.closure().detach()
        evals.state["func_evals"] += 1
        return False, float(f0_loss), self._flat_grad(), f0_loss

    def _search(self, evals: _Evaluations, x, f: float, g, quadratic: bool):
        """A step along the quasi-Newton direction: ((step, loss, grad) or None, the direction)."""
        state = evals.state
        d = self._direction(g, state["s"], state["y"], state)
        gtd = float(g.dot(d))
        if not gtd < 0:  # the memory gave no descent direction: forget it
            state["s"].clear(), state["y"].clear()
            d, gtd = -g * state.get("h_diag", 1.0), -float(g.dot(g)) * state.get("h_diag", 1.0)
        lr = self.param_groups[0]["lr"]
        t0 = min(1.0, 1.0 / float(g.abs().sum())) * lr if state["n_iter"] == 0 else lr
        phi, eps_f = evals.along(x, d), _noise(x.dtype) * abs(f)
        found = _exact_step(phi, f, g, d, gtd, t0, eps_f) if quadratic and evals.budget() >= 2 else None
        if found is None:
            found = _line_search(phi, f, g, d, gtd, t0, eps_f, evals.budget())
        return found, d

    def _steepest(self, evals: _Evaluations, x, f: float, g):
        """Retry once along the steepest descent, without the memory: (found, the direction)."""
        state = evals.state
        state["s"].clear(), state["y"].clear()
        h = state.get("h_diag", 1.0)
        d, gtd = -g * h, -float(g.dot(g)) * h
        lr = self.param_groups[0]["lr"]
        return _line_search(evals.along(x, d), f, g, d, gtd, lr, _noise(x.dtype) * abs(f), evals.budget()), d

    def _accept(self, state: dict, x, d, g, found):
        """Move to the step found; keep its curvature pair. Returns (x, loss, gradient) there."""
        t, f_new, g_new = found
        s, yv = t * d, g_new - g
        x = x + s
        state["n_iter"] += 1
        sy = float(s.dot(yv))
        # Keep a pair only with clear positive curvature (relative, so pairs near the minimum count too).
        if sy > torch.finfo(x.dtype).eps * float(s.norm() * yv.norm()) and sy > 0:
            s_hist, y_hist = state["s"], state["y"]
            if len(s_hist) == self.param_groups[0]["history_size"]:
                s_hist.pop(0), y_hist.pop(0)
            s_hist.append(s), y_hist.append(yv)
            state["h_diag"] = sy / float(yv.dot(yv))
        return x, f_new, g_new

    @staticmethod
    def _direction(g, s_hist, y_hist, state) -> torch.Tensor:
        """-H g with H the L-BFGS inverse-Hessian estimate (two-loop recursion)."""
        q = -g
        alphas = []
        for s, y in zip(reversed(s_hist), reversed(y_hist)):
            rho = 1.0 / float(y.dot(s))
            a = rho * float(s.dot(q))
            alphas.append((a, rho))
            q = q - a * y
        r = q * state.get("h_diag", 1.0)
        for (s, y), (a, rho) in zip(zip(s_hist, y_hist), reversed(alphas)):
            b = rho * float(y.dot(r))
            r = r + (a - b) * s
        return r


class _Evaluations:
    """The closure's evaluations within one step, counted against ``max_eval``."""

    def __init__(self, optimizer: LBFGS, closure, state: dict):
        self.optimizer = optimizer
        self.closure = closure
        self.state = state
        self.group = optimizer.param_groups[0]
        self.count = 1  # the starting point's (0 where it is taken over from the last step)

    def __call__(self, x: torch.Tensor):
        """(loss, flat gradient) with the parameters set to x."""
        self.optimizer._set_params(x)
        f = float(self.closure().detach())
        self.state["func_evals"] += 1
        self.count += 1
        return f, self.optimizer._flat_grad()

    def along(self, x: torch.Tensor, d: torch.Tensor):
        """phi(t): the evaluation at x + t * d (x and d bound here, not read later)."""
        return lambda t: self(x + t * d)

    def budget(self) -> int:
        """Evaluations the next line search may use."""
        return min(self.group["max_ls"], self.group["max_eval"] - self.count)


def _exact_step(phi, f0, g0, d, dphi0, t, eps_f):
    """The minimum along d of a quadratic loss, from one evaluation at t: (step, loss, grad) or None.

    A quadratic's gradient is affine, so phi'(s) = dphi0 + s * c with c = (phi'(t) - dphi0) / t,
    the minimum is at s = -dphi0 / c, and the gradient there is g0 + (s / t) * (g(t) - g0): the
    exact line search, for the one pass over the data that the trial step costs anyway. With
    exact line searches L-BFGS makes the conjugate-gradient iterates on a quadratic (Nazareth,
    1979). A 1,000,000 x 32 float32 linear run (bench/speed.py, linear) took 52 passes over
    the data instead of 75 to the same stop. The curvature must stand out of the rounding of
    the two derivatives, and an evaluated minimum must not be above the start beyond the
    loss's rounding (``eps_f``), else the bracketing line search takes over.
    """
    f, g = phi(t)
    dp = float(g.dot(d)) if math.isfinite(f) else math.nan
    if not (math.isfinite(f) and math.isfinite(dp)):
        return None
    eps = torch.finfo(d.dtype).eps
    c = (dp - dphi0) / t
    if not (dp - dphi0 > 64 * eps * (abs(dp) + abs(dphi0))):
        return None
    s = -dphi0 / c
    # The loss at s from the nearer of the two points (f0 may itself have come from this formula;
    # the trial was evaluated): phi(s) = phi(t) - c (t - s)^2 / 2 = phi(0) - c s^2 / 2.
    f_s = f - 0.5 * c * (t - s) ** 2 if abs(t - s) <= abs(s) else f0 - 0.5 * c * s * s
    g_s = g0 + (s / t) * (g - g0)
    # The interpolation carries the two gradients' rounding errors, weighted by s/t and 1 - s/t:
    # trusted only where s is near the trial (as it is once the memory has the curvature) and
    # the gradient at s stands well above those errors. Elsewhere (the first iterations, near the
    # minimum, ill-conditioned float32 designs) or if the loss came out below 0, evaluate at s.
    err = 16 * eps * float(torch.maximum(g0.abs(), g.abs()).max()) * (1 + abs(s / t))
    if not (0.25 <= s / t <= 4 and float(g_s.abs().max()) > 100 * err and f_s >= 0):
        f_s, g_s = phi(s)
        if not f_s <= f0 + eps_f:  # rounding made the model wrong here: the bracketing search decides
            return None
    return s, f_s, g_s


def _line_search(phi, f0, g0, d, dphi0, t, eps_f, max_ls):
    """A step t along d meeting strong or approximate Wolfe: (t, loss, grad) or None.

    Bracketing on the directional derivative, with secant steps (exact for a quadratic)
    and bisection as the safeguard.
    """
    lo_t, lo_dp, lo = 0.0, dphi0, None  # lo: (t, f, g) of the best acceptable-so-far point
    hi_t, hi_dp = None, None
    prev_t, prev_dp = 0.0, dphi0
    for _ in range(max_ls):
        f, g = phi(t)
        dp = float(g.dot(d)) if math.isfinite(f) else math.nan
        if math.isfinite(f) and math.isfinite(dp):
            strong = f <= f0 + C1 * t * dphi0 and abs(dp) <= -C2 * dphi0
            approx = f <= f0 + eps_f and C2 * dphi0 <= dp <= (2 * DELTA - 1) * dphi0
            if strong or approx:
                return t, f, g
        if not (math.isfinite(f) and math.isfinite(dp)):
            hi_t, hi_dp = t, None  # blew up: the minimum is before t
        elif f > f0 + eps_f:
            hi_t, hi_dp = t, (dp if dp >= 0 else None)  # overshot: the loss rose beyond rounding
        elif dp >= 0:
            hi_t, hi_dp = t, dp
        else:
            lo_t, lo_dp, lo = t, dp, (t, f, g)  # still descending, and not above the start
        if hi_t is None:
            # Extrapolate: the secant on the derivative, kept within [2t, 10t].
            sec = t - dp * (t - prev_t) / (dp - prev_dp) if dp > prev_dp else 4 * t
            prev_t, prev_dp = t, dp
            t = min(max(sec, 2 * t), 10 * t)
            continue
        width = hi_t - lo_t
        if width <= 0 or width <= 4 * torch.finfo(d.dtype).eps * max(abs(hi_t), 1e-300):
            break
        if hi_dp is not None and hi_dp > lo_dp:
            sec = lo_t - lo_dp * width / (hi_dp - lo_dp)
            t = sec if lo_t + 0.01 * width <= sec <= hi_t - 0.01 * width else lo_t + width / 2
        else:
            t = lo_t + width / 2
    # Out of trials: keep the best descending point only if it shows a real decrease.
    if lo is not None and lo[1] <= f0 + C1 * lo[0] * dphi0 and lo[1] < f0:
        return lo
    return None
