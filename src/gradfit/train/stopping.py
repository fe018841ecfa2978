"""The stopping rules of the loop: divergence, early stopping, and the tolerance on the loss's change.

Their memory (``StopState``) is saved with the resume state, so that a resumed run stops
where one never interrupted would.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from gradfit.errors import TrainingError

# lbfgs: an epoch in which the gradient's largest component fell below this share of its best
# so far is not calm, whatever the loss did (see ``StopRules.tolerance``).
GRAD_PROGRESS = 0.5


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
        best = None if self.best_state is None else {k: v.detach().to("cpu").clone() for k, v in self.best_state.items()}
        return dataclasses.replace(self, best_state=best)


def noise_level(target_sums: Optional[tuple[float, int]], eps: float, loss_power: int, loss_scale: float) -> float:
    """The loss (original units) of residuals that are rounding noise: eps of the target's RMS.

    At an exact fit the loss is the rounding noise of the residuals, which jumps by large relative
    amounts from epoch to epoch: no relative tolerance is ever met (float32 Adam on exact data ran
    on for 1700 epochs after reaching the answer, into one of Adam's late spikes). Residuals are
    resolved to about eps of the target's size (its RMS in training units: 1 when standardized), so
    an epoch whose loss is below that power of it (in the loss's units) is calm: nothing left to fit.
    Streamed rows trained on the rows: the target's size is not at hand (``target_sums`` None), and the
    rule stays off (on the Gram route, models.gram, the sums give it).
    """
    if target_sums is None:
        return 0.0
    sq, count = target_sums
    return (eps * math.sqrt(sq / count)) ** loss_power * loss_scale if count else 0.0


class Divergence:
    """A non-finite loss stops the run, naming the epoch and suggesting a smaller learning rate."""

    def __init__(self, lr: float, last_finite: Optional[float] = None):
        self.lr, self.last_finite = lr, last_finite

    def check(self, train_loss: float, epoch: int) -> float:
        if not math.isfinite(train_loss):
            last = f"{self.last_finite:.6g}" if self.last_finite is not None else "none"
            lr = self.lr
            raise TrainingError(
                f"training diverged: the loss became {train_loss} at epoch {epoch} (last finite loss: {last})",
                hint=f"lower optimizer.lr (it is {lr:.3g}; try {lr / 10:.3g}), or keep data.standardize: true",
            )
        self.last_finite = train_loss
        return train_loss


class StopRules:
    """Early stopping and the tolerance rule, over ``state`` (updated as training goes)."""

    def __init__(self, state: StopState, inner, *, tol: float, eps: float, window: int, noise: float, early_stopping=None):
        """``inner``: the head whose weights early stopping keeps; ``tol``: train.tol (0: no tolerance
        rule); ``eps``: the design dtype's; ``window``: calm epochs that stop; ``noise``: see noise_level."""
        self.st, self.inner, self.early_stopping = state, inner, early_stopping
        # tol: 0 turns the rule off: the run goes on to `epochs` (early stopping and interrupts aside).
        self.use_tol = tol > 0
        # A tolerance below what the dtype resolves would never be met: floor it at a few ulps.
        self.tol = max(tol, 8 * eps)
        self.eps, self.window, self.noise = eps, window, noise
        self._resume()

    def _resume(self) -> None:
        """Fit the saved memory to this run's settings and head."""
        st = self.st
        if self.early_stopping is None:  # resumed without early stopping: its memory does not apply
            st.best_val, st.best_epoch, st.since_best, st.best_state = math.inf, None, 0, None
        if st.best_state is not None:
            where = self.inner.state_dict()
            # (states saved on 2026-11-22 by a torchrun run named them as DDP does: module.*)
            best = {k[len("module."):] if k.startswith("module.") and k[len("module."):] in where else k: v
                    for k, v in st.best_state.items()}
            st.best_state = {k: v.to(where[k].device) if k in where else v for k, v in best.items()}
        if st.tol is not None and st.tol != self.tol:  # resumed with another train.tol: count the calm epochs anew
            st.calm, st.prev_loss = 0, None
        st.tol = self.tol

    def replay(self, history: list) -> None:
        """A state saved without the rules' memory: replay the last epochs of ``history``."""
        st = self.st
        if st.prev_loss is None:
            for rec in history[-(self.window + 1):]:
                st.calm = st.calm + 1 if self._calm_change(st.prev_loss, rec.train_loss) else 0
                st.prev_loss = rec.train_loss

    def _calm_change(self, prev: Optional[float], loss: float) -> bool:
        """The tolerance rule's test of one epoch: the loss barely moved, or it is rounding noise."""
        return (prev is not None and abs(prev - loss) <= max(self.tol * abs(prev), self.st.loss_floor)) or loss <= self.noise

    def first_loss(self, start_loss: float) -> None:
        """lbfgs: the loss before its step (original units); changes below 8 ulps of the first are rounding."""
        if not self.st.loss_floor and math.isfinite(start_loss):
            self.st.loss_floor = 8 * self.eps * abs(start_loss)

    def early_stop(self, epoch: int, val_loss: Optional[float]) -> bool:
        """Early stopping on the validation loss, keeping the best weights: True to stop."""
        st, es = self.st, self.early_stopping
        if es is None or val_loss is None:
            return False
        if val_loss < st.best_val * (1 - es.min_delta) or st.best_state is None:
            st.best_val = val_loss
            st.best_state = copy.deepcopy(self.inner.state_dict())
            st.best_epoch = epoch
            st.since_best = 0
            return False
        st.since_best += 1
        return st.since_best >= es.patience

    def tolerance(self, train_loss: float, grad_max: Optional[float]) -> None:
        """Take an epoch into the tolerance rule's count of calm epochs.

        The loss changed by at most tol (relative) in each of the last `window` epochs. (A rule on
        the change, not on the best loss, so that Adam's early oscillations do not stop it.)
        lbfgs: the loss cannot see parameter changes below about sqrt(eps) of them, the gradient
        can; an epoch in which the gradient still shrank (below GRAD_PROGRESS of its best) is
        progress, so L-BFGS runs on until the gradient is rounding noise: the dtype's precision.
        """
        st = self.st
        grad_progress = grad_max is not None and grad_max < GRAD_PROGRESS * st.best_grad
        if grad_max is not None:
            st.best_grad = min(st.best_grad, grad_max)
        st.calm = st.calm + 1 if not grad_progress and self._calm_change(st.prev_loss, train_loss) else 0
        st.prev_loss = train_loss

    def tolerance_run(self, losses, commit: bool = True) -> Optional[int]:
        """``tolerance`` for a run of epochs' train losses at once (plain descent: no gradient record): the
        index of the first epoch at which the rule is met, or None; ``commit``: the memory is left as if each
        epoch up to that one (or the last) had been taken in turn."""
        import numpy as np  # (imported here for start-up time)

        st = self.st
        L = np.asarray(losses, dtype=np.float64)
        if L.size == 0:
            return None
        prev = np.concatenate([[np.nan if st.prev_loss is None else st.prev_loss], L[:-1]])
        with np.errstate(invalid="ignore"):  # (no previous loss: nan, never calm by change)
            calm = (np.abs(prev - L) <= np.maximum(self.tol * np.abs(prev), st.loss_floor)) | (L <= self.noise)
        idx = np.arange(L.size)
        last_off = np.maximum.accumulate(np.where(calm, -1, idx))  # the last epoch that was not calm (-1: none)
        count = idx - last_off + np.where(last_off < 0, st.calm, 0)
        hit = np.flatnonzero(count >= self.window) if self.use_tol else np.empty(0, dtype=np.int64)
        end = int(hit[0]) if hit.size else L.size - 1
        if commit:
            st.calm, st.prev_loss = int(count[end]), float(L[end])
        return int(hit[0]) if hit.size else None

    def converged(self) -> bool:
        """The tolerance rule is met."""
        return self.use_tol and self.st.calm >= self.window

    def restore_best(self) -> None:
        """Early stopping: put the best weights back."""
        if self.st.best_state is not None:
            self.inner.load_state_dict(self.st.best_state)
