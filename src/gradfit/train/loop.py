"""The training loop. It never prints: progress goes to a callback, results come back as data.

Each epoch: the epoch step (optim.steppers: which one is decided there, from the optimizer's
kind and where the rows are), the record, the stopping rules (train.stopping), the periodic
checkpoint, an interrupt. The loop works on tensors already on the device (or a Parquet
stream); nothing runs per sample in Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from gradfit.models.weighted import weighted_loss
from gradfit.optim.steppers import TrainRows, facts, make_epoch_step
from gradfit.train.stopping import Divergence, StopRules, StopState, noise_level

__all__ = ["Callbacks", "EpochRecord", "LoopSettings", "StartFrom", "StopState", "TrainData", "TrainResult",
           "TrainRows", "fit"]


@dataclass(slots=True)
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
    stop_reason: str = "max_epochs"  # max_epochs | tolerance | early_stopping | interrupted | stalled
    converged: bool = False
    seconds: float = 0.0
    finished: Optional[str] = None  # lm: its own stopping test's verdict (optim.lm), for the warnings
    best_epoch: Optional[int] = None  # with early stopping: the epoch whose weights were kept


@dataclass
class TrainData:
    """What the loop trains on, on the device, in scaled units."""

    Z: torch.Tensor  # (n_train, m)
    y: torch.Tensor  # (n_train,)
    Z_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None
    # Row weights (data.weights), in Z's dtype and on its device; None: every row weighs 1.
    w: Optional[torch.Tensor] = None  # (n_train,)
    w_val: Optional[torch.Tensor] = None  # (n_val,)

    def training_loss(self, loss, y_scale: float) -> Callable:
        """The loss the loop minimizes on (Z, y): the mean loss, or with row weights sum(w l) / sum(w)."""
        return loss.scaled(y_scale) if self.w is None else weighted_loss(loss, y_scale, self.w)

    def validation_loss(self, loss, y_scale: float) -> Optional[Callable]:
        """The loss on (Z_val, y_val) when it is not the training loss's function (row weights); else None."""
        if self.w is None or self.w_val is None or self.w_val.numel() == 0:
            return None
        return weighted_loss(loss, y_scale, self.w_val)


@dataclass
class LoopSettings:
    """How the loop runs: the optimizer's kind, the cap, the batches, the rules, the units."""

    kind: str  # optimizer.kind: which epoch step (optim.steppers.make_epoch_step)
    epochs: int
    batch_size: Optional[int]
    tol: float
    loss_scale: float  # training units -> original units of the loss
    lr: float  # (for the divergence message)
    generator: torch.Generator  # mini-batch shuffles
    loss_power: int = 2
    early_stopping: object = None  # config's EarlyStopping
    checkpoint_every: Optional[int] = None
    val_loss_fn: Optional[Callable] = None  # the validation rows' loss when it differs (TrainData.validation_loss)


@dataclass
class Callbacks:
    """``on_epoch(record)``; ``should_stop()`` (asked after each epoch and between mini-batches);
    ``on_checkpoint(epoch)`` every ``checkpoint_every`` epochs; ``on_end(epoch)`` after the last
    epoch, before early stopping puts the best weights back (to save the state to continue from)."""

    on_epoch: Optional[Callable[[EpochRecord], None]] = None
    should_stop: Optional[Callable[[], bool]] = None
    on_checkpoint: Optional[Callable[[int], None]] = None
    on_end: Optional[Callable[[int], None]] = None


@dataclass
class StartFrom:
    """Resuming: ``epoch`` epochs are done, ``history`` holds their records, ``stop_state`` the rules' memory."""

    epoch: int = 0
    history: Optional[list[EpochRecord]] = None
    stop_state: Optional[StopState] = None


def fit(head: torch.nn.Module, rows: TrainRows, loss_fn: Callable, optimizer, settings: LoopSettings,
        callbacks: Optional[Callbacks] = None, start: Optional[StartFrom] = None) -> TrainResult:
    """Train ``head`` on ``rows``; stop at ``epochs``, at ``tol``, by early stopping, or when asked.

    Resuming (``start``): the tolerance rule and the clock continue from the history; the
    stop state passed in is updated as training goes. An interrupt (``should_stop``) stops
    within one mini-batch (that partial epoch is recorded as the last one).

    Several processes (``rows.dist``): ``head`` is under DDP (as the optimizer kind says),
    ``loss_fn`` gives the global mean, and every rank takes the same number of steps.
    """
    with rows.threads():
        return _fit(head, rows, loss_fn, optimizer, settings, callbacks or Callbacks(), start or StartFrom())


def _fit(head, rows: TrainRows, loss_fn, optimizer, s: LoopSettings, cb: Callbacks, start: StartFrom) -> TrainResult:
    t0 = time.perf_counter()  # (the Gram route's statistics, made here, are training time)
    step = make_epoch_step(head, loss_fn, optimizer, rows, kind=s.kind, batch_size=s.batch_size, generator=s.generator,
                           val_loss_fn=s.val_loss_fn)
    eps = torch.finfo(rows.data.Z.dtype).eps
    noise = noise_level(step.target_sums(), eps, s.loss_power, s.loss_scale)
    inner = getattr(head, "module", head)  # the best weights are the head's own (DDP wraps it in .module)
    # (an optimizer with its own stopping test, lm, ignores train.tol: see optim.lm)
    tol = 0.0 if facts(s.kind).own_stop else s.tol
    rules = StopRules(start.stop_state if start.stop_state is not None else StopState(), inner, tol=tol, eps=eps,
                      window=step.tol_window, noise=noise, early_stopping=s.early_stopping)
    result = TrainResult()
    divergence = Divergence(s.lr)
    if start.history:
        result.history = list(start.history)
        t0 -= start.history[-1].seconds
        divergence.last_finite = start.history[-1].train_loss
        rules.replay(start.history)
    head.train()
    each = _epochs_ahead if getattr(step, "ahead", None) is not None and s.early_stopping is None else _epochs_each
    epoch = each(step, rules, divergence, s, cb, result, t0, start.epoch)
    return _ended(result, rules, cb, start, epoch, t0)


