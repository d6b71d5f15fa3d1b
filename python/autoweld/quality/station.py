"""The order of the two outputs of one inspection: PLC first, then the ledger record
(docs/ledger.md, "Why this order")."""

from __future__ import annotations

import logging
from dataclasses import replace

from autoweld.quality.ledger import Ledger
from autoweld.quality.plc import PlcLink
from autoweld.quality.record import InspectionRecord

log = logging.getLogger(__name__)

#: How often a corrective FAIL is tried when a PASS was signalled but its record not written.
CORRECTIVE_FAIL_ATTEMPTS = 3


def signal_and_record(
    record: InspectionRecord, ledger: Ledger | None = None, link: PlcLink | None = None
) -> InspectionRecord:
    """Signal ``record.decision`` to the PLC (bounded by the link's timeout), then append the
    record with the delivery outcome (``plc_delivered`` is ``None`` without a link).

    If the append raises after a PASS was signalled, a corrective FAIL is sent at once (up to
    :data:`CORRECTIVE_FAIL_ATTEMPTS` tries) before the error propagates: a part whose record could
    not be written never keeps PASS as the last signal the PLC received. The caller must then
    treat the inspection as a FAIL. Why this order: docs/ledger.md.
    Returns the stored record (or the record with ``plc_delivered`` set, without a ledger).
    """
    delivered = link.send(record.decision) if link is not None else None
    record = replace(record, plc_delivered=delivered)
    if ledger is None:
        return record
    try:
        return ledger.append(record)
    except BaseException:
        if link is not None and record.decision == "PASS":
            _corrective_fail(link, record.part_id)
        raise


def _corrective_fail(link: PlcLink, part_id: str) -> bool:
    for attempt in range(1, CORRECTIVE_FAIL_ATTEMPTS + 1):
        if link.send("FAIL"):
            log.error("part %s: record not written; corrective FAIL sent to the PLC", part_id)
            return True
        log.error("part %s: corrective FAIL not delivered (try %d)", part_id, attempt)
    log.critical(
        "part %s: record not written and the corrective FAIL could not be delivered: "
        "the PLC's last signal for it may be PASS",
        part_id,
    )
    return False
