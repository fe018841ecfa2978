"""One-pass loss and gradient of a model on MSE, without autograd's graph: linear heads, MLPs.

Why these exist (measured on 2 CPU cores, torch 2.13; gradfit's own optimizers, for the same
reason of start-up time, are optim/first_order.py, and the mini-batch gathering data/batches.py):

- A full-batch linear head with MSE loss reads the design twice per epoch through
  autograd (``Z @ w`` forward, ``Z^T r`` backward). ``LinearMSE`` computes the same loss
  and gradient in one pass, in row blocks that stay in cache between the two products:
  with the compiled kernel ``gradfit._fused`` where it was built, with torch's
  matrix-vector products on row chunks otherwise.
- An MLP's mini-batch step through autograd spends most of its time recording the
  graph; ``MLPMSE`` runs the same backward pass op for op (see there).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from gradfit.data.batches import column_major
from gradfit.kernel import ABI as KERNEL_ABI  # noqa: F401 (tests and tools read it here)
from gradfit.kernel import find as _find_kernel
from gradfit.kernel import usable as usable_kernel  # noqa: F401
from gradfit.models.heads import LinearHead, MLPHead
from gradfit.threads import single_threaded, worker_pool

# The compiled one-pass kernel (setup.py): None where no C compiler was at hand, or where the build
# is of another version of _fused.c (see gradfit.kernel).
_fused = _find_kernel()[0]

# Rows per chunk of the one-pass gradient: about this many bytes of design, so that a
# chunk read by the first product is still in the core's cache for the second.
CHUNK_BYTES = 1 << 20
# LinearMSE: row parts per thread (taken in turn, so that a held-up core delays the pass less).
PARTS_PER_THREAD = 4
# The compiled kernel: bytes of design per row block (the second product finds the block in L1/L2),
# and design values per thread below which fewer threads are used (waking a thread costs tens of us,
# more on shared cores).
KERNEL_BLOCK_BYTES = 32 << 10
KERNEL_BLOCK_ROWS = 1024  # at most (sums within a block are in the design's dtype: keep them short)
KERNEL_VALUES_PER_THREAD = 1 << 18


# ---------------------------------------------------------------- one-pass linear gradient


class LinearMSE:
    """Loss and gradient of ``mean((Z @ weight + bias - y)^2)`` for a ``LinearHead``, reading Z once.

    For each block of rows: r = Z_b w + b - y_b, then g += Z_b^T r while Z_b is still in
    cache. Calling it sets ``.grad`` of the head's parameters (what ``loss.backward()``
    would) and returns the loss as a 0-dim tensor, so it serves as an optimizer closure.
    On a GPU the whole design is one chunk (bandwidth is plenty; launches are not).

    Two ways to do the passes, same numbers up to rounding (tests compare both with autograd):
    - The compiled kernel (``gradfit._fused``, built from ``_fused.c`` at install) on a
      column-major float32/float64 design on the CPU: one call per part of the rows, blocks
      of ``KERNEL_BLOCK_BYTES``, partial sums in double. Measured on 2 CPU cores, 1,000,000 x
      64 float32: 1.2-1.45x one read of Z (``python bench/linear_pass.py``, ``bench/speed.py``).
    - torch's matrix-vector products on chunks of ``CHUNK_BYTES`` (1 MiB, for the core's 2 MiB
      L2), two ops per chunk, the chunk views made once: 1.6-2.0x one read of Z in the same
      runs. MKL's second product from L2 costs a third of the chunk's memory time, and a core
      does not stream while it computes. Used on other devices and layouts, or when the kernel
      was not built (``kernel=False`` asks for it).

    Layout: on a design stored column by column (``column_major``: what api.prepare builds for
    full-batch linear runs), Z_b w is a sum of columns, which streams at the speed of a plain
    read; on a row-major design torch's product is a 64-long dot product per row, 2 to 4 times
    slower than the read.

    Threads: the parts are shared out to as many threads as torch uses, taken in turn by
    whichever thread is free (on shared cores one can be held up), each running single-threaded
    (no intra-op barrier per small op; the kernel releases the GIL). Each part sums its own rows
    and the parts are added in a fixed order, so results do not depend on timing.

    Repeated points: called again at the weights of its last call (L-BFGS evaluates the point
    the previous epoch ended at), it gives the stored loss and gradient back without reading Z.
    """

    quadratic = True  # the loss is a quadratic in the weights (lbfgs: exact line searches)

    def __init__(self, head, Z: torch.Tensor, y: torch.Tensor, chunk_rows: Optional[int] = None,
                 remember: bool = True, kernel: Optional[bool] = None):
        self.head, self.Z, self.y = head, Z, y
        self.remember = remember  # keep the last point's loss and gradient (L-BFGS asks for it again)
        n, m = Z.shape
        self.n = n
        on_cpu = Z.device.type == "cpu"
        usable = kernel_applies(Z, y) and _kernel_params_fit(head, Z)
        if kernel and not usable:
            raise ValueError("the compiled kernel needs gradfit._fused and a column-major float32/float64 "
                             "design on the CPU, with a contiguous target, and a weight (m,) and bias of its dtype")
        self.kernel = usable if kernel is None else bool(kernel)
        if self.kernel:
            # (at most the default block: the kernel's partial sums over a block are in Z's dtype)
            block = max(16, min(KERNEL_BLOCK_ROWS, KERNEL_BLOCK_BYTES // max(1, m * Z.element_size())) // 16 * 16)
            chunk_rows = block if chunk_rows is None else min(int(chunk_rows), block)
        elif chunk_rows is None:
            chunk_rows = max(256, CHUNK_BYTES // max(1, m * Z.element_size())) if on_cpu else n
        self.chunk = c = max(1, int(chunk_rows))
        self.r = torch.empty(n, dtype=Z.dtype, device=Z.device)  # (n,) residuals of the last call
        if self.kernel:
            threads = min(torch.get_num_threads(), (n * max(1, m)) // KERNEL_VALUES_PER_THREAD)
        else:
            threads = min(torch.get_num_threads() if on_cpu else 1, n // (4 * c))
        self.threads = k = max(1, threads)
        # More parts than threads, taken in turn by whichever thread is free: on shared cores one
        # thread can be held up, and the other then does more of the rows.
        parts = k * PARTS_PER_THREAD if k > 1 else 1
        parts = max(1, min(parts, n // c))
        bounds = [((n * i // parts) // c) * c for i in range(parts)] + [n]
        self.parts = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        self._last = None  # (weights, bias, loss, grad w, grad b) of the last call
        if self.kernel:
            self.g = torch.zeros((len(self.parts), m), dtype=torch.float64)  # each part's Z^T r
            self.ld = Z.stride(1) if m > 1 else n  # column j starts j * ld values after column 0
            return
        # y - b, refreshed per call (the bias folded into the target: one op per chunk fewer).
        self.t = torch.empty_like(y) if head.bias is not None else y
        self.views = [
            [(Z[i : min(i + c, b)], Z[i : min(i + c, b)].T, self.t[i : min(i + c, b)], self.r[i : min(i + c, b)])
             for i in range(a, b, c)]
            for a, b in self.parts
        ]
        self.rows = [(y[a:b], self.t[a:b], self.r[a:b]) for a, b in self.parts]  # each part's y, y - b, r

    @staticmethod
    def applies(head, loss_fn, Z: torch.Tensor) -> bool:
        """A LinearHead (weight (m,), optional bias) trained on mean squared error, on a plain design
        (row-major, or column-major: see ``column_major``)."""

        return (
            type(head) is LinearHead
            and loss_fn is torch.nn.functional.mse_loss
            and Z.ndim == 2
            and (Z.is_contiguous() or column_major(Z))
            and not head._forward_hooks
            and not head._forward_pre_hooks
        )

    def _part(self, p: int, w, b, grad: bool):
        """Residuals of part p's rows into ``self.r``; (Z_p^T r_p or None, r_p.r_p, sum r_p)."""
        if self.kernel:
            a, e = self.parts[p]
            return _fused.linear_mse(
                self.Z.data_ptr(), self.ld, self.Z.shape[1], w.data_ptr(), self.y.data_ptr(), b, self.r.data_ptr(),
                a, e, self.chunk, self.g[p].data_ptr() if grad else 0, self.Z.dtype == torch.float64)
        y, t, r = self.rows[p]
        if b is not None:
            torch.sub(y, b, out=t)
        views = self.views[p]
        g = None
        for Zc, ZcT, tc, rc in views:
            torch.addmv(tc, Zc, w, beta=-1, out=rc)  # Z_c w - (y_c - b)
            if grad:  # (m,) += Z_c^T r_c, Z_c still in cache
                g = torch.mv(ZcT, rc) if g is None else g.addmv_(ZcT, rc)
        return g, torch.dot(r, r), (r.sum() if b is not None else None)

    def _run_parts(self, w, b, grad: bool) -> list:
        """Each part's ``_part`` result, in part order; the parts shared out to the threads."""
        results: list = [None] * len(self.parts)
        if self.Z.device.type != "cpu" or len(self.parts) == 1 and (self.kernel or torch.get_num_threads() == 1):
            results[0] = self._part(0, w, b, grad)
            return results
        # torch's ops on one thread each (the kernel does not use torch's threads).
        threads = contextlib.nullcontext() if self.kernel else single_threaded()
        if len(self.parts) == 1:
            with threads:
                results[0] = self._part(0, w, b, grad)
            return results
        queue = iter(range(len(self.parts)))  # next() under the GIL: each part is taken once

        def work():
            for p in queue:
                results[p] = self._part(p, w, b, grad)

        with threads:
            others = [worker_pool(self.threads - 1).submit(work) for _ in range(self.threads - 1)]
            work()
            for f in others:
                f.result()
        return results

    def _kernel_pass(self, grad: bool, scale: float):
        """The compiled pass: (scale * Z^T r as a new tensor or None, r.r, sum r) (Python floats for the sums).

        Not re-entrant: one call at a time per LinearMSE (its residual and partial-sum buffers)."""
        head = self.head
        if not _kernel_params_fit(head, self.Z):  # the kernel reads raw pointers: parameters swapped since?
            raise RuntimeError(f"LinearMSE: the head's parameters no longer match the {tuple(self.Z.shape)} design "
                               "(weight (m,) and a scalar bias of its dtype and device)")
        w = head.weight.detach()
        if not w.is_contiguous():
            w = w.contiguous()
        b = float(head.bias) if head.bias is not None else 0.0
        results = self._run_parts(w, b, grad)
        g = None
        if grad:  # the parts' double sums, added in part order and scaled, in the design's dtype
            g = torch.empty_like(w)
            _fused.gather(self.g.data_ptr(), len(self.parts), w.shape[0], scale, g.data_ptr(),
                          g.dtype == torch.float64)
        if len(results) == 1:
            return g, results[0][0], results[0][1]
        return g, math.fsum(r[0] for r in results), math.fsum(r[1] for r in results)

    def residuals(self, *, grad: bool):
        """Fill ``self.r`` with Z w + b - y; returns (Z^T r or None, r.r, sum r or None) as tensors of Z's dtype."""
        if self.kernel:
            g, rr, rs = self._kernel_pass(grad, 1.0)
            dtype = self.Z.dtype
            return g, torch.tensor(rr, dtype=dtype), (torch.tensor(rs, dtype=dtype) if self.head.bias is not None else None)
        w = self.head.weight.detach()
        b = self.head.bias.detach() if self.head.bias is not None else None
        results = self._run_parts(w, b, grad)
        # Added in part order, whichever thread computed them: the sums do not depend on timing.
        g, rr, rs = results[0]
        for gi, rri, rsi in results[1:]:
            if grad:
                g += gi
            rr = rr + rri
            if rs is not None:
                rs = rs + rsi
        return g, rr, rs

    def _same_point(self) -> bool:
        last = self._last
        if last is None:
            return False
        head = self.head
        return torch.equal(last[0], head.weight.detach()) and (
            head.bias is None or torch.equal(last[1], head.bias.detach()))

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        head, n = self.head, self.n
        if self.remember and self._same_point():
            _, _, loss, gw, gb = self._last
            head.weight.grad = gw.clone()
            if head.bias is not None:
                head.bias.grad = gb.clone()
            return loss.clone()
        if self.kernel:  # the gradient scaled in the kernel's sum, the loss from a double: fewer small ops
            gw, rr, rs = self._kernel_pass(True, 2.0 / n)
            head.weight.grad = gw
            if head.bias is not None:
                head.bias.grad = torch.tensor(rs * (2.0 / n), dtype=gw.dtype)
            loss = torch.tensor(rr / n, dtype=gw.dtype)
        else:
            gw, rr, rs = self.residuals(grad=True)
            head.weight.grad = gw.mul_(2.0 / n)
            if head.bias is not None:
                head.bias.grad = rs.mul_(2.0 / n)
            loss = rr.div_(n)
        if self.remember:
            self._last = (head.weight.detach().clone(), None if head.bias is None else head.bias.detach().clone(),
                          loss.clone(), head.weight.grad.clone(), None if head.bias is None else head.bias.grad.clone())
        return loss

    @torch.no_grad()
    def loss(self) -> torch.Tensor:
        """The loss alone (one pass, no gradient)."""
        if self.kernel:
            return torch.tensor(self._kernel_pass(False, 1.0)[1] / self.n, dtype=self.Z.dtype)
        return self.residuals(grad=False)[1].div_(self.n)


