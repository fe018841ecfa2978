"""Large-data paths (issue 6): no copies of the training rows, column-major designs, the
one-pass gradient on either layout, and the tolerance window of plain gradient descent.

The chunked paths start above ``DESIGN_CHUNK_ROWS`` training rows; here the threshold is
lowered so that small data takes them, and the results are compared with the direct paths
and with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradfit.config.loading import config_from_dict
from gradfit.data import batches
from gradfit.models import passes as fastopt
from gradfit.models import regression as models
from gradfit.models.heads import LinearHead
from gradfit.optim import first_order, steppers
from gradfit.results import metrics as results_metrics
from gradfit.results.exact import exact_least_squares
from gradfit.results.uncertainty import uncertainty
from gradfit.train import loop as training
from gradfit.train import run as api

needs_kernel = pytest.mark.skipif(fastopt._fused is None, reason="gradfit._fused was not built")


def _cfg(tmp_path, **over):
    d = {
        "name": "mem",
        "seed": 0,
        "device": "cpu",
        "dtype": "float64",
        "data": {"synthetic": {"kind": "linear", "n_features": 3, "coefficients": [1.5, -2.0, 0.5], "bias": 4.0,
                               "n_samples": 2000, "noise": 0.1}, "split": {"val": 0.2}},
        "model": {"kind": "linear"},
        "loss": {"kind": "mse"},
        "optimizer": {"kind": "sgd", "lr": "auto"},
        "train": {"epochs": 400, "tol": 1e-12},
        "output": {"dir": str(tmp_path)},
    }
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    return config_from_dict(d)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunked paths for a 2000-row set: 300-row chunks."""
    monkeypatch.setattr(api, "DESIGN_CHUNK_ROWS", 300)
    monkeypatch.setattr(models, "DESIGN_CHUNK_ROWS", 300)


def test_chunked_prepare_gives_the_direct_fit(tmp_path, monkeypatch):
    direct = api.train(_cfg(tmp_path), write=False)
    monkeypatch.setattr(api, "DESIGN_CHUNK_ROWS", 300)
    monkeypatch.setattr(models, "DESIGN_CHUNK_ROWS", 300)
    prep = api.prepare(_cfg(tmp_path))
    # Full batch on the CPU: the training and validation designs are stored column by column.
    assert batches.column_major(prep.data.Z) and batches.column_major(prep.data.Z_val)
    chunked = api.train(_cfg(tmp_path), write=False)
    for key in ("train", "val"):
        for m in ("mse", "mae", "r2"):
            assert chunked.metrics[key][m] == pytest.approx(direct.metrics[key][m], rel=1e-9)
    assert chunked.metrics["exact"]["loss"] == pytest.approx(direct.metrics["exact"]["loss"], rel=1e-12)
    for name, v in direct.coefficients["coefficients"].items():
        assert chunked.coefficients["coefficients"][name] == pytest.approx(v, rel=1e-9)
        assert chunked.coefficients["std_errors"][name] == pytest.approx(direct.coefficients["std_errors"][name], rel=1e-6)
    # The scaling statistics, from chunks, are the direct ones up to rounding.
    for buf in ("shift", "scale", "col_mean", "col_scale"):
        a, b = getattr(chunked.model.features, buf), getattr(direct.model.features, buf)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_minibatch_runs_keep_a_row_major_design(tmp_path, small_chunks):
    prep = api.prepare(_cfg(tmp_path, optimizer={"kind": "adam", "lr": 0.01}, train={"batch_size": 64}))
    assert prep.data.Z.is_contiguous()
    rows = prep.split.train
    want = prep.model.features(prep.ds.X[rows]).to(torch.float64)
    assert torch.equal(prep.data.Z, want)  # the same numbers as the design of the copied rows


def test_exact_and_uncertainty_on_rows_equal_the_copied_rows(tmp_path):
    run = api.train(_cfg(tmp_path), write=False)
    prep = api.prepare(_cfg(tmp_path))
    model, X, y, rows = run.model, prep.ds.X, prep.ds.y, prep.split.train
    a = exact_least_squares(model, X, y, rows=rows)
    b = exact_least_squares(model, X[rows], y[rows])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-13)
    # and the closed form is numpy's
    A = np.c_[X[rows].numpy(), np.ones(len(rows))]
    beta = np.linalg.lstsq(A, y[rows].numpy(), rcond=None)[0]
    assert a["loss"] == pytest.approx(float(np.mean((A @ beta - y[rows].numpy()) ** 2)), rel=1e-10)
    ua, ub = uncertainty(model, X, y, rows=rows), uncertainty(model, X[rows], y[rows])
    assert ua["dof"] == ub["dof"] == len(rows) - 4
    assert ua["residual_sd"] == pytest.approx(ub["residual_sd"], rel=1e-12)
    for k, v in ub["std_errors"].items():
        assert ua["std_errors"][k] == pytest.approx(v, rel=1e-12)


def test_predict_rows_equals_predict_on_the_copied_rows(tmp_path):
    run = api.train(_cfg(tmp_path), write=False)
    prep = api.prepare(_cfg(tmp_path))
    rows = prep.split.train
    got = results_metrics.predict_rows(run.model, prep.ds.X, rows, chunk=97)
    want = run.model.predict(prep.ds.X[rows])
    # up to rounding, which is relative to the predictions' size (some cancel to ~1e-2 from terms ~10)
    assert torch.allclose(got, want, rtol=1e-14, atol=1e-14 * float(want.abs().max()))


