"""The typer app every command registers on, the consoles, and the translation of GradfitError into exit 1."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import typer

from gradfit import __version__
from gradfit.errors import GradfitError

app = typer.Typer(
    name="gradfit",
    help="Regression models and equation systems fitted by PyTorch autograd.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, powershell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable)


def _version(value: bool) -> None:
    if value:
        from gradfit.kernel import find  # (a plain C module: no torch)

        kernel = find()[1]
        typer.echo(f"gradfit {__version__}\ncompiled kernel: {kernel}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Regression models and equation systems fitted by PyTorch autograd."""


def stderr_console():
    """A rich console on stderr (colour off with NO_COLOR or when not a terminal)."""
    from rich.console import Console  # (imported here for start-up time)

    return Console(stderr=True, highlight=False, no_color=bool(os.environ.get("NO_COLOR")))


def stdout_console():
    from rich.console import Console  # (imported here for start-up time)

    return Console(highlight=False, no_color=bool(os.environ.get("NO_COLOR")))


def fail(err: GradfitError) -> "typer.Exit":
    """Print a user error on stderr and return the Exit to raise (code 1, or the error's own)."""
    from rich.markup import escape  # (imported here for start-up time)

    console = stderr_console()
    console.print(f"[bold red]error:[/] {escape(err.message)}")
    if err.hint:
        console.print(f"  [yellow]hint:[/] {escape(err.hint)}")
    return typer.Exit(code=err.exit_code)


def user_errors(fn: F) -> F:
    """Decorator: turn GradfitError into a message on stderr and its exit code; no traceback."""
    import functools  # (imported here for start-up time)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GradfitError as err:
            raise fail(err) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (gradfit.__main__ turns it into this)
            raise interrupted(exc) from None
        except MemoryError:
            raise fail(GradfitError(
                "out of memory: the command asked for more memory than the machine could give",
                hint="use less data (data.n_samples, fewer rows or columns), a smaller model "
                     "(model.hidden, model.degree) or train.batch_size; or run it on a machine with more memory",
            )) from None

    return wrapper  # type: ignore[return-value]


# True in the console script's process (gradfit.__main__.main), which ends with the command.
OWN_PROCESS = False


def ignore_signals() -> None:
    """An abort is under way: a further Ctrl-C or SIGTERM must not cut its message and exit code 130
    short (Python's default handler would end the process by SIGINT in the middle of exiting)."""
    import signal  # (imported here for start-up time)
    import threading  # (imported here for start-up time)

    # Only in a process of its own (the console script): a command run inside another program (typer's
    # CliRunner, a test) must leave that program's signals as they were, and its children would inherit
    # ignored ones.
    if OWN_PROCESS and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def interrupted(exc: KeyboardInterrupt) -> "typer.Exit":
    """Print what an interrupt stopped (an Aborted run says what its directory keeps); the Exit (130)."""
    from rich.markup import escape  # (imported here for start-up time)

    ignore_signals()
    from gradfit.errors import Aborted, signal_name  # (a plain module: no torch)

    what = exc.message if isinstance(exc, Aborted) else "the command stopped before it finished"
    stderr_console().print(f"[bold red]aborted[/] by {signal_name(exc)}: {escape(what)}", soft_wrap=True)
    return typer.Exit(code=130)


# Set by the entry point (gradfit.__main__), which turns the cyclic garbage collector off for start-up.
GC_PAUSED = False


def imports_done() -> None:
    """The command has imported its libraries: turn the collector back on (see gradfit.__main__).

    ``gc.freeze`` moves every object alive now (modules, classes, torch's registries) into a
    generation the collector never walks, so later collections cost what the run itself allocates.
    """
    global GC_PAUSED
    if GC_PAUSED:
        import gc  # (imported here for start-up time)

        gc.freeze()
        gc.enable()
        GC_PAUSED = False