def _ended(result: TrainResult, rules: StopRules, cb: Callbacks, start: StartFrom, epoch: int, t0: float) -> TrainResult:
    if cb.on_end is not None and epoch > start.epoch:
        cb.on_end(epoch)
    rules.restore_best()
    result.best_epoch = rules.st.best_epoch
    result.epochs = epoch  # start.epoch when no epoch ran
    result.seconds = time.perf_counter() - t0
    return result


def _epochs_each(step, rules: StopRules, divergence: Divergence, s: LoopSettings, cb: Callbacks, result: TrainResult,
                 t0: float, done: int) -> int:
    """The epochs one by one, after the ``done`` ones: the number of the last that ran."""
    epoch = done
    for epoch in range(done + 1, s.epochs + 1):
        out = step.run(cb.should_stop)
        if out.start_loss is not None:
            rules.first_loss(float(out.start_loss) * s.loss_scale)
        train_loss = divergence.check(float(out.loss) * s.loss_scale, epoch)
        val = step.val_loss()
        rec = EpochRecord(epoch, train_loss, None if val is None else float(val) * s.loss_scale, s.lr, time.perf_counter() - t0)
        result.history.append(rec)
        if cb.on_epoch is not None:
            cb.on_epoch(rec)
        if rules.early_stop(epoch, rec.val_loss):
            result.stop_reason, result.converged = "early_stopping", True
            break
        rules.tolerance(train_loss, out.grad_max)
        if s.checkpoint_every and cb.on_checkpoint is not None and epoch % s.checkpoint_every == 0:
            cb.on_checkpoint(epoch)  # after the rules took this epoch in: a resume continues from here exactly
        if rules.converged():
            result.stop_reason, result.converged = "tolerance", True
            break
        if out.finished is not None:
            ok = out.finished.startswith("converged")
            result.stop_reason, result.converged, result.finished = ("tolerance" if ok else "stalled"), ok, out.finished
            break
        if cb.should_stop is not None and cb.should_stop():
            result.stop_reason = "interrupted"
            break
    return epoch


# Epochs per block of plain descent taken at once (a block of 4096 costs about a millisecond: an
# interrupt still stops within it).
AHEAD_BLOCK = 4096


def _epochs_ahead(step, rules: StopRules, divergence: Divergence, s: LoopSettings, cb: Callbacks, result: TrainResult,
                  t0: float, epoch: int) -> int:
    """The epochs of a step that gives its losses ahead (optim.steppers.GramDescentStep), block by block:
    each block's losses in closed form, the rules over them at once (StopRules.tolerance_run), then the
    records, the weights moved to the last epoch taken, the checkpoint and the interrupt as per epoch."""
    each_epoch = not step.dist.enabled
    while epoch < s.epochs:
        count = min(AHEAD_BLOCK, s.epochs - epoch)
        if s.checkpoint_every:  # (a block ends at each checkpoint epoch)
            count = min(count, s.checkpoint_every - epoch % s.checkpoint_every)
        began = time.perf_counter() - t0
        train, val, at = step.ahead(count)
        train = train * s.loss_scale
        bad = np.flatnonzero(~np.isfinite(train))
        finite = int(bad[0]) if bad.size else count
        stop = rules.tolerance_run(train[:finite], commit=False)
        used = stop + 1 if stop is not None else finite
        took = time.perf_counter() - t0 - began
        vals = [None] * used if val is None else (val[:used] * s.loss_scale).tolist()
        times = (began + took / count * np.arange(1, used + 1)).tolist()
        recs = list(map(EpochRecord, range(epoch + 1, epoch + used + 1), train[:used].tolist(), vals, [s.lr] * used, times))
        interrupted = False
        on_epoch, should_stop = cb.on_epoch, cb.should_stop
        last_asked = used - 1 if stop is None else min(stop - 1, used - 1)  # (the tolerance epoch ends the run first)
        for k, rec in enumerate(recs):
            if on_epoch is not None:
                on_epoch(rec)
            # (asked after each epoch, as one by one; over torchrun's ranks the question is a collective:
            # asked once a block, at its end)
            if should_stop is not None and k <= last_asked and (each_epoch or k == used - 1) and should_stop():
                used, stop, interrupted = k + 1, None, True
                break
        result.history.extend(recs[:used])
        rules.tolerance_run(train[:used])  # the rules' memory up to the last epoch taken
        if used:
            step.advance(at, used)
            divergence.last_finite = float(train[used - 1])
        epoch += used
        if not interrupted and stop is None and finite < count:
            divergence.check(float(train[finite]), epoch + 1)  # (raises: the loss is not finite)
        if s.checkpoint_every and cb.on_checkpoint is not None and epoch % s.checkpoint_every == 0:
            cb.on_checkpoint(epoch)
        if stop is not None:
            result.stop_reason, result.converged = "tolerance", True
            break
        if interrupted:
            result.stop_reason = "interrupted"
            break
    return epoch
