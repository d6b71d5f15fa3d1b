import time

import pytest

from autoweld.quality import open_plc
from autoweld.quality.plc import ModbusLink, TcpByteLink

from .conftest import free_port, wait_until

BUDGET_S = 0.5  # generous for a loaded CI machine: this checks "bounded", not speed


def timed_send(link, decision):
    start = time.monotonic()
    delivered = link.send(decision)
    return delivered, time.monotonic() - start


# ---- one-byte TCP --------------------------------------------------------------------------
def test_tcp_byte_is_read_by_the_plc(byte_server_factory):
    server = byte_server_factory("echo")
    with open_plc(f"tcp://127.0.0.1:{server.port}") as default:
        assert isinstance(default, TcpByteLink) and default.timeout == 0.05
    # delivery with a budget a stalled CI machine cannot run out (the 50 ms one is tested below)
    with open_plc(f"tcp://127.0.0.1:{server.port}", timeout=1.0) as link:
        assert link.send("PASS") is True
        assert link.send("FAIL") is True
        assert link.send("FAIL") is True
        assert "delivered FAIL" in link.state and "3/3" in link.state
    assert server.wait_received(3) == [0x00, 0x01, 0x01]
    assert server.connections == 1  # the connection is kept between inspections


def test_tcp_reconnects_after_the_plc_dropped_the_connection(byte_server_factory):
    server = byte_server_factory("close")
    with open_plc(f"tcp://127.0.0.1:{server.port}", timeout=1.0) as link:
        assert link.send("FAIL") is True
        wait_until(lambda: server.closed_by_server, 5.0)
        assert server.closed_by_server == 1
        time.sleep(0.01)  # the FIN is on loopback: here at once
        assert link.send("PASS") is True
    assert server.wait_received(2) == [0x01, 0x00]
    assert server.connections == 2


def test_tcp_plc_down_is_not_delivered_and_does_not_block():
    with open_plc(f"tcp://127.0.0.1:{free_port()}") as link:
        for decision in ("PASS", "FAIL"):
            delivered, elapsed = timed_send(link, decision)
            assert delivered is False and elapsed < BUDGET_S
    # read after close, which lets the worker finish: a caller gives up 5 ms after the budget,
    # the worker may note the outcome later (a signal whose turn came too late is skipped, not
    # counted as sent)
    assert "NOT delivered FAIL" in link.state and link.delivered == 0
    assert link.last_delivered is False


def test_tcp_plc_that_never_reads_is_not_delivered_within_the_timeout(byte_server_factory):
    server = byte_server_factory("silent")
    with open_plc(f"tcp://127.0.0.1:{server.port}", timeout=0.05) as link:
        delivered, elapsed = timed_send(link, "PASS")
        assert delivered is False
        assert 0.04 <= elapsed < BUDGET_S  # it did wait for the acknowledgement, then gave up


def test_tcp_without_ack_only_proves_the_byte_left(byte_server_factory):
    server = byte_server_factory("echo")
    with open_plc(f"tcp://127.0.0.1:{server.port}?ack=none", timeout=1.0) as link:
        assert link.send("FAIL") is True
    assert server.wait_received(1) == [0x01]


def test_unroutable_plc_respects_the_timeout():
    # TEST-NET-1 (RFC 5737) is never routed: connect hangs until our timeout, or fails at once
    with open_plc("tcp://192.0.2.1:502", timeout=0.05) as link:
        delivered, elapsed = timed_send(link, "FAIL")
    assert delivered is False and elapsed < BUDGET_S


# ---- Modbus TCP ----------------------------------------------------------------------------
def test_modbus_result_code_and_counter_arrive(modbus_server):
    url = f"modbus://127.0.0.1:{modbus_server.port}?unit=1&register=4"
    with open_plc(url, timeout=0.5) as link:
        assert isinstance(link, ModbusLink)
        assert link.send("PASS") is True
        code, first = modbus_server.read(4, 2)
        assert code == 1 and 1 <= first <= 65535
        assert link.send("FAIL") is True
        assert modbus_server.read(4, 2) == [2, first % 65535 + 1]
        assert link.send("FAIL") is True  # the same result again: only the counter tells
        assert modbus_server.read(4, 2) == [2, (first + 1) % 65535 + 1]
        assert modbus_server.read(0, 4) == [0, 0, 0, 0]  # nothing written outside our registers