def _kernel_params_fit(head, Z: torch.Tensor) -> bool:
    """A weight of shape (m,) and an optional scalar bias, of Z's dtype and device (the kernel reads them raw)."""
    w, b = head.weight, head.bias
    return (
        w.ndim == 1 and w.shape[0] == Z.shape[1] and w.dtype == Z.dtype and w.device == Z.device
        and (b is None or (b.numel() == 1 and b.dtype == Z.dtype and b.device == Z.device))
    )


def kernel_applies(Z: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the compiled kernel can take this design and target (see LinearMSE)."""
    return (
        _fused is not None
        and Z.device.type == "cpu"
        and Z.dtype in (torch.float32, torch.float64)
        and Z.ndim == 2
        and Z.shape[0] > 0
        and Z.shape[1] > 0
        and Z.stride(0) == 1
        and (Z.shape[1] <= 1 or Z.stride(1) >= Z.shape[0])
        and y.device.type == "cpu"
        and y.dtype == Z.dtype
        and y.shape == Z.shape[:1]
        and y.is_contiguous()
    )


# ---------------------------------------------------------------- MLP + MSE by hand

_MLP_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh"}  # activation modules MLPMSE differentiates by hand


class MLPMSE:
    """Loss and gradient of ``mean((head(Z) - y)^2)`` for an ``MLPHead`` (Linear layers, ReLU or tanh), without autograd.

    A mini-batch step through autograd spends most of its time recording and replaying the
    graph (about 25 small ops, each a few microseconds of Python and dispatch, for a batch
    of 256 rows x 64 units). Here the forward pass keeps each layer's output, and the
    backward pass is the one autograd would run, op for op: ``mse_loss_backward``
    (2/B * r), then per layer ``addmm``'s three gradients (``d @ W``, ``(h^T d)^T``, the
    column sums of d) and ``threshold_backward``/``tanh_backward`` for the activation. Calling
    it writes the gradients into the parameters' ``.grad`` (buffers reused from call to
    call, as ``loss.backward()`` after ``zero_grad`` would leave them) and returns the loss.
    """


    def __init__(self, head):
        mods = list(head.net)
        self.linears = mods[0::2]
        self.acts = [_MLP_ACTIVATIONS[type(m).__name__] for m in mods[1::2]]
        self.params = [p for lin in self.linears for p in (lin.weight, lin.bias)]
        self.grads = [torch.empty_like(p) for p in self.params]  # contiguous, as the fused Adam kernel needs

    @staticmethod
    def applies(head, loss_fn, Z: torch.Tensor) -> bool:
        """An MLPHead of Linear and ReLU/tanh layers on mean squared error, a plain 2-D design, no hooks."""

        if type(head) is not MLPHead or loss_fn is not torch.nn.functional.mse_loss or Z.ndim != 2:
            return False
        mods = list(head.net)
        linear = torch.nn.Linear
        return (
            len(mods) % 2 == 1
            and all(type(m) is linear and m.bias is not None for m in mods[0::2])
            and all(type(m).__name__ in _MLP_ACTIVATIONS and type(m).__module__.startswith("torch.nn") for m in mods[1::2])
            and mods[-1].out_features == 1
            and not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in [head, head.net, *mods])
        )

    @torch.no_grad()
    def __call__(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hs = [Z]  # each layer's input
        h = Z
        for lin, act in zip(self.linears[:-1], self.acts):
            h = torch.addmm(lin.bias, h, lin.weight.t())
            h = h.relu_() if act == "relu" else h.tanh_()
            hs.append(h)
        last = self.linears[-1]
        out = torch.addmm(last.bias, h, last.weight.t())  # (B, 1)
        r = out.squeeze(-1) - y  # (B,)
        loss = r.square().mean()
        d = r.mul_(2.0 / r.numel()).unsqueeze(-1)  # mse_loss_backward: 2/B * r, (B, 1)
        params, grads = self.params, self.grads
        for k in range(len(self.linears) - 1, -1, -1):
            lin, hk = self.linears[k], hs[k]
            torch.mm(d.t(), hk, out=grads[2 * k])  # weight: d^T h (autograd: (h^T d)^T, made contiguous)
            torch.sum(d, 0, out=grads[2 * k + 1])  # bias: column sums
            if k:
                d = torch.mm(d, lin.weight)  # the layer input's gradient
                if self.acts[k - 1] == "relu":
                    d = torch.ops.aten.threshold_backward(d, hk, 0)
                else:
                    d = torch.ops.aten.tanh_backward(d, hk)
        for p, g in zip(params, grads):
            if p.grad is not g:
                p.grad = g
        return loss
