import socket
import time
from pathlib import Path

import pytest
from bench_helpers import slow_first_append

from autoweld.bench.sink import LoopbackPlc, StationSink
from autoweld.runtime.inspector import InspectionResult, failed_result


def _result(decision: str = "PASS", probability: float = 0.2) -> InspectionResult:
    return InspectionResult(
        decision=decision,
        probability=probability,
        scores={"patchcore": 1.5},
        probabilities={"patchcore": probability},
        threshold=0.5,
    )


def test_loopback_plc_echoes_each_byte():
    with LoopbackPlc() as plc:
        with socket.create_connection(("127.0.0.1", plc.port), timeout=2) as conn:
            for byte in (b"\x00", b"\x01", b"\x00"):
                conn.sendall(byte)
                assert conn.recv(1) == byte
        assert plc.received == 3
        assert plc.url == f"tcp://127.0.0.1:{plc.port}?ack=echo"


def test_sink_signals_then_writes_a_signed_record():
    sink = StationSink("a" * 64, plc_timeout_s=1.0)  # 0.6 s per record: none is late
    ledger_dir = Path(sink._tempdir.name)
    with sink:
        first = sink.deliver(_result())
        second = sink.deliver(_result("FAIL", 0.9))
        failed = sink.deliver(failed_result("engine output has NaN", threshold=0.5))
        assert (first.seq, second.seq, failed.seq) == (1, 2, 3)
        assert first.delivered is second.delivered is failed.delivered is True
        assert sink.plc_received == 3
        assert first.record_ms > 0 and first.plc_ms > 0
        records = list(sink.ledger.iter_records())
        assert [r.decision for r in records] == ["PASS", "FAIL", "FAIL"]
        assert all(r.plc_delivered for r in records)
        assert records[0].bundle_sha256 == "a" * 64 and records[0].key_id == "bench-test-key"
        assert records[2].error == "engine output has NaN" and records[2].fused_probability is None
        assert sink.ledger.verify().ok
        assert "test key generated for this run" in sink.ledger_description
    assert not ledger_dir.exists()  # the temporary ledger is removed


def test_sink_with_an_unreachable_plc_records_not_delivered():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with StationSink("b" * 64, plc_url=f"tcp://127.0.0.1:{port}", plc_timeout_s=1.0) as sink:
        timings = sink.deliver(_result())
        assert timings.delivered is False and timings.seq == 1
        assert sink.plc_received is None
        assert next(sink.ledger.iter_records()).plc_delivered is False


def test_sink_refuses_a_bad_plc_url():
    with pytest.raises(ValueError, match="plc url"):
        StationSink("c" * 64, plc_url="serial:///dev/ttyS0")


def test_a_record_past_its_deadline_is_measured_as_late_not_an_error():
    # A 1 s PLC timeout gives every record 0.6 s: only the slowed one misses it, even where a
    # commit stalls for 100 ms (as one did on a CI machine with the bench's 50 ms timeout).
    with StationSink("d" * 64, plc_timeout_s=1.0) as sink:
        slow_first_append(sink.ledger, 1.0)
        late = sink.deliver(_result())
        assert late.late is True and late.seq is None
        assert late.record_ms >= 900  # the whole wait, not only building the record
        normal = sink.deliver(_result())
        assert normal.late is False and normal.seq is not None
        assert sink.records_late == 1
        deadline = time.monotonic() + 10
        while sink.ledger.pending_records and time.monotonic() < deadline:
            time.sleep(0.01)
        records = list(sink.ledger.iter_records())
        first = [r for r in records if r.part_id == "bench-000001"]
        # the PASS became durable late; the corrective FAIL that stands was queued and written
        assert sorted(r.decision for r in first) == ["FAIL", "PASS"]
        assert "PASS corrected with a FAIL" in next(r.error for r in first if r.decision == "FAIL")
        assert sink.plc_received == 3  # PASS, corrective FAIL, PASS
        assert sink.ledger.verify().ok


def test_a_record_neither_written_nor_queued_raises(monkeypatch):
    from autoweld.quality.ledger import LedgerError

    with StationSink("e" * 64) as sink:

        def down(record, **kwargs):
            raise LedgerError("database is down")

        def full(record):
            raise LedgerError("ledger is closing: nothing more is queued")

        sink.ledger.append = down
        sink.ledger.append_later = full
        with pytest.raises(RuntimeError, match="bench record not written"):
            sink.deliver(_result())


def test_close_raises_when_a_late_record_is_never_written():
    from autoweld.quality.ledger import LedgerError

    sink = StationSink("f" * 64)

    def down(record, **kwargs):
        raise LedgerError("database is down")

    sink.ledger.append = down
    timings = sink.deliver(_result())
    assert timings.late is True and sink.records_late == 1
    with pytest.raises(RuntimeError, match="1 bench record.*never written"):
        sink.close()
