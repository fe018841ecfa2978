"""gradfit's fast paths against the references they replace: torch.optim, autograd, indexing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gradfit import threads
from gradfit.data import batches
from gradfit.models import passes as fastopt
from gradfit.models.heads import LinearHead, MLPHead
from gradfit.optim import first_order


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run thousands of tiny ops: on one thread, so that a busy machine cannot stall them
    at the intra-op threads' barrier (milliseconds per op; the numbers are the same)."""
    with threads.single_threaded():
        yield


def _problem(dtype, seed=0, n=300, d=5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = X @ torch.arange(1.0, d + 1, dtype=torch.float64) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return X.to(dtype), y.to(dtype)


def _mlp(dtype, d=5):
    return MLPHead(d, [16, 8], "tanh", dtype, torch.Generator().manual_seed(1))


def _trajectory(make_opt, dtype, model="mlp", steps=60, batch=None):
    """Parameters after each step of full-batch (or fixed mini-batch) training."""
    X, y = _problem(dtype)
    head = _mlp(dtype) if model == "mlp" else LinearHead(X.shape[1], True, dtype)
    opt = make_opt(list(head.parameters()))
    out = []
    for k in range(steps):
        sl = slice(None) if batch is None else slice((k * batch) % 300, (k * batch) % 300 + batch)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(head(X[sl]), y[sl]).backward()
        opt.step()
        out.append(torch.cat([p.detach().reshape(-1).clone() for p in head.parameters()]))
    return torch.stack(out)


SGD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.5, weight_decay=0.01),
]


@pytest.mark.parametrize("kw", SGD_CASES)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_sgd_matches_torch_optim(kw, dtype, atol):
    ours = _trajectory(lambda p: first_order.SGD(p, **kw), dtype)
    ref = _trajectory(lambda p: torch.optim.SGD(p, **kw), dtype)
    assert torch.allclose(ours, ref, atol=atol, rtol=0), float((ours - ref).abs().max())


ADAM_CASES = [
    (dict(lr=0.01), False, torch.optim.Adam),
    (dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05), False, torch.optim.Adam),
    (dict(lr=0.01, weight_decay=0.05), True, torch.optim.AdamW),
]


@pytest.mark.parametrize("kw,decoupled,ref_cls", ADAM_CASES)
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_adam_matches_torch_optim(kw, decoupled, ref_cls, fused, dtype, atol):
    ours = _trajectory(lambda p: first_order.Adam(p, decoupled=decoupled, fused=fused, **kw), dtype, batch=50)
    ref = _trajectory(lambda p: ref_cls(p, **kw), dtype, batch=50)
    assert torch.allclose(ours, ref, atol=atol, rtol=0), float((ours - ref).abs().max())


def test_adam_state_dict_round_trip_continues_the_same_trajectory():
    X, y = _problem(torch.float64)

    def run(head, opt, k):
        for _ in range(k):
            opt.zero_grad()
            F.mse_loss(head(X), y).backward()
            opt.step()

    a = _mlp(torch.float64)
    oa = first_order.Adam(a.parameters(), lr=0.01)
    run(a, oa, 10)
    b = _mlp(torch.float64)
    b.load_state_dict(a.state_dict())
    ob = first_order.Adam(b.parameters(), lr=0.01)
    sd = oa.state_dict()
    assert sorted(sd["state"]) == list(range(6)) and sd["param_groups"][0]["params"] == list(range(6))
    ob.load_state_dict(sd)
    run(a, oa, 5)
    run(b, ob, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_optimizer_step_with_closure_returns_the_loss():
    X, y = _problem(torch.float64)
    head = LinearHead(5, True, torch.float64)
    opt = first_order.SGD(head.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(head(X), y)
        loss.backward()
        return loss

    loss0 = float(opt.step(closure).detach())
    assert loss0 == pytest.approx(float((y**2).mean()))
    assert float(F.mse_loss(head(X), y).detach()) < loss0


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_linear_mse_gradient_equals_autograd(intercept, chunk):
    X, y = _problem(torch.float64, n=257)
    head = LinearHead(5, intercept, torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0], dtype=torch.float64))
        if intercept:
            head.bias.fill_(0.7)
    loss = F.mse_loss(head(X), y)
    loss.backward()
    ref = [p.grad.clone() for p in head.parameters()]
    for p in head.parameters():
        p.grad = None
    fast = fastopt.LinearMSE(head, X.contiguous(), y, chunk_rows=chunk)
    got = fast()
    assert float(got) == pytest.approx(float(loss), rel=1e-13)
    for p, r in zip(head.parameters(), ref):
        assert torch.allclose(p.grad, r, rtol=1e-12, atol=1e-14)
    assert float(fast.loss()) == pytest.approx(float(loss), rel=1e-13)


