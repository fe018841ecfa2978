"""Several processes, one model: the collectives over torchrun's ranks (identity in one process)."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from gradfit.errors import GradfitError, TrainingError
from gradfit.torchrun import env_rank, env_world_size  # (torch-free: the CLI reads the rank first)

# Seconds a collective may wait for the other ranks before the run fails (instead of hanging).
DEFAULT_TIMEOUT_S = 600


def timeout_seconds() -> float:
    raw = os.environ.get("GRADFIT_DIST_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise TrainingError(f"GRADFIT_DIST_TIMEOUT={raw!r} is not a number of seconds") from None


class RankFailed(TrainingError):
    """Another rank failed or vanished while this one waited for it."""


@dataclass(eq=False)  # compared by identity; hashable, so usable as a dataclass field default
class Dist:
    """The process group as gradfit uses it; ``Dist()`` is one process and every operation a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: Optional[torch.device] = None  # the device this rank trains on (cuda:LOCAL_RANK on GPUs)
    owned: bool = False  # gradfit created the process group, so it destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ collectives

    def _call(self, fn, *args, **kwargs):
        """Run a collective; a peer that died or timed out becomes a clear TrainingError."""
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, torch.distributed.DistError) as exc:
            raise RankFailed(
                f"distributed training stopped: rank {self.rank} of {self.world_size} lost contact with the "
                f"other processes ({str(exc).splitlines()[0][:200]})",
                hint="another rank failed (its message is above) or a machine went away; "
                "GRADFIT_DIST_TIMEOUT sets how long a rank waits (seconds)",
            ) from None

    def sum(self, x):
        """Sum over ranks of a tensor (any device) or a number (int stays int)."""
        if not self.enabled:
            return x
        if isinstance(x, torch.Tensor):
            t = x.detach().clone()
            self._call(torch.distributed.all_reduce, t, op=torch.distributed.ReduceOp.SUM)
            return t
        t = torch.tensor(x, dtype=torch.int64 if isinstance(x, int) else torch.float64)
        self._call(torch.distributed.all_reduce, t, op=torch.distributed.ReduceOp.SUM)
        return t.item()

    def _minmax(self, t: torch.Tensor, op) -> torch.Tensor:
        if not self.enabled:
            return t
        t = t.detach().clone()
        self._call(torch.distributed.all_reduce, t, op=op)
        return t

    def min(self, t: torch.Tensor) -> torch.Tensor:
        return self._minmax(t, torch.distributed.ReduceOp.MIN) if self.enabled else t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self._minmax(t, torch.distributed.ReduceOp.MAX) if self.enabled else t

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        self._call(torch.distributed.all_gather_object, out, obj)
        return out

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s tensor on every rank (a copy; the input is left alone)."""
        if not self.enabled:
            return t
        t = t.detach().clone().contiguous()
        self._call(torch.distributed.broadcast, t, src=src)
        return t

    def agree(self, fn: Callable):
        """Run ``fn`` on every rank; if it raised a GradfitError on any rank, raise that on all.

        The error raised everywhere is the lowest failing rank's, marked ``shared`` so that
        only rank 0 reports it (the CLI keeps other ranks quiet), named by rank when it is
        not rank 0's own. Without it, one rank would exit while the others wait for it.
        """
        if not self.enabled:
            return fn()
        try:
            value, failure = fn(), None
        except GradfitError as err:
            value, failure = None, (type(err).__name__, err.message, err.hint, err.exit_code)
        failures = self.gather(failure)
        for r, f in enumerate(failures):
            if f is not None:
                cls = {c.__name__: c for c in _error_classes()}.get(f[0], GradfitError)
                err = cls(f[1] if r == 0 else f"rank {r}: {f[1]}", hint=f[2])
                err.exit_code = f[3]
                err.shared = True
                raise err
        return value

    # ------------------------------------------------------------ training

    def wrap(self, head: torch.nn.Module) -> torch.nn.Module:
        """The head under DistributedDataParallel (gradients averaged over ranks after backward)."""
        if not self.enabled:
            return head
        from torch.nn.parallel import DistributedDataParallel as DDP  # (imported here for start-up time)

        on_cuda = self.device is not None and self.device.type == "cuda"
        return DDP(head, device_ids=[self.device.index] if on_cuda else None)

    def wrap_loss(self, loss_fn: Callable) -> Callable:
        """A mean loss over this rank's rows -> one whose gradient (after DDP's average) is that of
        the mean over all ranks' rows, and whose value is that global mean.

        With n_r rows here and N over all ranks, the local mean is scaled by W * n_r / N: DDP
        divides the summed gradients by W, leaving sum_r grad(sum of losses on rank r) / N, the
        gradient of the global mean even when the shards (or this batch's slices) differ in size.
        """
        if not self.enabled:
            return loss_fn
        W = self.world_size

        def global_mean(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            n = pred.shape[0]
            local = loss_fn(pred, target) if n else pred.sum() * 0.0  # the mean of no rows is nan
            stats = torch.stack([torch.tensor(float(n), dtype=local.dtype, device=local.device), local.detach() * n])
            stats = self.sum(stats)
            N = stats[0]
            if float(N) == 0:
                return local
            scaled = local * (W * n) / N
            # Value: the global mean, to the last bit the same on every rank (history, tolerance, line
            # searches: a rank whose L-BFGS saw another value would take another step); gradient: scaled's.
            return stats[1] / N + (scaled - scaled.detach())

        global_mean.local = loss_fn  # streaming.py accumulates per-rank means itself
        return global_mean

    def batches(self, perm: torch.Tensor, batch_size: int, n_all: int):
        """This rank's slices of a permutation of its rows, as many on every rank.

        ``batch_size`` counts rows over all ranks: an epoch is ceil(N / batch_size) steps and
        each rank contributes its proportional share to each step.
        """
        steps = max(1, math.ceil(n_all / batch_size))
        n = perm.shape[0]
        for i in range(steps):
            yield perm[i * n // steps : (i + 1) * n // steps]

    def wrap_stop(self, should_stop: Optional[Callable[[], bool]]) -> Optional[Callable[[], bool]]:
        """A stop request on any rank stops every rank at the same epoch."""
        if not self.enabled or should_stop is None:
            return should_stop
        return lambda: self.sum(int(bool(should_stop()))) > 0

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False


def _error_classes():
    from gradfit import errors  # (imported here for start-up time)

    return [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, GradfitError)]


SINGLE = Dist()


def setup(device: torch.device) -> Dist:
    """Join torchrun's process group when there is one (WORLD_SIZE > 1); else ``SINGLE``.

    On CUDA each rank trains on cuda:LOCAL_RANK; the backend is nccl for CUDA tensors and
    gloo for CPU tensors (scaling statistics, agreement on errors), chosen from the device.
    """
    world = env_world_size()
    if world <= 1:
        return SINGLE
    import torch.distributed as td  # (imported here for start-up time)

    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    owned = False
    if not td.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise TrainingError(
                f"WORLD_SIZE={world} is set but MASTER_ADDR is not: gradfit cannot find the other processes",
                hint="start distributed runs with torchrun (see docs/distributed.md), or unset WORLD_SIZE",
            )
        try:
            td.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
        except (RuntimeError, ValueError, td.DistError) as exc:
            raise TrainingError(
                f"cannot join the distributed run as rank {rank} of {world}: {str(exc).splitlines()[0][:200]}",
                hint="check --master-addr/--master-port (or --rdzv-endpoint) and that every node can reach it",
            ) from None
        owned = True
    return Dist(td.get_rank(), td.get_world_size(), local_rank, backend, device, owned)


@contextlib.contextmanager
def closing(dist: Dist):
    """Destroy the process group gradfit created, whatever happens."""
    try:
        yield dist
    finally:
        dist.close()


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a cuda device that is absent is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(
                f"device: {name} was asked for, but CUDA is not available on this machine",
                hint="set device: cpu (or auto, which picks cuda only when it is there)",
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainingError(
                f"device: {name} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)",
                hint="use cuda:0" + (f" to cuda:{torch.cuda.device_count() - 1}" if torch.cuda.device_count() > 1 else ""),
            )
        return dev
    return torch.device("cpu")
