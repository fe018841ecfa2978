"""One epoch of training, whatever the optimizer: the step the loop drives without knowing its kind.

``make_epoch_step`` is the one place that picks how an epoch runs, from the optimizer's kind
and where the rows are: full-batch first-order steps (with the one-pass gradients of
models.passes where they apply), mini-batches, L-BFGS's ``step(closure)``,
Levenberg-Marquardt's ``iterate()``, or the Parquet stream's ``train_epoch()``. The loop calls
``run(should_stop)`` once per epoch and ``val_loss()`` after it, and reads ``tol_window``.

``KINDS`` holds what else depends on the optimizer's kind (read by the run and the CLI).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from gradfit.data.batches import shuffled_batches
from gradfit.models.gram import GramMSE, RowSums
from gradfit.models.heads import LinearHead
from gradfit.models.passes import MLPMSE, LinearMSE
from gradfit.parallel import SINGLE
from gradfit.threads import SMALL_BATCH_VALUES, single_threaded


@dataclass(frozen=True)
class KindFacts:
    """What follows from an optimizer kind, decided here and nowhere else."""

    tol_window: int = 10  # consecutive calm epochs (loss change <= train.tol) that stop the run
    under_ddp: bool = True  # several processes: the head is wrapped in DDP (LM reduces its own sums)
    has_lr: bool = True  # a learning rate (shown in the summary); LM has none
    whole_design: bool = False  # every step reads the whole design, whatever train.batch_size
    own_stop: bool = False  # the optimizer's own test says when to stop (EpochOutcome.finished), not train.tol


DEFAULT_TOL_WINDOW = 10
# The Gram route (models.gram) costs n p^2 once and O(p^2) a step, a row pass n p: wider designs than
# GRAM_MAX_COLUMNS train on the rows. So do small ones (fewer than GRAM_MIN_VALUES values, or fewer than
# GRAM_MIN_ROWS_PER_COLUMN rows a column): a pass over them costs microseconds, and there the rows' own
# landing point keeps NIST's certified digits as measured (bench/accuracy.py).
GRAM_MAX_COLUMNS = 2048
GRAM_MIN_VALUES = 1 << 16
GRAM_MIN_ROWS_PER_COLUMN = 16
KINDS = {
    "sgd": KindFacts(DEFAULT_TOL_WINDOW),
    "adam": KindFacts(DEFAULT_TOL_WINDOW),
    "adamw": KindFacts(DEFAULT_TOL_WINDOW),
    "lbfgs": KindFacts(3, whole_design=True),
    "lm": KindFacts(3, under_ddp=False, has_lr=False, whole_design=True, own_stop=True),
    # (solved outside the loop, from the Gram matrix: train/exact_route.py)
    "exact": KindFacts(1, under_ddp=False, has_lr=False, whole_design=True),
}
# Full-batch gradient descent without momentum on a linear head with mse (a convex quadratic)
# with a step below 2/L (lr: auto is 1.8/L) lowers the loss every epoch: no oscillation to
# wait out, so fewer calm epochs say it has stopped moving (Adam and momentum keep 10).
MONOTONE_TOL_WINDOW = 3


def facts(kind: str) -> KindFacts:
    """The facts of an optimizer kind (a kind not in the table: a first-order optimizer's)."""
    return KINDS.get(kind, KindFacts(DEFAULT_TOL_WINDOW))


def monotone(head, loss_fn, optimizer) -> bool:
    """Plain gradient descent (no momentum) of a linear head on mse: full batch, its loss only goes down."""
    group = optimizer.param_groups[0] if getattr(optimizer, "param_groups", None) else {}
    head = getattr(head, "module", head)  # (under DDP: the head it wraps; every rank then waits as one process)
    loss_fn = getattr(loss_fn, "local", loss_fn)  # (parallel.Dist.wrap_loss: the mean over all ranks of this loss)
    return type(head) is LinearHead and loss_fn is torch.nn.functional.mse_loss and not group.get("momentum")


class _TensorsOnly:
    """The source of rows given as tensors only (tests, benchmarks): one process, in memory."""

    dist = SINGLE
    streamed = False


@dataclass
class TrainRows:
    """Where the training rows are: tensors on the device (``data``: Z, y, Z_val, y_val in scaled
    units), this rank's share of them when the source spans torchrun's ranks, or batches the source
    reads from Parquet each epoch (a source whose ``streamed`` is true: train.streamed.ParquetStream)."""

    data: Any  # train.loop.TrainData
    source: Any = None  # data.sources.RowSource, as chosen in train.run.prepare (default: these tensors alone)

    def __post_init__(self):
        if self.source is None:
            self.source = _TensorsOnly()

    @property
    def dist(self):
        """The source's ranks (parallel.SINGLE in one process: every sum the identity)."""
        return self.source.dist

    @property
    def streamed(self) -> bool:
        return bool(getattr(self.source, "streamed", False))

    def threads(self):
        """A small design on the CPU trains on one thread (see threads.single_threaded).

        Its ops are then tiny, and on shared cores each multi-threaded one can wait milliseconds at
        the threads' barrier (measured: an MLP on 480 rows took 60 s instead of 1 s on a loaded machine).
        """
        Z = self.data.Z
        small = not self.streamed and Z.device.type == "cpu" and Z.numel() <= SMALL_BATCH_VALUES
        return single_threaded() if small else contextlib.nullcontext()


@dataclass
class EpochOutcome:
    loss: Any  # the epoch's training loss (0-dim tensor or float, scaled units)
    grad_max: Optional[float] = None  # lbfgs, lm: the largest gradient component after the epoch
    start_loss: Any = None  # lbfgs: the loss before its step (scaled units)
    finished: Optional[str] = None  # lm: why to stop ("converged: ..." / "stuck: ..."); None: go on


class EpochStep:
    """One epoch of training (``run``) and the validation loss after it (``val_loss``)."""

    tol_window: int = DEFAULT_TOL_WINDOW  # calm epochs the tolerance rule waits for

    def __init__(self, head, loss_fn, optimizer, val: Optional[Callable[[], Any]]):
        self.head, self.loss_fn, self.optimizer = head, loss_fn, optimizer
        self._val = val

    def run(self, should_stop: Optional[Callable[[], bool]]) -> EpochOutcome:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def has_val(self) -> bool:
        return self._val is not None

    def val_loss(self):
        """The validation loss (scaled units), None without validation rows."""
        return None if self._val is None else self._val()

    def target_sums(self) -> Optional[tuple[float, int]]:
        """The sum of squares of the scaled target over all training rows and their count (None: not at hand)."""
        return None


class _InMemory(EpochStep):
    """Rows on the device (this rank's, with ``dist``)."""

    def __init__(self, head, loss_fn, optimizer, val, data, dist):
        super().__init__(head, loss_fn, optimizer, val)
        self.data, self.dist = data, dist

    def target_sums(self) -> Optional[tuple[float, int]]:
        gram = getattr(self, "closure", None)
        if isinstance(gram, GramMSE):  # (the sums are at hand: streamed rows too)
            return gram.target_sums()
        y = self.data.y
        sq, count = float(torch.linalg.vector_norm(y, dtype=torch.float64)) ** 2, int(y.numel())
        if self.dist.enabled:  # every rank: the sums over all rows
            sq, count = self.dist.sum(sq), self.dist.sum(count)
        return sq, count


class FullBatchStep(_InMemory):
    """A first-order step on the gradient of the whole design."""

    def __init__(self, head, loss_fn, optimizer, val, data, dist, closure):
        super().__init__(head, loss_fn, optimizer, val, data, dist)
        self.closure = closure

    def run(self, should_stop) -> EpochOutcome:
        loss_t = self.closure().detach()
        self.optimizer.step()
        return EpochOutcome(loss_t)


class GramDescentStep(FullBatchStep):
    """Plain full-batch gradient descent (sgd without momentum or weight decay) of a linear head on MSE
    from the rows' Gram matrix: ``ahead(count)`` gives the next ``count`` epochs' losses in closed
    form (models.gram.GramMSE.descent), for the loop to take many epochs at once."""

    def __init__(self, head, loss_fn, optimizer, val, data, dist, closure, val_gram):
        super().__init__(head, loss_fn, optimizer, val, data, dist, closure)
        self.val_gram = val_gram

    def ahead(self, count: int):
        """(train losses, val losses or None, weights after epoch k as ``at(k)``) of the next ``count`` epochs."""
        return self.closure.descent(float(self.optimizer.param_groups[0]["lr"]), count, self.val_gram)

    def advance(self, at, k: int) -> None:
        """Move the head to its weights after epoch k of the last ``ahead``."""
        self.closure.set_weights(at(k))


def _plain_descent(optimizer) -> bool:
    """gradfit's SGD with no momentum, Nesterov or weight decay: theta -= lr * grad, nothing else."""
    from gradfit.optim.first_order import SGD  # (imported here for start-up time)

    if type(optimizer) is not SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    return not group["momentum"] and not group["weight_decay"] and not group["nesterov"]


class MiniBatchStep(_InMemory):
    """First-order steps on the slices of a seeded permutation (every rank as many, with ``dist``)."""

    def __init__(self, head, loss_fn, optimizer, val, data, dist, *, batch_size, n_all, generator, mlp_step):
        super().__init__(head, loss_fn, optimizer, val, data, dist)
        self.batch_size, self.n_all, self.generator, self.mlp_step = batch_size, n_all, generator, mlp_step
        self.gather: dict = {}  # mini-batch gather buffers, reused every epoch

    def _batches(self, perm):
        data, dist = self.data, self.dist
        if not dist.enabled:
            return shuffled_batches(data.Z, data.y, perm, self.batch_size, self.gather)
        return ((data.Z[idx], data.y[idx]) for idx in dist.batches(perm, self.batch_size, self.n_all))

    def run(self, should_stop) -> EpochOutcome:
        data, dist, optimizer = self.data, self.dist, self.optimizer
        n = data.Z.shape[0]
        perm = torch.randperm(n, generator=self.generator).to(data.Z.device)
        total = torch.zeros((), dtype=data.Z.dtype, device=data.Z.device)
        seen = 0
        batches = self._batches(perm)
        # Small batches on the CPU: one thread for their small ops (threads.single_threaded).
        row_values = data.Z[:1].numel()  # (a rank of several can hold no rows)
        small = data.Z.device.type == "cpu" and self.batch_size * max(1, row_values) <= SMALL_BATCH_VALUES
        with single_threaded() if small else contextlib.nullcontext():
            for Zb, yb in batches:
                if self.mlp_step is not None:
                    loss = self.mlp_step(Zb, yb)  # sets the gradients, as zero_grad + backward would
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self.head(Zb), yb)
                    loss.backward()
                optimizer.step()
                total.add_(loss.detach(), alpha=yb.shape[0])
                seen += yb.shape[0]
                if should_stop is not None and seen < n and not dist.enabled and should_stop():
                    break  # a long epoch must not delay an interrupt
        return EpochOutcome(total / seen if not dist.enabled else dist.sum(total) / dist.sum(seen))


