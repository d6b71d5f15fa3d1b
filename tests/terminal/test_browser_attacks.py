"""Cross-site request forgery and DNS rebinding from a real headless Chromium (issue 15, item 1).

The real ``autoweld-terminal`` runs on loopback with a tiny bundle, the test credentials and a
one-byte PLC. A second HTTP server on another port serves the attacker's page: another origin,
as any web page the station's browser opens would be. From it, the page tries every request a
browser lets a foreign page make without the terminal's consent: a ``no-cors`` fetch POST (no
content type, and ``text/plain``), plain forms (``text/plain``, urlencoded, multipart), and a CORS
fetch carrying a stolen token. A DNS-rebinding page (``rebind.test`` first answered by the
attacker, then resolved to 127.0.0.1 by Chromium's ``--host-resolver-rules``) makes same-origin
requests that reach the terminal under a foreign ``Host``. None of them may write a record or
signal the PLC; then the terminal's own page, signed in, inspects a part to show the same
set-up does record an upload that is allowed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import pytest
from tinybundle import normal_image

from .conftest import CHROMIUM, OPERATOR_TOKEN, auth, needs_chromium, sign_in

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (test extra)"
)
pytest.importorskip("fastapi", reason="the terminal extra (fastapi) is not installed")
pytestmark = [
    pytest.mark.browser,
    needs_chromium,
]
expect = playwright_api.expect
REBIND_HOST = "rebind.test"

# The attacker's page: {target} is the terminal's origin. Every attempt records what the page
# could learn; window.done is set when all have run.
ATTACK_PAGE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="plain" method="POST" enctype="text/plain" target="sink"
      action="{target}/api/inspect?part_id=CSRF-FORM-PLAIN"><input name="x" value="y"></form>
<form id="urlenc" method="POST" target="sink"
      action="{target}/api/inspect?part_id=CSRF-FORM-URLENC"><input name="x" value="y"></form>
<form id="multi" method="POST" enctype="multipart/form-data" target="sink"
      action="{target}/api/inspect?part_id=CSRF-FORM-MULTI"><input name="x" value="y"></form>
<script>
window.results = {{}};
async function attempt(name, run) {{
  try {{ window.results[name] = await run(); }} catch (e) {{ window.results[name] = "error: " + e; }}
}}
async function attack() {{
  const image = Uint8Array.from(atob("{png_b64}"), c => c.charCodeAt(0));
  const inspect = (part) => "{target}/api/inspect?part_id=" + part;
  await attempt("nocors_bytes", async () => (await fetch(inspect("CSRF-NOCORS-BYTES"),
      {{method: "POST", mode: "no-cors", body: image.buffer}})).type);
  await attempt("nocors_text", async () => (await fetch(inspect("CSRF-NOCORS-TEXT"),
      {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
        body: new Blob([image])}})).type);
  await attempt("cors_stolen_token", async () => (await fetch(inspect("CSRF-CORS-TOKEN"),
      {{method: "POST", headers: {{"Content-Type": "application/octet-stream",
        "Authorization": "Bearer {token}"}}, body: image}})).status);
  await attempt("cors_read_status", async () => (await fetch("{target}/api/status")).status);
  for (const id of ["plain", "urlenc", "multi"]) {{
    document.getElementById(id).submit();
    await new Promise(r => setTimeout(r, 300));
  }}
  // same origin as far as the browser knows: only the Host header gives the attacker away
  await attempt("rebind_inspect", async () => (await fetch("/api/inspect?part_id=REBIND",
      {{method: "POST", headers: {{"Content-Type": "application/octet-stream"}},
        body: image}})).status);
  await attempt("rebind_records", async () => (await fetch("/api/records")).status);
  window.done = true;
}}
attack();
</script></body></html>"""


def png_bytes() -> bytes:
    ok, encoded = cv2.imencode(".png", normal_image(1))
    assert ok
    return encoded.tobytes()


def attack_page(target: str) -> bytes:
    import base64

    png_b64 = base64.b64encode(png_bytes()).decode()
    return ATTACK_PAGE.format(target=target, png_b64=png_b64, token=OPERATOR_TOKEN).encode()