@pytest.mark.parametrize("kernel", [False, pytest.param(True, marks=needs_kernel)])
@pytest.mark.parametrize("intercept", [True, False])
def test_linear_mse_on_a_column_major_design_equals_autograd(intercept, kernel, monkeypatch):
    monkeypatch.setattr(fastopt, "KERNEL_VALUES_PER_THREAD", 1)  # several parts even for a small design
    g = torch.Generator().manual_seed(1)
    X = torch.randn(1000, 6, dtype=torch.float64, generator=g)
    y = X @ torch.arange(1.0, 7.0, dtype=torch.float64) + 0.3
    Xc = batches.empty_design(1000, 6, torch.float64, "cpu", column_major=True)
    Xc.copy_(X)
    assert batches.column_major(Xc) and not Xc.is_contiguous()
    head = LinearHead(6, intercept, torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 2, 6, dtype=torch.float64))
        if intercept:
            head.bias.fill_(0.5)
    loss = F.mse_loss(head(X), y)
    loss.backward()
    loss = loss.detach()
    ref = [p.grad.clone() for p in head.parameters()]
    for p in head.parameters():
        p.grad = None
    fast = fastopt.LinearMSE(head, Xc, y, chunk_rows=64, kernel=kernel)
    assert fast.kernel == kernel
    assert len(fast.parts) > 1  # the rows are shared out (on one thread too: parts are taken in turn)
    got = fast()
    assert float(got) == pytest.approx(float(loss), rel=1e-13)
    for p, r in zip(head.parameters(), ref):
        assert torch.allclose(p.grad, r, rtol=1e-12, atol=1e-13)


def test_linear_mse_gives_back_the_last_point_without_a_pass(monkeypatch):
    X = torch.randn(500, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = X.sum(1)
    head = LinearHead(4, True, torch.float64)
    fast = fastopt.LinearMSE(head, X, y, chunk_rows=50)
    first = float(fast())
    grads = [p.grad.clone() for p in head.parameters()]
    passes = []
    real = fast.residuals
    monkeypatch.setattr(fast, "residuals", lambda **kw: passes.append(1) or real(**kw))
    for p in head.parameters():
        p.grad = None
    assert float(fast()) == first and not passes  # same weights: no pass
    for p, g in zip(head.parameters(), grads):
        assert torch.equal(p.grad, g)
    with torch.no_grad():
        head.bias.add_(1.0)
    assert float(fast()) != first and passes == [1]  # moved: a pass


def _gd_epochs(momentum, monkeypatch=None, window=None):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(400, 3, dtype=torch.float64, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(400, dtype=torch.float64, generator=g)
    head = LinearHead(3, True, torch.float64)
    opt = first_order.SGD(head.parameters(), lr=0.5, momentum=momentum)
    if window is not None:
        monkeypatch.setattr(steppers, "MONOTONE_TOL_WINDOW", window)
    settings = training.LoopSettings(kind="sgd", epochs=2000, batch_size=None, tol=1e-10, loss_scale=1.0, lr=0.5,
                                     generator=torch.Generator().manual_seed(0))
    res = training.fit(head, training.TrainRows(training.TrainData(X, y)), F.mse_loss, opt, settings)
    return res


def test_plain_gradient_descent_stops_after_three_calm_epochs(monkeypatch):
    three = _gd_epochs(0.0)
    assert three.stop_reason == "tolerance"
    ten = _gd_epochs(0.0, monkeypatch, window=10)
    assert ten.stop_reason == "tolerance" and ten.epochs == three.epochs + 7
    losses = [r.train_loss for r in three.history]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # monotone: nothing to wait out
    # With momentum the loss can rise and fall: the first-order window (10) stays.
    assert not steppers.monotone(LinearHead(3, True, torch.float64), F.mse_loss,
                                 first_order.SGD(LinearHead(3, True, torch.float64).parameters(), lr=0.1, momentum=0.9))
    assert not steppers.monotone(LinearHead(3, True, torch.float64), F.l1_loss,
                                 first_order.SGD(LinearHead(3, True, torch.float64).parameters(), lr=0.1))


def test_lbfgs_takes_short_epochs_on_large_designs(tmp_path, monkeypatch):
    from gradfit.optim import plan as optim

    cfg = _cfg(tmp_path, optimizer={"kind": "lbfgs"})
    small = optim.plan(cfg, torch.zeros(100, 3))
    assert small.iters_per_epoch == optim.LBFGS_ITERS_PER_EPOCH == 20
    monkeypatch.setattr(optim, "LBFGS_LARGE_DESIGN_VALUES", 300)
    large = optim.plan(cfg, torch.zeros(100, 3))
    assert large.iters_per_epoch == optim.LBFGS_LARGE_ITERS_PER_EPOCH
    assert optim.plan(_cfg(tmp_path), torch.randn(100, 3, dtype=torch.float64)).iters_per_epoch == 20  # sgd: unused
    # A run with short epochs still ends at the least-squares fit.
    run = api.train(cfg, write=False)
    assert run.metrics["exact"]["gap"] < 1e-10 and run.metrics["stop_reason"] == "tolerance"
