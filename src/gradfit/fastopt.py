"""Fast paths of the training loop: light optimizers, a one-pass linear gradient, batch gathering.

Why these exist (measured on 2 CPU cores, torch 2.13):

- Constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` (its
  ``add_param_group`` and ``step`` are wrapped to be skipped by the compiler), about
  1.3 s of start-up for a run that may train in 0.2 s. ``SGD`` and ``Adam`` here are
  plain update rules on tensors with the same arithmetic as ``torch.optim.SGD`` and
  ``torch.optim.Adam``/``AdamW`` (tests compare trajectories); Adam uses torch's fused
  kernel (``torch._fused_adam_``, one call for every parameter) where the device has
  one, the ``_foreach`` kernels otherwise.
- A full-batch linear head with MSE loss reads the design twice per epoch through
  autograd (``Z @ w`` forward, ``Z^T r`` backward). ``LinearMSE`` computes the same loss
  and gradient in one pass, in row chunks that stay in cache between the two products.
- Mini-batches drawn by indexing a permutation cost one gather per batch;
  ``shuffled_batches`` gathers many batches at once into a reused buffer and hands
  out contiguous slices (same rows, same order, same numbers).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import torch

# Rows per chunk of the one-pass gradient: about this many bytes of design, so that a
# chunk read by the first product is still in the core's cache for the second.
CHUNK_BYTES = 1 << 20
# Rows gathered at once for mini-batches (rounded to whole batches).
GATHER_BYTES = 4 << 20
# Mini-batches of at most this many design values run their ops on one thread (see single_threaded).
SMALL_BATCH_VALUES = 1 << 16


@contextlib.contextmanager
def single_threaded():
    """torch's CPU ops on one thread inside the block (the previous count is restored after).

    Small ops lose more to the intra-op threads' barrier than they gain, and when the
    cores are shared a barrier can wait for a descheduled thread for milliseconds (measured:
    a 16384 x 16 matrix-vector product took 19 ms on 2 threads under load, 0.05 ms on one).
    """
    k = torch.get_num_threads()
    if k == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(k)


_POOL: Optional[ThreadPoolExecutor] = None


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="gradfit-chunks")
    return _POOL


# ---------------------------------------------------------------- optimizers


class _Optimizer:
    """What the loop uses of a torch optimizer: ``param_groups``, ``state``, ``zero_grad``, ``step``,
    ``state_dict``/``load_state_dict`` (same layout as torch's)."""

    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = dict(defaults)
        self.param_groups = [dict(defaults, params=params)]
        self.state: dict = {}  # parameter -> its state (tensors)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    self._update(group, params)
        return loss

    def _update(self, group: dict, params: list) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)
        ):
            raise ValueError("optimizer state does not match the parameters")
        by_index = {}
        for g, mine in zip(groups, self.param_groups):
            mine.update({k: v for k, v in g.items() if k != "params"})
            by_index.update(zip(g["params"], mine["params"]))
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {
                k: (v.to(p.device) if k != "step" or self._step_on_device(p) else v.cpu()).clone()
                if torch.is_tensor(v) else v
                for k, v in s.items()
            }

    def _step_on_device(self, p) -> bool:
        return False


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, Nesterov and weight decay, as ``torch.optim.SGD``."""

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        if nesterov and not momentum:
            raise ValueError("nesterov needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, dampening=0.0))

    def _update(self, group, params):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if momentum:
            # First step: the buffer is the gradient itself; then buf = momentum * buf + grad.
            has = [("momentum_buffer" in self.state.get(p, {})) for p in params]
            if any(has):
                bufs = [self.state[p]["momentum_buffer"] for p, h in zip(params, has) if h]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, [g for g, h in zip(grads, has) if h], alpha=1 - group["dampening"])
            for p, g, h in zip(params, grads, has):
                if not h:
                    self.state.setdefault(p, {})["momentum_buffer"] = g.detach().clone()
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_add_(params, grads, alpha=-lr)


def _has_fused_adam(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu") and hasattr(torch, "_fused_adam_")


class Adam(_Optimizer):
    """Adam (``decoupled=True``: AdamW), as ``torch.optim.Adam``/``AdamW`` without amsgrad."""

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        fused: Optional[bool] = None,
    ):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.decoupled = decoupled
        devices = {p.device for p in self.param_groups[0]["params"]}
        dtypes = {p.dtype for p in self.param_groups[0]["params"]}
        self.fused = (
            (len(devices) == 1 and len(dtypes) == 1 and _has_fused_adam(next(iter(devices))))
            if fused is None
            else fused
        )

    def _step_on_device(self, p) -> bool:
        return self.fused

    def _init_state(self, p):
        s = self.state.get(p)
        if not s:
            # torch keeps the step count as a float32 tensor: on the device for the fused kernel.
            step = torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
            s = self.state[p] = {
                "step": step,
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        return s

    def _update(self, group, params):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self._init_state(p) for p in params]
        grads = [p.grad for p in params]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        if self.fused:
            fn = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
            fn(params, grads, m, v, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd, eps=eps,
               amsgrad=False, maximize=False, grad_scale=None, found_inf=None)
            return
        # The foreach path of torch.optim.Adam, step by step.
        if wd:
            if self.decoupled:
                torch._foreach_mul_(params, 1 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
        counts = [float(s) for s in steps]
        step_size = [-(lr / (1 - beta1**t)) for t in counts]
        bc2_sqrt = [(1 - beta2**t) ** 0.5 for t in counts]
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, step_size)


# ---------------------------------------------------------------- one-pass linear gradient


class LinearMSE:
    """Loss and gradient of ``mean((Z @ weight + bias - y)^2)`` for a ``LinearHead``, reading Z once.

    For each chunk of rows: r = Z_c w + b - y_c, then g += Z_c^T r while Z_c is still in
    cache. Calling it sets ``.grad`` of the head's parameters (what ``loss.backward()``
    would) and returns the loss as a 0-dim tensor, so it serves as an optimizer closure.
    On a GPU the whole design is one chunk (bandwidth is plenty; launches are not).
    """

    def __init__(self, head, Z: torch.Tensor, y: torch.Tensor, chunk_rows: Optional[int] = None):
        self.head, self.Z, self.y = head, Z, y
        n, m = Z.shape
        on_cpu = Z.device.type == "cpu"
        if chunk_rows is None:
            chunk_rows = max(256, CHUNK_BYTES // max(1, m * Z.element_size())) if on_cpu else n
        self.chunk = max(1, int(chunk_rows))
        self.r = torch.empty(n, dtype=Z.dtype, device=Z.device)  # (n,) residuals of the last call
        # On the CPU the chunks are shared out to as many threads as torch uses, each running
        # its ops single-threaded (no barrier per small op); each thread sums its own rows and
        # the partial gradients are added in a fixed order, so results do not depend on timing.
        k = torch.get_num_threads() if on_cpu else 1
        k = max(1, min(k, n // (4 * self.chunk)))
        bounds = [((n * i // k) // self.chunk) * self.chunk for i in range(k)] + [n]
        self.parts = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]

    @staticmethod
    def applies(head, loss_fn, Z: torch.Tensor) -> bool:
        """A LinearHead (weight (m,), optional bias) trained on mean squared error, on a plain design."""
        from gradfit.models import LinearHead

        return (
            type(head) is LinearHead
            and loss_fn is torch.nn.functional.mse_loss
            and Z.ndim == 2
            and Z.is_contiguous()
            and not head._forward_hooks
            and not head._forward_pre_hooks
        )

    def residuals(self, *, grad: bool) -> Optional[torch.Tensor]:
        """Fill ``self.r`` with Z w + b - y; with ``grad``, return Z^T r (else None)."""
        w = self.head.weight.detach()
        b = self.head.bias.detach() if self.head.bias is not None else None
        if self.Z.device.type != "cpu":
            return self._rows(*self.parts[0], w, b, grad)
        with single_threaded():
            others = [_pool(len(self.parts) - 1).submit(self._rows, lo, hi, w, b, grad) for lo, hi in self.parts[1:]]
            g = self._rows(*self.parts[0], w, b, grad)
            for f in others:
                gi = f.result()
                if grad:
                    g += gi
        return g

    def _rows(self, lo: int, hi: int, w, b, grad: bool) -> Optional[torch.Tensor]:
        Z, y, r, c = self.Z, self.y, self.r, self.chunk
        g = torch.zeros_like(w) if grad else None
        for i in range(lo, hi, c):
            j = min(i + c, hi)
            Zc, rc = Z[i:j], r[i:j]
            torch.addmv(y[i:j], Zc, w, beta=-1, out=rc)  # Z_c w - y_c
            if b is not None:
                rc.add_(b)
            if grad:
                g.addmv_(Zc.T, rc)  # (m,) += Z_c^T r_c, Z_c still in cache
        return g

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        n = self.Z.shape[0]
        gw = self.residuals(grad=True)
        r = self.r
        head = self.head
        head.weight.grad = gw.mul_(2.0 / n)
        if head.bias is not None:
            head.bias.grad = r.sum().mul_(2.0 / n)
        return r.dot(r) / n

    @torch.no_grad()
    def loss(self) -> torch.Tensor:
        """The loss alone (one pass, no gradient)."""
        self.residuals(grad=False)
        return self.r.dot(self.r) / self.Z.shape[0]


# ---------------------------------------------------------------- mini-batches


def shuffled_batches(
    Z: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch_size: int, buffers: Optional[dict] = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (Z[idx], y[idx]) for idx = consecutive slices of ``perm``, gathering many batches at once.

    ``buffers`` (a dict kept by the caller across epochs) holds the gather buffers, so that
    no memory is allocated per epoch. A yielded batch is valid until the next one is asked for
    after its block ends: the loop must be done with it (backward included) by then.
    """
    n = perm.shape[0]
    row_bytes = max(1, Z[0].numel() * Z.element_size())
    per_block = max(1, GATHER_BYTES // (row_bytes * batch_size)) * batch_size
    per_block = min(per_block, -(-n // batch_size) * batch_size)
    if buffers is None:
        buffers = {}
    zb = buffers.get("Z")
    if zb is None or zb.shape[0] < min(per_block, n) or zb.dtype != Z.dtype or zb.device != Z.device:
        zb = buffers["Z"] = torch.empty((min(per_block, n), *Z.shape[1:]), dtype=Z.dtype, device=Z.device)
        buffers["y"] = torch.empty((min(per_block, n), *y.shape[1:]), dtype=y.dtype, device=y.device)
    yb = buffers["y"]
    for start in range(0, n, per_block):
        idx = perm[start : start + per_block]
        k = idx.shape[0]
        zk, yk = zb[:k], yb[:k]
        torch.index_select(Z, 0, idx, out=zk)
        torch.index_select(y, 0, idx, out=yk)
        for i in range(0, k, batch_size):
            yield zk[i : i + batch_size], yk[i : i + batch_size]
