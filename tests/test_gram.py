"""The Gram route (models.gram): full-batch least squares from sufficient statistics, against the rows.

Oracles: autograd on the rows (loss and gradient), torch's own stepping (the closed-form descent),
the one-by-one tolerance rule (its vector form), numpy lstsq (the refined optimum), and the same run
on the rows (the route forced off): trajectories and coefficients equal to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradfit.models import gram as gram_mod
from gradfit.models.gram import GramMSE, _powers
from gradfit.models.heads import LinearHead
from gradfit.optim import steppers
from gradfit.train.stopping import StopRules, StopState


def _problem(dtype, n=20000, m=6, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, m, generator=g, dtype=torch.float64) + shift
    y = Z @ torch.linspace(-2, 3, m, dtype=torch.float64) + 0.7 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return Z.to(dtype), y.to(dtype)


def _head(m, intercept, dtype, seed=1):
    h = LinearHead(m, intercept, dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        h.weight.copy_(torch.randn(m, generator=g, dtype=torch.float64))
        if intercept:
            h.bias.fill_(-0.4)
    return h


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("intercept", [True, False])
def test_loss_and_gradient_equal_autograd_on_the_rows(dtype, rel, intercept):
    Z, y = _problem(dtype)
    h = _head(Z.shape[1], intercept, dtype)
    g = GramMSE(h, Z, y)
    loss = g()
    grads = [p.grad.clone() for p in h.parameters()]
    h.zero_grad()
    ref = F.mse_loss(h(Z), y)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()), rel=rel)
    for got, p in zip(grads, h.parameters()):
        assert got.dtype == p.dtype and got.shape == p.shape
        torch.testing.assert_close(got, p.grad, rtol=rel * 10, atol=rel * float(p.grad.abs().max()) * 10)
    assert float(g.loss()) == pytest.approx(float(ref.detach()), rel=rel)
    assert g.sums.passes <= 1 + gram_mod.REFINE_PASSES


def test_the_refined_optimum_is_least_squares_and_the_anchor_keeps_the_digits():
    """Far from the origin (columns of mean 1000) the plain normal equations lose digits; the refined
    anchor matches lstsq, and the loss there is the minimal residual, not a difference of large sums."""
    Z, y = _problem(torch.float64, shift=1000.0)
    h = _head(Z.shape[1], True, torch.float64)
    g = GramMSE(h, Z, y)
    A = np.column_stack([Z.numpy(), np.ones(Z.shape[0])])
    ref, *_ = np.linalg.lstsq(A, y.numpy(), rcond=None)
    np.testing.assert_allclose(g.optimum.numpy(), ref, rtol=1e-9, atol=1e-9)
    g.set_weights(g.optimum.numpy())
    rss = float(((A @ ref - y.numpy()) ** 2).mean())
    assert float(g.loss()) == pytest.approx(rss, rel=1e-9)


def test_validation_rows_anchored_at_the_training_optimum():
    Z, y = _problem(torch.float64)
    Zv, yv = _problem(torch.float64, n=3000, seed=5)
    h = _head(Z.shape[1], True, torch.float64)
    train = GramMSE(h, Z, y)
    val = GramMSE(h, Zv, yv, anchor=train.optimum)
    with torch.no_grad():
        assert float(val.loss()) == pytest.approx(float(F.mse_loss(h(Zv), yv)), rel=1e-12)


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_closed_form_descent_is_the_stepped_trajectory(dtype, rel):
    Z, y = _problem(dtype, n=8000)
    Zv, yv = _problem(dtype, n=2000, seed=3)
    h = _head(Z.shape[1], True, dtype)
    g = GramMSE(h, Z, y)
    v = GramMSE(h, Zv, yv, anchor=g.optimum)
    lr, steps = 0.2, 150
    train, val, at = g.descent(lr, steps, v)
    got_train, got_val = [], []
    for _ in range(steps):  # the same steps, one by one, with the autograd gradient on the rows
        h.zero_grad()
        loss = F.mse_loss(h(Z), y)  # (an epoch's training loss: at its start, with its gradient)
        loss.backward()
        got_train.append(float(loss))
        with torch.no_grad():
            for p in h.parameters():
                p -= lr * p.grad
            got_val.append(float(F.mse_loss(h(Zv), yv)))
    assert train.tolist() == pytest.approx(got_train, rel=rel)
    assert val.tolist() == pytest.approx(got_val, rel=rel)
    final = torch.cat([h.weight.detach().double(), h.bias.detach().double().reshape(1)]).numpy()
    np.testing.assert_allclose(at(steps), final, rtol=rel * 10, atol=rel * 10)


def test_powers_equal_numpy_power():
    a = np.array([0.999, -0.5, 0.3, 1.0, 0.0, -0.9999, 0.99999])
    want = np.power(a[None, :], np.arange(1, 5001, dtype=np.float64)[:, None])
    np.testing.assert_allclose(_powers(a, 5000), want, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(_powers(a, 7), want[:7], rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_tolerance_run_equals_the_rule_taken_epoch_by_epoch(seed):
    rng = np.random.default_rng(seed)
    losses = 1.0 + np.cumsum(rng.choice([0.0, 1e-9, 1e-3], size=400, p=[0.3, 0.5, 0.2]))[::-1] * 1e-3
    for tol in (0.0, 1e-10, 1e-7):
        one, many = StopRules(StopState(), None, tol=tol, eps=2.2e-16, window=3, noise=0.0), None
        hit_one = None
        for i, loss in enumerate(losses):
            one.tolerance(float(loss), None)
            if one.converged():
                hit_one = i
                break
        many = StopRules(StopState(), None, tol=tol, eps=2.2e-16, window=3, noise=0.0)
        # in two pieces: the memory carries from one run to the next
        first = many.tolerance_run(losses[:150])
        hit_many = first if first is not None else (
            None if (h := many.tolerance_run(losses[150:])) is None else 150 + h)
        assert hit_many == hit_one
        assert (many.st.calm, many.st.prev_loss) == (one.st.calm, one.st.prev_loss)


def test_an_ill_conditioned_gram_matrix_is_not_used():
    Z, y = _problem(torch.float64, n=5000, m=3)
    Z = torch.cat([Z, Z[:, :1] + 1e-9 * torch.randn(5000, 1, dtype=torch.float64)], 1)  # cond(G) ~ 1e18
    g = GramMSE(_head(4, True, torch.float64), Z, y)
    assert not g.usable and g.condition > gram_mod.MAX_CONDITION


# ---------------------------------------------------------------- whole runs: the route against the rows


def _cfg(tmp_path, optimizer, epochs, n=30000, tol=0.0, dtype="float64", **train):
    from gradfit.config.loading import config_from_dict

    return config_from_dict({
        "name": "g", "seed": 0, "device": "cpu", "dtype": dtype,
        "data": {"synthetic": {"kind": "linear", "n_features": 4, "coefficients": [1.5, -2.0, 0.5, 3.0], "bias": 4.0,
                               "n_samples": n, "noise": 0.1}},
        "model": {"kind": "linear"}, "loss": {"kind": "mse"}, "optimizer": optimizer,
        "train": {"epochs": epochs, "tol": tol, **train}, "output": {"dir": str(tmp_path)},
    })


def _coef(run):
    c = run.coefficients
    return [c["intercept"], *c["coefficients"].values()]


_REAL_ROUTE = steppers._gram_route


def _both(tmp_path, monkeypatch, cfg):
    from gradfit.train.run import train

    seen = []
    real = steppers._gram_route

    def spy(*a, **k):
        g = real(*a, **k)
        seen.append(g)
        return g

    monkeypatch.setattr(steppers, "_gram_route", spy)
    gram_run = train(cfg, write=False)
    assert seen and seen[0] is not None, "the run did not take the Gram route"
    monkeypatch.setattr(steppers, "_gram_route", lambda *a, **k: None)
    rows_run = train(cfg, write=False)
    return gram_run, rows_run


@pytest.mark.parametrize("optimizer,epochs,rel", [
    ({"kind": "sgd", "lr": "auto"}, 300, 1e-9),
    ({"kind": "sgd", "lr": 0.05, "momentum": 0.9}, 200, 1e-9),
    # Adam divides each gradient component by its own RMS: a component that is 0 but for rounding (the
    # bias's, on centred data) takes a step of lr either way, so the rows' and the Gram matrix's rounding
    # part there by more than elsewhere (as autograd's and the one-pass gradient's do)
    ({"kind": "adam", "lr": 0.05}, 200, 2e-4),
    ({"kind": "lbfgs"}, 20, 1e-10),
], ids=["sgd", "momentum", "adam", "lbfgs"])
def test_training_on_the_gram_matrix_follows_the_rows(tmp_path, monkeypatch, optimizer, epochs, rel):
    cfg = _cfg(tmp_path, optimizer, epochs, tol=1e-12 if optimizer["kind"] == "lbfgs" else 0.0)
    g, r = _both(tmp_path, monkeypatch, cfg)
    a = [h.train_loss for h in g.result.history]
    b = [h.train_loss for h in r.result.history]
    n = min(len(a), len(b))
    assert n > 3
    if optimizer["kind"] == "lbfgs":  # (its line searches may end an epoch apart at rounding level)
        assert _coef(g) == pytest.approx(_coef(r), rel=rel, abs=rel)
    else:
        assert len(a) == len(b) == epochs
        assert a == pytest.approx(b, rel=rel)
        assert [h.val_loss for h in g.result.history] == pytest.approx([h.val_loss for h in r.result.history], rel=rel)
        assert _coef(g) == pytest.approx(_coef(r), rel=rel, abs=rel)


def test_many_plain_descent_epochs_stop_by_tolerance_and_interrupt_as_one_by_one(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, {"kind": "sgd", "lr": "auto"}, 5000, tol=1e-9)
    g, r = _both(tmp_path, monkeypatch, cfg)
    assert g.metrics["stop_reason"] == r.metrics["stop_reason"] == "tolerance"
    assert g.metrics["epochs"] == r.metrics["epochs"] < 5000
    assert _coef(g) == pytest.approx(_coef(r), rel=1e-9)

    from gradfit.train.run import train

    monkeypatch.setattr(steppers, "_gram_route", _REAL_ROUTE)
    seen = []
    run = train(_cfg(tmp_path, {"kind": "sgd", "lr": "auto"}, 10000), write=False,
                on_epoch=lambda rec: seen.append(rec.epoch), should_stop=lambda: len(seen) >= 37)
    assert run.metrics["stop_reason"] == "interrupted" and run.metrics["epochs"] == 37 and seen[-1] == 37


def test_sgd_epochs_cost_microseconds_on_the_gram_route(tmp_path):
    """100000 epochs of plain descent run in blocks (no timing asserted: the records say they all ran)."""
    from gradfit.train.run import train

    steps = []
    real = steppers._choose

    def spy(*a, **k):
        steps.append(real(*a, **k))
        return steps[-1]

    import unittest.mock

    with unittest.mock.patch.object(steppers, "_choose", spy):
        run = train(_cfg(tmp_path, {"kind": "sgd", "lr": "auto"}, 100_000), write=False)
    assert type(steps[0]) is steppers.GramDescentStep
    h = run.result.history
    assert len(h) == 100_000 and [r.epoch for r in h[:3]] == [1, 2, 3] and h[-1].epoch == 100_000
    assert all(math.isfinite(r.train_loss) for r in h[-10:])
    assert run.metrics["stop_reason"] == "max_epochs"
    assert run.metrics["exact"]["gap"] < 1e-9


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_plain_descent_that_diverges_names_the_epoch_the_rows_name(tmp_path, monkeypatch, dtype):
    """Too large a step: the same message, at the same epoch, as on the rows (float32: where its loss
    overflows; the rows' float32 sum of squares overflows n times sooner than their mean, an epoch or
    two earlier at this growth)."""
    from gradfit.errors import TrainingError
    from gradfit.train.run import train

    cfg = _cfg(tmp_path, {"kind": "sgd", "lr": 5.0}, 100_000, dtype=dtype)
    messages = []
    for route in (_REAL_ROUTE, lambda *a, **k: None):
        monkeypatch.setattr(steppers, "_gram_route", route)
        with pytest.raises(TrainingError, match=r"training diverged: the loss became inf at epoch \d+") as err:
            train(cfg, write=False)
        messages.append(str(err.value).split(" (last finite")[0])
    epochs = [int(m.rsplit(" ", 1)[1]) for m in messages]
    if dtype == "float64":
        assert messages[0] == messages[1]
    else:
        assert 0 <= epochs[0] - epochs[1] <= 3, messages


def test_checkpoints_of_plain_descent_resume_to_the_same_weights(tmp_path):
    """Blocks end at each checkpoint: a run resumed from one continues as the one never stopped."""
    from gradfit.train import run as api

    cfg = _cfg(tmp_path, {"kind": "sgd", "lr": 0.01}, 3000, checkpoint_every=1000)
    straight = api.train(cfg, out=tmp_path / "straight")
    seen = []
    api.train(cfg, out=tmp_path / "stopped", on_epoch=lambda rec: seen.append(rec.epoch),
              should_stop=lambda: len(seen) >= 1000)
    resumed = api.resume(tmp_path / "stopped")
    assert resumed.metrics["epochs"] == 3000
    assert _coef(resumed) == pytest.approx(_coef(straight), rel=1e-12, abs=1e-12)
    a = [r.train_loss for r in straight.result.history]
    b = [r.train_loss for r in resumed.result.history]
    assert b == pytest.approx(a, rel=1e-12)
