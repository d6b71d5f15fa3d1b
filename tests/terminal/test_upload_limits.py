"""Uploads cannot exhaust the terminal's memory (issue 15, item 5), against the real
``autoweld-terminal`` process on loopback, spoken to over raw sockets so the test decides how
much of each body is sent and when.

The storm: 50 clients each start a 16 MiB upload, send all of it but the last 64 KiB, and wait
for each other before sending the rest, so an unbounded server holds all 50 bodies at once
(about 800 MiB; issue 15 saw 4.4 GB for 50 x 60 MB). With ``--max-uploads 2 --max-queue 2`` the
terminal answers 429 to all but two at once; the peak of its resident memory (VmHWM, reset with
``/proc/PID/clear_refs`` before the storm) may grow by at most

    (max_uploads + max_queue) x max_upload x 2 + 64 MiB = (2 + 2) x 16 x 2 + 64 = 192 MiB

(a body is held once as it arrives and once more as the bytes handed to the queue; 64 MiB for
the decoder, the allocator and the server's own buffers).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from .conftest import OPERATOR_TOKEN

pytest.importorskip("fastapi", reason="the terminal extra (fastapi) is not installed")

MIB = 1024 * 1024
UPLOAD_MIB = 16
CLIENTS = 50
LIMIT_FLAGS = ("--max-upload-mb", str(UPLOAD_MIB), "--max-uploads", "2", "--max-queue", "2")
BOUND_MIB = (2 + 2) * UPLOAD_MIB * 2 + 64


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def request_head(port: int, part_id: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /api/inspect?part_id={part_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {OPERATOR_TOKEN}\r\n"
        f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n"
    ).encode()


class Upload:
    """One raw-socket upload whose response is read on a thread of its own, so a server that
    answers (and closes) before the body is all sent is still heard."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.response = b""
        self.sent = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.response += chunk
                if b"\r\n\r\n" in self.response and self._complete():
                    return
        except OSError:
            return

    def _complete(self) -> bool:
        head, _, body = self.response.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                return len(body) >= int(line.split(b":")[1])
        return False

    def send(self, data: bytes) -> bool:
        """Send ``data``; False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        self.sent += len(data)
        return True

    def status(self, timeout: float = 60) -> int | None:
        self._reader.join(timeout)
        self.sock.close()
        if not self.response.startswith(b"HTTP/1.1 "):
            return None
        return int(self.response.split(b" ", 2)[1])

    def detail(self) -> str:
        return json.loads(self.response.partition(b"\r\n\r\n")[2])["detail"]


def test_oversized_upload_is_refused_before_it_is_read(terminal_factory, tiny_bundle):
    terminal = terminal_factory(tiny_bundle, *LIMIT_FLAGS)
    pid = terminal.process.pid
    # declared too large: 413 on the headers alone
    upload = Upload(terminal.port)
    upload.send(request_head(terminal.port, "BIG-1", 10 * 1024 * MIB))
    assert upload.status() == 413 and f"larger than {UPLOAD_MIB * MIB} B" in upload.detail()
    # not declared (chunked): read with the limit, refused once past it, never read whole
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = memory_kib(pid)["VmRSS"]
    upload = Upload(terminal.port)
    upload.send(request_head(terminal.port, "BIG-2", None))
    chunk = b"%x\r\n" % MIB + b"\0" * MIB + b"\r\n"
    while upload.sent < 20 * UPLOAD_MIB * MIB and upload.send(chunk):
        if upload.response:
            break
    assert upload.status() == 413
    assert upload.sent < 20 * UPLOAD_MIB * MIB  # the server stopped it, not the client
    growth_mib = (memory_kib(pid)["VmHWM"] - before) / 1024
    print(f"chunked 413: sent {upload.sent / MIB:.0f} MiB, peak RSS growth {growth_mib:.0f} MiB")
    assert growth_mib < 3 * UPLOAD_MIB


def test_fifty_concurrent_large_uploads_keep_memory_bounded(terminal_factory, tiny_bundle):
    terminal = terminal_factory(tiny_bundle, *LIMIT_FLAGS)
    pid = terminal.process.pid
    body = b"\x89PNG\r\n\x1a\n" + b"\x5a" * (UPLOAD_MIB * MIB - 8)  # not an image: a FAIL
    tail = 64 * 1024
    barrier = threading.Barrier(CLIENTS, timeout=120)
    statuses: list[int | None] = [None] * CLIENTS
    details: list[str] = [""] * CLIENTS

    def client(index: int) -> None:
        upload = Upload(terminal.port)
        try:
            if upload.send(request_head(terminal.port, f"STORM-{index}", len(body))):
                upload.send(body[:-tail])
        finally:
            barrier.wait()  # every body is (as far as the server allows) in flight at once
        upload.send(body[-tail:])
        statuses[index] = upload.status()
        if statuses[index] is not None:
            details[index] = upload.response.decode("latin-1")

    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    before = memory_kib(pid)["VmRSS"]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    after = memory_kib(pid)
    growth_mib = (after["VmHWM"] - before) / 1024
    counts = {status: statuses.count(status) for status in set(statuses)}
    print(
        f"{CLIENTS} x {UPLOAD_MIB} MiB uploads: RSS before {before / 1024:.0f} MiB, peak "
        f"{after['VmHWM'] / 1024:.0f} MiB (growth {growth_mib:.0f} MiB, bound {BOUND_MIB} MiB); "
        f"answers {counts}"
    )
    assert growth_mib < BOUND_MIB
    accepted = counts.get(200, 0) + counts.get(202, 0)
    assert counts.get(429, 0) >= CLIENTS - 2 - 2 - 5, counts  # a few may be cut off unheard
    assert 1 <= accepted <= 2 + 2, counts
    refused = next(d for s, d in zip(statuses, details, strict=True) if s == 429)
    assert "uploads are being received" in refused and "Retry-After: 1" in refused.replace(
        "retry-after", "Retry-After"
    )
