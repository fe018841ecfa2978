"""The compiled one-pass kernel (gradfit._fused) behind fastopt.LinearMSE, against autograd and torch's path."""

from __future__ import annotations

import math
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

from gradfit.data import batches
from gradfit.models import passes as fastopt
from gradfit.models.heads import LinearHead

needs_kernel = pytest.mark.skipif(fastopt._fused is None, reason="gradfit._fused was not built")


def _design(n, m, dtype, seed=0, column_major=True):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, m, generator=g, dtype=torch.float64)
    y = X @ torch.linspace(-2, 3, m, dtype=torch.float64) + 0.5 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    Z = batches.empty_design(n, m, dtype, "cpu", column_major=column_major)
    Z.copy_(X)
    return Z, y.to(dtype)


def _head(m, intercept, dtype):
    head = LinearHead(m, intercept, dtype)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(1, -1, m, dtype=torch.float64))
        if intercept:
            head.bias.fill_(-0.25)
    return head


def _autograd(head, Z, y):
    loss = F.mse_loss(head(Z), y)
    grads = torch.autograd.grad(loss, list(head.parameters()))
    return loss.detach(), grads


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("cc") is None,
                    reason="the kernel is built where a C compiler is")
def test_the_kernel_is_built_where_a_c_compiler_is():
    # setup.py marks the extension optional: a failed build would only show as slower epochs.
    assert fastopt._fused is not None


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 3, 4, 8, 13])
@pytest.mark.parametrize("intercept", [True, False])
def test_kernel_loss_and_gradient_equal_autograd(dtype, m, intercept, monkeypatch):
    monkeypatch.setattr(fastopt, "KERNEL_VALUES_PER_THREAD", 64)  # several threads and parts
    n = 1013  # not a multiple of the block
    Z, y = _design(n, m, dtype)
    head = _head(m, intercept, dtype)
    Z64, y64, head64 = Z.double(), y.double(), _head(m, intercept, torch.float64)
    with torch.no_grad():
        head64.weight.copy_(head.weight)
    want_loss, want_grads = _autograd(head64, Z64, y64)  # float64 reference
    fast = fastopt.LinearMSE(head, Z, y, chunk_rows=48, remember=False)
    assert fast.kernel and len(fast.parts) > 1 and fast.threads > 1
    loss = fast()
    rel = 1e-12 if dtype == torch.float64 else 2e-6
    assert loss.dtype == dtype and loss.shape == ()
    assert float(loss) == pytest.approx(float(want_loss), rel=rel)
    for p, want in zip(head.parameters(), want_grads):
        assert p.grad.dtype == dtype and p.grad.shape == p.shape
        assert torch.allclose(p.grad.double(), want, rtol=rel, atol=rel * float(want.abs().max()))
    assert float(fast.loss()) == pytest.approx(float(want_loss), rel=rel)
    # the residuals it leaves behind
    assert torch.allclose(fast.r.double(), head64(Z64) - y64, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_and_torch_products_agree_and_do_not_depend_on_threads(dtype, monkeypatch):
    Z, y = _design(20_000, 7, dtype, seed=3)
    head = _head(7, True, dtype)
    torch_path = fastopt.LinearMSE(head, Z, y, remember=False, kernel=False)
    loss_t = torch_path()
    grads_t = [p.grad.clone() for p in head.parameters()]
    runs = []
    for per_thread in (1 << 30, 1000):  # one thread; several
        monkeypatch.setattr(fastopt, "KERNEL_VALUES_PER_THREAD", per_thread)
        fast = fastopt.LinearMSE(head, Z, y, remember=False)
        assert fast.kernel
        runs.append((fast.threads, float(fast()), [p.grad.clone() for p in head.parameters()]))
    assert runs[0][0] == 1 and runs[1][0] > 1
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    for _, loss, grads in runs:
        assert loss == pytest.approx(float(loss_t), rel=rel)
        for g, gt in zip(grads, grads_t):
            assert torch.allclose(g, gt, rtol=rel, atol=rel * float(gt.abs().max()))
    # Same parts, any timing: bit-identical on repeat.
    again = fastopt.LinearMSE(head, Z, y, remember=False)
    assert float(again()) == runs[1][1]


@needs_kernel
def test_kernel_passes_nan_and_inf_through():
    # The training loop stops a diverging run on a non-finite loss: the kernel must not hide one.
    Z, y = _design(500, 5, torch.float32)
    head = _head(5, True, torch.float32)
    Z[123, 2] = math.nan
    assert math.isnan(float(fastopt.LinearMSE(head, Z, y, remember=False)()))
    Z[123, 2] = math.inf
    assert not math.isfinite(float(fastopt.LinearMSE(head, Z, y, remember=False)()))
    Z[123, 2] = 0.0
    with torch.no_grad():
        head.weight[0] = 3e38  # overflow in float32
    assert not math.isfinite(float(fastopt.LinearMSE(head, Z, y, remember=False)()))


@needs_kernel
def test_kernel_takes_only_what_it_can_read():
    Z, y = _design(300, 4, torch.float32)
    assert fastopt.kernel_applies(Z, y)
    rows, _ = _design(300, 4, torch.float32, column_major=False)
    assert not fastopt.kernel_applies(rows, y)  # row-major: torch's path
    assert not fastopt.kernel_applies(Z, y.double())  # target of another dtype
    assert not fastopt.kernel_applies(Z[::2], y[::2])  # strided rows
    assert not fastopt.kernel_applies(Z.to(torch.float16), y.to(torch.float16))
    head = _head(4, True, torch.float32)
    assert not fastopt.LinearMSE(head, rows, y).kernel
    with pytest.raises(ValueError, match="column-major"):
        fastopt.LinearMSE(head, rows, y, kernel=True)
    # A column-major view of a wider buffer (columns further apart than n) is read in place.
    wide = torch.randn(4, 400).T[:300]
    assert fastopt.kernel_applies(wide, y)
    fast = fastopt.LinearMSE(head, wide, y, remember=False)
    want = F.mse_loss(head(wide), y)
    assert float(fast()) == pytest.approx(float(want), rel=1e-6)


@needs_kernel
def test_training_with_the_kernel_follows_the_torch_path(tmp_path, monkeypatch):
    from gradfit.config.loading import config_from_dict
    from gradfit.train.run import train

    cfg = config_from_dict({
        "name": "k", "seed": 0, "device": "cpu", "dtype": "float64",
        "data": {"synthetic": {"kind": "linear", "n_features": 6, "coefficients": [1.5, -2.0, 0.5, 0, 3, -1],
                               "bias": 4.0, "n_samples": 3000, "noise": 0.1}},
        "model": {"kind": "linear"}, "loss": {"kind": "mse"},
        "optimizer": {"kind": "sgd", "lr": "auto"},
        "train": {"epochs": 200, "tol": 1e-12},
        "output": {"dir": str(tmp_path)},
    })
    used = []
    real = fastopt.LinearMSE.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        used.append(self.kernel)

    monkeypatch.setattr(fastopt.LinearMSE, "__init__", spy)
    fast = train(cfg, write=False)
    assert used and used[0] is True
    monkeypatch.setattr(fastopt, "_fused", None)
    used.clear()
    slow = train(cfg, write=False)
    assert used and not any(used)
    a = [r.train_loss for r in fast.result.history]
    b = [r.train_loss for r in slow.result.history]
    assert len(a) == len(b) > 10
    assert a == pytest.approx(b, rel=1e-10)
    assert fast.metrics["exact"]["gap"] < 1e-8


@needs_kernel
def test_kernel_refuses_parameters_that_do_not_fit_the_design():
    # The kernel reads the weight through a raw pointer: a mismatch must be an error, never a read past its end.
    Z, y = _design(1000, 6, torch.float64)
    small = _head(4, True, torch.float64)
    fast = fastopt.LinearMSE(small, Z, y)
    assert not fast.kernel  # torch's path, which refuses the product itself
    with pytest.raises(RuntimeError):
        fast()
    with pytest.raises(ValueError, match=r"weight \(m,\)"):
        fastopt.LinearMSE(small, Z, y, kernel=True)
    matrix = torch.nn.Linear(6, 1, bias=False, dtype=torch.float64)  # weight (1, 6)
    assert not fastopt.LinearMSE(matrix, Z, y).kernel
    head = _head(6, True, torch.float64)
    fast = fastopt.LinearMSE(head, Z, y)
    assert fast.kernel
    head.weight = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))  # swapped after construction
    with pytest.raises(RuntimeError, match="no longer match"):
        fast()


