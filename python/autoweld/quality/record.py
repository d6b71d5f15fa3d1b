"""One inspection record, its canonical serialisation and its MAC.

The MAC is HMAC-SHA256 over ``MAC_DOMAIN`` followed by the canonical JSON of every field except
``mac`` itself (``prev_mac`` included, which chains a record to the one before it on the same
station). Canonical JSON: sorted keys, no spaces, UTF-8, floats as Python's ``repr`` (shortest
text that round-trips), no NaN/Infinity. ``bundle_signed`` is left out of it while ``None``:
records written before the field existed keep their MACs; ``true``/``false`` are signed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: prev_mac of the first record of every station.
GENESIS_MAC = "0" * 64
#: Domain separation: a MAC of some other AutoWeld message can never pass as a record's.
MAC_DOMAIN = b"autoweld-ledger-record-v1\n"
DECISIONS = ("PASS", "FAIL")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _finite(name: str, value: Any, unit_interval: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if unit_interval and not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return number


def _text(name: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


#: Longest part or station id the stations accept (a VIN is 17 characters).
MAX_ID_LENGTH = 200


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise ValueError(
            f"{name} must be printable and at most {MAX_ID_LENGTH} characters, got {value!r}"
        )
    return value.strip()


def check_part_id(part_id: object) -> str:
    """A part id as the stations take it: a non-empty, printable string of at most
    :data:`MAX_ID_LENGTH` characters, without surrounding white space. ``ValueError`` otherwise."""
    return _check_id("part_id", part_id)


def check_station_id(station_id: object) -> str:
    """A station id, checked like :func:`check_part_id`."""
    return _check_id("station_id", station_id)


def _model_map(name: str, values: Any, unit_interval: bool) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} must be a mapping of model name to number, got {values!r}")
    out: dict[str, float] = {}
    for model, value in values.items():
        _text(f"{name} key", model)
        out[model] = _finite(f"{name}[{model!r}]", value, unit_interval)
    return out


@dataclass(frozen=True)
class InspectionRecord:
    """One inspection. The caller fills the inspection fields; the ledger fills the rest
    (``seq``, ``record_id``, ``utc_time``, ``key_id``, ``prev_mac``, ``mac``) on append."""

    station_id: str
    part_id: str
    bundle_sha256: str
    package_version: str
    decision: str
    scores: Mapping[str, float] = field(default_factory=dict)
    probabilities: Mapping[str, float] = field(default_factory=dict)
    fused_probability: float | None = None
    threshold: float | None = None
    heatmap_sha256: str | None = None
    heatmap_path: str | None = None
    plc_delivered: bool | None = None
    error: str | None = None
    #: True: the bundle's signature was checked against the station's bundle key; False: the
    #: bundle was used unsigned; None: not stated (records from before this field)
    bundle_signed: bool | None = None
    # filled in by the ledger
    seq: int | None = None
    record_id: str | None = None
    utc_time: str | None = None
    key_id: str | None = None
    prev_mac: str | None = None
    mac: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, here
        _text("station_id", self.station_id)
        _text("part_id", self.part_id)
        _text("package_version", self.package_version)
        if not isinstance(self.bundle_sha256, str) or not _HEX64.match(self.bundle_sha256):
            raise ValueError(
                f"bundle_sha256 must be 64 lower-case hex digits, got {self.bundle_sha256!r}"
            )
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")
        if self.error is not None:
            _text("error", self.error)
            if self.decision != "FAIL":
                raise ValueError("a record with an error must have decision 'FAIL' (fail safe)")
        set_(self, "scores", _model_map("scores", self.scores, unit_interval=False))
        set_(self, "probabilities", _model_map("probabilities", self.probabilities, True))
        if self.fused_probability is not None:
            fused = _finite("fused_probability", self.fused_probability, True)
            set_(self, "fused_probability", fused)
        if self.threshold is not None:
            set_(self, "threshold", _finite("threshold", self.threshold))
        if self.heatmap_sha256 is not None and not _HEX64.match(str(self.heatmap_sha256)):
            raise ValueError(
                f"heatmap_sha256 must be 64 lower-case hex digits, got {self.heatmap_sha256!r}"
            )
        _text("heatmap_path", self.heatmap_path, optional=True)
        if self.plc_delivered is not None and not isinstance(self.plc_delivered, bool):
            raise ValueError(
                f"plc_delivered must be True, False or None, got {self.plc_delivered!r}"
            )
        if self.bundle_signed is not None and not isinstance(self.bundle_signed, bool):
            raise ValueError(
                f"bundle_signed must be True, False or None, got {self.bundle_signed!r}"
            )
        if self.seq is not None and (
            isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1
        ):
            raise ValueError(f"seq must be a positive integer, got {self.seq!r}")

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-ready values (scores/probabilities as dicts). Every other
        field is a str, number, bool or None, so a shallow copy is what ``dataclasses.asdict``
        gives, without its recursive deep copy (a third of the cost of signing a record)."""
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["scores"] = dict(self.scores)
        data["probabilities"] = dict(self.probabilities)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InspectionRecord:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown record fields: {sorted(unknown)}")
        return cls(**dict(data))


_FIELD_NAMES = tuple(f.name for f in fields(InspectionRecord))


def canonical_bytes(record: InspectionRecord) -> bytes:
    """The exact bytes the MAC covers: every field except ``mac``, as canonical JSON."""
    data = record.to_dict()
    del data["mac"]
    if data["bundle_signed"] is None:  # not stated: the form records had before the field
        del data["bundle_signed"]
    text = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return MAC_DOMAIN + text.encode("utf-8")


def compute_mac(key: bytes, record: InspectionRecord) -> str:
    """HMAC-SHA256 (hex) of :func:`canonical_bytes`."""
    return hmac.new(key, canonical_bytes(record), hashlib.sha256).hexdigest()


def mac_matches(key: bytes, record: InspectionRecord) -> bool:
    """Whether ``record.mac`` is the right MAC for its content (constant-time compare)."""
    if not isinstance(record.mac, str):
        return False
    return hmac.compare_digest(compute_mac(key, record), record.mac)
