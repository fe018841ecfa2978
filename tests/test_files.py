"""Inputs that are not regular files are refused at once, with what they are; OS errors in words."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from gradfit.errors import ConfigError
from gradfit.files import check_regular_file, os_cause, read_text_input

posix = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")


@posix
def test_a_fifo_config_is_refused_without_blocking(tmp_path, cli):
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    r = cli("check", fifo)
    assert r.exit_code == 1
    assert "named pipe (FIFO), not a regular file" in " ".join(r.stderr.split())


@posix
def test_a_device_behind_a_symlink_is_refused(tmp_path, cli):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    r = cli("train", link)
    assert r.exit_code == 1
    assert "character device, not a regular file" in " ".join(r.stderr.split())


def test_size_limit_and_text(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_bytes(b"a" * 101)
    with pytest.raises(ConfigError, match="at most 100 are read"):
        read_text_input(p, "config file", ConfigError, max_bytes=100)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        read_text_input(p, "config file", ConfigError)
    p.write_text("name: x\n")
    assert read_text_input(p, "config file") == "name: x\n"
    assert check_regular_file(p, "config file") == p


def test_os_causes_in_words():
    assert os_cause(OSError(errno.ENOSPC, "x")) == "no space left on the device"
    assert os_cause(OSError(errno.EROFS, "x")) == "the file system is read-only"
    assert os_cause(OSError(errno.EACCES, "x")) == "permission denied"


@posix
def test_a_fifo_equation_file_is_refused_without_blocking(tmp_path, cli):
    fifo = tmp_path / "eqs.txt"
    os.mkfifo(fifo)
    r = cli("solve-equations", "--file", fifo)
    assert r.exit_code == 1
    assert "named pipe (FIFO), not a regular file" in " ".join(r.stderr.split())