@needs_kernel
def test_kernel_blocks_are_capped_whatever_chunk_rows_asks():
    # Partial sums within a block are in the design's dtype: a long block would lose float32 digits.
    n = 1 << 20
    Z = batches.empty_design(n, 1, torch.float32, "cpu", column_major=True)
    Z.fill_(1.0)
    y = torch.full((n,), 0.9, dtype=torch.float32)
    head = LinearHead(1, False, torch.float32)
    with torch.no_grad():
        head.weight.fill_(1.0)
    fast = fastopt.LinearMSE(head, Z, y, chunk_rows=n, remember=False)
    assert fast.chunk < n
    want = (1.0 - float(torch.tensor(0.9, dtype=torch.float32))) ** 2
    assert float(fast()) == pytest.approx(want, rel=2e-6)  # (torch's products: 7e-5 here)


def test_a_build_of_another_version_is_not_used(cli, monkeypatch):
    import types

    stale = types.ModuleType("gradfit._fused")  # an editable install's old build: no ABI, or another one
    assert fastopt.usable_kernel(stale) is None
    stale.ABI = fastopt.KERNEL_ABI + 1
    assert fastopt.usable_kernel(stale) is None
    assert fastopt.usable_kernel(None) is None
    monkeypatch.setitem(sys.modules, "gradfit._fused", stale)
    import gradfit

    monkeypatch.setattr(gradfit, "_fused", stale, raising=False)
    r = cli("--version")
    assert r.exit_code == 0 and "compiled kernel: built from another version of gradfit, not used" in r.stdout
    if fastopt._fused is not None:
        assert fastopt.usable_kernel(fastopt._fused) is fastopt._fused
        # the CLI's literal is fastopt's constant
        monkeypatch.setattr(gradfit, "_fused", fastopt._fused)
        monkeypatch.setitem(sys.modules, "gradfit._fused", fastopt._fused)
        assert "compiled kernel: built\n" in cli("--version").stdout
