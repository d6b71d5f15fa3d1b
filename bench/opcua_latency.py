"""Round-trip latency of one result write on loopback: OPC UA (one WriteRequest of the whole
OPC 40100 result, Basic256Sha256 SignAndEncrypt and without security), MQTT (QoS 1 publish to
PUBACK, when mosquitto is installed), and beside them the existing one-byte TCP signal with echo.

    python bench/opcua_latency.py [-n 200] [--json FILE]

Each figure is the time of ``link.publish(record)`` (or ``link.send`` for the decision and the
TCP peer) as the station calls it, median and p99 of ``-n`` writes after 20 warm-up writes, with
the deadline raised to 1 s so that slow writes are measured rather than cut off; ``over_50ms``
counts the writes that the station's default deadline would have failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from asyncua import Server, ua

from autoweld.quality import InspectionRecord, open_plc
from autoweld.quality.opcua import add_result_nodes, application_uri, write_application_certificate

WARMUP = 20
TIMEOUT_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_record(i: int) -> InspectionRecord:
    return InspectionRecord(
        station_id="cell-1", part_id=f"VIN-{i:06d}", bundle_sha256="ab" * 32,
        package_version="0.1.0", decision="FAIL" if i % 2 else "PASS",
        scores={"patchcore": 1.25, "student": 0.5, "autoencoder": 0.75},
        probabilities={"patchcore": 0.4, "student": 0.3, "autoencoder": 0.2},
        fused_probability=0.35, threshold=0.5, seq=i + 1, record_id=f"rec-{i}",
        utc_time="2026-12-03T13:00:00.000001+00:00", key_id="k1", prev_mac="0" * 64,
        mac="f" * 64,
    )  # fmt: skip


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3),
        "max_ms": round(ms[-1], 3),
        "over_50ms": sum(m > 50 for m in ms),
    }


def measure(link, n: int, what: str) -> dict[str, float]:
    samples = []
    for i in range(WARMUP + n):
        start = time.perf_counter()
        ok = link.publish(sample_record(i)) if what == "result" else link.send("FAIL")
        elapsed = time.perf_counter() - start
        if not ok:
            raise RuntimeError(f"{link.url}: write {i} not delivered: {link.state}")
        if i >= WARMUP:
            samples.append(elapsed)
    return summary(samples)


class ExistingServer:
    """A plain asyncua server with the AutoWeld nodes, writable: what ``opcua://`` writes to."""

    def __init__(self, pki: Path) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(pki), self.loop).result(60)

    async def _start(self, pki: Path) -> Server:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/plc")
        server.set_security_policy(
            [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        )
        await server.load_certificate(str(pki / "plc.der"))
        await server.load_private_key(str(pki / "plc.key.pem"))
        await server.set_application_uri(application_uri(pki / "plc.der"))
        await add_result_nodes(server, writable=True)
        await server.start()
        return server

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)


def opcua_runs(pki: Path, n: int) -> dict[str, dict]:
    server = ExistingServer(pki)
    station = f"cert={pki}/station.der&key={pki}/station.key.pem&server_cert={pki}/plc.der"
    runs = {
        "opcua_client_sign_encrypt": f"?{station}&allow_anonymous=1",
        "opcua_client_no_security": "?security=none&allow_anonymous=1",
    }
    report = {}
    try:
        for name, query in runs.items():
            with open_plc(f"opcua://127.0.0.1:{server.port}/plc{query}", TIMEOUT_S) as link:
                wait_until(lambda link=link: link._client is not None)  # noqa: SLF001
                report[f"{name}_result"] = measure(link, n, "result")
                report[f"{name}_decision"] = measure(link, n, "decision")
    finally:
        server.close()
    port = free_port()
    with open_plc(f"opcua+server://127.0.0.1:{port}/s?security=none&allow_anonymous=1") as link:
        report["opcua_server_local_result"] = measure(link, n, "result")
    return report


def mqtt_run(n: int) -> dict[str, dict]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(mosquitto):
        return {}
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as config:
        config.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        config.flush()
        broker = subprocess.Popen([mosquitto, "-c", config.name], stderr=subprocess.DEVNULL)
        try:
            with open_plc(f"mqtt://127.0.0.1:{port}/plant/bench", TIMEOUT_S) as link:
                wait_until(link._client.is_connected)  # noqa: SLF001
                return {"mqtt_qos1_result": measure(link, n, "result")}
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)


def tcp_echo_run(n: int) -> dict[str, dict]:
    listener = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(64):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    with open_plc(f"tcp://127.0.0.1:{listener.getsockname()[1]}", TIMEOUT_S) as link:
        result = {"tcp_byte_echo_decision": measure(link, n, "decision")}
    listener.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="timed writes per case (default 200)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pki = Path(folder)
        for name in ("station", "plc"):
            write_application_certificate(pki, name)
        report = {**opcua_runs(pki, args.n), **mqtt_run(args.n), **tcp_echo_run(args.n)}
    report_all = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "cases": report}
    print(f"{'case':40s} {'median ms':>10s} {'p99 ms':>8s} {'max ms':>8s} {'>50 ms':>6s}")
    for case, row in report.items():
        print(
            f"{case:40s} {row['median_ms']:10.3f} {row['p99_ms']:8.3f} {row['max_ms']:8.3f} "
            f"{row['over_50ms']:6d}"
        )
    if args.json:
        args.json.write_text(json.dumps(report_all, indent=2) + "\n")


if __name__ == "__main__":
    main()
