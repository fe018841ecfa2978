"""Memory estimates from the config, before anything is allocated: see gradfit.config.resources.

Kept under this name for training's callers; the estimates moved to the config room so that
evaluation and the checkpoint reader (results/, below train/) check what they are asked to build too.
"""

from __future__ import annotations

from gradfit.config.resources import FLOAT, available_memory, check_memory, estimates, mlp_parameters

__all__ = ["FLOAT", "available_memory", "check_memory", "estimates", "mlp_parameters"]
