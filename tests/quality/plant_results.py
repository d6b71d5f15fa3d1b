"""What the OPC UA and MQTT tests inspect: a runtime-like result, recorded through
``record_inspection`` with a real ledger and a result link."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoweld.quality import record_inspection


@dataclass
class Result:
    """The fields record_inspection reads from the runtime's InspectionResult."""

    decision: str = "FAIL"
    probability: float = 0.875
    scores: dict = field(default_factory=lambda: {"patchcore": 2.5, "student": 0.75})
    probabilities: dict = field(default_factory=lambda: {"patchcore": 0.9, "student": 0.6})
    threshold: float = 0.5
    error: str | None = None
    timings_ms: dict = field(default_factory=lambda: {"decode": 1.5, "engine": 4.0, "knn": 2.5})


def inspect(link, ledger, part_id="VIN-7", result=None):
    """One inspection recorded in ``ledger`` and signalled (and published) on ``link``.

    The record gets 5 s: these tests are about the link's deadline and what is published, and
    a CI disk whose commit stalls past the record's own deadline (tested in
    test_dispatch_deadlines.py) must not fail them."""
    return record_inspection(
        result or Result(), part_id=part_id, station_id="cell-1", bundle_sha256="ab" * 32,
        package_version="0.1.0", ledger=ledger, link=link, record_deadline_s=5.0,
    )  # fmt: skip