class AttackerSite:
    """The other origin: a plain HTTP server on another loopback port serving one page."""

    def __init__(self, page: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1",
                # Chromium's own Local Network Access checks would stop a rebinding page before
                # it reached the terminal; switched off so the terminal's defence is what is
                # tested (browsers without them, older ones, other engines)
                "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
                "PrivateNetworkAccessSendPreflights",
            ],
        )
        yield browser
        browser.close()


def ledger_rows(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT part_id, decision FROM ledger_records ORDER BY seq").fetchall()


def status(terminal) -> dict:
    request = urllib.request.Request(terminal.url + "api/status", headers=auth(OPERATOR_TOKEN))
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def run_page(context, url: str) -> dict:
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("window.done === true", timeout=30_000)
    return page.evaluate("window.results")


def test_foreign_pages_cannot_inspect_or_signal(
    browser, terminal_factory, tiny_bundle, echo_plc, tmp_path
):
    terminal = terminal_factory(tiny_bundle, "--plc", echo_plc.url, "--plc-timeout", "2")
    target = terminal.url.rstrip("/")
    attacker = AttackerSite(attack_page(target))
    context = browser.new_context()
    try:
        # -- another origin (another port): CSRF ------------------------------------------------
        results = run_page(context, attacker.url)
        for name in ("nocors_bytes", "nocors_text"):  # nothing readable comes back either
            # (Cross-Origin-Resource-Policy: same-origin turns the opaque answer into an error)
            assert results[name] == "opaque" or results[name].startswith("error:"), results
        # a request with the credential header needs a preflight, which is never granted
        assert results["cors_stolen_token"].startswith("error: TypeError")
        assert results["cors_read_status"].startswith("error: TypeError")
        # -- DNS rebinding: the attacker's name, resolved to this machine -----------------------
        rebind_origin = f"http://{REBIND_HOST}:{terminal.port}"
        context.route(
            f"{rebind_origin}/",
            lambda route: route.fulfill(
                status=200, content_type="text/html", body=attack_page(rebind_origin)
            ),
        )
        results = run_page(context, rebind_origin + "/")
        assert results["rebind_inspect"] == 421, results
        assert results["rebind_records"] == 421, results
        page = context.new_page()
        response = page.goto(rebind_origin + "/api/status")  # no route: straight to the terminal
        assert response.status == 421
        time.sleep(1.0)  # anything that did get through would be recorded by now
        assert ledger_rows(terminal.ledger_db) == []
        assert echo_plc.received == []
        assert status(terminal)["counts"]["total"] == 0
        log = terminal.log.read_text()
        assert "CSRF" not in log and "REBIND" not in log  # no part of theirs was inspected

        # -- the terminal's own page, signed in, still inspects (and so would have recorded) ---
        image = tmp_path / "part.png"
        image.write_bytes(png_bytes())
        own = context.new_page()
        own.goto(terminal.url)
        sign_in(own, OPERATOR_TOKEN)
        own.fill("#upload-part", "OWN-1")
        own.set_input_files("#upload-file", str(image))
        own.click("#upload button[type=submit]")
        expect(own.locator("#upload-status")).to_have_text("OWN-1: PASS", timeout=30_000)
        expect(own.locator("#overlay")).to_be_visible()  # fetched with the token, as a blob
        assert ledger_rows(terminal.ledger_db) == [("OWN-1", "PASS")]
        assert echo_plc.received == [0]  # PASS
    finally:
        context.close()
        attacker.close()


def test_page_cannot_be_framed(browser, terminal_factory, tiny_bundle):
    """frame-ancestors 'none' and X-Frame-Options: a foreign page cannot overlay the terminal
    (clickjacking the upload or sign-in)."""
    terminal = terminal_factory(tiny_bundle)
    frame_page = f'<!doctype html><iframe id="f" src="{terminal.url}"></iframe>'.encode()
    attacker = AttackerSite(frame_page)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(attacker.url)
        page.wait_for_timeout(1500)
        framed = page.frames[1] if len(page.frames) > 1 else None
        # a refused frame is left empty (Chromium shows its error page): no terminal in it
        assert framed is None or framed.query_selector("#decision") is None
    finally:
        context.close()
        attacker.close()
