"""The order of the two outputs of one inspection: PLC first, then the ledger record."""

from __future__ import annotations

from dataclasses import replace

from autoweld.quality.ledger import Ledger
from autoweld.quality.plc import PlcLink
from autoweld.quality.record import InspectionRecord


def signal_and_record(
    record: InspectionRecord, ledger: Ledger | None = None, link: PlcLink | None = None
) -> InspectionRecord:
    """Signal ``record.decision`` to the PLC (bounded by the link's timeout), then append the
    record with the delivery outcome (``plc_delivered`` is ``None`` without a link).

    Why this order: the PLC never waits on the database (whose commit may take many
    milliseconds on a loaded server), and the stored record states truthfully whether the line
    got the signal. The record is written synchronously right after; if the append raises, the
    caller must treat the inspection as failed and alert — nothing was acknowledged.
    Returns the stored record (or the record with ``plc_delivered`` set, without a ledger).
    """
    delivered = link.send(record.decision) if link is not None else None
    record = replace(record, plc_delivered=delivered)
    return ledger.append(record) if ledger is not None else record