def test_linear_mse_applies_only_to_linear_heads_with_mse():
    X, _ = _problem(torch.float32)
    assert fastopt.LinearMSE.applies(LinearHead(5, True, torch.float32), F.mse_loss, X)
    assert not fastopt.LinearMSE.applies(LinearHead(5, True, torch.float32), F.l1_loss, X)
    assert not fastopt.LinearMSE.applies(_mlp(torch.float32), F.mse_loss, X)
    assert not fastopt.LinearMSE.applies(LinearHead(5, True, torch.float32), F.mse_loss, X[::2])  # strided rows


@pytest.mark.parametrize("batch", [1, 7, 64, 300, 500])
def test_shuffled_batches_are_the_indexed_rows(batch, monkeypatch):
    monkeypatch.setattr(batches, "GATHER_BYTES", 1000)  # several gather blocks
    X, y = _problem(torch.float32)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    buffers: dict = {}
    for _ in range(2):  # buffers reused across epochs
        got = [(zb.clone(), yb.clone()) for zb, yb in batches.shuffled_batches(X, y, perm, batch, buffers)]
        want = [(X[perm[i : i + batch]], y[perm[i : i + batch]]) for i in range(0, 300, batch)]
        assert len(got) == len(want)
        for (a, b), (c, d) in zip(got, want):
            assert torch.equal(a, c) and torch.equal(b, d)


def _train_cfg(tmp_path, **over):
    from gradfit.config.loading import config_from_dict

    d = {
        "name": "t",
        "seed": 0,
        "device": "cpu",
        "dtype": "float64",
        "data": {"synthetic": {"kind": "linear", "n_features": 3, "coefficients": [1.5, -2.0, 0.5], "bias": 4.0,
                               "n_samples": 400, "noise": 0.1}},
        "model": {"kind": "linear"},
        "loss": {"kind": "mse"},
        "optimizer": {"kind": "sgd", "lr": "auto"},
        "train": {"epochs": 300, "tol": 1e-12},
        "output": {"dir": str(tmp_path)},
    }
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    return config_from_dict(d)


def test_fast_full_batch_path_gives_the_autograd_trajectory(tmp_path, monkeypatch):
    """The loop with LinearMSE and the loop with autograd record the same losses."""
    from gradfit.train.run import train

    cfg = _train_cfg(tmp_path)
    fast = train(cfg, write=False)
    monkeypatch.setattr(fastopt.LinearMSE, "applies", staticmethod(lambda *a: False))
    slow = train(cfg, write=False)
    a = [r.train_loss for r in fast.result.history]
    b = [r.train_loss for r in slow.result.history]
    assert len(a) == len(b) > 10
    assert a == pytest.approx(b, rel=1e-10)
    assert fast.metrics["exact"]["gap"] < 1e-8


def test_minibatch_adam_training_recovers_planted_coefficients(tmp_path):
    from gradfit.train.run import train

    cfg = _train_cfg(tmp_path, optimizer={"kind": "adam", "lr": 0.05}, train={"epochs": 200, "batch_size": 64})
    run = train(cfg, write=False)
    c = run.coefficients
    assert c["intercept"] == pytest.approx(4.0, abs=0.05)
    assert [c["coefficients"][k] for k in ("x1", "x2", "x3")] == pytest.approx([1.5, -2.0, 0.5], abs=0.05)


