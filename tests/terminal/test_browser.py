"""End to end in a real headless Chromium: the ``autoweld-terminal`` console script runs on
loopback with a small exported weld bundle; weld images are dropped into its camera folder and
uploaded through the page; the test reads what an operator would see (decisions, counts, ledger
rows, verify), tampers with the SQLite ledger and sees verify fail, and stops the server to see
that a lost connection never leaves a PASS on screen. Screenshots go to the artefacts folder
(conftest.artifacts_dir).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from .conftest import (
    CHROMIUM,
    OPERATOR_TOKEN,
    QUALITY_TOKEN,
    artifacts_dir,
    needs_chromium,
    sign_in,
    stop_terminal,
)

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (test extra)"
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    needs_chromium,
]
expect = playwright_api.expect
WAIT_MS = 60_000  # the first inspection in a fresh process warms up ONNX Runtime


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    yield page
    context.close()


def decisions_in_process(bundle_dir: Path, images: list[Path]) -> dict[Path, str]:
    from autoweld.runtime.inspector import Inspector

    with Inspector(bundle_dir, threads=1) as inspector:
        return {image: inspector.inspect(str(image)).decision for image in images}


def drop(camera: Path, image: Path, part_id: str, *, rename: bool) -> None:
    """Put an image in the camera folder as a camera would: written under a hidden name and
    renamed (the rename convention), or written in two halves (the stable-size rule)."""
    data = image.read_bytes()
    if rename:
        hidden = camera / f".{part_id}.png"
        hidden.write_bytes(data)
        hidden.rename(camera / f"{part_id}.png")
    else:
        with open(camera / f"{part_id}.png", "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
            out.write(data[len(data) // 2 :])


def wait_for_part(page, part_id: str, decision: str) -> None:
    expect(page.locator("#part-id")).to_have_text(part_id, timeout=WAIT_MS)
    expect(page.locator("#decision")).to_have_attribute("data-decision", decision)
    expect(page.locator("#decision-word")).to_have_text(decision)


def test_operator_runs_a_shift(weld_bundle, terminal_factory, page, echo_plc):
    candidates = weld_bundle.good + weld_bundle.defective
    expected = decisions_in_process(weld_bundle.bundle_dir, candidates)
    good = [p for p in weld_bundle.good if expected[p] == "PASS"][:2]
    defective = [p for p in weld_bundle.defective if expected[p] == "FAIL"][:1]
    assert good and defective, f"the test bundle is too weak to test with: {expected}"

    terminal = terminal_factory(weld_bundle.bundle_dir, "--plc", echo_plc.url, "--plc-timeout", "2")
    page.goto(terminal.url)
    expect(page.locator("#signin-note")).to_have_text("Sign in with your token.")
    sign_in(page, QUALITY_TOKEN)  # a quality engineer: inspects, views and verifies
    expect(page.locator("#whoami-name")).to_have_text("quinn (quality)")
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    expect(page.locator("#decision-word")).to_have_text("WAITING")
    expect(page.locator("#station")).to_have_text("line1-cell4")
    expect(page.locator("#bundle-category")).to_have_text("weld_small")
    manifest_sha = __import__("hashlib").sha256(
        (weld_bundle.bundle_dir / "manifest.json").read_bytes()
    )
    expect(page.locator("#bundle-sha")).to_have_text(manifest_sha.hexdigest())
    expect(page.locator("#bundle-threshold")).to_contain_text("best_f1")
    expect(page.locator("#plc")).to_have_text("PLC: not used yet")

    # -- parts arrive from the camera --------------------------------------------------------
    drop(terminal.watch, good[0], "VIN-1001", rename=True)
    wait_for_part(page, "VIN-1001", "PASS")
    expect(page.locator("#decision")).to_have_class("decision pass")
    expect(page.locator("#overlay")).to_be_visible()
    expect(page.locator("#models")).to_contain_text("patchcore")
    expect(page.locator("#record")).to_have_text("#1")
    expect(page.locator("#plc-delivered")).to_have_text("delivered")
    expect(page.locator("#plc")).to_have_text("PLC: delivered")
    expect(page.locator("#plc-alarm")).to_be_hidden()

    drop(terminal.watch, defective[0], "VIN-1002", rename=False)
    wait_for_part(page, "VIN-1002", "FAIL")
    expect(page.locator("#decision")).to_have_class("decision fail")
    expect(page.locator("#decision-error")).to_be_hidden()  # a real FAIL, not an error
    page.screenshot(path=str(artifacts_dir() / "terminal_fail.png"), full_page=True)

    # a file cut short (the camera died mid-write): a recorded FAIL with the reason on screen
    (terminal.watch / "VIN-1003.png").write_bytes(good[0].read_bytes()[:400])
    wait_for_part(page, "VIN-1003", "FAIL")
    expect(page.locator("#decision-error")).to_contain_text("ERROR")

    # -- an upload from the page ---------------------------------------------------------------
    page.fill("#upload-part", "VIN-1004")
    page.set_input_files("#upload-file", str(good[-1]))
    page.click("#upload button[type=submit]")
    wait_for_part(page, "VIN-1004  (uploaded)", "PASS")
    expect(page.locator("#upload-status")).to_have_text("VIN-1004: PASS")

    # -- counts, ledger, search, verify --------------------------------------------------------
    expect(page.locator("#count-total")).to_have_text("4")
    expect(page.locator("#count-pass")).to_have_text("2")
    expect(page.locator("#count-fail")).to_have_text("2")
    expect(page.locator("#count-error")).to_have_text("1")
    expect(page.locator("#yield")).to_have_text("50.0 %")
    rows = page.locator("#records tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.locator("td:nth-child(4)")).to_have_text(
        ["VIN-1004", "VIN-1003", "VIN-1002", "VIN-1001"]
    )
    expect(rows.locator("td:nth-child(5)")).to_have_text(["PASS", "FAIL", "FAIL", "PASS"])
    expect(rows.locator("td:nth-child(8)")).to_have_text(["✔ valid"] * 4)
    expect(rows.locator("td:nth-child(7)")).to_have_text(["delivered"] * 4)
    assert echo_plc.received == [0, 1, 1, 0]  # the PLC got PASS, FAIL, FAIL, PASS in order
    page.fill("#search-part", "VIN-1002")
    page.click("#search button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.locator("td:nth-child(5)")).to_have_text(["FAIL"])
    page.click("#search-clear")
    expect(rows).to_have_count(4)

    page.click("#verify")
    expect(page.locator("#verify-result")).to_have_attribute("data-state", "ok")
    expect(page.locator("#verify-result")).to_contain_text("Chain intact: 4 record(s)")
    page.screenshot(path=str(artifacts_dir() / "terminal_shift.png"), full_page=True)
    # camera files are moved out of the way once inspected; one whose inspection ended in an
    # error (the truncated VIN-1003) into failed/
    assert sorted(p.name for p in (terminal.watch / "inspected").iterdir()) == [
        "VIN-1001.png",
        "VIN-1002.png",
    ]
    assert [p.name for p in (terminal.watch / "failed").iterdir()] == ["VIN-1003.png"]

    # -- someone edits the database behind the terminal's back: FAIL -> PASS -------------------
    with sqlite3.connect(terminal.ledger_db) as db:
        db.execute("DROP TRIGGER ledger_records_no_update")
        db.execute("UPDATE ledger_records SET decision = 'PASS' WHERE part_id = 'VIN-1002'")
    page.click("#verify")
    result = page.locator("#verify-result")
    expect(result).to_have_attribute("data-state", "bad")
    expect(result).to_contain_text("CHAIN BROKEN at station line1-cell4 record 2")
    expect(result).to_contain_text("MAC does not match")
    tampered = page.locator("#records tbody tr[data-part='VIN-1002']")
    expect(tampered.locator("td:nth-child(8)")).to_have_text("✖ INVALID")
    # the forged PASS is not shown as a pass
    expect(tampered.locator("td:nth-child(5)")).to_have_text("PASS? NOT TRUSTED")
    expect(tampered.locator("td:nth-child(5)")).to_have_class("untrusted")
    page.screenshot(path=str(artifacts_dir() / "terminal_tampered.png"), full_page=True)

    # -- the PLC goes away: the part is recorded, the page says the PLC did not get it ---------
    echo_plc.stop()
    drop(terminal.watch, good[0], "VIN-1005", rename=True)
    wait_for_part(page, "VIN-1005", "PASS")
    expect(page.locator("#plc-alarm")).to_be_visible()
    expect(page.locator("#plc")).to_have_text("PLC: NOT delivered")
    expect(page.locator("#plc-delivered")).to_have_text("NOT delivered")

    # -- the server goes away: the last PASS must not stay on screen --------------------------
    stop_terminal(terminal)
    expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    expect(page.locator("#decision")).not_to_have_class("decision pass")
    expect(page.locator("#decision-word")).to_have_text("NO CONNECTION")
    expect(page.locator("#overlay")).to_be_hidden()  # its banner said PASS
    page.screenshot(path=str(artifacts_dir() / "terminal_offline.png"), full_page=True)


def test_refused_bundle_is_shown_and_fails(weld_bundle, terminal_factory, page, tmp_path):
    broken = tmp_path / "broken_bundle"
    shutil.copytree(weld_bundle.bundle_dir, broken)
    onnx = next(broken.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"tampered")
    terminal = terminal_factory(broken)
    page.goto(terminal.url)
    sign_in(page, OPERATOR_TOKEN)
    expect(page.locator("#verify")).to_be_disabled()  # an operator may not verify
    expect(page.locator("#bundle-error")).to_be_visible()
    expect(page.locator("#bundle-error")).to_contain_text("Every part FAILS: bundle refused")
    drop(terminal.watch, weld_bundle.good[0], "VIN-2001", rename=True)
    wait_for_part(page, "VIN-2001", "FAIL")
    expect(page.locator("#decision-error")).to_contain_text("bundle refused")
