"""Thread counts for small ops, and the worker pool of row-parallel passes."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

from gradfit.kernel import ABI as KERNEL_ABI  # noqa: F401 (tests and tools read it here)
from gradfit.kernel import usable as usable_kernel  # noqa: F401

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


@contextlib.contextmanager
def passes_on_one_thread():
    """torch's CPU ops and numpy's BLAS on one thread inside the block: the passes before and after
    training (the data's statistics and design, metrics, the exact check, the summary), made of many
    chunk-sized ops. Measured on 2 cores with one other busy process, 1,000,000 x 32 linear run:
    13.9-38.8 s with their intra-op threads, 9.8-11.0 s without (bench/README.md, whole processes);
    idle, about the same. Training's large ops keep their threads. A fixed count, not one chosen by
    the machine's load: the run's last bits then do not depend on what else was running. The counts are
    the process's (torch and BLAS have no per-thread ones): library users training in several threads
    of one process at once share them."""
    from threadpoolctl import threadpool_limits  # (imported here for start-up time)

    with single_threaded(), threadpool_limits(1, user_api="blas"):
        yield


_POOL: Optional[ThreadPoolExecutor] = None


def worker_pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="gradfit-chunks")
    return _POOL


def prefetch(module: str) -> None:
    """Import ``module`` on a thread while this one goes on (the data load and the training spend their
    time in pyarrow, numpy and torch, which let go of the GIL). For scipy.special, which an MSE run's
    summary needs at the end (0.3 s of import; results/distributions.py)."""
    import importlib  # (imported here for start-up time)
    import sys  # (imported here for start-up time)
    import threading  # (imported here for start-up time)

    def run():
        with contextlib.suppress(Exception):  # (the real import reports what went wrong)
            importlib.import_module(module)

    if module not in sys.modules:
        threading.Thread(target=run, daemon=True, name=f"gradfit-prefetch-{module}").start()
