"""What a run has made before its first epoch: data, split, model, training design, loss, plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from gradfit.config.schema import Config
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
    dist: Dist = SINGLE  # several processes under torchrun (distributed.py)
    rows: Optional[object] = None  # rows not all in ds (other ranks', streamed): metrics over them (distributed.py)
    stream: Optional[object] = None  # data.streaming: batches read from Parquet each epoch (streaming.py)
