"""Who may use the terminal's API, from where, and what it answers with (issue 15, item 1),
through FastAPI's TestClient on a tiny bundle and a real SQLite ledger; and the command line's
refusals (exit 2, nothing created). The same attacks from a real browser page on another origin
are in test_browser_attacks.py."""

from __future__ import annotations

import socket
import sqlite3

import cv2
import pytest
from tinybundle import normal_image

pytest.importorskip("fastapi", reason="the terminal extra (fastapi) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from autoweld.cli.terminal import main  # noqa: E402
from autoweld.terminal.app import UploadLimits, create_app  # noqa: E402
from autoweld.terminal.security import (  # noqa: E402
    Credentials,
    Identity,
    bearer_token,
    served_hosts,
)
from autoweld.terminal.service import Station, StationConfig  # noqa: E402

from .conftest import (  # noqa: E402
    OCTET,
    OPERATOR_TOKEN,
    QUALITY_TOKEN,
    auth,
    credentials_lines,
    hold_inspections,
    write_credentials,
)

BASE_URL = "http://127.0.0.1:8080"


def png() -> bytes:
    ok, encoded = cv2.imencode(".png", normal_image(1))
    assert ok
    return encoded.tobytes()


@pytest.fixture
def station(key_env, tiny_bundle, tmp_path):
    config = StationConfig(tiny_bundle, f"sqlite:///{tmp_path / 'ledger.db'}", "st-s", threads=1)
    with Station(config) as station:
        yield station


def make_client(station, tmp_path, *, with_credentials=True, limits=None) -> TestClient:
    credentials = None
    if with_credentials:
        credentials = Credentials.from_file(write_credentials(tmp_path / "credentials"))
    app = create_app(
        station,
        hosts=served_hosts("127.0.0.1", 8080),
        credentials=credentials,
        limits=limits,
    )
    return TestClient(app, base_url=BASE_URL)


@pytest.fixture
def client(station, tmp_path):
    with make_client(station, tmp_path) as client:
        yield client


def records_in(tmp_path) -> int:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return db.execute("SELECT COUNT(*) FROM ledger_records").fetchone()[0]


def post_inspect(client, headers: dict[str, str], data: bytes | None = None, part="P-1") -> int:
    body = png() if data is None else data
    response = client.post("/api/inspect", params={"part_id": part}, content=body, headers=headers)
    return response.status_code


def test_inspect_needs_a_credential(client, station, tmp_path):
    assert post_inspect(client, OCTET) == 401  # no token
    assert post_inspect(client, {**OCTET, **auth("guessed-token")}) == 401
    assert post_inspect(client, {**OCTET, "Authorization": f"Basic {OPERATOR_TOKEN}"}) == 401
    assert records_in(tmp_path) == 0 and station.counts()["total"] == 0
    assert post_inspect(client, {**OCTET, **auth(OPERATOR_TOKEN)}) == 200
    assert records_in(tmp_path) == 1


def test_roles_operator_views_and_inspects_quality_also_verifies(client):
    for path in ("/api/status", "/api/records", "/api/verify"):
        assert client.get(path).status_code == 401, path  # nothing without a token
    operator, quality = auth(OPERATOR_TOKEN), auth(QUALITY_TOKEN)
    assert client.get("/api/status", headers=operator).status_code == 200
    assert client.get("/api/records", headers=operator).status_code == 200
    refused = client.get("/api/verify", headers=operator)
    assert refused.status_code == 403 and "olga (operator) may not" in refused.json()["detail"]
    assert client.get("/api/verify", headers=quality).json()["ok"] is True
    session = client.get("/api/session", headers=operator).json()
    assert session == {
        "credentials_required": True,
        "name": "olga",
        "role": "operator",
        "may_inspect": True,
        "may_verify": False,
    }
    assert client.get("/api/session").json()["name"] is None  # open: the page asks it first


def test_without_credentials_nobody_may_upload(station, tmp_path):
    with make_client(station, tmp_path, with_credentials=False) as client:
        response = client.post(
            "/api/inspect", params={"part_id": "P-1"}, content=png(), headers=OCTET
        )
        assert response.status_code == 403 and "--credentials" in response.json()["detail"]
        assert client.get("/api/status").status_code == 200  # loopback reads stay open
        assert client.get("/api/session").json()["may_inspect"] is False
    assert records_in(tmp_path) == 0


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_simple_request_content_types_are_refused(client, tmp_path, content_type):
    """What a plain form or a no-cors fetch can send never reaches the inspection path, even
    with a valid token."""
    headers = auth(OPERATOR_TOKEN)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.post(
        "/api/inspect", params={"part_id": "P-1"}, content=png(), headers=headers
    )
    assert response.status_code == 415, response.text
    assert records_in(tmp_path) == 0


@pytest.mark.parametrize("path", ["/", "/static/terminal.js", "/api/status", "/api/session"])
def test_foreign_host_is_refused(client, path):
    """DNS rebinding: a foreign name resolved to this machine carries a foreign Host."""
    response = client.get(path, headers={"Host": "rebind.attacker.example:8080"})
    assert response.status_code == 421
    assert "rebind.attacker.example" in response.json()["detail"]


def test_foreign_host_or_origin_cannot_inspect(client, station, tmp_path):
    good = {**OCTET, **auth(OPERATOR_TOKEN)}
    assert post_inspect(client, {**good, "Host": "rebind.attacker.example:8080"}) == 421
    assert post_inspect(client, {**good, "Host": "127.0.0.1:9999"}) == 421  # another port
    assert post_inspect(client, {**good, "Origin": "http://attacker.example"}) == 403
    assert post_inspect(client, {**good, "Origin": "http://127.0.0.1:8081"}) == 403
    assert post_inspect(client, {**good, "Origin": "null"}) == 403
    assert post_inspect(client, {**good, "Sec-Fetch-Site": "same-site"}) == 403
    assert records_in(tmp_path) == 0 and station.counts()["total"] == 0
    assert post_inspect(client, {**good, "Origin": BASE_URL}) == 200  # the page's own origin


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", 200), ("/static/terminal.js", 200), ("/api/status", 401), ("/api/latest.png", 404)],
)
def test_security_headers_on_every_route(client, path, status):
    response = client.get(path, headers=auth(OPERATOR_TOKEN) if status != 401 else {})
    assert response.status_code == status
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    if path.startswith("/api/"):
        assert response.headers["cache-control"] == "no-store"
    refused = client.get(path, headers={"Host": "elsewhere:1"})
    assert refused.headers["x-frame-options"] == "DENY"  # refusals carry them too


