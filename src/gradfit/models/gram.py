"""Full-batch least squares from sufficient statistics: the loss and gradient of a linear head on
MSE at any point in O(p^2), from sums made in a few passes over the rows (issue 19).

For A = [Z, 1] (the design and, with a bias, a column of ones) and theta = (weight, bias), the
mean squared error is a quadratic in theta. Written around an anchor point theta0 with residuals
r0 = y - A theta0, exactly:

    n * loss(theta) = r0'r0 - 2 d'q + d'G d,   n/2 * grad(theta) = G d - q,
    d = theta - theta0,   G = A'A,   q = A'r0.

``GramMSE`` makes G in one blocked float64 pass over the rows, solves the normal equations for
the least-squares point, and refines it against the rows (a pass for the residual, a correction
through G, as in iterative refinement) until the correction is at rounding level; the anchor's
r0'r0 and q come from the last of those passes. Every later call costs O(p^2) and no read of Z:
``epochs: 100000`` costs microseconds an epoch. The anchor form keeps the digits: near the
optimum d is small and nothing cancels, where (G theta - A'y) would lose the digits that the
large terms share. The Gram route squares the design's condition number, so a design whose G is
too ill-conditioned for float64 (``usable`` False) keeps the row passes (models.passes.LinearMSE).

Several processes (``dist``): each rank sums its own rows and the sums are all-reduced, once for
G and once per refinement pass: never once per step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from gradfit.parallel import SINGLE

# Bytes of float64 design per block of the passes: a float32 design is upcast block by block (no
# float64 copy of the whole design).
BLOCK_BYTES = 16 << 20
# The Gram matrix's condition number above which its solutions lose more than about 3 digits
# short of what the rows give (float64: eps 2.2e-16): such a design trains on the rows.
MAX_CONDITION = 1e12
REFINE_PASSES = 4  # at most, after the solve (two suffice on a well-conditioned design)


def _blocks(Z: torch.Tensor, y: torch.Tensor, block: Optional[int] = None):
    """(Z_b, y_b) in float64, block by block (the whole of them at once when already float64)."""
    n = Z.shape[0]
    block = block or max(1024, BLOCK_BYTES // (8 * max(1, Z.shape[1])))
    if Z.dtype == torch.float64 and y.dtype == torch.float64:
        yield Z, y
        return
    for i in range(0, n, block):
        yield Z[i : i + block].to(torch.float64), y[i : i + block].to(torch.float64)


class RowSums:
    """G = A'A and the statistics at a point theta0: r0'r0, q = A'r0 (A = [Z, 1] with a bias), all in float64.

    The rows come from ``blocks()``, called once per pass: (Z_b, y_b) float64 blocks of this rank's rows
    (default: of the tensors Z, y; a Parquet stream gives its own, read from disk each pass)."""

    def __init__(self, Z: Optional[torch.Tensor], y: Optional[torch.Tensor], intercept: bool, dist=SINGLE, *,
                 blocks: Optional[Callable[[], Iterable]] = None, m: Optional[int] = None, n: Optional[int] = None,
                 device=None):
        self.intercept, self.dist = intercept, dist
        self.blocks = blocks if blocks is not None else (lambda: _blocks(Z, y))
        self.m = int(Z.shape[1]) if m is None else int(m)
        self.device = Z.device if device is None else device
        self.n = int(dist.sum(int(Z.shape[0]))) if n is None else int(n)
        self.passes = 0  # reads of the rows (the pass counter of bench/passes.py)

    def _fold_residuals(self, Zb, yb, theta, q, rr) -> None:
        """Add a block's A'r into q and r'r into rr (in place), r = y - A theta."""
        m = Zb.shape[1]
        r = yb - Zb @ theta[:m].to(Zb.device)
        if self.intercept:
            r = r - theta[m].to(Zb.device)
            q[m] += r.sum()
        q[:m].addmv_(Zb.T, r)
        rr += r @ r

    def gram(self, theta: Optional[torch.Tensor] = None):
        """(G, A'y, y'y), and with ``theta`` also (r'r, A'r) at it, from one pass over the rows."""
        m, dev = self.m, self.device
        k = m + int(self.intercept)
        G = torch.zeros(k, k, dtype=torch.float64, device=dev)
        c = torch.zeros(k, dtype=torch.float64, device=dev)
        yy = torch.zeros((), dtype=torch.float64, device=dev)
        q = torch.zeros(k, dtype=torch.float64, device=dev)
        rr = torch.zeros((), dtype=torch.float64, device=dev)
        rows = 0
        for Zb, yb in self.blocks():
            rows += Zb.shape[0]
            G[:m, :m].addmm_(Zb.T, Zb)
            c[:m].addmv_(Zb.T, yb)
            yy += yb @ yb
            if self.intercept:
                s = Zb.sum(0)
                G[:m, m] += s
                c[m] += yb.sum()
            if theta is not None:
                self._fold_residuals(Zb, yb, theta, q, rr)
        if self.intercept:
            G[m, :m] = G[:m, m]
            G[m, m] = float(rows)  # (this rank's rows: summed with the rest below)
        self.passes += 1
        packed = self.dist.sum(torch.cat([G.reshape(-1), c, yy[None], q, rr[None]]).cpu())  # one all-reduce
        G, rest = packed[: k * k].reshape(k, k), packed[k * k :]
        return G, rest[:k], rest[k], rest[k + 1 : 2 * k + 1], rest[2 * k + 1]

    def at(self, theta: torch.Tensor):
        """(r'r, A'r) at theta, from one pass over the rows."""
        m = self.m
        k = m + int(self.intercept)
        q = torch.zeros(k, dtype=torch.float64, device=self.device)
        rr = torch.zeros((), dtype=torch.float64, device=self.device)
        for Zb, yb in self.blocks():
            self._fold_residuals(Zb, yb, theta, q, rr)
        self.passes += 1
        packed = self.dist.sum(torch.cat([q, rr[None]]).cpu())
        return packed[-1], packed[:-1]


