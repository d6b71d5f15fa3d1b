"""The watched folder: the stand-in for a camera that writes one image file per part.

A camera (or the program that fetches its pictures) writes files into the folder; each new image
is inspected once, with the file name's stem as the part id (``VIN-00042.png`` -> ``VIN-00042``).
A stem that is not a valid part id (too long, not printable) is not dropped: the file is recorded
as a FAIL under a placeholder id (``INVALID-FILE-NAME-<hash>:<readable part>``), and the record's
error names the file.

Half-written files are never inspected, by two rules (use the first where you can):

1. **Rename convention** — names starting with ``.`` or ending in ``.tmp`` / ``.part`` /
   ``.partial`` are ignored; a writer that writes ``.VIN-1.png`` (or ``VIN-1.png.tmp``) and then
   renames it to ``VIN-1.png`` hands over a complete file atomically.
2. **Stable size** — any other image is taken only once its size and modification time have not
   changed for ``settle_s`` seconds (and it is not empty, unless it stays empty for
   ``empty_s`` seconds: then it is inspected and recorded as a FAIL, so a camera fault is seen).

Should a file still be cut short, the decoder detects the truncated PNG/JPEG/BMP/TIFF and the part
is a recorded FAIL, never a pass. After its inspection a file is moved into ``DIR/inspected/`` (so a
restart does not inspect it again); files already there when the terminal starts are inspected
(they arrived while it was down).

No silent drops: every other entry that appears (an unsupported file such as ``.gif``, a
directory, a symbolic link, a FIFO, a socket or device, one that vanishes before it is taken) is
submitted as a recorded FAIL naming the entry and why it cannot be inspected (the PLC gets a FAIL,
the ledger a record, the page shows the error) and is moved, never followed, into
``DIR/failed/``; so is a file whose name is no part id and an image whose inspection ended in an
error (unreadable, undecodable). A
name already there gets a ``.1``, ``.2``, ... suffix. Polling, not inotify: it works the same on local disks and on
network shares, and costs one directory listing per ``poll_s``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoweld.data.mvtec import IMAGE_SUFFIXES
from autoweld.quality.record import check_part_id
from autoweld.safe_files import file_kind

__all__ = ["FolderWatcher", "WatchConfig", "is_candidate", "is_ignored", "part_id_for"]

log = logging.getLogger(__name__)

INSPECTED = "inspected"
#: Entries that could not be inspected (and images whose inspection ended in an error).
FAILED = "failed"
#: Part ids for camera files whose name is not a valid part id start with this.
INVALID_NAME_PREFIX = "INVALID-FILE-NAME-"
_PLACEHOLDER_KEEP = 100
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


def is_ignored(name: str) -> bool:
    """Whether a name is a writer's hidden or temporary file (ignored until it is renamed)."""
    return name.startswith(".") or name.lower().endswith(_IGNORED_SUFFIXES)


def is_candidate(name: str) -> bool:
    """Whether a file name in the watched folder is an image ready to be considered."""
    if is_ignored(name):
        return False
    return Path(name.lower()).suffix in IMAGE_SUFFIXES and bool(Path(name).stem.strip())


