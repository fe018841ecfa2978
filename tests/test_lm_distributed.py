"""Levenberg-Marquardt and formula standard errors over several ranks, the ranks simulated by threads.

Each thread holds a shard of the rows and a ThreadDist whose collectives (gather, sum, broadcast,
agree) exchange values with the other threads, as torch.distributed would between processes. The
torchrun tests (test_distributed.py) run the real thing end to end; these check the arithmetic,
including a rank with fewer rows than parameters.
"""

from __future__ import annotations

import threading

import pytest
import torch

from gradfit.errors import GradfitError
from gradfit.optim.lm import LevenbergMarquardt
from gradfit.results.uncertainty import covariance_unscaled


class ThreadDist:
    enabled = True

    def __init__(self, rank: int, world: int, board: list, barrier: threading.Barrier):
        self.rank, self.world_size, self.board, self.barrier = rank, world, board, barrier

    def gather(self, obj) -> list:
        self.board[self.rank] = obj
        self.barrier.wait()
        out = list(self.board)
        self.barrier.wait()
        return out

    def sum(self, x):
        vals = self.gather(x)
        total = vals[0].clone() if isinstance(x, torch.Tensor) else vals[0]
        for v in vals[1:]:
            total = total + v
        return total

    def broadcast(self, t, src=0):
        return self.gather(t)[src].clone()

    def agree(self, fn):
        try:
            value, failure = fn(), None
        except GradfitError as err:
            value, failure = None, err
        failures = [f for f in self.gather(failure) if f is not None]
        if failures:
            raise failures[0]
        return value


def on_ranks(shards: list, work) -> list:
    """work(shard, dist) on one thread per shard; the results in rank order (a rank's exception re-raised)."""
    world = len(shards)
    board: list = [None] * world
    barrier = threading.Barrier(world, timeout=60)
    results: list = [None] * world

    def run(k):
        try:
            results[k] = ("ok", work(shards[k], ThreadDist(k, world, board, barrier)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            results[k] = ("error", exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind, value in results:
        if kind == "error" and not isinstance(value, threading.BrokenBarrierError):
            raise value
    return [value for _, value in results]


class Saturation(torch.nn.Module):
    """y = a * (1 - exp(-b * x)) + c: three parameters."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

    def forward(self, Z):
        return self.a * (1 - torch.exp(-self.b * Z[:, 0])) + self.c


def _data(n=100):
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(0, 6, n, dtype=torch.float64)
    y = 3.0 * (1 - torch.exp(-0.8 * x)) + 0.4 + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)
    return x[:, None], y


SHARDS = [(0, 50), (50, 52), (52, 52), (52, 100)]  # 2 rows for 3 parameters; no rows at all


def test_levenberg_marquardt_on_shards_takes_the_one_process_steps():
    Z, y = _data()
    head = Saturation()
    opt = LevenbergMarquardt(head.parameters())
    want, grads = [], []
    for _ in range(8):
        grads.append(opt.iterate(head, Z, y))
        want.append(torch.stack([p.detach().clone() for p in head.parameters()]))

    def work(rows, dist):
        a, b = rows
        h = Saturation()
        o = LevenbergMarquardt(h.parameters())
        out = []
        for _ in range(8):
            g = o.iterate(h, Z[a:b], y[a:b], dist=dist)
            out.append((torch.stack([p.detach().clone() for p in h.parameters()]), g))
        return out

    ranks = on_ranks(SHARDS, work)
    # max |J^T r| ends at rounding noise (~1e-12 here: an ulp of theta times J^T J), which the ranks'
    # other order of sums changes at will: below a floor far above that noise and far below the
    # gradients LM took its steps on, the two need only both be down there (theta is checked above).
    floor = 1e-10 * grads[0]
    for it in range(8):
        for k in range(len(SHARDS)):
            theta, g = ranks[k][it]
            assert torch.equal(theta, ranks[0][it][0])  # every rank holds the same parameters
            assert torch.allclose(theta, want[it], rtol=1e-10, atol=1e-12), (it, k)
            assert g == pytest.approx(grads[it], rel=1e-6, abs=floor), (it, k)
    assert torch.allclose(want[-1], torch.tensor([3.0, 0.8, 0.4], dtype=torch.float64), atol=0.05)


def test_covariance_from_shards_equals_the_whole_jacobian():
    g = torch.Generator().manual_seed(1)
    J = torch.randn(100, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1e3, 1e-3], dtype=torch.float64)
    want = covariance_unscaled(J)
    got = on_ranks(SHARDS, lambda rows, dist: covariance_unscaled(J[rows[0] : rows[1]], dist))
    for C in got:
        assert torch.allclose(C, want, rtol=1e-10, atol=0)
    # Columns the rows cannot tell apart: None on every rank, as for the whole.
    J2 = torch.cat([J[:, :2], J[:, :1] * 2], 1)
    assert covariance_unscaled(J2) is None
    assert on_ranks(SHARDS, lambda rows, dist: covariance_unscaled(J2[rows[0] : rows[1]], dist)) == [None] * len(SHARDS)


def test_the_global_mean_loss_is_the_same_number_on_every_rank():
    """Dist.wrap_loss: the value (what L-BFGS's line search, the history and the stopping rules read)
    must be bit for bit the same on every rank, or the ranks' L-BFGS steps part ways."""
    from gradfit.parallel import Dist

    g = torch.Generator().manual_seed(5)
    shards = [torch.randn(int(n), generator=g, dtype=torch.float64) * s
              for n, s in ((37, 1.0), (101, 3.0), (5, 0.01), (64, 7.0))]
    for trial in range(20):
        w = torch.tensor(0.1 * trial + 0.05, dtype=torch.float64, requires_grad=True)

        def work(target, dist, w=w):
            fn = Dist.wrap_loss(dist, torch.nn.functional.mse_loss)
            loss = fn(w * torch.ones_like(target), target)
            (grad,) = torch.autograd.grad(loss, w)
            return float(loss), float(grad)

        out = on_ranks(shards, work)
        assert len({v for v, _ in out}) == 1, out
        everything = torch.cat(shards)
        assert out[0][0] == pytest.approx(float(((w - everything) ** 2).mean()), rel=1e-14)
        # gradients, summed as DDP does (then divided by the world size): the global mean's
        assert sum(gr for _, gr in out) / len(shards) == pytest.approx(float(2 * (w - everything).mean()), rel=1e-12)
