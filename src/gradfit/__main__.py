"""``python -m gradfit`` and the ``gradfit`` console script."""

import gc


def main() -> None:
    # Start-up imports torch, pydantic and typer: hundreds of thousands of objects, none of
    # them garbage, which Python's cyclic collector would walk some 350 times while they load
    # (0.12 s of the 1.5 s that importing torch takes on 2 cores). It stays off until the command
    # has imported what it works with (gradfit.cli.common.imports_done), which moves those objects
    # out of the collector's way for the rest of the run and turns it back on.
    gc.disable()
    from gradfit import cli  # (imported here for start-up time)
    from gradfit.cli import common  # (imported here for start-up time)

    common.GC_PAUSED = True
    cli.main()


if __name__ == "__main__":
    main()
