"""autoweld.safe_files: regular files only, a byte limit, never a hang (issue 15, item 3)."""

from __future__ import annotations

import os
import socket

import pytest

from autoweld.safe_files import FileRefused, open_regular, read_regular


def test_regular_file_within_the_limit_is_read(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    assert read_regular(path, 3) == b"abc"
    with open_regular(path, 10) as (handle, size):
        assert size == 3 and handle.read() == b"abc"
    link = tmp_path / "link.bin"
    link.symlink_to(path)  # a link to a regular file is judged by its target
    assert read_regular(link, 3) == b"abc"


def test_a_file_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 11)
    with pytest.raises(FileRefused, match=r"big\.bin: 11 bytes exceeds the limit of 10"):
        read_regular(path, 10)


def test_a_fifo_is_refused_at_once(tmp_path, deadline):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match=r"pipe\.png: .*FIFO"):
        deadline(5, read_regular, fifo, 100, fifos=[fifo])


def test_devices_directories_and_sockets_are_refused(tmp_path, deadline):
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    with pytest.raises(FileRefused, match=r"zero\.json: .*character device"):
        deadline(5, read_regular, zero, 1 << 40)
    with pytest.raises(FileRefused, match="directory"):
        deadline(5, read_regular, tmp_path, 100)
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(FileRefused, match="cannot be read"):
            read_regular(sock_path, 100)  # a socket cannot even be opened: refused too
    with pytest.raises(FileRefused, match="cannot be read"):
        read_regular(tmp_path / "missing", 100)
