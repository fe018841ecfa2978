"""Reading a user's input files safely (regular files only, a size limit, OS errors in words);
writing files whole (atomically).

A FIFO would block a read forever and a device (``/dev/zero``) never ends, so an input
is checked with ``os.stat`` after resolving symlinks, before anything is read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from gradfit.errors import GradfitError

# Inputs read whole into memory as text (configs, equation files) are small.
TEXT_INPUT_MAX_BYTES = 16 << 20

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def os_cause(exc: OSError) -> str:
    """What an OSError means, in words (permission, read-only, no space, too large...)."""
    words = {
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EFBIG: "the file is too large (a file-size limit)",
        errno.ENOENT: "no such file or directory",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.EISDIR: "it is a directory",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.ENAMETOOLONG: "the name is too long",
    }
    return words.get(exc.errno, exc.strerror or type(exc).__name__)


def check_regular_file(path: str | Path, what: str, error: type[GradfitError] = GradfitError,
                       max_bytes: int | None = None) -> Path:
    """``path`` if it names a regular file (after symlinks) no larger than ``max_bytes``; else ``error``."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} not found: {p}", hint="check the path") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {os_cause(exc)}", hint="check the path and its permissions") from None
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise error(f"{what} {p} is {kind}, not a regular file", hint="give the path of a file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {p} is {st.st_size:,} bytes; at most {max_bytes:,} are read",
                    hint="is this the right file?")
    return p


def read_text_input(path: str | Path, what: str, error: type[GradfitError] = GradfitError,
                    max_bytes: int = TEXT_INPUT_MAX_BYTES) -> str:
    """The UTF-8 text of a small input file (a config, an equation file), checked first."""
    p = check_regular_file(path, what, error, max_bytes)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {os_cause(exc)}", hint="check the path and its permissions") from None
    if len(data) > max_bytes:  # grew since the check
        raise error(f"{what} {p} is larger than {max_bytes:,} bytes", hint="is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{p}: not a text file (it is not valid UTF-8)") from None


# The signs of a run directory: the marker a run keeps while it runs (results/rundir.py's RUN_MARKER),
# or a finished run's config.yaml beside its checkpoint or metrics.
RUN_MARKER = ".gradfit-run"
_FINISHED_RUN_FILES = ("model.safetensors", "metrics.json")


def run_dir_holding(path: str | Path) -> Path | None:
    """The run directory ``path`` is or lies in (one being written, or a finished one), or None."""
    path = Path(path).resolve()
    for d in (path, *path.parents):
        if (d / RUN_MARKER).exists() or (
            (d / "config.yaml").is_file() and any((d / n).is_file() for n in _FINISHED_RUN_FILES)
        ):
            return d
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # (one of them does not exist: nothing to overwrite)
        return False


def check_output(out: str | Path, *, inputs=(), force: bool = False, writes: str = "files", option: str = "--out",
                 error: type[GradfitError] = GradfitError, own_runs=(), own_names=()) -> None:
    """Refuse an output path that is one of the command's inputs (always), or that is or lies inside
    a run directory (unless ``force``), before anything is computed or written.

    ``inputs``: (path, what) pairs, e.g. (data, "the input data file"). ``own_runs``: run directories
    the command writes into by design (export's RUN/model.onnx, report's RUN/report.html); there a
    new file, or one named in ``own_names``, is allowed.
    """
    out = Path(out)
    named = f"{option} {out}" if option else str(out)
    for other, what in inputs:
        if other is not None and _same_file(out, Path(other)):
            raise error(f"{named} is {what}; refusing to overwrite it", hint="write to another path")
    if force:
        return
    run = run_dir_holding(out)
    if run is None:
        return
    if run in {Path(r).resolve() for r in own_runs} and run != out.resolve() and (out.name in own_names or not out.exists()):
        return
    raise error(
        f"{named} is inside the run directory {run}; gradfit does not write {writes} among a run's files",
        hint="write outside the run directory, or add --force to write there anyway",
    )


class WriteError(GradfitError):
    """A file could not be written: no space, a read-only file system, no permission, a size limit."""


def _write_hint(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that disk, or write elsewhere (--out, or output.dir in the config)"
    if exc.errno == errno.EFBIG:
        return "raise the file-size limit (ulimit -f), or write elsewhere (--out, or output.dir in the config)"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "choose a directory you can write to (--out, or output.dir in the config)"
    return "check the path, or write elsewhere (--out, or output.dir in the config)"


def write_error(path: str | Path, exc: OSError, what: str = "") -> WriteError:
    """The user error for an OSError met while writing ``path``: the path, the cause, what to do."""
    return WriteError(f"cannot write {what + ' ' if what else ''}{path}: {os_cause(exc)}", hint=_write_hint(exc))


def _library_os_error(exc: BaseException) -> OSError | None:
    """The OSError inside a writer's own error: safetensors (Rust) reports one as text ending in '(os error 28)'."""
    found = re.search(r"\(os error (\d+)\)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


def _unlink_quietly(path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (never half-written).

    An OSError of the writing (in the ``with`` body too) becomes a WriteError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise write_error(path, exc) from None
    except BaseException as exc:
        _unlink_quietly(tmp)
        os_error = _library_os_error(exc)
        if os_error is not None:
            raise write_error(path, os_error) from None
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def fingerprint(path: Path) -> str:
    """sha256 of a file's bytes."""
    import hashlib  # (imported here for start-up time)

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
