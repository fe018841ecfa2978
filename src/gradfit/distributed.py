"""Several processes, one model: torch.distributed under ``torchrun``.

``torchrun --nproc-per-node N -m gradfit train CONFIG`` starts N copies of gradfit with
RANK / WORLD_SIZE / LOCAL_RANK in their environment. ``setup`` reads them, joins the
process group (gloo on CPU; gloo for CPU tensors and nccl for CUDA tensors on GPUs)
and returns a ``Dist``: the handful of collectives the rest of gradfit needs. Without
torchrun it returns ``SINGLE``, whose operations are the identity, so the
single-process code path is unchanged.

What each rank does (see docs/distributed.md):
- it reads its own contiguous share of the rows (Parquet: whole row groups; CSV: a byte
  range of lines; synthetic: the seeded rows, of which it keeps its slice);
- the train/val/test split is the single-process one: the same seeded permutation of
  all N rows, each rank keeping the indices that fall in its range;
- scaling statistics, the loss, gradients (DistributedDataParallel) and metrics are
  reduced over all ranks, so a run on N processes computes what one process would;
- errors that can happen on one rank only (a bad value in its shard) are agreed on:
  every rank raises the first failing rank's error, rank 0 reports it, all exit 1.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from gradfit.errors import DataError, GradfitError, TrainingError

# Seconds a collective may wait for the other ranks before the run fails (instead of hanging).
DEFAULT_TIMEOUT_S = 600


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun). No torch.distributed needed."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


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
        from torch.nn.parallel import DistributedDataParallel as DDP

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
    from gradfit import errors

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
    import torch.distributed as td

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


# ---------------------------------------------------------------- statistics over chunks and ranks


class Moments:
    """Column statistics accumulated chunk by chunk (Chan's merge), then over ranks.

    Gives n, mean, std (population), min, max and rms of each column: what the feature
    map's and the target's scaling need, without holding the rows.
    """

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.sumsq = self.lo = self.hi = None

    def add(self, A: torch.Tensor) -> "Moments":
        """Fold in a chunk of rows, (n, k) or (n,), float64."""
        A = A.to(torch.float64)
        if A.ndim == 1:
            A = A[:, None]
        nb = int(A.shape[0])
        if self.mean is None:
            k = A.shape[1]
            self.mean = torch.zeros(k, dtype=torch.float64)
            self.m2 = torch.zeros(k, dtype=torch.float64)
            self.sumsq = torch.zeros(k, dtype=torch.float64)
            self.lo = torch.full((k,), math.inf, dtype=torch.float64)
            self.hi = torch.full((k,), -math.inf, dtype=torch.float64)
        if nb == 0:
            return self
        A = A.cpu()
        mb = A.mean(0)
        # amin/amax: min(0)/max(0) also find the indices, ten times slower; squared in place.
        self._merge(nb, mb, (A - mb).square_().sum(0))
        self.sumsq += (A * A).sum(0)
        self.lo = torch.minimum(self.lo, A.amin(0))
        self.hi = torch.maximum(self.hi, A.amax(0))
        return self

    def _merge(self, nb: int, mb: torch.Tensor, m2b: torch.Tensor) -> None:
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta.pow(2) * (self.n * nb / n)
        self.n = n

    def reduce(self, dist: Dist) -> dict:
        """The statistics over every rank's rows (merged in rank order, so equal on all ranks)."""
        if dist.enabled:
            parts = dist.gather((self.n, self.mean, self.m2, self.sumsq, self.lo, self.hi))
            k = next((p[1].shape[0] for p in parts if p[1] is not None), 0)
            total = Moments().add(torch.zeros(0, k, dtype=torch.float64))
            for n, mean, m2, sumsq, lo, hi in parts:
                if n:
                    total._merge(n, mean, m2)
                    total.sumsq += sumsq
                    total.lo = torch.minimum(total.lo, lo)
                    total.hi = torch.maximum(total.hi, hi)
        else:
            total = self
        n = max(total.n, 1)
        return {
            "n": total.n,
            "mean": total.mean,
            "std": (total.m2 / n).sqrt(),
            "min": total.lo,
            "max": total.hi,
            "rms": (total.sumsq / n).sqrt(),
        }


def summarizer(dist: Dist, X: torch.Tensor, y: torch.Tensor):
    """For fit_scaling: fn -> (statistics of fn(X), statistics of y) over every rank's rows."""

    def summarize(fn):
        return Moments().add(fn(X)).reduce(dist), Moments().add(y).reduce(dist)

    return summarize


# ---------------------------------------------------------------- each rank's rows


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that rank keeps: contiguous, sizes differing by at most one."""
    return rank * n // world, (rank + 1) * n // world


def assign_groups(sizes: list[int], rank: int, world: int) -> list[int]:
    """Indices of the row groups (of these sizes) that rank reads: contiguous, balanced by rows.

    A group belongs to the rank whose share of rows [r*N/W, (r+1)*N/W) holds its first row.
    """
    N = sum(sizes)
    lo, hi = shard_range(N, rank, world)
    out, start = [], 0
    for i, s in enumerate(sizes):
        if lo <= start < hi:
            out.append(i)
        start += s
    return out


def _read_csv_shard(path: Path, columns: list[str], rank: int, world: int):
    """This rank's lines of a CSV file: those whose first byte lies in its byte range of the body."""
    import io

    import pandas as pd

    with open(path, "rb") as f:
        header = f.readline()
        body_start = f.tell()
        size = path.stat().st_size - body_start
        lo, hi = shard_range(size, rank, world)

        def line_start(pos: int) -> int:
            # The first line beginning at or after body offset pos.
            if pos <= 0:
                return body_start
            f.seek(body_start + pos - 1)
            f.readline()
            return f.tell()

        a, b = line_start(lo), line_start(hi) if hi < size else body_start + size
        f.seek(a)
        chunk = f.read(max(0, b - a))
    try:
        buf = io.BytesIO(header + chunk)
        try:
            return pd.read_csv(buf, usecols=columns, dtype={c: "float64" for c in columns}, engine="c")
        except ValueError:
            buf.seek(0)
            return pd.read_csv(buf, usecols=columns)
    except Exception as exc:
        if type(exc).__name__ == "EmptyDataError":
            return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        raise DataError(f"{path}: cannot read it: {exc}") from None


def load_shard(cfg, dist: Dist):
    """This rank's rows of the experiment's data: (Dataset of its rows, its first global row, N)."""
    from gradfit import data as gdata

    dc = cfg.data
    if dc.synthetic is not None:
        # The seeded rows, generated alike on every rank; each keeps its slice.
        full = dist.agree(lambda: gdata.load_dataset(cfg))
        lo, hi = shard_range(full.n_rows, dist.rank, dist.world_size)
        ds = gdata.Dataset(full.X[lo:hi].clone(), full.y[lo:hi].clone(), full.feature_names, full.target_name,
                           full.source, list(full.notes))
        n_all = full.n_rows
        del full
        ds.n_rows_global = n_all
        return ds, lo, n_all

    path = cfg.resolved_data_path()
    parquet = gdata._is_parquet(path)

    def read():
        columns = gdata.read_columns(path)
        feats = gdata.select_columns(columns, dc.target, dc.features, path)
        cols = feats + [dc.target]
        if parquet:
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
                mine = assign_groups(sizes, dist.rank, dist.world_size)
                first = sum(sizes[: mine[0]]) if mine else 0
                frame = pf.read_row_groups(mine, columns=cols).to_pandas() if mine else \
                    pf.schema_arrow.empty_table().select(cols).to_pandas()
            except Exception as exc:
                raise DataError(f"{path}: cannot read it: {exc}") from None
            return feats, frame, first
        return feats, _read_csv_shard(path, cols, dist.rank, dist.world_size), None

    feats, frame, first = dist.agree(read)
    raw_counts = dist.gather(len(frame))
    if sum(raw_counts) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    before = sum(raw_counts[: dist.rank])
    first_row = (first + 1) if parquet else (before + 2)  # file line of this rank's first row
    X, y, _ = dist.agree(lambda: gdata.frame_to_arrays(frame, feats, dc.target, path, dc.dropna, first_row=first_row))
    del frame
    counts = dist.gather(len(X))
    n_all = sum(counts)
    if n_all == 0:
        raise DataError(f"{path}: no rows left after dropping missing values")
    dropped = sum(raw_counts) - n_all
    notes = [f"dropped {dropped} row{'s' if dropped > 1 else ''} with missing values (data.dropna)"] if dropped else []
    # Only rank 0 writes the checkpoint that records the fingerprint; no need to hash the file N times.
    source = {"path": str(path.resolve()), "fingerprint": gdata.fingerprint(path) if dist.is_main else None}
    ds = gdata.Dataset(torch.from_numpy(X), torch.from_numpy(y), feats, dc.target, source, notes)
    ds.n_rows_global = n_all
    return ds, sum(counts[: dist.rank]), n_all


def split_shard(n_all: int, offset: int, n_local: int, cfg, dist: Dist):
    """The single-process split of all n_all rows, restricted to this rank's rows (local indices)."""
    from gradfit.data import Split, split_rows

    s = dist.agree(lambda: split_rows(n_all, cfg.data.split.val, cfg.data.split.test, cfg.seed))

    def mine(idx: torch.Tensor) -> torch.Tensor:
        keep = (idx >= offset) & (idx < offset + n_local)
        return idx[keep] - offset

    return Split(mine(s.train), mine(s.val), mine(s.test))


# ---------------------------------------------------------------- metrics over all ranks


class MetricSums:
    """Sums that give regression_metrics' numbers over rows seen chunk by chunk and rank by rank."""

    def __init__(self, center: float):
        self.center = center  # subtracted from y before squaring (the training mean), against cancellation
        self.v = torch.zeros(6, dtype=torch.float64)  # n, loss*n, sum r^2, sum |r|, sum (y-c), sum (y-c)^2

    def add(self, y: torch.Tensor, pred: torch.Tensor, loss) -> None:
        y, pred = y.to(torch.float64), pred.to(torch.float64)
        n = y.shape[0]
        if n == 0:
            return
        r = pred - y
        yc = y - self.center
        self.v += torch.tensor([n, loss.original(pred, y) * n, float(r.pow(2).sum()), float(r.abs().sum()),
                                float(yc.sum()), float(yc.pow(2).sum())], dtype=torch.float64)

    def result(self, dist: Dist) -> Optional[dict]:
        n, loss_n, ss_res, sum_abs, s1, s2 = dist.sum(self.v).tolist()
        if n == 0:
            return None
        mse = ss_res / n
        ss_tot = max(s2 - s1 * s1 / n, 0.0)
        if ss_tot > 0:
            r2 = 1.0 - ss_res / ss_tot
        else:
            r2 = 1.0 if ss_res == 0 else float("-inf")
        return {"loss": loss_n / n, "mse": mse, "rmse": math.sqrt(mse), "mae": sum_abs / n,
                "r2": r2 if math.isfinite(r2) else None}


def evaluate_sets(model, ds, split, loss, dist: Dist) -> dict:
    """api.evaluate_sets over every rank's rows: metrics of train, val and test (None where empty)."""
    out = {}
    center = float(model.y_shift)
    for name in ("train", "val", "test"):
        idx = getattr(split, name)
        sums = MetricSums(center)
        if idx.numel():
            sums.add(ds.y[idx], model.predict(ds.X[idx]), loss)
        out[name] = sums.result(dist)
    return out


def variance(y: torch.Tensor, dist: Dist) -> float:
    """Population variance of y over every rank's rows."""
    if not dist.enabled:
        return float(y.var(unbiased=False))
    m = Moments().add(y).reduce(dist)
    return float(m["std"][0]) ** 2


@contextlib.contextmanager
def closing(dist: Dist):
    """Destroy the process group gradfit created, whatever happens."""
    try:
        yield dist
    finally:
        dist.close()


def exact_least_squares(chunks: Callable, k: int, dist: Dist) -> dict:
    """exact.exact_least_squares over rows seen chunk by chunk and rank by rank.

    ``chunks()`` yields (A, y): float64 design rows with the intercept's column of ones, and
    their targets; it is called three times (normal equations, one refinement, residuals).
    """
    G = torch.zeros(k, k, dtype=torch.float64)
    c = torch.zeros(k, dtype=torch.float64)
    for A, y in chunks():
        G += A.T @ A
        c += A.T @ y
    G, c = dist.sum(G), dist.sum(c)
    evals, evecs = torch.linalg.eigh(G)
    keep = evals > evals.max() * k * torch.finfo(torch.float64).eps

    def solve(rhs):
        return evecs[:, keep] @ ((evecs[:, keep].T @ rhs) / evals[keep])

    coef = solve(c)
    g = torch.zeros(k, dtype=torch.float64)
    for A, y in chunks():  # one refinement step against rounding in the normal equations
        g += A.T @ (y - A @ coef)
    coef = coef + solve(dist.sum(g))
    rss, n = 0.0, 0
    for A, y in chunks():
        rss += float((A @ coef - y).pow(2).sum())
        n += A.shape[0]
    n = int(dist.sum(n))
    # the Gram matrix and the row count serve the standard errors as well (uncertainty.py)
    return {"loss": dist.sum(rss) / max(n, 1), "coef": coef, "gram": G, "n": n}


class ShardRows:
    """Metrics over every rank's rows when each rank holds its shard in memory (Prepared.rows)."""

    def __init__(self, ds, split, dist: Dist):
        self.ds, self.split, self.dist = ds, split, dist

    def evaluate_sets(self, model, loss) -> dict:
        return evaluate_sets(model, self.ds, self.split, loss, self.dist)

    def exact(self, model) -> dict:
        from gradfit.exact import design_chunks

        X, y = self.ds.X[self.split.train], self.ds.y[self.split.train]
        k = model.features.n_terms + int(bool(model.spec["intercept"]))

        def chunks():
            for i, A in design_chunks(model, X):
                yield A, y[i : i + A.shape[0]]

        return exact_least_squares(chunks, k, self.dist)

    def target_variance(self) -> float:
        return variance(self.ds.y[self.split.train], self.dist)


def prepare(cfg, dist: Dist, device: torch.device, t0: float):
    """api.prepare for a distributed run (each rank its shard) or for streamed data."""
    from gradfit import losses, optim
    from gradfit.api import Prepared
    from gradfit.data import STREAM_INIT, generator
    from gradfit.models import build_model
    from gradfit.training import TrainData

    device = dist.device or device
    if cfg.data.streaming:
        from gradfit import streaming

        return streaming.prepare(cfg, dist, device, t0)
    ds, offset, n_all = load_shard(cfg, dist)
    split = split_shard(n_all, offset, ds.n_rows, cfg, dist)
    X_tr, y_tr = ds.X[split.train], ds.y[split.train]
    model = dist.agree(lambda: build_model(cfg, ds.feature_names, ds.target_name, X_tr, y_tr, device,
                                           generator(cfg.seed, STREAM_INIT), summarize=summarizer(dist, X_tr, y_tr)))
    data = TrainData(model.design(X_tr), model.scaled_target(y_tr))
    if dist.sum(split.val.numel()):
        data.Z_val = model.design(ds.X[split.val])
        data.y_val = model.scaled_target(ds.y[split.val])
    plan = dist.agree(lambda: optim.plan(cfg, data.Z, reduce=dist.sum))
    return Prepared(cfg, device, ds, split, model, data, losses.from_config(cfg), plan,
                    time.perf_counter() - t0, dist=dist, rows=ShardRows(ds, split, dist))
