"""Figures of a run: matplotlib's Agg canvas (no pyplot), drawn in a helper process when one runs.

Drawing is split in two: the public functions (``loss_plot``, ``fit_plot``, ``parity_plot``)
turn the run's objects into plain numbers (lists, numpy arrays), and ``_draw`` makes the
figure from those numbers alone. So the same figure can be drawn here or in another process.

Why a helper process: importing matplotlib costs about 0.5 s of CPU and each figure
0.15 to 0.3 s (text layout, the first mathtext tick label), as much as the whole training
of a small run. ``gradfit train`` calls ``start_helper()`` before it imports torch; the
helper imports matplotlib on the second core meanwhile, and at the end draws the figures
from the numbers sent to it while the main process writes the other files. ``wait()``
returns once every figure is written (each atomically); ``api.write_run`` calls it before
``metrics.json``, whose presence says the run is complete. Without a helper (library use,
tests, or one that failed) the figures are drawn in this process, with the same code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from gradfit.results.rundir import atomic_path

# Seconds to wait for the helper's figures before drawing them here instead.
HELPER_TIMEOUT = 300.0
# The helper draws each figure in a forked child (side by side on the cores) where it can fork.
FORK = hasattr(os, "fork")


# ---------------------------------------------------------------- the figures (numbers in, PNG out)


def _figure(figsize, **subplots):
    """A Figure on an Agg canvas, and its axes (``fig.subplots(**subplots)``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # (imported here for start-up time)
    from matplotlib.figure import Figure  # (imported here for start-up time)

    fig = Figure(figsize=figsize, dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def _draw_loss(path, epochs, train, val, loss_name, title="Loss per epoch", best_epoch=None) -> None:
    """Training and validation loss per epoch, log scale (zeros left out); the best epoch marked."""
    fig, ax = _figure((7, 4.2))
    ax.plot(epochs, train, label="train", color="C0", lw=1.6)
    if val is not None:
        ax.plot(epochs, val, label="validation", color="C1", lw=1.6)
    positive = [v for v in list(train) + list(val or []) if v is not None and v > 0]
    if positive:
        ax.set_yscale("log", nonpositive="mask")  # an exact fit reaches 0: not drawn, the rest still readable
        if max(positive) > MINOR_DECADES * min(positive):
            # Many decades: the minor ticks (8 a decade, each with its grid line) would be clutter,
            # and laying them out is most of the figure's cost (0.1 s of 0.25).
            from matplotlib.ticker import NullLocator  # (imported here for start-up time)

            ax.yaxis.set_minor_locator(NullLocator())
        from matplotlib.ticker import FuncFormatter  # (imported here for start-up time)

        ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    if best_epoch is not None:
        ax.axvline(best_epoch, color="0.4", ls=":", lw=1.2, label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss_name} loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, path)


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _power_of_ten(v: float, _pos=None) -> str:
    """A log axis's tick label: 10\u207b\u2075 in plain text (matplotlib's own labels go through
    mathtext, whose parser took 0.1 s of a 0.25 s figure); other values as %g."""
    if not v > 0:
        return ""
    e = round(math.log10(v))
    return "10" + str(e).translate(_SUPERSCRIPT) if abs(v / 10.0**e - 1) < 1e-9 else f"{v:g}"


def _draw_fit(path, x, y, is_train, grid, grid_pred, resid, feature, target, title, band_lo=None, band_hi=None) -> None:
    """One feature: data, fitted curve (its 95% confidence band shaded when given), and residuals below."""
    fig, (ax, axr) = _figure((7, 5.5), nrows=2, ncols=1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    dense = len(x) > 1000  # thousands of points: small marks, so that neither set hides the other
    ax.scatter(x[is_train], y[is_train], s=3 if dense else 10, alpha=0.4 if dense else 0.55, color="C0", label="train")
    if (~is_train).any():
        ax.scatter(x[~is_train], y[~is_train], s=4 if dense else 12, alpha=0.5 if dense else 0.8, color="C1",
                   marker="^", label="held out")
    if band_lo is not None:
        ax.fill_between(grid, band_lo, band_hi, color="0.5", alpha=0.3, lw=0, label="95% confidence band of the mean")
    ax.plot(grid, grid_pred, color="k", lw=1.8, label="fit")
    ax.set_ylabel(target)
    ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
    axr.scatter(x[is_train], resid[is_train], s=3 if dense else 8, alpha=0.4 if dense else 0.6, color="C0")
    if (~is_train).any():  # held-out rows in the colour and mark they have above
        axr.scatter(x[~is_train], resid[~is_train], s=4 if dense else 10, alpha=0.5 if dense else 0.8, color="C1",
                    marker="^")
    axr.axhline(0, color="k", lw=0.8)
    axr.set_xlabel(feature)
    axr.set_ylabel("residual")
    axr.grid(True, alpha=0.3)
    _save(fig, path)


def _draw_parity(path, y, pred, target, title) -> None:
    """Several features: predicted against actual."""
    import numpy as np  # (imported here for start-up time)

    fig, ax = _figure((5.5, 5.5))
    ax.scatter(y, pred, s=3 if len(y) > 1000 else 10, alpha=0.5, color="C0")
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, label="predicted = actual")
    ss = float(np.sum((y - y.mean()) ** 2))
    if len(y) > 1 and ss > 0:
        r2 = 1 - float(np.sum((y - pred) ** 2)) / ss
        ax.text(0.04, 0.96, f"R² = {r2:.5g}  ({len(y)} rows)", transform=ax.transAxes, va="top",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.legend(loc="lower right")
    ax.set_xlabel(f"actual {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def _save(fig, path) -> None:
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")


_DRAW = {"loss": _draw_loss, "fit": _draw_fit, "parity": _draw_parity}


def _draw(kind: str, path: str, args: dict) -> None:
    _DRAW[kind](path, **args)


# ---------------------------------------------------------------- the public functions


# Loss curves spanning more than this factor get no minor ticks on their log axis.
MINOR_DECADES = 1e4
# The most epochs a loss curve draws; a longer history is drawn from evenly spaced epochs.
LOSS_POINTS = 5000


def loss_plot(path: Path, history, loss_name: str, title: str = "Loss per epoch", best_epoch=None) -> None:
    """Training and validation loss per epoch, log scale (at most LOSS_POINTS epochs, first and last kept)."""
    n = len(history)
    if n > LOSS_POINTS:
        step = (n - 1) / (LOSS_POINTS - 1)
        history = [history[round(i * step)] for i in range(LOSS_POINTS)]
    val = [r.val_loss for r in history] if any(r.val_loss is not None for r in history) else None
    _submit("loss", path, {"epochs": [r.epoch for r in history], "train": [r.train_loss for r in history],
                           "val": val, "loss_name": loss_name, "title": title, "best_epoch": best_epoch})


def fit_plot(path: Path, x, y, is_train, predict, feature: str, target: str, title: str, band=None) -> None:
    """One feature: data, fitted curve (``predict`` on a 400-point grid), and residuals below.
    ``band``: grid (400, 1) -> (lower, upper) of the mean's 95% confidence interval, shaded (results.inference)."""
    import numpy as np  # (imported here for start-up time)

    x = np.asarray(x)
    y = np.asarray(y)
    is_train = np.asarray(is_train, dtype=bool)
    grid = np.linspace(x.min(), x.max(), 400)
    lo, hi = (np.asarray(v, dtype=np.float64) for v in band(grid[:, None])) if band is not None else (None, None)
    _submit("fit", path, {"x": x, "y": y, "is_train": is_train, "grid": grid,
                          "grid_pred": np.asarray(predict(grid[:, None])), "resid": y - predict(x[:, None]),
                          "feature": feature, "target": target, "title": title, "band_lo": lo, "band_hi": hi})


def parity_plot(path: Path, y, pred, target: str, title: str) -> None:
    """Several features: predicted against actual."""
    import numpy as np  # (imported here for start-up time)

    _submit("parity", path, {"y": np.asarray(y), "pred": np.asarray(pred), "target": target, "title": title})


def prepare() -> None:
    """Import matplotlib ahead of the end of a run (an interrupt then saves quickly); a helper already does."""
    if _helper is None:
        from matplotlib import figure  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401


# ---------------------------------------------------------------- the helper process


class _Helper:
    """A child process that imports matplotlib at once, then draws the figures sent to it.

    Messages (parent to child on its stdin, see ``_write_job``/``_read_job``): per figure one
    JSON line (kind, path, the plain arguments, the arrays' dtypes and shapes) followed by the
    arrays' raw bytes; ``null`` at the end. The child answers with one JSON list of
    ``[path, error or null]``. No pickle: nothing read here can run code.
    """

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gradfit.results.plots import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.jobs: list[tuple[str, str, dict]] = []  # kept, to draw here if the helper fails

    def send(self, kind: str, path: str, args: dict) -> None:
        self.jobs.append((kind, path, args))
        try:
            _write_job(self.proc.stdin, kind, path, args)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the helper is gone: wait() draws its figures here

    def finish(self) -> list[tuple[str, str, dict]]:
        """Wait for the helper's figures; return the jobs it did not draw."""
        done: dict = {}
        try:
            self.proc.stdin.write(b"null\n")
            out, _ = self.proc.communicate(timeout=HELPER_TIMEOUT)  # flushes and closes its stdin
            done = dict(json.loads(out)) if self.proc.returncode == 0 else {}
        except (OSError, ValueError, subprocess.TimeoutExpired):  # the helper failed: figures drawn here instead
            self.kill()
        return [job for job in self.jobs if job[1] not in done or done[job[1]] is not None]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.communicate(timeout=10)


_helper: Optional[_Helper] = None


def start_helper(force: bool = False) -> bool:
    """Start the drawing helper (``gradfit train`` calls this before importing torch).

    It pays only while this process still has torch to import: the two then run side by
    side. When torch is already imported (tests, library use) the figures are drawn here,
    unless ``force``. Returns whether a helper runs.
    """
    global _helper
    if _helper is None and (force or "torch" not in sys.modules):
        try:
            _helper = _Helper()
        except OSError:
            _helper = None
    return _helper is not None


def wait() -> None:
    """Return once every figure asked for is written (by the helper, or here if it failed)."""
    global _helper
    helper, _helper = _helper, None
    if helper is not None:
        for kind, path, args in helper.finish():
            _draw(kind, path, args)


def stop_helper() -> None:
    """End the helper without waiting for its figures (a run that failed or was aborted)."""
    global _helper
    helper, _helper = _helper, None
    if helper is not None:
        helper.kill()


def _submit(kind: str, path, args: dict) -> None:
    if _helper is not None:
        _helper.send(kind, str(path), args)
    else:
        _draw(kind, str(path), args)


EOF = object()  # _read_job: the stream ended


def _write_job(stream, kind: str, path: str, args: dict) -> None:
    import numpy as np  # (imported here for start-up time)

    arrays = {k: np.ascontiguousarray(v) for k, v in args.items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in args.items() if k not in arrays}
    head = {"kind": kind, "path": path, "args": plain,
            "arrays": [[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()]}
    stream.write(json.dumps(head).encode() + b"\n")
    for a in arrays.values():
        stream.write(a.tobytes())


def _read_job(stream):
    """(kind, path, args), None at the end of the jobs, or EOF."""
    import numpy as np  # (imported here for start-up time)

    line = stream.readline()
    if not line:
        return EOF
    head = json.loads(line)
    if head is None:
        return None
    args = dict(head["args"])
    for name, dtype, shape in head["arrays"]:
        dt = np.dtype(dtype)
        if dt.kind not in "biuf":
            raise ValueError(f"unexpected array type {dtype}")
        n = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        data = stream.read(n)
        if len(data) != n:
            return EOF
        args[name] = np.frombuffer(data, dtype=dt).reshape(shape)
    return head["kind"], head["path"], args


def _warm_up() -> None:
    """Draw a small throw-away figure: the fonts, the text layout and the mathtext parser of
    log-scale tick labels load now, while the parent is still importing torch, instead of in
    each figure's process at the end of the run (a fit figure then takes 0.15 s instead of 0.25)."""
    import io  # (imported here for start-up time)

    try:
        _warm_up_figure(io.BytesIO())
    except Exception:  # noqa: BLE001 - only a head start: the real figures report their own errors
        pass


def _warm_up_figure(out) -> None:
    fig, ax = _figure((2, 2))
    ax.plot([1, 2, 3], [1, 10, 100], label="a")
    ax.scatter([1, 2], [3, 4], marker="^")
    ax.set_yscale("log")
    ax.set_title("t")
    ax.set_xlabel("x")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png")


def _serve() -> None:
    """The helper's main: import matplotlib, then draw each figure read from stdin until None.

    Each figure is drawn in a child forked for it where the platform can fork (the main
    process is waiting for them by then, so the figures are drawn side by side on the cores).
    """
    import signal  # (imported here for start-up time)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it saves the run)
    prepare()
    _warm_up()
    results = []
    children = {}  # pid -> path
    stdin = sys.stdin.buffer
    while True:
        msg = _read_job(stdin)
        if msg is EOF:
            return  # the parent went away: nothing to answer
        if msg is None:
            break
        kind, path, args = msg
        pid = os.fork() if FORK else -1
        if pid == 0:  # the child: draw this figure, report by the exit code
            code = 1
            try:
                _draw(kind, path, args)
                code = 0
            finally:
                os._exit(code)
        if pid > 0:
            children[pid] = path
            continue
        try:
            _draw(kind, path, args)
            results.append((path, None))
        except Exception as exc:  # noqa: BLE001 - any failure is reported; the parent draws this figure itself
            results.append((path, f"{type(exc).__name__}: {exc}"))
    for pid, path in children.items():
        _, status = os.waitpid(pid, 0)
        results.append((path, None if os.waitstatus_to_exitcode(status) == 0 else "the drawing process failed"))
    sys.stdout.buffer.write(json.dumps(results).encode())
    sys.stdout.buffer.flush()
