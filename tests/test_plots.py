"""The figures: named axes, log scale for the loss, residuals under the fit, parity for several features."""

from __future__ import annotations

import numpy as np
import pytest

from gradfit.results import plots


@pytest.fixture
def captured(monkeypatch):
    """Keep the figures instead of saving them."""
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig))
    return figs


def test_loss_plot_is_log_scale_with_both_sets(captured):
    plots._draw_loss("x.png", [1, 2, 3], [1.0, 0.1, 0.01], [1.2, 0.2, 0.05], "huber")
    ax = captured[0].axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "huber loss"
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]


def test_fit_plot_has_residual_panel_named_by_columns(captured):
    x = np.linspace(0, 1, 20)
    y = 2 * x
    is_train = np.arange(20) % 5 != 0
    plots._draw_fit("x.png", x, y, is_train, x, 2 * x, y - 2 * x, "size m²", "price", "price = 2*size m²")
    top, bottom = captured[0].axes
    assert top.get_ylabel() == "price" and top.get_title() == "price = 2*size m²"
    assert bottom.get_xlabel() == "size m²" and bottom.get_ylabel() == "residual"
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["train", "held out", "fit"]


def test_parity_plot_axes(captured):
    y = np.arange(10.0)
    plots._draw_parity("x.png", y, y + 0.1, "price_k", "validation rows")
    ax = captured[0].axes[0]
    assert ax.get_xlabel() == "actual price_k" and ax.get_ylabel() == "predicted price_k"


def test_run_writes_readable_pngs(tmp_path):
    import matplotlib.image as mpimg

    from conftest import CONFIGS
    from gradfit.config.loading import load_config
    from gradfit.train.run import train

    for name in ("quadratic.yaml", "multi.yaml"):
        run = train(load_config(CONFIGS / name, ["train.epochs=30"]), out=tmp_path / name)
        for png in ("loss.png", "fit.png"):
            img = mpimg.imread(run.run_dir / png)
            assert img.shape[0] > 300 and img.shape[1] > 400


def test_loss_plot_masks_zeros_and_marks_best_epoch(captured):
    plots._draw_loss("x.png", [1, 2, 3, 4], [1.0, 0.1, 0.0, 0.0], [1.1, 0.2, 0.3, 0.4], "mse",
                     title="q: mse loss per epoch", best_epoch=2)
    ax = captured[0].axes[0]
    assert ax.get_yscale() == "log" and ax.get_title() == "q: mse loss per epoch"  # an exact fit's zeros
    assert "best epoch (2)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_long_history_is_thinned_to_loss_points(monkeypatch):
    from gradfit.train.loop import EpochRecord

    sent = {}
    monkeypatch.setattr(plots, "_submit", lambda kind, path, args: sent.update(args))
    n = 3 * plots.LOSS_POINTS + 7
    history = [EpochRecord(epoch=i, train_loss=1.0 / i, val_loss=None, lr=0.1, seconds=0.0) for i in range(1, n + 1)]
    plots.loss_plot("x.png", history, "mse")
    assert len(sent["epochs"]) == plots.LOSS_POINTS
    assert sent["epochs"][0] == 1 and sent["epochs"][-1] == n and sent["val"] is None
    assert sent["epochs"] == sorted(set(sent["epochs"]))


def test_parity_plot_states_r2_of_the_rows_drawn(captured):
    y = np.arange(10.0)
    pred = y + np.where(np.arange(10) % 2, 0.5, -0.5)
    plots._draw_parity("x.png", y, pred, "price_k", "multi: predicted vs actual, validation rows")
    ax = captured[0].axes[0]
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)  # 1 - 2.5/82.5
    assert any(t.get_text().startswith(f"R² = {r2:.5g}") for t in ax.texts)
    assert ax.get_title() == "multi: predicted vs actual, validation rows"
