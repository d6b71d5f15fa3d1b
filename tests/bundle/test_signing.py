"""Unsigned bundles (issue 15 item 7): ``require_signed`` refuses a bundle without a valid
signature; an unsigned bundle that is allowed is logged loudly, once, where it is loaded for
inspection, and the inspector says so for the records; the terminal requires signatures by
default when a bundle key is configured."""

import hashlib
import hmac
import logging
import sys
from pathlib import Path

import pytest

from autoweld.bundle import (
    BundleError,
    SignatureError,
    load_bundle,
    require_signed_from_env,
    write_bundle,
)
from autoweld.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, canonical_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from tinybundle import write_tiny_bundle  # noqa: E402

KEY = ("line-3", b"line-3-bundle-key-0123456789-ghijklmnop")


@pytest.fixture(autouse=True)
def _no_bundle_settings(monkeypatch):
    for name in ("AUTOWELD_BUNDLE_KEY", "AUTOWELD_BUNDLE_KEY_ID", "AUTOWELD_REQUIRE_SIGNED"):
        monkeypatch.delenv(name, raising=False)


def _sign(bundle, key=KEY):
    mac = hmac.new(key[1], (bundle / MANIFEST_NAME).read_bytes(), hashlib.sha256).hexdigest()
    signature = {"algorithm": "HMAC-SHA256", "key_id": key[0], "mac": mac}
    (bundle / SIGNATURE_NAME).write_bytes(canonical_json(signature))


def test_require_signed_refuses_what_cannot_be_checked(tmp_path, monkeypatch):
    bundle = write_tiny_bundle(tmp_path / "b")
    assert load_bundle(bundle).signed is False  # allowed by default: no key, no requirement
    with pytest.raises(SignatureError, match="no bundle key is configured"):
        load_bundle(bundle, require_signed=True)
    _sign(bundle)
    with pytest.raises(SignatureError, match="no bundle key is configured"):  # signed, unchecked
        load_bundle(bundle, key=None, require_signed=True)
    assert load_bundle(bundle, key=KEY, require_signed=True).signed_by == "line-3"
    monkeypatch.setenv("AUTOWELD_REQUIRE_SIGNED", "yes")
    with pytest.raises(SignatureError):
        load_bundle(bundle)
    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY", KEY[1].decode())
    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY_ID", KEY[0])
    assert load_bundle(bundle).signed


def test_signature_failures_are_signature_errors(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "b")
    with pytest.raises(SignatureError, match="missing"):
        load_bundle(bundle, key=KEY)
    _sign(bundle, ("line-3", b"another-bundle-key-0123456789-ghijklmnop"))
    with pytest.raises(SignatureError, match="does not match"):
        load_bundle(bundle, key=KEY)
    with pytest.raises(BundleError) as weak:  # a weak key is a configuration error, not this
        load_bundle(bundle, key=("line-3", b"short"))
    assert not isinstance(weak.value, SignatureError)


@pytest.mark.parametrize(("value", "wanted"), [("", False), ("0", False), ("off", False),
                                                ("1", True), ("TRUE", True), ("on", True)])  # fmt: skip
def test_require_signed_setting(value, wanted):
    assert require_signed_from_env({"AUTOWELD_REQUIRE_SIGNED": value}) is wanted


def test_a_typo_in_the_setting_is_refused_not_ignored():
    with pytest.raises(BundleError, match="AUTOWELD_REQUIRE_SIGNED='ture'"):
        require_signed_from_env({"AUTOWELD_REQUIRE_SIGNED": "ture"})


def test_inspector_warns_once_and_says_unsigned(tmp_path, caplog):
    from autoweld.runtime.inspector import Inspector

    bundle = write_tiny_bundle(tmp_path / "b")
    caplog.set_level(logging.WARNING, logger="autoweld.runtime.inspector")
    with Inspector(bundle) as inspector:
        assert inspector.bundle_signed is False
        for _ in range(3):
            inspector.inspect(b"not an image")
    assert [r.levelno for r in caplog.records if "UNSIGNED BUNDLE" in r.message] == [
        logging.WARNING
    ]
    caplog.clear()
    _sign(bundle)
    with Inspector(load_bundle(bundle, key=KEY)) as inspector:
        assert inspector.bundle_signed is True
    assert "UNSIGNED" not in caplog.text
    with pytest.raises(SignatureError):  # a Bundle loaded unchecked is refused when required
        Inspector(load_bundle(bundle, key=None), require_signed=True)


def test_export_does_not_need_the_requirement(tmp_path, monkeypatch):
    """Writing a bundle is not using one: AUTOWELD_REQUIRE_SIGNED does not stop an export."""
    from tinybundle import manifest

    monkeypatch.setenv("AUTOWELD_REQUIRE_SIGNED", "1")
    written = write_bundle(tmp_path / "b", manifest(("feature_ae",)), {"model.onnx": b"x"})
    assert written.signed is False


@pytest.mark.parametrize("how", ["flag", "bundle key configured"])
def test_terminal_refuses_an_unsigned_bundle_at_start(tmp_path, monkeypatch, capsys, how):
    pytest.importorskip("uvicorn")
    from autoweld.cli.terminal import main

    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "terminal-test-secret-0123456789-ghijklmnop")
    bundle = write_tiny_bundle(tmp_path / "b")
    argv = ["--bundle", str(bundle), "--ledger", f"sqlite:///{tmp_path / 'l.db'}", "--port", "9"]
    if how == "flag":
        argv.append("--require-signed")
    else:
        monkeypatch.setenv("AUTOWELD_BUNDLE_KEY", KEY[1].decode())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "manifest.sig.json" in err or "signed bundles are required" in err
    assert KEY[1].decode() not in err