def test_page_has_no_inline_script_or_style(client):
    page = client.get("/").text
    assert "<script>" not in page and "<script src=" in page
    assert "style=" not in page and "<style" not in page and "onclick" not in page


def test_full_queue_is_503(station, tmp_path, monkeypatch):
    release = hold_inspections(station, monkeypatch)
    limits = UploadLimits(max_bytes=1 << 20, concurrent=2, queue=2)
    with make_client(station, tmp_path, limits=limits) as client:
        queued = [station.submit(f"Q-{i}", data=png()) for i in range(2)]
        response = client.post(
            "/api/inspect",
            params={"part_id": "P-1"},
            content=png(),
            headers={**OCTET, **auth(OPERATOR_TOKEN)},
        )
        assert response.status_code == 503, response.text
        assert "queue full" in response.json()["detail"]
        release.set()
        assert [f.result(20).part_id for f in queued] == ["Q-0", "Q-1"]
    assert records_in(tmp_path) == 2  # P-1 was never queued


def test_oversized_declared_upload_is_413(station, tmp_path):
    limits = UploadLimits(max_bytes=1000, concurrent=2, queue=2)
    with make_client(station, tmp_path, limits=limits) as client:
        response = client.post(
            "/api/inspect",
            params={"part_id": "P-1"},
            content=b"x" * 1001,
            headers={**OCTET, **auth(OPERATOR_TOKEN)},
        )
        assert response.status_code == 413 and "larger than 1000 B" in response.json()["detail"]
    assert records_in(tmp_path) == 0


