"""``python -m gradfit`` and the ``gradfit`` console script."""

import gc
import signal
import sys


def _terminate(signum, frame) -> None:
    """SIGTERM as a KeyboardInterrupt naming it: every command then stops as it does for Ctrl-C
    (its message, exit code 130, clean-up of what it created) instead of dying silently."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    # Start-up imports torch, pydantic and typer: hundreds of thousands of objects, none of
    # them garbage, which Python's cyclic collector would walk some 350 times while they load
    # (0.12 s of the 1.5 s that importing torch takes on 2 cores). It stays off until the command
    # has imported what it works with (gradfit.cli.common.imports_done), which moves those objects
    # out of the collector's way for the rest of the run and turns it back on.
    gc.disable()
    try:
        from gradfit import cli  # (imported here for start-up time)
        from gradfit.cli import common  # (imported here for start-up time)
    except KeyboardInterrupt as exc:  # (while the command line itself loads: no traceback either)
        from gradfit.errors import signal_name

        sys.stderr.write(f"aborted by {signal_name(exc)}: gradfit stopped while starting; nothing was done\n")
        sys.exit(130)
    common.GC_PAUSED = True
    common.OWN_PROCESS = True
    cli.main()


if __name__ == "__main__":
    main()
