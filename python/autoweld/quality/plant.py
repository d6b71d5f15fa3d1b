"""Results for the plant: the full result of one inspection, as OPC UA and MQTT carry it.

A :class:`ResultLink` is a PLC link (:class:`~autoweld.quality.plc.PlcLink`: ``send(decision)``
on the 50 ms deadline path, before the record is written) that also *publishes* the whole result
once the record is in the ledger (:meth:`ResultLink.publish`), because only then do its ``seq``,
``record_id`` and MAC exist. :func:`publish_result` is the one call ``dispatch`` makes; for plain
``tcp://`` and ``modbus://`` links it does nothing.

:func:`result_fields` is the result in the vocabulary of OPC 40100 (Machine Vision) ``ResultDataType``
— ``ResultId``, ``PartId``, ``CreationTime``, ``ResultState``, ``IsSimulated``, ``ProcessingTimes``,
``ResultContent`` — shared by the OPC UA nodes and the MQTT JSON payload (docs/plant.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import abstractmethod
from collections.abc import Mapping
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from typing import Any

from autoweld.quality.plc import PlcLink
from autoweld.quality.record import InspectionRecord

__all__ = [
    "RESULT_COMPLETED",
    "RESULT_FAILED",
    "ResultLink",
    "publish_result",
    "query_flag",
    "refuse_unknown",
    "result_fields",
]

log = logging.getLogger(__name__)

#: OPC 40100 ResultStateDataType: processing was carried out (the part is OK or NOK on its merits)
RESULT_COMPLETED = 1
#: ... and processing failed (the inspection could not be completed: a FAIL with an error)
RESULT_FAILED = 4
#: runtime stages that count as acquiring the image rather than processing it
ACQUISITION_STAGES = ("decode",)


def _utc(text: str | None) -> datetime:
    if text:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc)


def result_fields(
    record: InspectionRecord,
    *,
    simulated: bool = False,
    processing_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """One inspection as an OPC 40100 result (plain Python values; ``None`` where unknown).

    ``ResultId`` is the ledger's ``record_id`` (a fresh UUID when there is no ledger),
    ``CreationTime`` the record's ``utc_time`` (now without a ledger). ``ProcessingTimes``: the
    runtime's stage timings, ``decode`` as acquisition and the rest as processing, ending at the
    creation time.
    """
    created = _utc(record.utc_time)
    stages = {k: float(v) for k, v in (processing_ms or {}).items()}
    acquisition = sum(v for k, v in stages.items() if k in ACQUISITION_STAGES)
    processing = sum(v for k, v in stages.items() if k not in ACQUISITION_STAGES)
    heads = sorted(set(record.scores) | set(record.probabilities))
    return {
        "ResultId": record.record_id or str(uuid.uuid4()),
        "PartId": record.part_id,
        "CreationTime": created,
        "ResultState": RESULT_FAILED if record.error is not None else RESULT_COMPLETED,
        "IsPartial": False,
        "IsSimulated": bool(simulated),
        "ProcessingTimes": {
            "StartTime": created - timedelta(milliseconds=acquisition + processing),
            "EndTime": created,
            "AcquisitionDuration": acquisition,
            "ProcessingDuration": processing,
        },
        "ResultContent": {
            "Decision": record.decision,
            "Ok": record.decision == "PASS",
            "FusedProbability": record.fused_probability,
            "Threshold": record.threshold,
            "HeadNames": heads,
            "HeadScores": [record.scores.get(h) for h in heads],
            "HeadProbabilities": [record.probabilities.get(h) for h in heads],
            "StationId": record.station_id,
            "Seq": record.seq,
            "Mac": record.mac,
            "KeyId": record.key_id,
            "BundleSha256": record.bundle_sha256,
            "Error": record.error,
        },
    }


class ResultLink(PlcLink):
    """A PLC link that also publishes the full result after the record is written.

    ``publish`` follows ``send``'s rules: never raises for peer trouble, returns within
    ``timeout`` (plus a little overhead), ``False`` when not delivered. Its outcome cannot go
    into the record (already signed); it is logged and counted here (``published``,
    ``published_delivered``, ``last_published``) and shown in :attr:`state`.
    """

    def __init__(self, url: str, host: str, port: int, timeout: float, simulated: bool) -> None:
        super().__init__(url, host, port, timeout)
        self.simulated = simulated
        self.published = 0
        self.published_delivered = 0
        self.last_published: bool | None = None
        self._publish_state = "no result published yet"
        # Its own lock: PlcLink._lock guards the send queue, which a result publication (up to
        # ``timeout`` on the network) must never hold up; the decision signals stay on the
        # link's send worker, in order.
        self._publish_lock = threading.Lock()

    @property
    def state(self) -> str:
        return f"{super().state}; result: {self._publish_state}"

    def publish(
        self, record: InspectionRecord, processing_ms: Mapping[str, float] | None = None
    ) -> bool:
        """Publish ``record`` (as stored: with seq and MAC) as one result; ``True`` if delivered."""
        start = time.monotonic()
        what = f"result of part {record.part_id} (seq {record.seq}, record {record.record_id})"
        if not self._publish_lock.acquire(timeout=self.timeout):
            return self._published(False, what, start, "link busy")
        try:
            self.published += 1
            try:
                fields = result_fields(
                    record, simulated=self.simulated, processing_ms=processing_ms
                )
                self._publish(fields, start + self.timeout)
            except Exception as error:  # noqa: BLE001 - a peer problem must never stop inspection
                with suppress(Exception):  # dropping a broken connection may fail too
                    self._drop()
                return self._published(False, what, start, str(error) or type(error).__name__)
            self.published_delivered += 1
            return self._published(True, what, start, None)
        finally:
            self._publish_lock.release()

    def _published(self, ok: bool, what: str, start: float, why: str | None) -> bool:
        elapsed = (time.monotonic() - start) * 1000
        self.last_published = ok
        if ok:
            self._publish_state = f"published {what} in {elapsed:.1f} ms"
            log.info("%s: %s", self.url, self._publish_state)
        else:
            self._publish_state = f"NOT published {what} after {elapsed:.1f} ms: {why}"
            log.warning("%s: %s", self.url, self._publish_state)
        return ok

    @abstractmethod
    def _publish(self, fields: dict[str, Any], deadline: float) -> None:
        """Deliver :func:`result_fields` as one message or write request, or raise; must
        respect ``deadline`` (``time.monotonic()`` seconds)."""


def publish_result(
    link: PlcLink | None,
    record: InspectionRecord,
    processing_ms: Mapping[str, float] | None = None,
) -> bool | None:
    """Publish the stored ``record`` on ``link`` if it is a :class:`ResultLink` (``None``
    otherwise: plain PLC links carry only the decision). Never raises for peer trouble."""
    if not isinstance(link, ResultLink):
        return None
    return link.publish(record, processing_ms)


def query_flag(url: str, query: dict[str, list[str]], name: str) -> bool:
    """Pop the yes/no parameter ``name`` (``0``/``1``, default no) from a parsed URL query."""
    raw = query.pop(name, ["0"])[-1].lower()
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"plc url {url!r}: {name} must be 0 or 1, got {raw!r}")
    return raw in ("1", "true", "yes")


def refuse_unknown(url: str, query: dict[str, list[str]]) -> None:
    """``ValueError`` for parameters left in ``query``: checked before a link opens anything."""
    if query:
        raise ValueError(f"plc url {url!r}: unknown parameters {sorted(query)}")
