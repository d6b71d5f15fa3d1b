"""Open input files safely: regular files only, a byte limit, never a hang.

Every file the station reads from outside (an image, ``manifest.json``, the signature, every
file a bundle lists) goes through :func:`open_regular` or :func:`read_regular`:

- the path is opened with ``O_RDONLY | O_NONBLOCK`` (so a FIFO with no writer, or a device, does
  not block the open), and the **opened descriptor** is checked with ``fstat``: anything but a
  regular file (a FIFO, a character or block device such as ``/dev/zero``, a directory, a
  socket) is refused. Checking the descriptor rather than the path means a path swapped between
  a check and the open cannot slip through; a symlink is followed, and judged by what it points
  at;
- at most ``limit`` bytes are read: a file larger than that (by its size, or because it grew
  while being read) is refused instead of being read into memory.

Failures raise :class:`FileRefused` (a ``ValueError``) whose message names the file and the
reason; callers wrap it into their own error type (``ImageError``, ``BundleError``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

__all__ = ["MANIFEST_MAX_BYTES", "FileRefused", "file_kind", "open_regular", "read_regular"]

#: the largest ``manifest.json`` (and signature file) the station reads
MANIFEST_MAX_BYTES = 16 * 1024 * 1024


class FileRefused(ValueError):
    """A file that is not read: not a regular file, too large, or unreadable."""


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages ("a FIFO (named pipe)", ...)."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@contextmanager
def open_regular(path: str | os.PathLike[str], limit: int) -> Iterator[tuple[BinaryIO, int]]:
    """Open ``path`` for reading if it is a regular file of at most ``limit`` bytes.

    Yields ``(binary file, size)``; the size is the descriptor's ``st_size`` at open. Raises
    :class:`FileRefused` naming the file and why it is not read.
    """
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise FileRefused(f"{name}: cannot be read ({error.strerror or error})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(
                f"{name}: cannot be read: {file_kind(info.st_mode)}, not a regular file"
            )
        if info.st_size > limit:
            raise FileRefused(f"{name}: {info.st_size} bytes exceeds the limit of {limit} bytes")
        # a regular file never blocks; clear O_NONBLOCK so reads behave as usual
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle, info.st_size


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """All bytes of a regular file of at most ``limit`` bytes; raises :class:`FileRefused`."""
    with open_regular(path, limit) as (handle, _size):
        try:
            data = handle.read(limit + 1)
        except OSError as error:
            raise FileRefused(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) > limit:
        raise FileRefused(f"{path}: grew past the limit of {limit} bytes while being read")
    return data