class LBFGSStep(_InMemory):
    """One ``optimizer.step(closure)``: up to its iterations per epoch, each with a line search."""

    def __init__(self, head, loss_fn, optimizer, val, data, dist, closure):
        super().__init__(head, loss_fn, optimizer, val, data, dist)
        self.closure = closure

    def run(self, should_stop) -> EpochOutcome:
        start = self.optimizer.step(self.closure)
        # L-BFGS reports the loss before its step; the tolerance rule watches the loss where it
        # ended and the gradient there, which gradfit's L-BFGS keeps (no evaluation more).
        if getattr(self.optimizer, "last", None) is not None:
            loss_t, grad_max = self.optimizer.last
        else:
            loss_t = self.closure().detach()
            grad_max = max((float(p.grad.abs().max()) for p in self.head.parameters() if p.grad is not None), default=0.0)
        return EpochOutcome(loss_t, grad_max, start)


class LMStep(_InMemory):
    """One Levenberg-Marquardt iteration on the residuals (optim.lm); its gradient feeds the
    tolerance rule as L-BFGS's does. Several processes: the same step on every rank, from the
    sums over all rows (the head is not under DDP: LM reduces what it needs)."""

    def run(self, should_stop) -> EpochOutcome:
        data = self.data
        grad_max = self.optimizer.iterate(self.head, data.Z, data.y, dist=self.dist, w=getattr(data, "w", None))
        with torch.no_grad():
            loss_t = self.loss_fn(self.head(data.Z), data.y)
        return EpochOutcome(loss_t, grad_max, finished=self.optimizer.finished)


