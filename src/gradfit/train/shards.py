"""run.prepare for several processes under ``torchrun``: each rank its shard of the rows.

``torchrun --nproc-per-node N -m gradfit train CONFIG`` starts N copies of gradfit with
RANK / WORLD_SIZE / LOCAL_RANK in their environment. ``setup`` reads them, joins the
process group (gloo on CPU; gloo for CPU tensors and nccl for CUDA tensors on GPUs)
and returns a ``Dist``: the handful of collectives the rest of gradfit needs. Without
torchrun it returns ``SINGLE``, whose operations are the identity, so the
single-process code path is unchanged.

What each rank does (see docs/distributed.md):
- it reads its own contiguous share of the rows (Parquet: whole row groups; CSV: a byte
  range of lines; synthetic: the seeded rows, of which it keeps its slice);
- the train/val/test split is the single-process one: the same seeded permutation of
  all N rows, each rank keeping the indices that fall in its range;
- scaling statistics, the loss, gradients (DistributedDataParallel) and metrics are
  reduced over all ranks (``data.sources.ShardRows``), so a run on N processes computes
  what one process would;
- errors that can happen on one rank only (a bad value in its shard) are agreed on:
  every rank raises the first failing rank's error, rank 0 reports it, all exit 1.
"""

from __future__ import annotations

import time

import torch

from gradfit.data.shards import load_shard, split_shard
from gradfit.data.sources import ShardRows
from gradfit.data.split import STREAM_INIT, generator
from gradfit.models import losses
from gradfit.models.build import build_model
from gradfit.optim import plan as optim
from gradfit.parallel import Dist
from gradfit.train.loop import TrainData
from gradfit.train.prepared import Prepared


def prepare(cfg, dist: Dist, device: torch.device, t0: float):
    """run.prepare for a distributed run: each rank its shard, in memory."""

    device = dist.device or device
    ds, offset, n_all = load_shard(cfg, dist)
    split = split_shard(n_all, offset, ds.n_rows, cfg, dist)
    rows = ShardRows(ds.X, ds.y, split, dist)
    X_tr, y_tr = ds.X[split.train], ds.y[split.train]
    model = dist.agree(lambda: build_model(cfg, ds.feature_names, ds.target_name, X_tr, y_tr, device,
                                           generator(cfg.seed, STREAM_INIT), summarize=rows.summarizer()))
    data = TrainData(model.design(X_tr), model.scaled_target(y_tr))
    if rows.has_val:
        data.Z_val = model.design(ds.X[split.val])
        data.y_val = model.scaled_target(ds.y[split.val])
    plan = dist.agree(lambda: optim.plan(cfg, data.Z, reduce=dist.sum))
    # (Huber's default delta from rank 0's training targets, the same on every rank)
    loss = dist.gather(dist.agree(lambda: losses.from_config(cfg, y_tr)))[0]
    return Prepared(cfg, device, ds, split, model, data, loss, plan,
                    time.perf_counter() - t0, rows, dist=dist)