def _not_inspectable(name: str, mode: int) -> str | None:
    """Why an entry (judged by its ``lstat`` mode, never followed) cannot be inspected."""
    if stat.S_ISLNK(mode):
        return "is a symbolic link (not followed)"
    if not stat.S_ISREG(mode):
        return f"is {file_kind(mode)}, not a regular file"
    if not is_candidate(name):
        suffix = Path(name).suffix or "(no suffix)"
        return (
            f"has an unsupported file type {suffix!r} (images: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return None


def part_id_for(name: str) -> tuple[str, str | None]:
    """``(part_id, error)`` for a camera file: its stem when that is a valid part id (error
    ``None``), else a sanitised placeholder and the reason, so the file still becomes a recorded
    FAIL under a traceable id instead of being dropped."""
    stem = Path(name).stem.strip()
    try:
        return check_part_id(stem), None
    except ValueError as error:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        readable = "".join(c if c.isprintable() else "?" for c in stem)[:_PLACEHOLDER_KEEP]
        placeholder = f"{INVALID_NAME_PREFIX}{digest}" + (f":{readable}" if readable else "")
        return placeholder, (
            f"camera file name {name!r} is not a valid part id ({error}); "
            f"recorded as a FAIL under part id {placeholder!r}"
        )


@dataclass(frozen=True)
class WatchConfig:
    """How the folder is watched."""

    folder: Path
    poll_s: float = 0.2
    settle_s: float = 0.5
    empty_s: float = 10.0
    move_done: bool = True

    def __post_init__(self) -> None:
        for name in ("poll_s", "settle_s", "empty_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


Submit = Callable[..., "Future[Any]"]


class FolderWatcher:
    """Polls ``config.folder`` and submits each complete new image once.

    ``submit(part_id, path=..., source="camera")`` is :meth:`Station.submit`; the watcher moves a
    file into ``inspected/`` when its job is done (whatever the decision).
    """

    def __init__(self, config: WatchConfig, submit: Submit) -> None:
        folder = Path(config.folder)
        if not folder.is_dir():
            raise ValueError(f"--watch {str(folder)!r} is not a directory")
        self.config = config
        self.folder = folder
        self.done_dir = folder / INSPECTED
        self.failed_dir = folder / FAILED
        self._submit = submit
        # name -> (size, mtime_ns, time first seen with this size/mtime)
        self._seen: dict[str, tuple[int, int, float]] = {}
        self._submitted: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> FolderWatcher:
        if self.config.move_done:
            self.done_dir.mkdir(exist_ok=True)
            self.failed_dir.mkdir(exist_ok=True)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="autoweld-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a listing hiccup must not stop the camera input
                self.errors += 1
                log.exception("watching %s failed; retrying", self.folder)
            self._stop.wait(self.config.poll_s)

    def poll(self, now: float | None = None) -> list[str]:
        """One look at the folder; returns the names submitted now (also used by tests).

        Every entry but a writer's hidden/temporary file and the watcher's own subfolders is
        submitted once it holds still: an image to be inspected, anything else (and an entry
        that vanished before it was taken) as a recorded FAIL with the reason."""
        now = time.monotonic() if now is None else now
        present: set[str] = set()
        ready: list[tuple[str, tuple[int, int], str | None]] = []
        own = {INSPECTED, FAILED}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if is_ignored(name) or name in own:
                    continue
                present.add(name)
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as error:  # vanished between listing and stat
                    reason = f"cannot be looked at ({error.strerror or error})"
                    with self._lock:
                        self._seen.pop(name, None)
                        if name in self._submitted:
                            continue
                        self._submitted[name] = (-1, -1)
                    ready.append((name, (-1, -1), reason))
                    continue
                signature = (info.st_size, info.st_mtime_ns)
                reason = _not_inspectable(name, info.st_mode)
                regular = stat.S_ISREG(info.st_mode)
                with self._lock:
                    if self._submitted.get(name) == signature:
                        continue  # in the queue, or done but could not be moved away
                    seen = self._seen.get(name)
                    if seen is None or seen[:2] != signature:
                        self._seen[name] = (*signature, now)
                        continue
                    waited = now - seen[2]
                    empty = regular and info.st_size == 0 and reason is None
                    needed = self.config.empty_s if empty else self.config.settle_s
                    if waited < needed:
                        continue
                    del self._seen[name]
                    self._submitted[name] = signature
                ready.append((name, signature, reason))
        with self._lock:
            vanished = sorted(set(self._seen) - present)
            for name in vanished:
                del self._seen[name]
        for name in vanished:
            ready.append((name, (-1, -1), "vanished from the watched folder before it was taken"))
        ready.sort()  # a camera's file names usually sort in shot order
        for name, signature, reason in ready:
            path = self.folder / name
            part_id, refused = part_id_for(name)
            errors = [f"camera entry {name!r} {reason}; not inspected"] if reason else []
            if refused is not None:
                errors.append(refused)
            extra = {"error": "; ".join(errors)} if errors else {}
            if errors:
                log.error("%s", extra["error"])
            try:
                future = self._submit(part_id, path=path, source="camera", **extra)
            except ValueError as error:
                log.error("%s not inspected: %s", path, error)
                continue
            failed = bool(errors)  # not inspected: into failed/
            future.add_done_callback(
                lambda f, n=name, s=signature, x=failed: self._finished(f, n, s, x)
            )
        return [name for name, _, _ in ready]

    def _finished(
        self, future: Future[Any], name: str, signature: tuple[int, int], failed: bool = False
    ) -> None:
        """Move a handled entry out of the way (the entry itself: a symlink is never followed);
        if that fails, remember not to redo it.

        A job that was never inspected (the terminal shut down first) leaves its file where it
        is, so the next start inspects it."""
        if future.cancelled() or future.exception() is not None:
            log.warning("%s was not inspected; left in place for the next start", name)
            with self._lock:
                self._submitted.pop(name, None)
            return
        if not self.config.move_done:
            return
        source = self.folder / name
        if not os.path.lexists(source):
            with self._lock:
                if self._submitted.get(name) == signature:
                    del self._submitted[name]
            return  # vanished: recorded, nothing to move
        failed = failed or getattr(future.result(), "error", None) is not None
        folder = self.failed_dir if failed else self.done_dir
        target = folder / name
        counter = 1
        while os.path.lexists(target):
            target = folder / f"{Path(name).stem}.{counter}{Path(name).suffix}"
            counter += 1
        try:
            folder.mkdir(exist_ok=True)
            os.rename(source, target)  # renames a symlink itself, never what it points at
        except OSError as error:
            log.warning("%s handled but not moved to %s: %s", source, folder, error)
            return
        with self._lock:
            if self._submitted.get(name) == signature:
                del self._submitted[name]
