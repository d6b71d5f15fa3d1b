"""The terminal's station service: one worker thread that inspects, signals and records.

Every image, whether it came from the watched folder or was uploaded from the page, becomes a
:class:`Job` on one queue. A single worker thread takes jobs in arrival order and, for each one:
inspects it (the :class:`~autoweld.runtime.inspector.Inspector` never raises: a bad image is a
FAIL with the reason), renders the heat-map overlay for the page, tells the PLC and writes the
signed ledger record (:func:`autoweld.quality.record_inspection`, shared with
``autoweld-inspect`` and the benchmark: PLC first, then the record; a PASS whose record cannot be written is
corrected with a FAIL, and a refused record is replaced by a minimal FAIL record). An inspection
without its record never counts as a pass.

Several cameras (``max_batch`` > 1): once the worker has a job it also takes whatever else
arrives within ``max_wait_ms`` (up to ``max_batch`` jobs, :func:`~autoweld.runtime.batcher.
gather_batch`), inspects their images in one engine call, then signals and records each in
arrival order, so the PLC still hears about parts in the order they came.

Threads and the ledger: the worker owns the ledger connection that writes. Everything the web
page reads (records, verify) goes through a second connection opened **read-only**, shared by the
web server's threads (each call is serialised by the ledger's own lock). So no request served
to the page can change a record, whatever it asks for.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autoweld import __version__
from autoweld.bundle import manifest_identity
from autoweld.quality.dispatch import RecordedInspection, finite_or_none, record_inspection
from autoweld.quality.record import check_part_id, check_station_id
from autoweld.runtime.batcher import DEFAULT_MAX_WAIT_MS, gather_batch
from autoweld.runtime.decode import DecodeLimits, decode_image
from autoweld.runtime.heatmap import render_heatmap
from autoweld.runtime.inspector import InspectionResult, Inspector, failed_result
from autoweld.safe_files import FileRefused, read_regular

__all__ = ["BundleInfo", "Job", "Outcome", "Station", "StationConfig", "check_part_id"]

log = logging.getLogger(__name__)

#: Longest side of the overlay picture sent to the page (the record keeps full-size maps).
OVERLAY_MAX_SIDE = 1024
#: How far back the "parts per minute" rate looks.
RATE_WINDOW_S = 300.0


@dataclass(frozen=True)
class StationConfig:
    """What the terminal was started with (``autoweld-terminal`` flags)."""

    bundle_dir: Path
    ledger_url: str
    station_id: str
    plc_url: str | None = None
    heatmap_dir: Path | None = None
    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = None
    plc_timeout_s: float = 0.05
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)
    #: refuse a bundle without a valid signature (None: AUTOWELD_REQUIRE_SIGNED)
    require_signed: bool | None = None
    #: score through a Triton server (grpc://HOST:PORT[/MODEL]; docs/serving.md)
    server_url: str | None = None
    server_timeout_s: float = 5.0
    #: several cameras: inspect up to this many queued images in one engine call (1: one by one)
    max_batch: int = 1
    #: how long the worker waits for more images once it has one, when max_batch > 1
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS


@dataclass(frozen=True)
class BundleInfo:
    """The bundle in use, as the page shows it. ``error`` is set when it was refused."""

    path: str
    sha256: str
    category: str | None
    threshold: float | None
    threshold_method: str | None
    models: tuple[str, ...]
    image_size: int | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "category": self.category,
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "models": list(self.models),
            "image_size": self.image_size,
            "error": self.error,
        }


@dataclass
class Job:
    """One image to inspect: ``data`` (encoded bytes) or ``path`` (read by the worker)."""

    part_id: str
    source: str  # "camera" (watched folder) or "upload"
    data: bytes | None = None
    path: Path | None = None
    error: str | None = None  # set: a recorded FAIL for this reason, the image is not inspected
    future: Future[Outcome] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.time)


@dataclass
class Outcome:
    """What one job ended as: the decision, its numbers, and what the PLC and ledger said.

    ``decision`` is ``"PASS"`` only when the inspection passed *and* its record was written.
    """

    number: int
    part_id: str
    source: str
    decision: str
    probability: float | None
    probabilities: dict[str, float]
    scores: dict[str, float]
    threshold: float | None
    error: str | None
    utc_time: str
    record_seq: int | None
    plc_delivered: bool | None
    overlay_png: bytes = field(repr=False, default=b"")
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "part_id": self.part_id,
            "source": self.source,
            "decision": self.decision,
            "probability": self.probability,
            "probabilities": self.probabilities,
            "scores": self.scores,
            "threshold": self.threshold,
            "error": self.error,
            "utc_time": self.utc_time,
            "record_seq": self.record_seq,
            "plc_delivered": self.plc_delivered,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


def _settle(
    future: Future[Outcome], outcome: Outcome | None = None, error: BaseException | None = None
) -> None:
    """Complete a job's future unless whoever waited has given up on it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