NO_DYNAMO_PROBE = """\
import gc, json, sys
from gradfit.__main__ import main  # the console script's entry
sys.argv = ["gradfit", "train", sys.argv[1], "--out", sys.argv[2], "-q", "--set", "train.epochs=30"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
mpl = "matplotlib" in sys.modules  # the figures were drawn by the helper process
collector = [gc.isenabled(), gc.get_freeze_count() > 10000]  # back on, the imports frozen out of its way
from gradfit.train.run import train
from gradfit.config.loading import config_from_dict
base = {"name": "q", "data": {"synthetic": {"kind": "polynomial", "coefficients": [3, 2, 1], "n_samples": 50}},
        "train": {"epochs": 5}, "output": {"dir": sys.argv[3]}}
runs = {
    "adam": {"model": {"kind": "polynomial", "degree": 2}, "optimizer": {"kind": "adam", "lr": 0.05},
             "train": {"epochs": 5, "batch_size": 16}},
    "lbfgs": {"model": {"kind": "polynomial", "degree": 2}, "optimizer": {"kind": "lbfgs"}},
    "mlp": {"model": {"kind": "mlp", "hidden": [8]}, "optimizer": {"kind": "adam", "lr": 0.01}},
    "lm": {"model": {"kind": "formula", "formula": "y = a * x**2 + b * exp(0.1 * x) + c"}},  # lm, then std errors
}
for name, extra in runs.items():
    train(config_from_dict({**base, **extra}), write=False)
print(json.dumps({"matplotlib": mpl, "dynamo": "torch._dynamo" in sys.modules, "sympy": "sympy" in sys.modules,
                  "collector": collector}))
"""


