"""What a run has made before its first epoch: data, split, model, training design, loss, plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradfit.config.schema import Config
from gradfit.data.sources import RowSource
from gradfit.data.split import Dataset, Split
from gradfit.models import losses
from gradfit.models.regression import RegressionModel
from gradfit.optim import plan as optim
from gradfit.parallel import SINGLE, Dist
from gradfit.train.loop import TrainData


@dataclass
class Prepared:
    """Everything the loop needs, made once before training starts."""

    cfg: Config
    device: torch.device
    ds: Dataset
    split: Split
    model: RegressionModel
    data: TrainData
    loss: losses.Loss
    plan: optim.OptimizerPlan
    load_seconds: float
    rows: RowSource  # where the rows live (in memory, torchrun shards, Parquet stream): chosen in run.prepare
    dist: Dist = SINGLE  # several processes under torchrun (parallel.py)
