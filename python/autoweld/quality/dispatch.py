"""Dispatch one inspection to its two outputs, the PLC signal and the ledger record, in a
fail-safe order (docs/ledger.md, "Order of operations").

:func:`record_inspection` is the one place an inspection result becomes a record and a signal;
``autoweld-inspect``, the terminal and the benchmark all call it. It builds the record (or, if the
record is refused, a minimal FAIL record carrying the reason, so no inspection goes unrecorded),
signals the PLC and appends the record through :func:`signal_and_record`, and returns a *new*
result with the final decision and error (the caller's result is never changed).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, is_dataclass, replace
from typing import Generic, Protocol, TypeVar

from autoweld.quality.ledger import Ledger, LedgerError, LedgerTimeout, deadline_watchdog
from autoweld.quality.plant import publish_result
from autoweld.quality.plc import PlcLink
from autoweld.quality.record import InspectionRecord, check_part_id, check_station_id

__all__ = [
    "CORRECTIVE_FAIL_ATTEMPTS",
    "InspectionLike",
    "RecordedInspection",
    "finite_or_none",
    "record_deadline",
    "record_inspection",
    "signal_and_record",
]

log = logging.getLogger(__name__)

#: How often a corrective FAIL is tried when a PASS was signalled but its record not written.
CORRECTIVE_FAIL_ATTEMPTS = 3
#: The record must be durable by this share of the PLC timeout after the decision, so that
#: a corrective FAIL still arrives within the timeout (docs/ledger.md, "Order of operations").
RECORD_SHARE = 0.6
#: The record gets at least this long after the PLC signal went out (see record_deadline).
MIN_RECORD_WINDOW_S = 0.02
#: Without a PLC no PASS is shown, but a stopped database must still not hang an inspection.
NO_PLC_RECORD_DEADLINE_S = 5.0
#: Round-off allowance when a probability is clamped into [0, 1] for the record.
PROBABILITY_SLACK = 1e-6
#: What the record says instead of a part or station id it could not take.
INVALID_PART_ID = "INVALID-PART-ID"
INVALID_STATION_ID = "INVALID-STATION-ID"
#: The minimal record's error is cut here (the refused value may be long).
MAX_ERROR_CHARS = 1000


def finite_or_none(value: object) -> float | None:
    """``float(value)`` when it is a finite real number, else ``None`` (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def signal_and_record(
    record: InspectionRecord,
    ledger: Ledger | None = None,
    link: PlcLink | None = None,
    *,
    decided_at: float | None = None,
    record_deadline_s: float | None = None,
) -> InspectionRecord:
    """Signal ``record.decision`` to the PLC (within the link's timeout of ``decided_at``,
    ``time.monotonic()`` seconds, default now), then append the record with the delivery
    outcome (``plc_delivered`` is ``None`` without a link).

    The append has a deadline (:func:`record_deadline`). If it raises — the deadline missed or
    any other database failure — after a PASS was signalled, a corrective FAIL is sent at once
    (up to :data:`CORRECTIVE_FAIL_ATTEMPTS` tries), so the PLC never shows PASS without a record
    for longer than the deadline; the record of that FAIL (or of the FAIL that was signalled)
    is queued on the ledger (:meth:`Ledger.append_later`) and written when the database allows;
    then the error propagates and the caller must treat the inspection as a FAIL
    (``record_inspection`` does). Why this order: docs/ledger.md, "Order of operations".
    Returns the stored record (or the record with ``plc_delivered`` set, without a ledger).
    """
    decided_at = time.monotonic() if decided_at is None else decided_at
    return _signal_then_append(record, ledger, link, {}, decided_at, record_deadline_s)


def record_deadline(
    link: PlcLink | None, decided_at: float, signalled_at: float, record_deadline_s: float | None
) -> float:
    """When the record must be durable (``time.monotonic()`` seconds): ``record_deadline_s``
    after the decision when given; else :data:`RECORD_SHARE` of the PLC timeout after the
    decision (the rest is left for the corrective FAIL to arrive), but at least
    :data:`MIN_RECORD_WINDOW_S` after the signal went out (a slow PLC acknowledgement does not
    leave the database no time) — never later than the PLC timeout + that after the decision;
    without a PLC, :data:`NO_PLC_RECORD_DEADLINE_S`."""
    if record_deadline_s is not None:
        return decided_at + record_deadline_s
    if link is None:
        return decided_at + NO_PLC_RECORD_DEADLINE_S
    # the signal's own deadline caps the anchor: a send that returned late (a busy machine)
    # does not stretch the window beyond the PLC timeout + MIN_RECORD_WINDOW_S
    signalled_at = min(signalled_at, decided_at + link.timeout)
    return max(decided_at + RECORD_SHARE * link.timeout, signalled_at + MIN_RECORD_WINDOW_S)


def _signal_then_append(
    record: InspectionRecord,
    ledger: Ledger | None,
    link: PlcLink | None,
    timings_ms: dict[str, float],
    decided_at: float,
    record_deadline_s: float | None,
) -> InspectionRecord:
    """:func:`signal_and_record`, adding the milliseconds of the PLC send (``"plc"``) and of the
    ledger append (``"record"``) to ``timings_ms`` (the benchmark reports them as stages)."""
    start = time.perf_counter()
    delivered = link.send(record.decision, decided_at) if link is not None else None
    timings_ms["plc"] = (time.perf_counter() - start) * 1e3
    record = replace(record, plc_delivered=delivered)
    if ledger is None:
        return record
    deadline = record_deadline(link, decided_at, time.monotonic(), record_deadline_s)
    start = time.perf_counter()
    signalled_pass = link is not None and record.decision == "PASS"
    guard = _CorrectiveGuard(link, deadline) if link is not None and signalled_pass else None
    try:
        stored = ledger.append(record, timeout=max(0.0, deadline - time.monotonic()))
        # durable, but after the PLC was told FAIL at the deadline: that FAIL is what stands
        if guard is not None and guard.fired():
            raise LedgerTimeout(
                f"the PASS record of part {record.part_id} (seq {stored.seq}, record "
                f"{stored.record_id}) became durable {(time.monotonic() - deadline) * 1000:.0f} ms "
                "after its deadline"
            )
    except Exception as failure:  # any failure to store: the PASS must not stand unrecorded
        if record.decision == "PASS":  # what is queued is the FAIL that now stands
            why = f"record not written in time ({failure})"
            delivered = record.plc_delivered
            if link is not None:
                delivered = _corrective_fail(link, record.part_id, guard)
                why = f"PASS corrected with a FAIL: {why}"
            record = replace(
                record, decision="FAIL", plc_delivered=delivered, error=_joined(why, record.error)
            )
        _queue(ledger, record)
        raise
    finally:
        if guard is not None:
            guard.disarm()
    timings_ms["record"] = timings_ms.get("record", 0.0) + (time.perf_counter() - start) * 1e3
    return stored


class _CorrectiveGuard:
    """Sends the corrective FAIL at the record's deadline from the watchdog thread, so the PLC
    shows an unrecorded PASS no longer than that, whatever the append is stuck in (an fsync
    that SQLite cannot interrupt, a GIL-starved thread). Armed for a signalled PASS only."""

    def __init__(self, link: PlcLink, deadline: float) -> None:
        self._link = link
        self._outcome: Callable[[], bool] | None = None
        self._token = deadline_watchdog.arm(deadline, self._fire)

    def _fire(self) -> None:
        self._outcome = self._link.submit("FAIL")

    def disarm(self) -> None:
        deadline_watchdog.disarm(self._token)

    def fired(self) -> bool:
        self.disarm()
        return self._outcome is not None

    def outcome(self) -> bool | None:
        """Whether the FAIL it sent was delivered; ``None`` when it did not fire."""
        self.disarm()
        return None if self._outcome is None else self._outcome()


def _queue(ledger: Ledger, record: InspectionRecord) -> None:
    """The record that could not be written goes on the ledger's queue, never dropped."""
    if len(record.error or "") > MAX_ERROR_CHARS:
        record = replace(record, error=record.error[: MAX_ERROR_CHARS - 3] + "...")
    try:
        ledger.append_later(record)
    except (LedgerError, ValueError) as refused:  # closed: the record's content is logged
        log.critical("record of part %s could not be queued (%s): %s", record.part_id, refused,
                     record.to_dict())  # fmt: skip


def _corrective_fail(link: PlcLink, part_id: str, guard: _CorrectiveGuard | None = None) -> bool:
    if guard is not None and guard.outcome():  # sent at the deadline already
        log.error("part %s: record not written in time; corrective FAIL sent", part_id)
        return True
    for attempt in range(1, CORRECTIVE_FAIL_ATTEMPTS + 1):
        if link.send("FAIL"):
            log.error("part %s: record not written in time; corrective FAIL sent", part_id)
            return True
        log.error("part %s: corrective FAIL not delivered (try %d)", part_id, attempt)
    log.critical(
        "part %s: record not written and the corrective FAIL could not be delivered: "
        "the PLC's last signal for it may be PASS",
        part_id,
    )
    return False


class InspectionLike(Protocol):
    """What :func:`record_inspection` reads from an inspection result (the runtime's
    ``InspectionResult`` and the benchmark's ``TorchResult`` fit; quality does not import the
    runtime). The result it hands back is a copy (``dataclasses.replace`` for a dataclass)."""

    decision: str
    probability: float
    scores: Mapping[str, float]
    probabilities: Mapping[str, float]
    threshold: float
    error: str | None


ResultT = TypeVar("ResultT", bound=InspectionLike)


@dataclass(frozen=True)
class RecordedInspection(Generic[ResultT]):
    """What became of one inspection.

    ``result`` is a copy of the inspection result with the final ``decision`` and ``error``:
    ``"PASS"`` only if the inspection passed *and* its record, if a ledger is configured, was
    written; ``error`` is ``None`` only for such a clean inspection. ``record`` is the stored
    record (``None`` without a ledger or when it could not be written), ``plc_delivered``
    whether the PLC got the signal (``None`` without a link). ``timings_ms`` holds ``"plc"`` (the
    send) and ``"record"`` (building plus appending the record) when they ran.
    """

    result: ResultT
    record: InspectionRecord | None
    plc_delivered: bool | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def decision(self) -> str:
        return self.result.decision

    @property
    def error(self) -> str | None:
        return self.result.error

    @property
    def record_seq(self) -> int | None:
        return int(self.record.seq) if self.record is not None and self.record.seq else None


def _probability(value: object) -> float | None:
    """A probability for the record: None when not finite; values within round-off of [0, 1]
    are clamped; anything further out is kept, so the record refuses it with the reason."""
    number = finite_or_none(value)
    if number is None:
        return None
    if -PROBABILITY_SLACK <= number <= 1.0 + PROBABILITY_SLACK:
        return min(1.0, max(0.0, number))
    return number


def _joined(error: str, before: str | None) -> str:
    return error + (f" (after: {before})" if before else "")


def _decision_of(result: InspectionLike) -> tuple[str, str | None]:
    """The result's decision, with anything inconsistent turned into a FAIL and a reason."""
    error = result.error
    if result.decision not in ("PASS", "FAIL"):
        return "FAIL", _joined(f"unknown decision {result.decision!r}", error)
    if result.decision == "PASS":
        if error is not None:
            return "FAIL", error
        probability, threshold = (
            finite_or_none(result.probability),
            finite_or_none(result.threshold),
        )
        if probability is None or threshold is None or not probability < threshold:
            return "FAIL", (
                f"PASS refused: probability {result.probability!r} is not finite and below "
                f"threshold {result.threshold!r}"
            )
    return result.decision, error


def record_inspection(
    result: ResultT,
    *,
    part_id: str,
    station_id: str,
    bundle_sha256: str,
    package_version: str,
    ledger: Ledger | None = None,
    link: PlcLink | None = None,
    heatmap_sha256: str | None = None,
    heatmap_path: str | None = None,
    bundle_signed: bool | None = None,
    decided_at: float | None = None,
    record_deadline_s: float | None = None,
) -> RecordedInspection[ResultT]:
    """Record and signal one inspection result; never raises for ledger, PLC or record trouble.

    * The record is built from the result; if it is refused (a whitespace part id, a fused
      probability outside [0, 1], ...), a minimal FAIL record is written instead that carries the
      reason and drops the offending values — placeholders stand in for an unusable part or
      station id — so no inspection goes unrecorded.
    * :func:`signal_and_record` then signals the PLC and appends the record. FAIL is always
      signalled at once; a PASS whose record cannot be written is corrected with a FAIL.
    * Without a ledger and a PLC link nothing is signalled or recorded.
    * ``decided_at`` (``time.monotonic()`` seconds, default now) is when the decision was made:
      the PLC signal's budget runs from it; ``record_deadline_s`` overrides
      :func:`record_deadline`. A record that misses it is queued, never dropped.

    ``result`` is not changed: the returned :class:`RecordedInspection` holds a copy with the
    final decision and error. ``bundle_signed`` (whether the bundle's signature was checked) is
    signed into the record, the minimal one included.
    """
    decided_at = time.monotonic() if decided_at is None else decided_at
    decision, error = _decision_of(result)
    timings: dict[str, float] = {}

    def outcome(
        decision: str, error: str | None, record: InspectionRecord | None, delivered: bool | None
    ) -> RecordedInspection[ResultT]:
        return RecordedInspection(_decided(result, decision, error), record, delivered, timings)

    if ledger is None and link is None:
        return outcome(decision, error, None, None)
    start = time.perf_counter()
    try:
        record = _record_of(
            result, part_id, station_id, bundle_sha256, package_version, decision, error,
            heatmap_sha256, heatmap_path,
        )  # fmt: skip
        record = replace(record, bundle_signed=bundle_signed)
    except ValueError as refused:
        log.error("quality record refused for part %r: %s", part_id, refused)
        decision, error = "FAIL", _joined(f"quality record refused: {refused}", error)
        minimal = _minimal_record(part_id, station_id, bundle_sha256, package_version, error)
        if minimal is None:  # pragma: no cover - the minimal record takes only checked values
            delivered = link.send("FAIL", decided_at) if link is not None else None
            return outcome(decision, error, None, delivered)
        record, error = replace(minimal, bundle_signed=bundle_signed), minimal.error
    timings["record"] = (time.perf_counter() - start) * 1e3
    try:
        stored = _signal_then_append(record, ledger, link, timings, decided_at, record_deadline_s)
    except Exception as failure:  # noqa: BLE001 - an unrecorded inspection is not a pass
        log.error("ledger write failed for part %r: %s", part_id, failure)
        delivered = link.last_delivered if link is not None else None
        queued = f"; record queued ({ledger.pending_records} waiting)" if ledger else ""
        why = f"ledger write failed: {failure}{queued}"
        if link is not None and record.decision == "PASS":  # _signal_then_append corrected it
            sent = "delivered" if delivered else "NOT delivered"
            why += f"; the PASS was corrected with a FAIL to the PLC ({sent})"
        return outcome("FAIL", _joined(why, error), None, delivered)
    kept = stored if ledger is not None else None
    # OPC UA / MQTT links: the full result, with the record's seq and MAC (docs/plant.md)
    publish_result(link, stored, getattr(result, "timings_ms", None))
    return outcome(stored.decision, error, kept, stored.plc_delivered)


def _decided(result: ResultT, decision: str, error: str | None) -> ResultT:
    """A copy of ``result`` with the final decision and error; ``result`` stays as it was."""
    if is_dataclass(result):
        return replace(result, decision=decision, error=error)  # type: ignore[type-var]
    final = copy.copy(result)
    final.decision, final.error = decision, error
    return final


def _record_of(
    result: InspectionLike,
    part_id: str,
    station_id: str,
    bundle_sha256: str,
    package_version: str,
    decision: str,
    error: str | None,
    heatmap_sha256: str | None,
    heatmap_path: str | None,
) -> InspectionRecord:
    """The record of ``result`` as decided; ``ValueError`` when the record refuses a value."""
    return InspectionRecord(
        station_id=check_station_id(station_id),
        part_id=check_part_id(part_id),
        bundle_sha256=bundle_sha256,
        package_version=package_version,
        scores=dict(result.scores),
        probabilities={k: _probability(v) for k, v in result.probabilities.items()},
        fused_probability=_probability(result.probability),
        threshold=finite_or_none(result.threshold),
        decision=decision,
        heatmap_sha256=heatmap_sha256,
        heatmap_path=heatmap_path,
        error=error,
    )


def _minimal_record(
    part_id: str, station_id: str, bundle_sha256: str, package_version: str, error: str
) -> InspectionRecord | None:
    """A FAIL record with only values that are known to be acceptable."""
    notes = []
    try:
        part = check_part_id(part_id)
    except ValueError:
        part = INVALID_PART_ID
        notes.append("part id replaced by " + INVALID_PART_ID)
    try:
        station = check_station_id(station_id)
    except ValueError:
        station = INVALID_STATION_ID
        notes.append("station id replaced by " + INVALID_STATION_ID)
    bundle = bundle_sha256 if isinstance(bundle_sha256, str) else ""
    if len(bundle) != 64 or any(c not in "0123456789abcdef" for c in bundle):
        bundle = "0" * 64
        notes.append("bundle sha256 replaced by zeros")
    version = package_version
    if not isinstance(version, str) or not version.strip():
        version = "unknown"
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 3] + "..."
    text = error + (f" [{'; '.join(notes)}]" if notes else "")
    try:
        return InspectionRecord(
            station_id=station,
            part_id=part,
            bundle_sha256=bundle,
            package_version=version,
            decision="FAIL",
            error=text,
        )
    except ValueError as still:  # pragma: no cover - see the checks above
        log.critical("even the minimal record was refused: %s", still)
        return None
