"""torchrun's environment: this process's rank and the number of processes, read without torch.

``gradfit train`` asks for the rank before it imports torch (rank 0 starts the figure helper
first; see gradfit.results.plots), so it lives here and not in gradfit.parallel, which
imports torch and re-exports these.
"""

from __future__ import annotations

import os


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun). No torch.distributed needed."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)