def test_credentials_are_compared_as_digests():
    credentials = Credentials([("quality", "q", __import__("hashlib").sha256(b"tok").digest())])
    assert credentials.identify("tok").name == "q"
    assert credentials.identify("tok ") is None and credentials.identify("") is None
    assert credentials.identify(None) is None
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("bearer abc") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None


def test_served_hosts():
    loopback = served_hosts("127.0.0.1", 8080)
    assert loopback == {"127.0.0.1:8080", "localhost:8080", "[::1]:8080"}
    assert served_hosts("::1", 80) == {"127.0.0.1", "127.0.0.1:80", "localhost", "localhost:80",
                                       "[::1]", "[::1]:80"}  # fmt: skip
    extra = served_hosts("127.0.0.1", 8080, ["Cell4.Plant.LAN", "127.0.0.1:9000", "fe80::1"])
    assert extra - loopback == {"cell4.plant.lan:8080", "127.0.0.1:9000", "[fe80::1]:8080"}
    wildcard = served_hosts("0.0.0.0", 8080)
    assert f"{socket.gethostname().lower()}:8080" in wildcard and "0.0.0.0:8080" not in wildcard


# ---- the command line -----------------------------------------------------------------------


def test_beyond_loopback_without_credentials_is_refused(capsys, key_env, tiny_bundle, tmp_path):
    base = ["--bundle", str(tiny_bundle), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"]
    for host in ("0.0.0.0", "192.168.0.20", "::"):
        assert main([*base, "--host", host]) == 2
        err = capsys.readouterr().err
        assert f"--host {host} serves the page beyond this machine" in err
        assert "--credentials" in err
    assert not (tmp_path / "l.db").exists()  # refused before anything was opened


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        (0o644, None, "lets others read or change it"),
        (0o620, None, "lets others read or change it"),
        (0o600, "operator olga hunter2-plain-token\n", "expected 'ROLE NAME sha256:HEX'"),
        (0o600, "admin root sha256:" + "ab" * 32 + "\n", "unknown role 'admin'"),
        (0o600, "# nothing\n", "no credentials"),
    ],
)
def test_unsafe_or_malformed_credentials_are_refused(
    capsys, key_env, tiny_bundle, tmp_path, mode, text, message
):
    path = tmp_path / "credentials"
    path.write_text(credentials_lines() if text is None else text)
    path.chmod(mode)
    argv = ["--bundle", str(tiny_bundle), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"]
    assert main([*argv, "--credentials", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "hunter2" not in err  # a token pasted into the file by mistake is not echoed
    assert not (tmp_path / "l.db").exists()


def test_credentials_file_must_be_a_regular_file(capsys, key_env, tiny_bundle, tmp_path):
    import os

    fifo = tmp_path / "credentials.fifo"
    os.mkfifo(fifo)
    argv = ["--bundle", str(tiny_bundle), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"]
    assert main([*argv, "--credentials", str(fifo)]) == 2  # refused at once, no hang
    assert "FIFO" in capsys.readouterr().err


def test_docs_commands_make_a_working_credentials_file(tmp_path):
    """docs/terminal.md's commands for making a token, run as pasted (twice: two lines)."""
    import re
    import subprocess
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "terminal.md").read_text()
    block = re.search(r"Make the file and a token.*?```bash\n(.*?)```", doc, re.S)
    assert block is not None
    script = block.group(1)
    tokens = []
    for _ in range(2):
        out = subprocess.run(
            ["bash", "-euc", script], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
        tokens.append(out.strip().rpartition(": ")[2])
    path = tmp_path / "terminal.credentials"
    assert path.stat().st_mode & 0o777 == 0o600
    credentials = Credentials.from_file(path)
    assert tokens[0] != tokens[1]
    assert [credentials.identify(t) for t in tokens] == [Identity("quinn", "quality")] * 2
    assert tokens[0] not in path.read_text()  # only its digest is kept