class StreamedStep(EpochStep):
    """An epoch over the batches read from disk (train.streamed.ParquetStream)."""

    def __init__(self, head, loss_fn, optimizer, val, stream, batch_size, generator):
        super().__init__(head, loss_fn, optimizer, val)
        self.stream, self.batch_size, self.generator = stream, batch_size, generator

    def run(self, should_stop) -> EpochOutcome:
        return EpochOutcome(self.stream.train_epoch(self.head, self.loss_fn, self.optimizer, self.batch_size, self.generator))


def _autograd_closure(head, loss_fn, optimizer, Z, y):
    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(head(Z), y)
        loss.backward()
        return loss

    return closure


def _validation(head, loss_fn, rows: TrainRows, dist) -> Optional[Callable[[], Any]]:
    """The validation loss in scaled units, as a function of nothing (None: no validation rows);
    ``loss_fn``: the validation rows' loss (their own with row weights, train.loop.TrainData)."""
    data, stream = rows.data, (rows.source if rows.streamed else None)
    if rows.streamed:
        has_val = stream.has_val
    else:
        has_val = data.Z_val is not None and dist.sum(data.Z_val.shape[0]) > 0
    if not has_val:
        return None
    # The validation loss of a linear head with MSE in one pass (no module call, no graph).
    if not dist.enabled and not rows.streamed and LinearMSE.applies(head, loss_fn, data.Z_val):
        return LinearMSE(head, data.Z_val, data.y_val, remember=False).loss

    def val_loss():
        head.eval()
        with torch.no_grad():
            val = stream.val_loss(head, loss_fn) if rows.streamed else loss_fn(head(data.Z_val), data.y_val)
        head.train()
        return val

    return val_loss


