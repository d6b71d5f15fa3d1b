"""The MQTT result channel (autoweld.quality.mqtt) against a real mosquitto broker on loopback,
started by the test (Debian's mosquitto package; CI installs it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import paho.mqtt.client as paho
import pytest

from autoweld.quality import open_ledger, open_plc
from autoweld.quality.mqtt import MqttLink

from .conftest import free_port
from .plant_results import Result, inspect

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
)
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)"
)
BUDGET_S = 0.5  # generous for a loaded CI machine: this checks "bounded", not speed
DEADLINE_S = 0.05
#: the link budget where delivery must succeed and its deadline is not the subject: a stalled
#: CI machine can spend 50 ms on one TLS write or PUBACK
CALM_S = 1.0
PASSED = Result(
    decision="PASS", probability=0.125, scores={"patchcore": 0.5, "student": 0.25},
    probabilities={"patchcore": 0.1, "student": 0.2}, timings_ms={"decode": 2.0, "engine": 3.0},
)  # fmt: skip


@pytest.fixture
def broker(tmp_path):
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.05)
    yield process, port
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(10)
    process.stderr.close()


class Subscriber:
    """A dashboard: subscribes to the station's topics and keeps what arrives."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dashboard")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, json.loads(m.payload))
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def wait(self, count: int, timeout: float = 10) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_connected(link, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not link._client.is_connected() and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.02)


def test_result_json_equals_the_record(broker, tmp_path, keys):
    _, port = broker
    dashboard = Subscriber(port, "plant/cell-2/#")
    try:
        with open_plc(f"mqtt://127.0.0.1:{port}/plant/cell-2", timeout=CALM_S) as link:
            assert isinstance(link, MqttLink)
            wait_connected(link)
            with open_ledger(tmp_path / "ledger.db", keys) as ledger:
                outcome = inspect(link, ledger, result=PASSED)
            assert outcome.plc_delivered is True and outcome.record.plc_delivered is True
            assert link.last_published is True, link.state
        messages = dict(dashboard.wait(2))
    finally:
        dashboard.close()
    record = outcome.record
    decision = messages["plant/cell-2/decision"]
    assert decision["Decision"] == "PASS" and decision["Counter"] == link.counter
    result = messages["plant/cell-2"]
    assert result["ResultId"] == record.record_id
    assert result["PartId"] == record.part_id
    assert result["CreationTime"] == record.utc_time.replace("+00:00", "Z")
    assert result["ResultState"] == 1 and result["IsSimulated"] is False
    assert result["ProcessingTimes"]["AcquisitionDuration"] == 2.0
    assert result["ProcessingTimes"]["ProcessingDuration"] == 3.0
    content = result["ResultContent"]
    assert content["Decision"] == record.decision and content["Ok"] is True
    assert content["FusedProbability"] == record.fused_probability
    assert content["Threshold"] == record.threshold
    assert dict(zip(content["HeadNames"], content["HeadScores"], strict=True)) == record.scores
    assert (
        dict(zip(content["HeadNames"], content["HeadProbabilities"], strict=True))
        == record.probabilities
    )
    assert (content["Seq"], content["Mac"], content["KeyId"]) == (
        record.seq,
        record.mac,
        record.key_id,
    )
    assert content["BundleSha256"] == record.bundle_sha256 and content["Error"] is None


def test_stalled_broker_costs_at_most_the_deadline_and_is_recorded(broker, tmp_path, keys):
    process, port = broker
    with open_plc(f"mqtt://127.0.0.1:{port}/plant/cell-2", timeout=DEADLINE_S) as link:
        wait_connected(link)
        os.kill(process.pid, signal.SIGSTOP)  # the broker stops answering (no PUBACK)
        try:
            with open_ledger(tmp_path / "ledger.db", keys) as ledger:
                start = time.monotonic()
                outcome = inspect(link, ledger, result=PASSED)
                elapsed = time.monotonic() - start
        finally:
            os.kill(process.pid, signal.SIGCONT)
    assert outcome.record.plc_delivered is False and outcome.plc_delivered is False
    assert link.last_published is False and "NOT published" in link.state
    assert elapsed < 2 * BUDGET_S, elapsed  # decision and result: one deadline each


def test_no_broker_costs_nothing_and_is_recorded(tmp_path, keys):
    with open_plc(f"mqtt://127.0.0.1:{free_port()}/plant/cell-2", timeout=DEADLINE_S) as link:
        with open_ledger(tmp_path / "ledger.db", keys) as ledger:
            start = time.monotonic()
            outcome = inspect(link, ledger, result=PASSED)
            elapsed = time.monotonic() - start
    assert outcome.record.plc_delivered is False and link.last_published is False
    assert "not connected to the broker" in link.state
    assert elapsed < 2 * BUDGET_S, elapsed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mqtt://127.0.0.1:1883", "needs a topic"),
        ("mqtt://127.0.0.1:1883/plant/#", "without wildcards"),
        ("mqtt://127.0.0.1:1883/plant/+/result", "without wildcards"),
        ("mqtt://127.0.0.1:1883/plant?qos=2", "unknown parameters"),
        ("mqtt://127.0.0.1/plant", "needs a port"),
    ],
)
def test_bad_mqtt_urls_are_refused(url, message):
    with pytest.raises(ValueError, match=message):
        open_plc(url)
