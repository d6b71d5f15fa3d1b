"""Fixtures for the terminal tests: signing key, ledgers, bundles (tiny and a small real weld
bundle), and a running ``autoweld-terminal`` process on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The tiny ONNX graph + bundle builders live beside the runtime tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from tinybundle import write_tiny_bundle  # noqa: E402

SECRET = "terminal-test-secret-0123456789-ghijklmnop"
WELD_CATEGORY = "weld_small"
#: bearer tokens of the test credentials (an operator and a quality engineer)
OPERATOR_TOKEN = "operator-token-5f1c0a9e4b7d2c8e6a3f9b1d0c7e5a2b"
QUALITY_TOKEN = "quality-token-8d2e7c4a1f6b9e3d0a5c8f2b7e4d1a6c"
OCTET = {"Content-Type": "application/octet-stream"}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def credentials_lines() -> str:
    """The test credentials file's text, as docs/terminal.md says to write it."""
    return "".join(
        f"{role} {name} sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"
        for role, name, token in (
            ("operator", "olga", OPERATOR_TOKEN),
            ("quality", "quinn", QUALITY_TOKEN),
        )
    )


def write_credentials(path: Path) -> Path:
    """The test credentials file at ``path``, mode 600."""
    path.write_text("# role name sha256:digest-of-token\n" + credentials_lines())
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def artifacts_dir() -> Path:
    """Where tests keep what a person should look at (screenshots): $AUTOWELD_ARTIFACTS or
    tests/terminal/artifacts/ (git-ignored)."""
    folder = Path(os.environ.get("AUTOWELD_ARTIFACTS") or Path(__file__).parent / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


CHROMIUM = os.environ.get("AUTOWELD_CHROMIUM", "/usr/bin/chromium")
#: for the browser tests: skip, with the reason, where Chromium is missing
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set AUTOWELD_CHROMIUM)",
)


def hold_inspections(station, monkeypatch: pytest.MonkeyPatch, limit_s: float = 20.0):
    """Make ``station``'s inspections wait until the returned event is set (at most
    ``limit_s``), so a test can see what happens while the worker is busy."""
    release = threading.Event()
    real = station.inspector.inspect

    def held(image, **kwargs):
        release.wait(limit_s)
        return real(image, **kwargs)

    monkeypatch.setattr(station.inspector, "inspect", held)
    return release


def sign_in(page, token: str) -> None:
    """Sign in on the terminal's page (Playwright) with ``token``, as an operator would."""
    page.fill("#signin-token", token)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#whoami:not([hidden])")


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AUTOWELD_SECRET_KEY": SECRET, "AUTOWELD_KEY_ID": "k1"}
    for name in ("AUTOWELD_VERIFY_KEYS", "AUTOWELD_VERIFY_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")


@dataclass
class WeldBundle:
    bundle_dir: Path
    good: list[Path]
    defective: list[Path]


@pytest.fixture(scope="session")
def weld_bundle(tmp_path_factory: pytest.TempPathFactory) -> WeldBundle:
    """A small real weld bundle (Lite0 at 128 px, PatchCore), exported once per session from a
    small generated weld category, plus test images of it (never used for fitting)."""
    from weldexport import export_small_weld

    from autoweld.data import read_mvtec

    bundle_dir, data_root = export_small_weld(
        tmp_path_factory.mktemp("weld"), WELD_CATEGORY, seed=3
    )
    category = read_mvtec(data_root / WELD_CATEGORY, WELD_CATEGORY)
    good = sorted(s.path for s in category.test if s.path.parent.name == "good")
    defective = sorted(
        s.path for s in category.test if s.path.parent.name in ("burn_through", "spatter")
    )
    return WeldBundle(bundle_dir, good, defective)


@dataclass
class Terminal:
    url: str
    watch: Path
    ledger_db: Path
    process: subprocess.Popen[bytes]
    log: Path
    port: int


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"autoweld-terminal exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(url + "api/session", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"autoweld-terminal did not come up in {timeout} s:\n{log.read_text()}")


def start_terminal(bundle_dir: Path, folder: Path, *extra: str) -> Terminal:
    """Run the real console script on a free loopback port (``extra``: more flags; the test
    credentials are given unless ``--no-credentials`` is among them)."""
    watch = folder / "camera"
    watch.mkdir(parents=True)
    if "--no-credentials" in extra:
        extra = tuple(e for e in extra if e != "--no-credentials")
    else:
        extra = ("--credentials", str(write_credentials(folder / "credentials")), *extra)
    ledger_db = folder / "ledger.db"
    port = free_port()
    log = folder / "terminal.log"
    env = {**os.environ, "AUTOWELD_SECRET_KEY": SECRET, "AUTOWELD_KEY_ID": "k1"}
    script = shutil.which("autoweld-terminal", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "autoweld.cli.terminal"]
    command += [
        "--bundle", str(bundle_dir), "--ledger", f"sqlite:///{ledger_db}",
        "--watch", str(watch), "--host", "127.0.0.1", "--port", str(port),
        "--station", "line1-cell4", "--threads", "1", "--settle", "0.3", "-v", *extra,
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, process, log, timeout=60)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return Terminal(url, watch, ledger_db, process, log, port)


def stop_terminal(terminal: Terminal) -> None:
    terminal.process.terminate()
    try:
        terminal.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        terminal.process.kill()
        terminal.process.wait()


@pytest.fixture
def terminal_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Terminal] = []

    def factory(bundle_dir: Path, *extra: str) -> Terminal:
        terminal = start_terminal(bundle_dir, tmp_path / f"t{len(started)}", *extra)
        started.append(terminal)
        return terminal

    yield factory
    for terminal in started:
        stop_terminal(terminal)


class EchoPlc:
    """A one-byte PLC on loopback: reads each signal byte, keeps it and echoes it back."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.1)
                while not self._stop.is_set():
                    try:
                        data = conn.recv(16)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    self.received += list(data)
                    conn.sendall(data)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


@pytest.fixture
def echo_plc() -> Iterator[EchoPlc]:
    plc = EchoPlc()
    yield plc
    plc.stop()