def _placeholder_image() -> np.ndarray:
    """A neutral grey picture for an image that could not be decoded (the banner says why)."""
    return np.full((240, 320, 3), 96, dtype=np.uint8)


def render_overlay(image: np.ndarray | None, result: InspectionResult) -> bytes:
    """The page's picture: the image (at most OVERLAY_MAX_SIDE) with heat-map and banner, PNG."""
    anomaly_map = result.anomaly_map
    if image is None or (anomaly_map is not None and anomaly_map.shape != image.shape[:2]):
        image, anomaly_map = _placeholder_image(), None
    height, width = image.shape[:2]
    scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if anomaly_map is not None:
            anomaly_map = cv2.resize(anomaly_map, size, interpolation=cv2.INTER_LINEAR)
    picture = render_heatmap(
        image,
        anomaly_map,
        result.decision,
        result.probability,
        result.threshold,
        error=result.error,
    )
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:  # pragma: no cover - encoding a valid uint8 picture does not fail
        raise ValueError("overlay: PNG encoding failed")
    return encoded.tobytes()


class Station:
    """Inspector + PLC link + ledger behind one worker thread; what the web app talks to.

    Construct, then :meth:`start`; :meth:`submit` queues a job and returns a future of its
    :class:`Outcome`; :meth:`close` drains nothing (queued jobs are failed with a reason, never
    silently dropped) and releases everything. A bundle that is refused does not stop the
    station: every image is then a recorded FAIL naming why, and the page says so.
    """

    def __init__(
        self,
        config: StationConfig,
        *,
        ledger: Any = None,
        reader: Any = None,
        plc: Any = None,
    ) -> None:
        from autoweld.quality import open_ledger, open_plc

        check_station_id(config.station_id)  # before anything is opened or inspected
        self.config = config
        self.started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # The PLC link first: it connects lazily, so a bad URL fails here before a ledger
        # file is created.
        self.plc = plc
        if plc is None and config.plc_url:
            self.plc = open_plc(config.plc_url, timeout=config.plc_timeout_s)
        try:
            self._ledger = ledger if ledger is not None else open_ledger(config.ledger_url)
        except BaseException:
            if self.plc is not None:
                self.plc.close()
            raise
        try:
            # The page's connection: read-only, so nothing served to the page can write.
            self.reader = (
                reader if reader is not None else open_ledger(config.ledger_url, read_only=True)
            )
        except BaseException:
            self._ledger.close()
            if self.plc is not None:
                self.plc.close()
            raise
        self.inspector: Inspector | None = None
        self.bundle = self._load_bundle()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._counts = {"total": 0, "pass": 0, "fail": 0, "error": 0}
        self._times: collections.deque[float] = collections.deque()
        self._first_time: float | None = None
        self._latest: Outcome | None = None
        self._in_hand = 0  # jobs taken off the queue and not yet finished
        self._worker: threading.Thread | None = None
        self._closed = False

    # ---- setup -------------------------------------------------------------------------------

    def _load_bundle(self) -> BundleInfo:
        from autoweld.bundle import BundleError

        bundle_dir = self.config.bundle_dir
        try:
            from autoweld.serving.client import open_inspector

            self.inspector = open_inspector(
                bundle_dir,
                server=self.config.server_url,
                server_timeout_s=self.config.server_timeout_s,
                providers=list(self.config.providers),
                threads=self.config.threads,
                decode_limits=self.config.decode_limits,
                require_signed=self.config.require_signed,
            )
        except (BundleError, ValueError, OSError, RuntimeError) as error:
            reason = f"bundle refused: {error}"
        except Exception as error:  # noqa: BLE001 - fail safe: any load failure means FAIL
            reason = f"bundle could not be loaded: {type(error).__name__}: {error}"
        else:
            bundle = self.inspector.bundle
            return BundleInfo(
                path=str(bundle.root),
                sha256=bundle.sha256,
                category=bundle.category,
                threshold=bundle.threshold,
                threshold_method=bundle.manifest.fusion.threshold_method,
                models=tuple(bundle.heads),
                image_size=bundle.preprocess.size,
            )
        log.error("%s: every inspection will FAIL", reason)
        return BundleInfo(
            path=str(bundle_dir),
            sha256=manifest_identity(bundle_dir),
            category=None,
            threshold=None,
            threshold_method=None,
            models=(),
            image_size=None,
            error=reason,
        )

    def start(self) -> Station:
        """Start the worker thread (idempotent)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="autoweld-inspect", daemon=True)
            self._worker.start()
        return self

    # ---- jobs --------------------------------------------------------------------------------

    def submit(
        self,
        part_id: str,
        *,
        data: bytes | None = None,
        path: Path | None = None,
        source: str = "upload",
        error: str | None = None,
    ) -> Future[Outcome]:
        """Queue one image (encoded ``data`` or a file ``path``) for inspection.

        ``error``: do not inspect; record and signal a FAIL with this reason (the watcher uses it
        for a camera file whose name is not a valid part id)."""
        part_id = check_part_id(part_id)
        if error is not None and (not isinstance(error, str) or not error.strip()):
            raise ValueError(f"error must be a non-empty string or None, got {error!r}")
        if (data is None) == (path is None):
            raise ValueError("give exactly one of data (encoded image bytes) or path")
        if data is not None and not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"data must be bytes, got {type(data).__name__}")
        job = Job(
            part_id=part_id,
            source=source,
            data=bytes(data) if data else data,
            path=path,
            error=error,
        )
        with self._lock:  # no job can slip in behind close()'s stop sentinel
            if self._closed:
                raise ValueError("the station is closed")
            self._queue.put(job)
        return job.future

    @property
    def pending(self) -> int:
        """Jobs waiting or being inspected."""
        return self._queue.qsize() + self._in_hand

    def _run(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            if self.config.max_batch > 1:  # several cameras: what else arrives before the deadline
                deadline = time.monotonic() + self.config.max_wait_ms / 1e3
                jobs, stop = gather_batch(self._queue, job, self.config.max_batch, deadline)
            self._in_hand = len(jobs)
            taken = time.perf_counter()
            try:
                inspected = self._inspect_jobs(jobs)
            except BaseException as error:  # noqa: BLE001 - the worker must survive anything
                log.exception("batch of %d job(s) failed", len(jobs))
                inspected = [(failed_result(f"inspection failed: {error}"), None) for _ in jobs]
            # The parts are decided now: each PLC signal's budget runs from here, not from when
            # its turn comes after the overlays and records of the parts before it. A signal
            # whose budget ran out is not sent late (a late byte would count for the next part).
            decided_at = time.monotonic()
            for job, (result, image) in zip(jobs, inspected, strict=True):
                try:  # in arrival order: the PLC gets its signals in the order parts came
                    outcome = self._process(job, result, image, taken, decided_at)
                except BaseException as error:  # noqa: BLE001 - the worker must survive anything
                    log.exception("job for part %s failed", job.part_id)
                    _settle(job.future, error=error)
                else:
                    _settle(job.future, outcome)
                finally:
                    self._in_hand -= 1

    def _read(self, job: Job) -> bytes:
        if job.data is not None:
            return job.data
        assert job.path is not None
        # a regular file only, at most the decode limit: a FIFO or device swapped in for a
        # camera file is refused at once instead of hanging the worker
        return read_regular(job.path, self.config.decode_limits.max_bytes)

    def _inspect_jobs(self, jobs: list[Job]) -> list[tuple[InspectionResult, np.ndarray | None]]:
        """Each job's result and decoded image; the images that decode go through the engine in
        one call (``inspect`` for a lone one)."""
        prepared = [self._read_and_decode(job) for job in jobs]
        images = [image for image, failure, _ in prepared if failure is None]
        inspector = self.inspector  # None only when no image decoded (no bundle, no images)
        if not images or inspector is None:
            found: list[InspectionResult] = []
        elif len(images) == 1:
            found = [inspector.inspect(images[0])]
        else:
            found = inspector.inspect_batch(images)
        results = iter(found)
        inspected = []
        for image, failure, decode_ms in prepared:
            if failure is None:
                failure = next(results)
                failure.timings_ms["decode"] = decode_ms
            inspected.append((failure, image))
        return inspected

    def _process(
        self,
        job: Job,
        result: InspectionResult,
        image: np.ndarray | None,
        start: float,
        decided_at: float,
    ) -> Outcome:
        """Overlay, heat-map, PLC signal and record for one inspected job (``start``: when the
        worker took it off the queue, ``time.perf_counter()``; ``decided_at``: when its result
        was known, ``time.monotonic()``, the start of the PLC signal's budget)."""
        try:
            overlay = render_overlay(image, result)
        except Exception as error:  # noqa: BLE001 - a missing picture must not hide a result
            log.warning("overlay not rendered for %s: %s", job.part_id, error)
            overlay = b""
        heatmap_sha256, heatmap_path = self._save_heatmap(job, overlay)
        recorded = self._signal_and_record(job, result, heatmap_sha256, heatmap_path, decided_at)
        result, record_seq, delivered = recorded.result, recorded.record_seq, recorded.plc_delivered
        if record_seq is None and overlay:
            # the banner was drawn before the record: redraw it, the result may now be a FAIL
            try:
                overlay = render_overlay(image, result)
            except Exception:  # noqa: BLE001
                overlay = b""
        timings = dict(result.timings_ms)
        timings["total"] = (time.perf_counter() - start) * 1e3
        with self._lock:
            self._counts["total"] += 1
            self._counts["pass" if result.decision == "PASS" else "fail"] += 1
            if result.error is not None:
                self._counts["error"] += 1
            now = time.time()
            self._times.append(now)
            if self._first_time is None:
                self._first_time = now
            number = self._counts["total"]
        outcome = Outcome(
            number=number,
            part_id=job.part_id,
            source=job.source,
            decision="PASS" if result.decision == "PASS" and result.error is None else "FAIL",
            probability=finite_or_none(result.probability),
            probabilities=dict(result.probabilities),
            scores=dict(result.scores),
            threshold=finite_or_none(result.threshold),
            error=result.error,
            utc_time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            record_seq=record_seq,
            plc_delivered=delivered,
            overlay_png=overlay,
            timings_ms=timings,
        )
        with self._lock:
            self._latest = outcome
        log.info(
            "part %s: %s p=%s record %s plc %s",
            job.part_id,
            outcome.decision,
            outcome.probability,
            record_seq,
            delivered,
        )
        return outcome

    def _read_and_decode(
        self, job: Job
    ) -> tuple[np.ndarray | None, InspectionResult | None, float]:
        """``(image, None, decode_ms)`` ready to inspect, or ``(None, FAIL result, decode_ms)``
        for a job that cannot be: a reason given, an unreadable file, no bundle, no image."""
        if job.error is not None:
            return None, failed_result(job.error, self._threshold()), 0.0
        try:
            data = self._read(job)
        except FileRefused as error:
            return None, failed_result(str(error), self._threshold()), 0.0
        except OSError as error:
            reason = f"{job.path}: cannot be read ({error.strerror or error})"
            return None, failed_result(reason, self._threshold()), 0.0
        return self._decode(data)

    def _threshold(self) -> float:
        return self.inspector.threshold if self.inspector is not None else float("nan")

    def _decode(self, data: bytes) -> tuple[np.ndarray | None, InspectionResult | None, float]:
        if self.inspector is None:
            return None, failed_result(str(self.bundle.error)), 0.0
        start = time.perf_counter()
        try:
            image = decode_image(data, self.config.decode_limits)
        except Exception as error:  # noqa: BLE001 - an undecodable image is a FAIL, not a crash
            decode_ms = (time.perf_counter() - start) * 1e3
            failure = failed_result(str(error), self._threshold(), {"decode": decode_ms})
            return None, failure, decode_ms
        return image, None, (time.perf_counter() - start) * 1e3

    def _save_heatmap(self, job: Job, overlay: bytes) -> tuple[str | None, str | None]:
        folder = self.config.heatmap_dir
        if folder is None or not overlay:
            return None, None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job.part_id)[:80]
        target = folder / f"{stamp}_{safe}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target.write_bytes(overlay)
        except OSError as error:
            log.warning("heat-map not saved to %s: %s", target, error)
            return None, None
        return hashlib.sha256(overlay).hexdigest(), str(target.resolve())

    def _signal_and_record(
        self,
        job: Job,
        result: InspectionResult,
        heatmap_sha256: str | None,
        heatmap_path: str | None,
        decided_at: float,
    ) -> RecordedInspection[InspectionResult]:
        """PLC and ledger through :func:`autoweld.quality.record_inspection`; its ``result`` is
        the final one: a record that cannot be written makes it a FAIL with the reason (a PASS
        already signalled is corrected with a FAIL); a refused record is replaced by a minimal
        FAIL record."""
        return record_inspection(
            result,
            part_id=job.part_id,
            station_id=self.config.station_id,
            bundle_sha256=self.bundle.sha256,
            package_version=__version__,
            ledger=self._ledger,
            link=self.plc,
            heatmap_sha256=heatmap_sha256,
            heatmap_path=heatmap_path,
            bundle_signed=self.inspector.bundle_signed if self.inspector is not None else None,
            decided_at=decided_at,
        )

    # ---- what the page reads ----------------------------------------------------------------

    def latest(self) -> Outcome | None:
        with self._lock:
            return self._latest

    def counts(self) -> dict[str, Any]:
        """Counts since the terminal started and the rate in parts per minute."""
        now = time.time()
        with self._lock:
            counts: dict[str, Any] = dict(self._counts)
            while self._times and self._times[0] < now - RATE_WINDOW_S:
                self._times.popleft()
            recent = len(self._times)
            first = self._first_time
        span = min(RATE_WINDOW_S, now - first) if first is not None else 0.0
        # under 10 s of history a rate means little; show it over at least 10 s
        counts["rate_per_min"] = round(recent * 60.0 / max(span, 10.0), 1) if recent else 0.0
        counts["rate_window_s"] = RATE_WINDOW_S
        counts["yield"] = round(counts["pass"] / counts["total"], 4) if counts["total"] else None
        counts["since_utc"] = self.started_utc
        counts["pending"] = self.pending
        # records that missed their deadline and wait in the ledger's queue (docs/ledger.md)
        counts["records_queued"] = getattr(self._ledger, "pending_records", 0)
        return counts

    def plc_state(self) -> dict[str, Any]:
        if self.plc is None:
            return {"configured": False, "state": "no PLC configured", "last_delivered": None}
        return {
            "configured": True,
            "url": self.plc.url,
            "state": self.plc.state,
            "last_delivered": self.plc.last_delivered,
            "sent": self.plc.sent,
            "delivered": self.plc.delivered,
        }

    def records(self, part_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Ledger records (newest first), each with the status of its own signature.

        The signature status checks the record's MAC only (``valid``, ``INVALID`` or
        ``unknown key``); whether records are missing or reordered is what :meth:`verify` proves.
        """
        from autoweld.quality.record import mac_matches

        records = self.reader.records(part_id=part_id, limit=limit)
        rows = []
        for record in records:
            key = self.reader.keys.key_for(record.key_id or "")
            if key is None:
                signature = "unknown key"
            else:
                signature = "valid" if mac_matches(key, record) else "INVALID"
            rows.append(
                {
                    "station_id": record.station_id,
                    "seq": record.seq,
                    "utc_time": record.utc_time,
                    "part_id": record.part_id,
                    "decision": record.decision,
                    "fused_probability": record.fused_probability,
                    "threshold": record.threshold,
                    "plc_delivered": record.plc_delivered,
                    "error": record.error,
                    "bundle_sha256": record.bundle_sha256,
                    "key_id": record.key_id,
                    "signature": signature,
                }
            )
        return rows

    def verify(self) -> dict[str, Any]:
        """Verify the whole ledger (every station's chain), through the read-only connection."""
        start = time.perf_counter()
        report = self.reader.verify()
        return {
            "ok": report.ok,
            "checked": report.checked,
            "stations": report.stations,
            "first_bad_seq": report.first_bad_seq,
            "station_id": report.station_id,
            "reason": report.reason,
            "problems": [list(p) for p in report.problems],
            "seconds": round(time.perf_counter() - start, 3),
            "utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    # ---- shutdown ----------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the job in hand; fail queued jobs; close everything."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        leftover: list[Job] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftover.append(job)
        for job in leftover:
            _settle(job.future, error=RuntimeError("terminal shut down before inspection"))
        if leftover:
            log.warning("%d queued image(s) not inspected: the terminal shut down", len(leftover))
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
        if self.inspector is not None:
            self.inspector.close()
        if self.plc is not None:
            self.plc.close()
        self.reader.close()
        self._ledger.close()

    def __enter__(self) -> Station:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
