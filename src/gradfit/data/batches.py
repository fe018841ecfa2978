"""Designs in memory: layouts, and mini-batches gathered from a permutation."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from gradfit.kernel import ABI as KERNEL_ABI  # noqa: F401 (tests and tools read it here)
from gradfit.kernel import usable as usable_kernel  # noqa: F401

# Rows gathered at once for mini-batches (rounded to whole batches).
GATHER_BYTES = 4 << 20


def column_major(Z: torch.Tensor) -> bool:
    """Z (n, m) stored column by column: ``Z.T`` is contiguous (and Z is not a single column or row)."""
    return Z.ndim == 2 and Z.shape[0] > 1 and Z.shape[1] > 1 and Z.T.is_contiguous()


def empty_design(n: int, m: int, dtype: torch.dtype, device, column_major: bool = False) -> torch.Tensor:
    """An uninitialized (n, m) design; ``column_major``: stored column by column (see LinearMSE)."""
    if column_major:
        return torch.empty((m, n), dtype=dtype, device=device).T
    return torch.empty((n, m), dtype=dtype, device=device)


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
