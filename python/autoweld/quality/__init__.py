"""Quality records: the signed, hash-chained ledger and the PLC link. Never imports torch."""

from autoweld.quality.keys import KeyRing, MissingKeyError, load_keyring
from autoweld.quality.ledger import Ledger, LedgerError, VerifyReport, open_ledger
from autoweld.quality.plc import PlcLink, open_plc
from autoweld.quality.record import GENESIS_MAC, InspectionRecord
from autoweld.quality.station import signal_and_record

__all__ = [
    "GENESIS_MAC",
    "InspectionRecord",
    "KeyRing",
    "Ledger",
    "LedgerError",
    "MissingKeyError",
    "PlcLink",
    "VerifyReport",
    "load_keyring",
    "open_ledger",
    "open_plc",
    "signal_and_record",
]
