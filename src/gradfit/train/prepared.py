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

    def training_design(self):
        """(Z, y): the float64 training design the run holds and the raw targets of its rows, for
        sums over the training rows from whole-matrix products (results.exact.exact_fit's
        ``design``); None where the rows are not all here in that form (torchrun shards, a Parquet
        stream, row weights, a float32 design: then the rows are read again in float64, chunk by chunk)."""
        from gradfit.data.sources import MemoryRows  # (the one source whose rows are all in this process)

        Z = getattr(self.data, "Z", None)
        if (not isinstance(self.rows, MemoryRows) or self.rows.weights is not None or self.rows.dist.enabled
                or not isinstance(Z, torch.Tensor) or Z.dtype != torch.float64 or Z.ndim != 2
                or Z.shape[0] != self.split.train.numel()):
            return None
        return Z, self.ds.y.index_select(0, self.split.train)
