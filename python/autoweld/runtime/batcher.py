"""Several cameras, one engine: requests from concurrent callers inspected in shared batches.

A station with several cameras has one thread per camera, each wanting a decision for its own
image. :class:`BatchingInspector` puts every request on one queue; one worker takes the first,
keeps gathering until ``max_batch`` requests are in hand or ``max_wait_ms`` have passed since
the first was queued (a deadline: a lone camera waits at most that long), inspects them with one
:meth:`Inspector.inspect_batch` call and hands each caller its own result.

What a batch buys depends on the engine. On a GPU it spreads each engine call's fixed cost over
its images. On two CPU cores the default weld bundle costs about as much CPU per image at batch 8
as at batch 1 (bench/results/multicamera.md), so there the batcher gives no throughput beyond N
threads sharing a plain Inspector; it gives one inspection at a time on all cores instead of N
contending, bounded memory, and a deadline per caller. Results are those of
:meth:`Inspector.inspect` on each image alone (bit for bit for the default bundle; see
docs/runtime.md, "Several cameras on one station", for the one-ulp exception).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from autoweld.runtime.decode import image_for_inspection
from autoweld.runtime.inspector import ImageInput, InspectionResult, Inspector, failed_result

__all__ = ["BatchStats", "BatchingInspector", "gather_batch"]

log = logging.getLogger(__name__)

#: Default deadline, from the sweep in bench/results/multicamera.md: with four cameras triggered
#: together batches grow with the wait (mean 2.2 at 0 ms, 2.3 at 2, 3.4 at 5) and images/s did
#: not change beyond the noise, while a lone camera pays the wait on every image; 2 ms is about
#: a tenth of an unloaded inspection (17.6 ms).
DEFAULT_MAX_WAIT_MS = 2.0
#: Default largest batch: on CPU the cost per image rises slightly with the batch (23.3 ms CPU
#: at 1, 24.9 at 4, 25.4 at 8 in the same report), so no larger than a station's cameras need.
DEFAULT_MAX_BATCH = 4
#: How long a caller waits for its result by default before it gets a FAIL.
DEFAULT_TIMEOUT_S = 30.0

Item = TypeVar("Item")


def gather_batch(
    source: queue.Queue[Item | None], first: Item, max_batch: int, deadline: float
) -> tuple[list[Item], bool]:
    """``first`` plus whatever else arrives on ``source`` until ``max_batch`` items are in hand
    or ``time.monotonic()`` passes ``deadline``; items already queued are always taken (up to
    ``max_batch``), even past the deadline. Returns ``(batch, stop)``: ``stop`` is True when the
    stop sentinel ``None`` was taken (the batch is still to be processed)."""
    batch = [first]
    while len(batch) < max_batch:
        remaining = deadline - time.monotonic()
        try:
            item = source.get(timeout=remaining) if remaining > 0 else source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


@dataclass
class BatchStats:
    """What the worker has done so far: ``batch_sizes`` maps a batch size to how many batches
    had it; ``timed_out`` counts callers that gave up before their result."""

    batch_sizes: dict[int, int] = field(default_factory=dict)
    images: int = 0
    timed_out: int = 0

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "images": self.images,
            "mean_batch": round(self.mean_batch, 3),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "timed_out": self.timed_out,
        }


@dataclass(eq=False)  # identity, not field equality: requests hold arrays
class _Request:
    image: ImageInput
    keep_head_maps: bool
    queued_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: InspectionResult | None = None
    abandoned: bool = False  # the caller timed out; nobody reads the result


def _checked_settings(max_batch: int, max_wait_ms: float, timeout_s: float | None) -> None:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    if (
        isinstance(max_wait_ms, bool)
        or not isinstance(max_wait_ms, (int, float))
        or not math.isfinite(max_wait_ms)
        or max_wait_ms < 0
    ):
        raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
    _checked_timeout(timeout_s)


def _checked_timeout(timeout_s: float | None) -> None:
    if timeout_s is None:
        return
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise ValueError(f"timeout_s must be a finite number > 0 or None, got {timeout_s!r}")


class BatchingInspector:
    """An :class:`Inspector` shared by several camera threads, their requests batched.

    ``inspect(image)`` has :meth:`Inspector.inspect`'s signature and result and never raises; it
    blocks until this image's result is ready. A worker thread forms batches of up to
    ``max_batch`` requests, closing each ``max_wait_ms`` after its first request was queued
    (``max_wait_ms=0``: only what is already queued), and runs one ``inspect_batch`` per batch;
    a bad image fails alone (the Inspector sees to that). Each result's ``timings_ms`` gains
    ``batch_wait``: the time from the request being queued to its batch starting.

    A caller that waits longer than ``timeout_s`` (per call, else the constructor's; None: no
    limit) gets a FAIL saying so, never a hang. :meth:`close` fails queued requests with a
    reason, lets the batch in hand finish (at most ``join_timeout_s``), and closes the wrapped
    Inspector only when ``close_inspector`` is True. Later calls FAIL ("closed").
    """

    def __init__(
        self,
        inspector: Inspector,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        close_inspector: bool = False,
    ) -> None:
        _checked_settings(max_batch, max_wait_ms, timeout_s)
        self.inspector = inspector
        self.max_batch = max_batch
        self.max_wait_ms = float(max_wait_ms)
        self.timeout_s = timeout_s
        self._close_inspector = close_inspector
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()  # guards _closed, request outcomes and the stats
        self._closed = False
        self._in_hand: list[_Request] = []
        self._sizes: collections.Counter[int] = collections.Counter()
        self._images = 0
        self._timed_out = 0
        self._worker = threading.Thread(target=self._run, name="autoweld-batcher", daemon=True)
        self._worker.start()

    @property
    def threshold(self) -> float:
        return self.inspector.threshold

    # ---- callers -----------------------------------------------------------------------------

    def inspect(
        self,
        image: ImageInput,
        *,
        keep_head_maps: bool = False,
        timeout_s: float | None = None,
    ) -> InspectionResult:
        """Inspect one image in the next batch; blocks for its result. Never raises.

        ``timeout_s``: seconds to wait at most (None: the constructor's ``timeout_s``)."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            _checked_timeout(limit)
        except ValueError as error:
            return failed_result(str(error), self.threshold)
        # Decode here, in the camera's own thread: the cameras decode in parallel and the worker
        # gets arrays. An image that does not decode is failed by the Inspector itself, at once,
        # with the very result it would give inside a batch.
        start = time.perf_counter()
        try:
            decoded = image_for_inspection(image, self.inspector.decode_limits)
        except Exception:  # noqa: BLE001 - the Inspector says why, as it would in a batch
            return self.inspector.inspect(image, keep_head_maps=keep_head_maps)
        decode_ms = (time.perf_counter() - start) * 1e3
        request = _Request(decoded, bool(keep_head_maps))
        with self._lock:
            if self._closed:
                return failed_result("batching inspector is closed", self.threshold)
            self._queue.put(request)
        if request.done.wait(limit):
            assert request.result is not None
            return _with_decode_time(request.result, decode_ms)
        with self._lock:
            if request.result is not None:  # it came just as the wait ended
                return _with_decode_time(request.result, decode_ms)
            request.abandoned = True
            self._timed_out += 1
        log.warning("inspection timed out after %s s waiting for its batch", limit)
        return failed_result(
            f"inspection timed out: no result within {limit} s (batching inspector busy or stuck)",
            self.threshold,
        )

    def stats(self) -> BatchStats:
        """A snapshot of the batch sizes formed so far."""
        with self._lock:
            return BatchStats(dict(self._sizes), self._images, self._timed_out)

    def close(self, join_timeout_s: float = 30.0) -> None:
        """Fail queued requests, finish the batch in hand, stop the worker (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            leftover = _drain(self._queue)
            self._settle(leftover, "batching inspector closed before inspection")
            self._queue.put(None)
        if leftover:
            log.warning("%d queued inspection(s) failed: the batching inspector closed",
                        len(leftover))  # fmt: skip
        self._worker.join(join_timeout_s)
        if self._worker.is_alive():
            with self._lock:
                self._settle(self._in_hand, "batching inspector closed mid-inspection")
            log.error("batch worker still busy after %s s; its Inspector is left open",
                      join_timeout_s)  # fmt: skip
            return
        if self._close_inspector:
            self.inspector.close()

    def __enter__(self) -> BatchingInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the worker --------------------------------------------------------------------------

    def _settle(self, requests: list[_Request], outcomes: list[InspectionResult] | str) -> None:
        """Give each unanswered request its result (``outcomes`` a string: a FAIL with that
        reason for every one); the caller holds ``_lock``."""
        for i, request in enumerate(requests):
            if request.result is None and not request.abandoned:
                request.result = (
                    failed_result(outcomes, self.threshold)
                    if isinstance(outcomes, str)
                    else outcomes[i]
                )
                request.done.set()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            deadline = first.queued_at + self.max_wait_ms / 1e3
            batch, stop = gather_batch(self._queue, first, self.max_batch, deadline)
            with self._lock:
                batch = [r for r in batch if not r.abandoned and r.result is None]
                self._in_hand = batch
            if batch:
                self._inspect(batch)

    def _inspect(self, batch: list[_Request]) -> None:
        """One inspect_batch per head-map setting; every request answered, whatever happens."""
        started = time.monotonic()
        results: dict[int, InspectionResult] = {}
        try:
            for keep in (False, True):
                members = [i for i, r in enumerate(batch) if r.keep_head_maps is keep]
                if members:
                    images = [batch[i].image for i in members]
                    found = self.inspector.inspect_batch(images, keep_head_maps=keep)
                    results.update(zip(members, found, strict=True))
        except Exception as error:  # noqa: BLE001 - the Inspector never raises; fail safe anyway
            log.exception("batch of %d failed", len(batch))
            reason = f"batch failed: {type(error).__name__}: {error}"
            results = {i: failed_result(reason, self.threshold) for i in range(len(batch))}
        for i, request in enumerate(batch):
            results[i].timings_ms["batch_wait"] = (started - request.queued_at) * 1e3
        with self._lock:
            self._sizes[len(batch)] += 1
            self._images += len(batch)
            self._settle(batch, [results[i] for i in range(len(batch))])
            self._in_hand = []


def _with_decode_time(result: InspectionResult, decode_ms: float) -> InspectionResult:
    """The caller's decode time added to the Inspector's (which only checked the array)."""
    result.timings_ms["decode"] = result.timings_ms.get("decode", 0.0) + decode_ms
    return result


def _drain(source: queue.Queue[_Request | None]) -> list[_Request]:
    items: list[_Request] = []
    while True:
        try:
            item = source.get_nowait()
        except queue.Empty:
            return items
        if item is not None:
            items.append(item)