def make_epoch_step(head, loss_fn, optimizer, rows: TrainRows, *, kind: str, batch_size: Optional[int],
                    generator: torch.Generator, val_loss_fn: Optional[Callable] = None) -> EpochStep:
    """The epoch step for this optimizer kind and these rows: the one place that decides it.

    ``val_loss_fn``: the validation rows' loss where it is not ``loss_fn`` (row weights: each set its own)."""
    data = rows.data
    dist = rows.dist
    n = data.Z.shape[0]
    # rows over all ranks: every rank takes the same branch (streamed: counted by the stream's first pass)
    n_all = rows.source.count("train") if rows.streamed else dist.sum(n)
    full_batch = batch_size is None or batch_size >= n_all
    val = _validation(head, val_loss_fn or loss_fn, rows, dist)
    kf = facts(kind)
    window = MONOTONE_TOL_WINDOW if kind == "sgd" and full_batch and monotone(head, loss_fn, optimizer) else kf.tol_window
    step = _choose(head, loss_fn, optimizer, rows, dist, val, kind=kind, batch_size=batch_size, n_all=n_all,
                   full_batch=full_batch, generator=generator)
    step.tol_window = window
    return step


def _gram_route(head, loss_fn, rows, dist, kind: str, whole: bool) -> Optional[GramMSE]:
    """The Gram closure for full-batch training of a linear head on MSE (None: train on the rows).

    Levenberg-Marquardt keeps its own iteration on the rows; a design wider than GRAM_MAX_COLUMNS
    or with fewer rows than columns, or whose Gram matrix is too ill-conditioned, keeps the rows.
    Streamed rows (a Parquet file read each pass) take it on the same terms: the file is then read for
    the statistics and their refinement, not once an epoch."""
    inner = getattr(head, "module", head)  # (under DDP: the head itself; its gradients come from the global sums)
    local = getattr(loss_fn, "local", loss_fn)  # (over torchrun's ranks: the loss of which the run takes the global mean)
    data = rows.data
    if kind == "lm" or not whole or not LinearMSE.applies(inner, local, data.Z):
        return None
    m = data.Z.shape[1] + int(inner.bias is not None)
    n = rows.source.count("train") if rows.streamed else dist.sum(int(data.Z.shape[0]))
    if m > GRAM_MAX_COLUMNS or n < GRAM_MIN_ROWS_PER_COLUMN * m or n * m < GRAM_MIN_VALUES:
        return None
    if rows.streamed:
        gram = GramMSE(inner, None, None, sums=_stream_sums(rows.source, "train", inner))
    else:
        gram = GramMSE(inner, data.Z, data.y, dist)
    return gram if gram.usable else None