def test_training_imports_no_dynamo_and_the_cli_draws_in_a_helper(tmp_path, root):
    """torch.optim optimizers, torch.func.jacfwd and forward-mode AD import torch._dynamo (1.3 s or more);
    gradfit's sgd/adam/lbfgs/lm and its Jacobians must not. ``gradfit train`` leaves matplotlib to its
    helper process, whose figures are the bytes this process draws from the same run. The entry point
    pauses the cyclic garbage collector while torch loads; train turns it back on before training."""
    import json

    from gradfit.config.loading import load_config
    from gradfit.results import plots
    from gradfit.train.run import train

    out = subprocess.run([sys.executable, "-c", NO_DYNAMO_PROBE, str(root / "configs" / "quadratic.yaml"),
                          str(tmp_path / "cli"), str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"matplotlib": False, "dynamo": False, "sympy": False,
                                                                "collector": [True, True]}
    assert plots._helper is None  # torch is imported here: figures are drawn in this process
    here = train(load_config(root / "configs" / "quadratic.yaml", ["train.epochs=30"]), out=tmp_path / "lib")
    for name in ("loss.png", "fit.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (here.run_dir / name).read_bytes(), name
    assert (tmp_path / "cli" / "metrics.json").is_file()
    assert not [p.name for p in (tmp_path / "cli").iterdir() if p.name.startswith(".")]  # no temporary files left


def _csv_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data"
    return sorted(p for p in root.rglob("*.csv") if p.stat().st_size <= 1 << 20)


@pytest.mark.parametrize("path", _csv_files(), ids=lambda p: p.name)
def test_small_csv_reader_gives_pandas_numbers_bit_for_bit(path):
    import numpy as np
    import pandas as pd

    from gradfit.data import tables as data

    cols = data.read_columns(path)
    assert cols == [str(c) for c in pd.read_csv(path, nrows=0).columns]
    fast = data._small_csv_arrays(path, cols[:-1], cols[-1])
    if fast is None:
        pytest.skip("not a plain numeric CSV: pandas reads it")
    X, y, _ = data.frame_to_arrays(data.read_frame(path, cols), cols[:-1], cols[-1], path, False)
    assert np.array_equal(fast[0], X) and np.array_equal(fast[1], y)


@pytest.mark.parametrize(
    "text",
    ["x,y\n1,2\n,3\n", "x,y\n1,2\nnan,3\n", "x,y\n1,2\ninf,3\n", "x,y\n1,abc\n", "x,x\n1,2\n", "x,y\n1,2,3\n", "x,y\n"],
)
def test_small_csv_reader_leaves_anything_unusual_to_pandas(tmp_path, text):
    from gradfit.data import tables as data

    p = tmp_path / "d.csv"
    p.write_text(text)
    assert data._small_csv_arrays(p, ["x"], "y") is None


def test_small_csv_reader_reads_numbers_like_pandas(tmp_path):

    from gradfit.data import tables as data

    p = tmp_path / "d.csv"
    p.write_text("\ufeffx,y\r\n1e3,-.5\r\n\r\n+2.25,0.1000000000000000055511151231257827\r\n3,7E-3\r\n", encoding="utf-8")
    X, y = data._small_csv_arrays(p, ["x"], "y")
    assert X[:, 0].tolist() == [1000.0, 2.25, 3.0]
    assert y.tolist() == [-0.5, 0.1, 0.007]
    assert data.read_columns(p) == ["x", "y"]


# ---------------------------------------------------------------- the plotting helper


def _figures(plots, out):
    import numpy as np

    from gradfit.train.loop import EpochRecord

    hist = [EpochRecord(i, 10.0 ** (-i / 10), 10.0 ** (-i / 9) if i % 3 else None, 0.1, 0.0) for i in range(1, 40)]
    x = np.linspace(-2, 2, 50)
    y = x**2 + 0.1 * np.sin(9 * x)
    plots.loss_plot(out / "loss.png", hist, "mse")
    plots.fit_plot(out / "fit.png", x, y, np.arange(50) % 4 != 0, lambda g: g[:, 0] ** 2, "x", "y", "y = x^2")
    plots.parity_plot(out / "parity.png", y, y + 0.05, "y", "validation rows")


def test_plot_helper_writes_the_bytes_drawn_in_process(tmp_path, monkeypatch):
    from gradfit.results import plots

    (tmp_path / "here").mkdir()
    _figures(plots, tmp_path / "here")
    assert plots.start_helper(force=True)
    _figures(plots, tmp_path / "helper")
    monkeypatch.setattr(plots, "_draw", lambda *a: pytest.fail("drawn in this process, not by the helper"))
    plots.wait()
    for name in ("loss.png", "fit.png", "parity.png"):
        assert (tmp_path / "helper" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name


def test_figures_are_drawn_here_when_the_helper_dies(tmp_path):
    from gradfit.results import plots

    assert plots.start_helper(force=True)
    plots._helper.proc.kill()
    _figures(plots, tmp_path)
    plots.wait()
    assert plots._helper is None
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("loss.png", "fit.png", "parity.png"))


def test_stopped_helper_writes_nothing(tmp_path):
    from gradfit.results import plots

    assert plots.start_helper(force=True)
    proc = plots._helper.proc
    plots.stop_helper()
    assert proc.poll() is not None and plots._helper is None


# ---------------------------------------------------------------- MLP by hand, Jacobians, step counts


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_mlp_mse_gradient_equals_autograd(activation, dtype, batch):
    g = torch.Generator().manual_seed(batch)
    head = MLPHead(6, [16, 8], activation, dtype, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype))  # biases not zero
    Z = torch.randn(batch, 6, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(batch, generator=g, dtype=torch.float64).to(dtype)
    assert fastopt.MLPMSE.applies(head, F.mse_loss, Z)
    loss = F.mse_loss(head(Z), y)
    loss.backward()
    ref = [p.grad.clone() for p in head.parameters()]
    head.zero_grad(set_to_none=True)
    step = fastopt.MLPMSE(head)
    for _ in range(2):  # the second call reuses the gradient buffers
        got = step(Z, y)
        tol = {"rtol": 1e-13, "atol": 1e-15} if dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-7}
        torch.testing.assert_close(got, loss.detach(), **tol)
        for a, p in zip(ref, head.parameters()):
            assert p.grad.is_contiguous()
            torch.testing.assert_close(p.grad, a, **tol)


def test_mlp_mse_applies_only_to_relu_or_tanh_mlps_with_mse():
    Z = torch.zeros(4, 3)
    assert not fastopt.MLPMSE.applies(MLPHead(3, [4], "gelu", torch.float32, torch.Generator()), F.mse_loss, Z)
    assert not fastopt.MLPMSE.applies(MLPHead(3, [4], "relu", torch.float32, torch.Generator()), F.l1_loss, Z)
    assert not fastopt.MLPMSE.applies(LinearHead(3, True, torch.float32), F.mse_loss, Z)
    hooked = MLPHead(3, [4], "relu", torch.float32, torch.Generator())
    hooked.net[0].register_forward_hook(lambda *a: None)
    assert not fastopt.MLPMSE.applies(hooked, F.mse_loss, Z)


@pytest.mark.parametrize("batch_size", [32, None])
def test_mlp_training_by_hand_gives_the_autograd_trajectory(tmp_path, monkeypatch, batch_size):
    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    cfg = config_from_dict({
        "name": "m", "seed": 3, "dtype": "float64",
        "data": {"synthetic": {"kind": "polynomial", "coefficients": [1, -2, 0.5], "n_samples": 200}},
        "model": {"kind": "mlp", "hidden": [16, 16]}, "optimizer": {"kind": "adam", "lr": 0.01},
        "train": {"epochs": 15, "batch_size": batch_size, "tol": 0.0}, "output": {"dir": str(tmp_path)},
    })
    fast = train(cfg, write=False)
    monkeypatch.setattr(fastopt.MLPMSE, "applies", staticmethod(lambda *a: False))
    slow = train(cfg, write=False)
    a = [r.train_loss for r in fast.result.history]
    b = [r.train_loss for r in slow.result.history]
    assert len(a) == 15 and a == pytest.approx(b, rel=1e-12)
    for p, q in zip(fast.model.head.parameters(), slow.model.head.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_jacobian_equals_the_closed_form():
    from gradfit.optim.lm import jacobian

    t = torch.linspace(0, 5, 40, dtype=torch.float64)
    theta = torch.tensor([2.0, 0.7, -0.3, 1.5], dtype=torch.float64)

    def f(th):  # constants and data mixed with the parameters; th[3] is not used
        return th[0] * torch.exp(-th[1] * t) + 3.0 * th[2] ** 2 - 1.0

    out, J = jacobian(f, theta)
    a, k, c = theta[:3]
    expected = torch.stack([torch.exp(-k * t), -a * t * torch.exp(-k * t), 6 * c * torch.ones_like(t),
                            torch.zeros_like(t)], 1)
    assert torch.equal(out, f(theta))
    torch.testing.assert_close(J, expected, rtol=1e-15, atol=1e-15)


def test_adam_counts_steps_per_parameter_like_torch_optim():
    """One op counts every parameter's steps; a step in which a parameter has no gradient leaves its count."""
    X, y = _problem(torch.float64)
    heads = [_mlp(torch.float64) for _ in range(2)]
    opts = [first_order.Adam(heads[0].parameters(), lr=0.01), torch.optim.Adam(heads[1].parameters(), lr=0.01)]
    for k in range(6):
        for head, opt in zip(heads, opts):
            opt.zero_grad(set_to_none=True)
            F.mse_loss(head(X), y).backward()
            if k in (2, 3):
                head.net[0].bias.grad = None
            opt.step()
    for p, q in zip(*(h.parameters() for h in heads)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    ours, ref = (o.state_dict()["state"] for o in opts)
    assert [float(ours[i]["step"]) for i in ours] == [float(ref[i]["step"]) for i in ref] == [6, 4, 6, 6, 6, 6]


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("degree", [1, 3])
def test_exact_check_from_the_design_in_hand_equals_the_chunked_passes(intercept, degree):
    """results.exact.exact_fit's ``design`` path (whole-matrix products on the float64 training
    design the run holds) against its chunked passes over the rows (the oracle, as torchrun and
    streaming runs take it): the same least-squares fit to rounding."""
    from gradfit.config.loading import config_from_dict
    from gradfit.results.exact import exact_fit
    from gradfit.train.run import prepare

    raw = {"name": "t", "seed": 3, "dtype": "float64", "device": "cpu",
           "data": {"synthetic": {"kind": "polynomial", "coefficients": [2, -1, 0.5, 0.25], "n_samples": 40_000,
                                  "noise": 0.3, "x_range": [-2, 3]}, "split": {"val": 0.2}},
           "model": {"kind": "polynomial", "degree": degree, "intercept": intercept}}
    prep = prepare(config_from_dict(raw))
    design = prep.training_design()
    assert design is not None and design[0].shape[0] == prep.split.train.numel()
    fast, slow = exact_fit(prep.model, prep.rows, design), exact_fit(prep.model, prep.rows)
    torch.testing.assert_close(fast["coef"], slow["coef"], rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(fast["gram"], slow["gram"], rtol=1e-12, atol=1e-9)
    assert fast["n"] == slow["n"] and fast["loss"] == pytest.approx(slow["loss"], rel=1e-11)
    assert prepare(config_from_dict({**raw, "dtype": "float32"})).training_design() is None  # (float32: the rows again)
