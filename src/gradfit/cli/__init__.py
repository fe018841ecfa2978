"""The gradfit command line: parse, call one library function, render.

This package is the only place that imports typer or rich. Nothing heavy
(torch, pandas, matplotlib) is imported at module level, so ``gradfit --help``
answers quickly; each command imports the library inside its function.
One module per command (or family of commands) registers itself on ``app``
(cli/common.py holds the app, the consoles and the error translation).
"""

from __future__ import annotations

import sys

# Each command module registers its commands on import; --help lists them in this order.
# isort: off
from gradfit.cli import train  # noqa: F401
from gradfit.cli import solve  # noqa: F401
from gradfit.cli import evaluate  # noqa: F401
from gradfit.cli import inspect  # noqa: F401
from gradfit.cli import export  # noqa: F401
from gradfit.cli import report  # noqa: F401
from gradfit.cli import summary  # noqa: F401
from gradfit.cli import compare  # noqa: F401
from gradfit.cli import select  # noqa: F401
# isort: on
from gradfit.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Run the command line (``gradfit.__main__.main`` is the console script's entry)."""
    try:
        app(prog_name="gradfit")
    except SystemExit as done:
        # typer ends an interrupt outside a command (while it parses the command line) with a
        # silent exit 130; say so (a command's own interrupt has printed its message already).
        if done.code == 130 and isinstance(getattr(done.__context__, "__cause__", None), KeyboardInterrupt):
            from gradfit.errors import signal_name  # (a plain module)

            sys.stderr.write(f"aborted by {signal_name(done.__context__.__cause__)}: gradfit stopped while "
                             "starting; nothing was done\n")
        raise
    sys.exit(0)