def _stream_sums(stream, which: str, head) -> RowSums:
    """The RowSums of a Parquet stream's rows of one set, their design made slice by slice as it trains on them."""
    from gradfit.data.stream import TRAIN, VAL  # (imported here for start-up time)

    code = {"train": TRAIN, "val": VAL}[which]

    def blocks():
        for X, y in stream.rows_of(code):
            Z, t = stream._design(X, y)
            yield Z.to(torch.float64), t.to(torch.float64)

    return RowSums(None, None, head.bias is not None, stream.dist, blocks=blocks, m=head.weight.shape[0],
                   n=stream.count(which), device=head.weight.device)


def _choose(head, loss_fn, optimizer, rows, dist, val, *, kind, batch_size, n_all, full_batch, generator) -> EpochStep:
    data = rows.data
    whole = full_batch or facts(kind).whole_design
    # Linear head + MSE on the whole design: the loss and gradient from the rows' Gram matrix (models.gram),
    # or where that is too ill-conditioned (or the design too wide), in one pass over the rows each.
    gram = _gram_route(head, loss_fn, rows, dist, kind, whole)
    if rows.streamed and gram is None:
        return StreamedStep(head, loss_fn, optimizer, val, rows.source, batch_size, generator)
    closure = gram or _autograd_closure(head, loss_fn, optimizer, data.Z, data.y)
    if gram is not None:
        val_gram, inner = None, getattr(head, "module", head)
        if val is not None and rows.streamed:
            val_gram = GramMSE(inner, None, None, sums=_stream_sums(rows.source, "val", inner), anchor=gram.optimum)
        elif val is not None and data.Z_val is not None:
            val_gram = GramMSE(inner, data.Z_val, data.y_val, dist, anchor=gram.optimum)
        val = val_gram.loss if val_gram is not None else val
        if kind == "sgd" and full_batch and _plain_descent(optimizer):
            return GramDescentStep(head, loss_fn, optimizer, val, data, dist, closure, val_gram)
    elif not dist.enabled and whole and LinearMSE.applies(head, loss_fn, data.Z):
        closure = LinearMSE(head, data.Z, data.y, remember=kind == "lbfgs")
    # An MLP (ReLU/tanh) with MSE: the same gradients as autograd's, without the graph (models.passes.MLPMSE).
    mlp_step = MLPMSE(head) if not dist.enabled and MLPMSE.applies(head, loss_fn, data.Z) else None
    if mlp_step is not None and whole:
        closure = functools.partial(mlp_step, data.Z, data.y)
    if kind == "lbfgs":
        return LBFGSStep(head, loss_fn, optimizer, val, data, dist, closure)
    if kind == "lm":
        return LMStep(head, loss_fn, optimizer, val, data, dist)
    if full_batch:
        return FullBatchStep(head, loss_fn, optimizer, val, data, dist, closure)
    return MiniBatchStep(head, loss_fn, optimizer, val, data, dist, batch_size=batch_size, n_all=n_all,
                         generator=generator, mlp_step=mlp_step)