def pinv_solver(G: torch.Tensor):
    """(x = G^+ rhs, the condition number of G): eigh, with a pseudo-inverse for a singular G
    (collinear columns; its condition number is then infinite)."""
    evals, evecs = torch.linalg.eigh(G)
    top = float(evals.max()) if evals.numel() else 0.0
    low = float(evals.min()) if evals.numel() else 0.0
    keep = evals > top * G.shape[0] * torch.finfo(torch.float64).eps
    V, lam = evecs[:, keep], evals[keep]

    def solve(rhs):
        return V @ ((V.T @ rhs) / lam)

    return solve, (top / low if low > 0 else math.inf)


class GramMSE:
    """Loss and gradient of ``mean((Z @ weight + bias - y)^2)`` for a ``LinearHead`` from the statistics
    of its rows (see the module's docstring); an optimizer closure, as models.passes.LinearMSE."""

    quadratic = True  # (lbfgs: exact line searches)

    def __init__(self, head, Z: torch.Tensor, y: torch.Tensor, dist=SINGLE, sums: Optional[RowSums] = None,
                 anchor: Optional[torch.Tensor] = None):
        """``anchor``: the point to expand around (the validation rows take the training optimum);
        None: the least-squares point of these rows, solved and refined against them."""
        self.head, self.dtype = head, head.weight.dtype
        self.intercept = head.bias is not None
        self.sums = sums or RowSums(Z, y, self.intercept, dist)
        self.n = self.sums.n
        if anchor is None:
            G, c, yy, _, _ = self.sums.gram()
            self.yy = float(yy)
            solve, self.condition = pinv_solver(G)
            theta = solve(c)
            eps = torch.finfo(torch.float64).eps
            for _ in range(REFINE_PASSES):
                rr, q = self.sums.at(theta)  # the residual from the rows: what the correction refines
                step = solve(q)
                # the anchor moved by the step, exactly in algebra: r'r - 2 s'q + s'G s, A'r - G s
                Gs = G @ step
                rr, q, theta = rr - 2.0 * (step @ q) + step @ Gs, q - Gs, theta + step
                if float(step.abs().max()) <= 4 * eps * max(1e-300, float(theta.abs().max())):
                    break
        else:
            theta = anchor.to(torch.float64).cpu()
            G, _, yy, q, rr = self.sums.gram(theta)
            self.yy = float(yy)
            self.condition = math.nan  # (not asked: the training rows' G decides the route)
        self.G, self.theta0, self.q, self.rr = G, theta, q, float(rr)
        self._prepare_small()

    def target_sums(self) -> tuple[float, int]:
        """y'y and the row count (over every rank), as the loop's noise rule asks them (EpochStep.target_sums)."""
        return self.yy, self.n

    @property
    def usable(self) -> bool:
        """G resolves the optimum as the rows would (else train on the rows: see MAX_CONDITION)."""
        return self.condition <= MAX_CONDITION

    @property
    def optimum(self) -> torch.Tensor:
        """The refined least-squares point (weight, then the bias), float64 on the CPU."""
        return self.theta0

    def _prepare_small(self) -> None:
        """The per-call algebra in numpy float64 (a 33 x 33 product costs a microsecond there, ten in torch)."""
        self._G, self._t0, self._q = self.G.numpy(), self.theta0.numpy(), self.q.numpy()
        self._m = int(self.head.weight.shape[0])

    def _theta(self) -> np.ndarray:
        head = self.head
        w = head.weight.detach()
        theta = np.empty(self._m + int(self.intercept))
        theta[: self._m] = (w if w.device.type == "cpu" else w.cpu()).numpy()
        if self.intercept:
            theta[self._m] = float(head.bias.detach())
        return theta

    def _loss(self, d: np.ndarray, Gd: np.ndarray) -> float:
        return max(0.0, (self.rr - 2.0 * float(d @ self._q) + float(d @ Gd)) / max(1, self.n))

    def _set(self, param, values: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(values.astype(_NUMPY[self.dtype], copy=True)).reshape(param.shape)
        return t if param.device.type == "cpu" else t.to(param.device)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        head = self.head
        d = self._theta() - self._t0
        Gd = self._G @ d
        g = (Gd - self._q) * (2.0 / max(1, self.n))
        head.weight.grad = self._set(head.weight, g[: self._m])
        if self.intercept:
            head.bias.grad = self._set(head.bias, g[self._m :])
        return torch.tensor(self._loss(d, Gd), dtype=self.dtype, device=head.weight.device)

    @torch.no_grad()
    def loss(self) -> torch.Tensor:
        """The loss alone (no gradient)."""
        d = self._theta() - self._t0
        return torch.tensor(self._loss(d, self._G @ d), dtype=self.dtype, device=self.head.weight.device)

    # ------------------------------------------------------------ plain gradient descent, many epochs at once

    def descent(self, lr: float, count: int, val: Optional["GramMSE"] = None):
        """Plain gradient descent (theta -= lr * grad) for ``count`` epochs from the head's weights, in
        closed form: (train losses, val losses or None, the weights after each epoch as a function of it).

        With G = V diag(lam) V' and d* = G^+ q (the optimum relative to the anchor), each step multiplies
        the eigen-coordinates of d - d* by a = 1 - 2 lr lam / n, so after k epochs they are a^k e0 and the
        loss is (r0'r0 - d*'q + sum lam (a^k e0)^2) / n: the iterates of the step, to rounding, at a few
        flops an epoch. Each epoch's training loss is the one at its start, as FullBatchStep records it (the
        loss its gradient comes with), and its validation loss the one after its step. Nothing is changed:
        ``at(k)`` gives the weights after epoch k (1-based)."""
        if getattr(self, "_eig", None) is None:
            lam, V = np.linalg.eigh(self._G)
            lam = np.maximum(lam, 0.0)
            self._eig = (lam, V, V @ ((V.T @ self._q) / np.where(lam > 0, lam, 1.0)))
        lam, V, dstar = self._eig
        n = max(1, self.n)
        e0 = V.T @ (self._theta() - self._t0 - dstar)
        a = 1.0 - (2.0 * lr / n) * lam
        with np.errstate(over="ignore", invalid="ignore"):
            # (count + 1, k): the eigen-coordinates of d - d* before the first step and after each
            U = np.vstack([np.ones((1, a.size)), _powers(a, count)]) * e0[None, :]
            base = self.rr - float(dstar @ self._q)
            # an epoch's training loss is at its start (the point its gradient is taken at), as the rows' step
            # records it; its validation loss after its step
            train = np.maximum(0.0, (base + (U[:-1] * U[:-1]) @ lam) / n)
            vals = None if val is None else val._along(self._t0 + dstar, V, U[1:])
            # in the head's dtype, as the epochs one by one give them: a float32 run's loss overflows at 3.4e38
            train = train.astype(_NUMPY[self.dtype]).astype(np.float64)
            vals = None if vals is None else vals.astype(_NUMPY[self.dtype]).astype(np.float64)

        def at(k: int) -> np.ndarray:
            return self._t0 + dstar + V @ U[k]

        return train, vals, at

    def _along(self, point: np.ndarray, V: np.ndarray, U: np.ndarray) -> np.ndarray:
        """This quadratic's values at point + V u for each row u of U (the training trajectory, on these rows)."""
        cached = getattr(self, "_along_cache", None)
        if cached is None or cached[0] is not V:  # (the same for every block of a run: made once)
            c = point - self._t0
            Gc = self._G @ c
            self._along_cache = (V, V.T @ self._G @ V, 2.0 * (V.T @ (Gc - self._q)),
                                 self.rr - 2.0 * float(c @ self._q) + float(c @ Gc))
        _, M, lin, const = self._along_cache
        quad = np.einsum("ij,ij->i", U @ M, U)
        return np.maximum(0.0, (const + U @ lin + quad) / max(1, self.n))

    def set_weights(self, theta: np.ndarray) -> None:
        """Put ``theta`` (weight, then the bias) into the head."""
        head = self.head
        with torch.no_grad():
            head.weight.copy_(self._set(head.weight, theta[: self._m]))
            if self.intercept:
                head.bias.copy_(self._set(head.bias, theta[self._m :]))


def _powers(a: np.ndarray, count: int, run: int = 64) -> np.ndarray:
    """(count, k): a^1 .. a^count, row k-1 being a^k: np.power for the first ``run`` rows, then each run of
    rows as that block times a^(run j) (a product of two powers: within an ulp or two of np.power, at a
    fraction of its cost)."""
    first = np.power(a[None, :], np.arange(1, min(run, count) + 1, dtype=np.float64)[:, None])
    if count <= run:
        return first
    runs = -(-count // run)
    scale = np.power(a[None, :], (run * np.arange(runs, dtype=np.float64))[:, None])  # a^(run j)
    return (scale[:, None, :] * first[None, :, :]).reshape(runs * run, -1)[:count]


_NUMPY = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}