def test_modbus_counter_wraps_to_one():
    link = open_plc("modbus://127.0.0.1:1502")
    link.counter = 65534
    assert [link._next_counter() for _ in range(3)] == [65535, 1, 2]
    link.close()


def test_modbus_plc_down_is_not_delivered_and_does_not_block():
    with open_plc(f"modbus://127.0.0.1:{free_port()}") as link:
        for decision in ("FAIL", "PASS"):
            delivered, elapsed = timed_send(link, decision)
            assert delivered is False and elapsed < BUDGET_S
    assert "NOT delivered" in link.state and link.delivered == 0  # after close, as above


def test_modbus_plc_that_never_answers_is_not_delivered_within_the_timeout(byte_server_factory):
    server = byte_server_factory("silent")
    with open_plc(f"modbus://127.0.0.1:{server.port}", timeout=0.05) as link:
        for decision in ("PASS", "FAIL"):
            delivered, elapsed = timed_send(link, decision)
            assert delivered is False and elapsed < BUDGET_S


def test_modbus_recovers_when_the_plc_comes_back(modbus_server):
    url = f"modbus://127.0.0.1:{modbus_server.port}"
    with open_plc(url, timeout=0.5) as link:
        assert link.send("PASS") is True
        link._drop()  # as after a failure: the next send reconnects
        assert link.send("FAIL") is True
        assert modbus_server.read(0, 1) == [2]


# ---- arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "timeout", "needle"),
    [
        ("127.0.0.1:502", 0.05, "tcp://host:port"),
        ("udp://127.0.0.1:502", 0.05, "unknown scheme"),
        ("tcp://127.0.0.1", 0.05, "port"),
        ("tcp://:502", 0.05, "host"),
        ("tcp://127.0.0.1:502?ack=maybe", 0.05, "ack"),
        ("modbus://127.0.0.1:502?unit=x", 0.05, "unit"),
        ("modbus://127.0.0.1:502?register=70000", 0.05, "register"),
        ("modbus://127.0.0.1:502?speed=9600", 0.05, "unknown parameters"),
        ("tcp://127.0.0.1:502", 0, "timeout"),
        ("tcp://127.0.0.1:502", float("nan"), "timeout"),
        ("tcp://127.0.0.1:502", True, "timeout"),
    ],
)
def test_bad_plc_arguments(url, timeout, needle):
    with pytest.raises(ValueError, match=needle):
        open_plc(url, timeout=timeout)


def test_unknown_decision_is_refused_not_sent(byte_server_factory):
    server = byte_server_factory("echo")
    with open_plc(f"tcp://127.0.0.1:{server.port}") as link:
        with pytest.raises(ValueError, match="decision"):
            link.send("OK")
        assert link.sent == 0


def test_modbus_reconnects_after_the_plc_dropped_the_connection(modbus_server):
    with open_plc(f"modbus://127.0.0.1:{modbus_server.port}", timeout=0.5) as link:
        assert link.send("PASS") is True
        modbus_server.stop()  # a PLC restart: the kept connection dies ...
        time.sleep(0.05)
        restarted = type(modbus_server)(port=modbus_server.port)  # ... and it comes back
        try:
            assert link.send("FAIL") is True  # not lost to the stale connection
            assert restarted.read(0, 1) == [2]
        finally:
            restarted.stop()


def test_concurrent_sends_to_a_hung_plc_each_stay_within_budget(byte_server_factory):
    import threading

    server = byte_server_factory("silent")
    results = []
    with open_plc(f"tcp://127.0.0.1:{server.port}", timeout=0.05) as link:

        def worker():
            results.append(timed_send(link, "FAIL"))

        threads = [
            threading.Thread(target=worker) for _ in range(12)
        ]  # 12 x 50 ms serialised > budget
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 12
    assert all(delivered is False and elapsed < BUDGET_S for delivered, elapsed in results)
