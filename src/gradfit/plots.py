"""Figures of a run (matplotlib, Agg backend), imported only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path

from gradfit.runs import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(path: Path, history, loss_name: str) -> None:
    """Training and validation loss per epoch, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    epochs = [r.epoch for r in history]
    train = [r.train_loss for r in history]
    ax.plot(epochs, train, label="train", color="C0", lw=1.6)
    if any(r.val_loss is not None for r in history):
        ax.plot(epochs, [r.val_loss for r in history], label="validation", color="C1", lw=1.6)
    if all(v > 0 for v in train) and len(train):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss_name} loss")
    ax.set_title("Loss per epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path, plt)


def fit_plot(path: Path, x, y, is_train, predict, feature: str, target: str, title: str) -> None:
    """One feature: data, fitted curve, and residuals below."""
    import numpy as np

    plt = _pyplot()
    fig, (ax, axr) = plt.subplots(
        2, 1, figsize=(7, 5.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    x = np.asarray(x)
    y = np.asarray(y)
    is_train = np.asarray(is_train, dtype=bool)
    ax.scatter(x[is_train], y[is_train], s=10, alpha=0.55, color="C0", label="train")
    if (~is_train).any():
        ax.scatter(x[~is_train], y[~is_train], s=12, alpha=0.8, color="C1", marker="^", label="held out")
    grid = np.linspace(x.min(), x.max(), 400)
    ax.plot(grid, predict(grid[:, None]), color="k", lw=1.8, label="fit")
    ax.set_ylabel(target)
    ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
    resid = y - predict(x[:, None])
    axr.scatter(x, resid, s=8, alpha=0.6, color="C2")
    axr.axhline(0, color="k", lw=0.8)
    axr.set_xlabel(feature)
    axr.set_ylabel("residual")
    axr.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path, plt)


def parity_plot(path: Path, y, pred, target: str, title: str) -> None:
    """Several features: predicted against actual."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=110)
    y = np.asarray(y)
    pred = np.asarray(pred)
    ax.scatter(y, pred, s=8, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=1)
    ax.set_xlabel(f"actual {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path, plt)


def _save(fig, path: Path, plt) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
