"""Quality records: the signed, hash-chained ledger and the PLC link. Never imports torch."""

from autoweld.quality.dispatch import (
    InspectionLike,
    RecordedInspection,
    finite_or_none,
    record_inspection,
    signal_and_record,
)
from autoweld.quality.keys import KeyRing, MissingKeyError, load_keyring
from autoweld.quality.ledger import Ledger, LedgerError, LedgerTimeout, VerifyReport, open_ledger
from autoweld.quality.plc import PlcLink, open_plc
from autoweld.quality.record import (
    GENESIS_MAC,
    InspectionRecord,
    check_part_id,
    check_station_id,
)

__all__ = [
    "GENESIS_MAC",
    "InspectionLike",
    "InspectionRecord",
    "KeyRing",
    "Ledger",
    "LedgerError",
    "LedgerTimeout",
    "MissingKeyError",
    "PlcLink",
    "RecordedInspection",
    "VerifyReport",
    "check_part_id",
    "check_station_id",
    "finite_or_none",
    "load_keyring",
    "open_ledger",
    "open_plc",
    "record_inspection",
    "signal_and_record",
]
