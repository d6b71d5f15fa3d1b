"""Secrets are never shown (issue 15, item 6): one helper, ``redact_url``, hides the password of a
database URL, in ``user:pass@`` *and* in ``?password=`` / ``sslpassword=`` / libpq ``key=value``
form, and every CLI message, log line and ``/api/status`` field that names a database URL goes
through it. Each test plants a secret and greps every output for it."""

from __future__ import annotations

import importlib.util
import logging
import socket

import pytest

from autoweld.quality.keys import load_keyring
from autoweld.quality.ledger import redact_url

PLANTED = "PlantedSecret42"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connecting is refused at once


def _pg_url() -> str:
    return (
        f"postgresql://station:{PLANTED}u@127.0.0.1:{_closed_port()}/ledger"
        f"?password={PLANTED}q&sslpassword={PLANTED}s&connect_timeout=2&sslmode=disable"
    )


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u@h/db?password={PLANTED}",
        f"postgresql://u@h/db?sslmode=require&PASSWORD={PLANTED}&application_name=x",
        f"postgresql://h/db?sslpassword={PLANTED}&passfile=/etc/{PLANTED}",
        f"host=h password={PLANTED} dbname=x",
        f"host=h password='{PLANTED} with spaces' dbname=x",
        f"ledger url 'postgres://a:{PLANTED}@h/d?password={PLANTED}': unknown",
    ],
)
def test_redact_url_hides_every_form_of_password(url):
    shown = redact_url(url)
    assert PLANTED not in shown and "***" in shown


def test_redact_url_keeps_what_is_not_secret():
    assert redact_url("sqlite:///ledger.db") == "sqlite:///ledger.db"
    shown = redact_url("postgresql://station@db.example:5432/ledger?sslmode=require&password=x")
    assert shown == "postgresql://station@db.example:5432/ledger?sslmode=require&password=***"


def test_cli_errors_and_logs_do_not_show_a_database_password(capsys, caplog, monkeypatch, tmp_path):
    """autoweld-inspect and autoweld-ledger against an unreachable PostgreSQL URL whose
    password is in the query string: stderr, stdout and logs name the URL, redacted."""
    pytest.importorskip("psycopg")
    from autoweld.cli import inspect as inspect_cli
    from autoweld.cli import ledger as ledger_cli

    monkeypatch.setenv("AUTOWELD_SECRET_KEY", "redaction-test-key-0123456789abcdef")
    caplog.set_level(logging.DEBUG)
    image = tmp_path / "p.png"
    image.write_bytes(b"")
    url = _pg_url()
    argv = ["--bundle", str(tmp_path), "--image", str(image), "--part-id", "P1", "--ledger", url]
    assert inspect_cli.main(argv) == 2
    assert ledger_cli.main(["verify", "--ledger", url]) == 2
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):
        from autoweld.cli import terminal as terminal_cli

        assert terminal_cli.main(["--bundle", str(tmp_path), "--ledger", url]) == 2
    out = capsys.readouterr()
    assert "127.0.0.1" in out.err  # the URL is named...
    for text in (out.out, out.err, caplog.text):
        assert PLANTED not in text  # ... without its secrets


@pytest.mark.parametrize(
    "entry",
    [
        f"k0{PLANTED}",  # no ':' at all: the whole entry may be the secret
        f"k0:old-key-0123456789abcdef0123456789,{PLANTED}",
        f"k 0{PLANTED}:old-key-0123456789abcdef0123456789",  # a bad key id
    ],
)
def test_a_malformed_verify_keys_entry_is_not_echoed(entry):
    env = {
        "AUTOWELD_SECRET_KEY": "current-key-0123456789abcdef012345",
        "AUTOWELD_VERIFY_KEYS": entry,
    }
    with pytest.raises(ValueError) as error:
        load_keyring(env)
    assert "AUTOWELD_VERIFY_KEYS" in str(error.value)
    assert PLANTED not in str(error.value)


def test_a_malformed_verify_keys_file_line_is_not_echoed(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# old keys\nk0:old-key-0123456789abcdef0123456789\n{PLANTED}\n")
    env = {"AUTOWELD_SECRET_KEY": "current-key-0123456789abcdef012345"}
    with pytest.raises(ValueError, match="line 3") as error:
        load_keyring({**env, "AUTOWELD_VERIFY_KEYS_FILE": str(path)})
    assert PLANTED not in str(error.value)
