"""The training loop. It never prints: progress goes to a callback, results come back as data.

The loop works on tensors already on the device: the design of the training rows,
the scaled target, and the same for the validation rows. Mini-batches are slices
of a seeded permutation; nothing runs per sample in Python.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from gradfit.data.batches import shuffled_batches
from gradfit.errors import TrainingError
from gradfit.models.passes import MLPMSE, LinearMSE
from gradfit.threads import SMALL_BATCH_VALUES, single_threaded

# How many consecutive epochs the loss must change by at most ``tol`` (relative) to stop.
TOL_WINDOW = {"lbfgs": 3, "lm": 3}
DEFAULT_TOL_WINDOW = 10
# Full-batch gradient descent without momentum on a linear head with mse (a convex quadratic)
# with a step below 2/L (lr: auto is 1.8/L) lowers the loss every epoch: no oscillation to
# wait out, so fewer calm epochs say it has stopped moving (Adam and momentum keep 10).
MONOTONE_TOL_WINDOW = 3
# lbfgs: an epoch in which the gradient's largest component fell below this share of its best
# so far is not calm, whatever the loss did (see the tolerance rule in ``fit``).
GRAD_PROGRESS = 0.5


def _monotone(head, loss_fn, optimizer) -> bool:
    """Plain gradient descent (no momentum) of a linear head on mse: full batch, its loss only goes down."""
    from gradfit.models.heads import LinearHead

    group = optimizer.param_groups[0] if getattr(optimizer, "param_groups", None) else {}
    return type(head) is LinearHead and loss_fn is torch.nn.functional.mse_loss and not group.get("momentum")


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float  # original units
    val_loss: Optional[float]
    lr: float
    seconds: float  # wall time since training began


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    epochs: int = 0
    stop_reason: str = "max_epochs"  # max_epochs | tolerance | early_stopping | interrupted
    converged: bool = False
    seconds: float = 0.0
    best_epoch: Optional[int] = None  # with early stopping: the epoch whose weights were kept


@dataclass
class StopState:
    """What the stopping rules remember from epoch to epoch beyond the history's losses; saved with
    the resume state, so that a resumed run stops where one never interrupted would."""

    best_val: float = math.inf  # early stopping: the best validation loss so far,
    best_epoch: Optional[int] = None  # its epoch,
    since_best: int = 0  # the epochs since,
    best_state: Optional[dict] = None  # and the head's weights then
    best_grad: float = math.inf  # lbfgs: the smallest largest-gradient component so far
    loss_floor: float = 0.0  # lbfgs: changes below 8 ulps of the first loss are rounding
    calm: int = 0  # tolerance: consecutive calm epochs,
    prev_loss: Optional[float] = None  # after the epoch with this train loss,
    tol: Optional[float] = None  # under this train.tol (as given)

    def snapshot(self) -> "StopState":
        """A copy safe to keep while training goes on (the best weights cloned to the CPU)."""
        import dataclasses

        best = None if self.best_state is None else {k: v.detach().to("cpu").clone() for k, v in self.best_state.items()}
        return dataclasses.replace(self, best_state=best)


@dataclass
class TrainData:
    """What the loop trains on, on the device, in scaled units."""

    Z: torch.Tensor  # (n_train, m)
    y: torch.Tensor  # (n_train,)
    Z_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None


def _small_on_one_thread(fn):
    """Run ``fit`` on one thread when the design is small (on the CPU; see fastopt.single_threaded).

    Its ops are then tiny, and on shared cores each multi-threaded one can wait milliseconds at
    the threads' barrier (measured: an MLP on 480 rows took 60 s instead of 1 s on a loaded machine).
    """

    @functools.wraps(fn)
    def wrapper(head, data, *args, **kwargs):
        if kwargs.get("stream") is None and data.Z.device.type == "cpu" and data.Z.numel() <= SMALL_BATCH_VALUES:
            with single_threaded():
                return fn(head, data, *args, **kwargs)
        return fn(head, data, *args, **kwargs)

    return wrapper


@_small_on_one_thread
def fit(
    head: torch.nn.Module,
    data: TrainData,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    *,
    kind: str,
    epochs: int,
    batch_size: Optional[int],
    tol: float,
    loss_scale: float,
    lr: float,
    generator: torch.Generator,
    loss_power: int = 2,
    early_stopping=None,
    on_epoch: Optional[Callable[[EpochRecord], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    on_checkpoint: Optional[Callable[[int], None]] = None,
    checkpoint_every: Optional[int] = None,
    start_epoch: int = 0,
    history: Optional[list[EpochRecord]] = None,
    on_end: Optional[Callable[[int], None]] = None,
    dist=None,
    stream=None,
    stop_state: Optional[StopState] = None,
) -> TrainResult:
    """Train ``head`` on ``data``; stop at ``epochs``, at ``tol``, by early stopping, or when asked.

    Resuming: ``start_epoch`` epochs are done and ``history`` holds their records; the
    tolerance rule and the clock continue from them. ``on_end(epoch)`` runs after the
    last epoch, before early stopping puts the best weights back (to save the state to
    continue from). ``should_stop`` is also asked between mini-batches, so that an
    interrupt stops within one batch (that partial epoch is recorded as the last one).

    Several processes (``dist``, see distributed.py): ``head`` is under DDP, ``loss_fn`` gives
    the global mean, and every rank takes the same number of steps. ``stream`` (streaming.py)
    reads each epoch's batches from disk instead of ``data``. ``stop_state`` holds the stopping
    rules' memory (pass the one saved with a resumed run; it is updated as training goes).
    """
    dist = dist if dist is not None and dist.enabled else None
    n = data.Z.shape[0]
    n_all = n if dist is None else dist.sum(n)  # rows over all ranks: every rank takes the same branch
    full_batch = batch_size is None or batch_size >= n_all
    has_val = data.Z_val is not None and (data.Z_val.shape[0] if dist is None else dist.sum(data.Z_val.shape[0])) > 0
    if stream is not None:
        has_val = stream.has_val
    window = TOL_WINDOW.get(kind, DEFAULT_TOL_WINDOW)
    if kind == "sgd" and full_batch and _monotone(head, loss_fn, optimizer):
        window = MONOTONE_TOL_WINDOW
    # tol: 0 turns the rule off: the run goes on to `epochs` (early stopping and interrupts aside).
    use_tol = tol > 0
    # A tolerance below what the dtype resolves would never be met: floor it at a few ulps.
    eps = torch.finfo(data.Z.dtype).eps
    tol = max(tol, 8 * eps)
    # At an exact fit the loss is the rounding noise of the residuals, which jumps by large relative
    # amounts from epoch to epoch: no relative tolerance is ever met (float32 Adam on exact data ran
    # on for 1700 epochs after reaching the answer, into one of Adam's late spikes). Residuals are
    # resolved to about eps of the target's size (its RMS in training units: 1 when standardized), so
    # an epoch whose loss is below that power of it (in the loss's units) is calm: nothing left to fit.
    # Streamed rows: the target's size is not at hand, and the rule stays off.
    noise_level = 0.0
    if stream is None:
        sq, count = float(torch.linalg.vector_norm(data.y, dtype=torch.float64)) ** 2, int(data.y.numel())
        if dist is not None:  # every rank: the sums over all rows
            sq, count = dist.sum(sq), dist.sum(count)
        if count:
            noise_level = (eps * math.sqrt(sq / count)) ** loss_power * loss_scale
    result = TrainResult()
    st = stop_state if stop_state is not None else StopState()

    def calm_change(prev: Optional[float], loss: float) -> bool:
        """The tolerance rule's test of one epoch: the loss barely moved, or it is rounding noise."""
        return (prev is not None and abs(prev - loss) <= max(tol * abs(prev), st.loss_floor)) or loss <= noise_level

    inner = getattr(head, "module", head)  # the best weights are the head's own (DDP wraps it in .module)
    if early_stopping is None:  # resumed without early stopping: its memory does not apply
        st.best_val, st.best_epoch, st.since_best, st.best_state = math.inf, None, 0, None
    if st.best_state is not None:
        where = inner.state_dict()
        # (states saved on 2026-11-22 by a torchrun run named them as DDP does: module.*)
        best = {k[len("module."):] if k.startswith("module.") and k[len("module."):] in where else k: v
                for k, v in st.best_state.items()}
        st.best_state = {k: v.to(where[k].device) if k in where else v for k, v in best.items()}
    if st.tol is not None and st.tol != tol:  # resumed with another train.tol: count the calm epochs anew
        st.calm, st.prev_loss = 0, None
    st.tol = tol
    result.best_epoch = st.best_epoch
    last_finite: Optional[float] = None
    grad_max: Optional[float] = None  # lbfgs: largest gradient component after the epoch
    t0 = time.perf_counter()
    if history:
        result.history = list(history)
        t0 -= history[-1].seconds
        last_finite = history[-1].train_loss
        if st.prev_loss is None:  # a state saved without the rules' memory: replay the last epochs
            for rec in history[-(window + 1):]:
                st.calm = st.calm + 1 if calm_change(st.prev_loss, rec.train_loss) else 0
                st.prev_loss = rec.train_loss

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(head(data.Z), data.y)
        loss.backward()
        return loss

    # Linear head + MSE on the whole design: the same loss and gradient in one pass over it.
    if dist is None and stream is None and (full_batch or kind == "lbfgs") and LinearMSE.applies(head, loss_fn, data.Z):
        closure = LinearMSE(head, data.Z, data.y, remember=kind == "lbfgs")  # noqa: F811
    # The validation loss of a linear head with MSE, the same way (no module call, no graph).
    val_mse = None
    if has_val and dist is None and stream is None and LinearMSE.applies(head, loss_fn, data.Z_val):
        val_mse = LinearMSE(head, data.Z_val, data.y_val, remember=False)
    gather: dict = {}  # mini-batch gather buffers, reused every epoch
    # An MLP (ReLU/tanh) with MSE: the same gradients as autograd's, without the graph (fastopt.MLPMSE).
    mlp_step = MLPMSE(head) if dist is None and stream is None and MLPMSE.applies(head, loss_fn, data.Z) else None
    if mlp_step is not None and (full_batch or kind == "lbfgs"):
        closure = functools.partial(mlp_step, data.Z, data.y)

    epoch = start_epoch
    head.train()
    for epoch in range(start_epoch + 1, epochs + 1):
        if stream is not None:
            loss_t = stream.train_epoch(head, loss_fn, optimizer, batch_size, generator)
        elif kind == "lbfgs":
            start_loss = float(optimizer.step(closure)) * loss_scale
            if not st.loss_floor and math.isfinite(start_loss):
                st.loss_floor = 8 * torch.finfo(data.Z.dtype).eps * abs(start_loss)
            # L-BFGS reports the loss before its step; the tolerance rule watches the loss where it
            # ended and the gradient there, which gradfit's L-BFGS keeps (no evaluation more).
            if getattr(optimizer, "last", None) is not None:
                loss_t, grad_max = optimizer.last
            else:
                loss_t = closure().detach()
                grad_max = max((float(p.grad.abs().max()) for p in head.parameters() if p.grad is not None), default=0.0)
        elif kind == "lm":
            # One Levenberg-Marquardt iteration on the residuals (gradfit.lm); its gradient feeds
            # the tolerance rule as L-BFGS's does. Several processes: the same step on every rank,
            # from the sums over all rows (the head is not under DDP: LM reduces what it needs).
            grad_max = optimizer.iterate(head, data.Z, data.y, dist=dist)
            with torch.no_grad():
                loss_t = loss_fn(head(data.Z), data.y)
        elif full_batch:
            loss_t = closure().detach()
            optimizer.step()
        else:
            perm = torch.randperm(n, generator=generator).to(data.Z.device)
            total = torch.zeros((), dtype=data.Z.dtype, device=data.Z.device)
            seen = 0
            batches = (
                shuffled_batches(data.Z, data.y, perm, batch_size, gather)
                if dist is None
                else ((data.Z[idx], data.y[idx]) for idx in dist.batches(perm, batch_size, n_all))
            )
            # Small batches on the CPU: one thread for their small ops (fastopt.single_threaded).
            row_values = data.Z[:1].numel()  # (a rank of several can hold no rows)
            small = data.Z.device.type == "cpu" and batch_size * max(1, row_values) <= SMALL_BATCH_VALUES
            threads = single_threaded() if small else contextlib.nullcontext()
            with threads:
                for Zb, yb in batches:
                    if mlp_step is not None:
                        loss = mlp_step(Zb, yb)  # sets the gradients, as zero_grad + backward would
                    else:
                        optimizer.zero_grad(set_to_none=True)
                        loss = loss_fn(head(Zb), yb)
                        loss.backward()
                    optimizer.step()
                    total.add_(loss.detach(), alpha=yb.shape[0])
                    seen += yb.shape[0]
                    if should_stop is not None and seen < n and dist is None and should_stop():
                        break  # a long epoch must not delay an interrupt
            loss_t = total / seen if dist is None else dist.sum(total) / dist.sum(seen)
        train_loss = float(loss_t) * loss_scale
        if not math.isfinite(train_loss):
            last = f"{last_finite:.6g}" if last_finite is not None else "none"
            raise TrainingError(
                f"training diverged: the loss became {train_loss} at epoch {epoch} (last finite loss: {last})",
                hint=f"lower optimizer.lr (it is {lr:.3g}; try {lr / 10:.3g}), or keep data.standardize: true",
            )
        last_finite = train_loss
        val_loss = None
        if val_mse is not None:
            val_loss = float(val_mse.loss()) * loss_scale
        elif has_val:
            head.eval()
            with torch.no_grad():
                val = stream.val_loss(head, loss_fn) if stream is not None else loss_fn(head(data.Z_val), data.y_val)
                val_loss = float(val) * loss_scale
            head.train()
        rec = EpochRecord(epoch, train_loss, val_loss, lr, time.perf_counter() - t0)
        result.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)

        # Early stopping on the validation loss, keeping the best weights.
        if early_stopping is not None and val_loss is not None:
            if val_loss < st.best_val * (1 - early_stopping.min_delta) or st.best_state is None:
                st.best_val = val_loss
                st.best_state = copy.deepcopy(inner.state_dict())
                st.best_epoch = result.best_epoch = epoch
                st.since_best = 0
            else:
                st.since_best += 1
                if st.since_best >= early_stopping.patience:
                    result.stop_reason = "early_stopping"
                    result.converged = True
                    break

        # Tolerance: the loss changed by at most tol (relative) in each of the last `window` epochs.
        # (A rule on the change, not on the best loss, so that Adam's early oscillations do not stop it.)
        # lbfgs: the loss cannot see parameter changes below about sqrt(eps) of them, the gradient
        # can; an epoch in which the gradient still shrank (below GRAD_PROGRESS of its best) is
        # progress, so L-BFGS runs on until the gradient is rounding noise: the dtype's precision.
        grad_progress = grad_max is not None and grad_max < GRAD_PROGRESS * st.best_grad
        if grad_max is not None:
            st.best_grad = min(st.best_grad, grad_max)
        st.calm = st.calm + 1 if not grad_progress and calm_change(st.prev_loss, train_loss) else 0
        st.prev_loss = train_loss
        if checkpoint_every and on_checkpoint is not None and epoch % checkpoint_every == 0:
            on_checkpoint(epoch)  # after the rules took this epoch in: a resume continues from here exactly
        if use_tol and st.calm >= window:
            result.stop_reason = "tolerance"
            result.converged = True
            break
        if should_stop is not None and should_stop():
            result.stop_reason = "interrupted"
            break

    if on_end is not None and epoch > start_epoch:
        on_end(epoch)
    if st.best_state is not None:
        inner.load_state_dict(st.best_state)
    result.epochs = epoch  # start_epoch when no epoch ran
    result.seconds = time.perf_counter() - t0
    return result
