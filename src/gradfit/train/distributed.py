"""Ranks other than 0 under torchrun: the same training, no output, and who reports an error.

torchrun's exit code is rank 0's. Errors agreed on by the ranks (parallel.Dist.agree) are
reported by rank 0 alone. An error found before the ranks connect (the config, the device,
the run directory to resume) is left to rank 0 for a while: it reads the same files,
reports and exits, and torchrun then stops this rank. If rank 0 has not stopped by then,
the error was this rank's alone and this rank says so itself, named by its rank.

Importing this module imports neither torch nor the training code (``gradfit train`` asks
``is_follower()`` before torch loads); ``follow`` imports them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from gradfit.errors import GradfitError
from gradfit.torchrun import env_rank

# Seconds a rank other than 0 leaves an error found before the ranks connect to rank 0.
FOLLOWER_GRACE = 10.0

TRAINED, INTERRUPTED, LEFT_TO_RANK_0 = "trained", "interrupted", "left to rank 0"


def is_follower() -> bool:
    """Whether this process is a rank other than 0 of a torchrun (False without torchrun)."""
    return env_rank() != 0


def follow(
    config: Optional[Path],
    overrides: Sequence[str] = (),
    *,
    out: Optional[Path] = None,
    force: bool = False,
    resume: Optional[Path] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    on_start: Optional[Callable] = None,
) -> str:
    """Train as a rank other than 0 (a new run from ``config``, or ``resume`` one).

    Returns TRAINED, INTERRUPTED (a stop request ended the run) or LEFT_TO_RANK_0 (an error
    that rank 0 reports: exiting 0 lets it, since a failed rank makes torchrun stop the others
    at once, maybe before rank 0 prints). Raises this rank's own GradfitError, named by rank.
    """
    from gradfit.config.loading import load_config  # (start-up time: the CLI imports this module)
    from gradfit.parallel import RankFailed  # (imported here for start-up time)
    from gradfit.train import run as api  # (imported here for start-up time)

    started: list = []  # training began: the ranks are connected

    def began(prep) -> None:
        started.append(True)
        if on_start is not None:
            on_start(prep)

    try:
        if resume is not None:
            run = api.resume(resume, overrides, should_stop=should_stop, on_start=began)
        else:
            run = api.train(load_config(config, overrides), out=out, force=force, should_stop=should_stop,
                            on_start=began)
    except GradfitError as err:
        if getattr(err, "shared", False):
            return LEFT_TO_RANK_0
        if not started:  # found before training began (the config, the device, the run to resume): rank 0's to say
            time.sleep(FOLLOWER_GRACE)
        if not isinstance(err, RankFailed):
            err.message = f"rank {env_rank()}: {err.message}"
        raise
    return INTERRUPTED if run.metrics["stop_reason"] == "interrupted" else TRAINED
