import pytest

from autoweld.quality.keys import KeyRing, MissingKeyError, load_keyring

SECRET = "s" * 44  # base64 text: 44 characters decode to 33 bytes


@pytest.mark.parametrize("env", [{}, {"AUTOWELD_SECRET_KEY": ""}])
def test_no_key_is_refused_clearly(env):
    with pytest.raises(MissingKeyError, match="AUTOWELD_SECRET_KEY"):
        load_keyring(env)


def test_default_key_id_and_key_bytes():
    ring = load_keyring({"AUTOWELD_SECRET_KEY": SECRET})
    assert ring.signing_key_id == "k1"
    assert ring.signing_key == SECRET.encode()
    assert SECRET not in repr(ring)


def test_short_key_is_refused():
    with pytest.raises(ValueError, match="too short"):
        load_keyring({"AUTOWELD_SECRET_KEY": "short"})


def test_verify_keys_from_env_and_file(tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# retired keys\nk-2024:" + "a" * 64 + "\n\nk-2025:" + "b" * 64 + "\n")
    ring = load_keyring(
        {
            "AUTOWELD_SECRET_KEY": SECRET,
            "AUTOWELD_KEY_ID": "k-2026",
            "AUTOWELD_VERIFY_KEYS": "k0:" + "c" * 64 + ", k-2025:" + "d" * 64,
            "AUTOWELD_VERIFY_KEYS_FILE": str(key_file),
        }
    )
    assert ring.signing_key_id == "k-2026"
    assert ring.key_for("k-2024") == b"a" * 64
    assert ring.key_for("k-2025") == b"d" * 64  # the environment wins over the file
    assert ring.key_for("k0") == b"c" * 64
    assert ring.key_for("nope") is None


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AUTOWELD_VERIFY_KEYS": "k0"}, "key_id:secret"),
        ({"AUTOWELD_VERIFY_KEYS": "k0:short"}, "too short"),
        ({"AUTOWELD_KEY_ID": "bad id"}, "key_id"),
        ({"AUTOWELD_VERIFY_KEYS_FILE": "/nonexistent/keys"}, "AUTOWELD_VERIFY_KEYS_FILE"),
        ({"AUTOWELD_VERIFY_KEYS": "k1:" + "z" * 64}, "same key"),
    ],
)
def test_malformed_key_configuration(env, needle):
    with pytest.raises(ValueError, match=needle):
        load_keyring({"AUTOWELD_SECRET_KEY": SECRET, **env})


def test_keyring_in_code_checks_its_keys():
    with pytest.raises(ValueError, match="too short"):
        KeyRing.from_secret("x")
    with pytest.raises(ValueError, match="signing_key_id"):
        KeyRing(signing_key_id="k2", keys={"k1": b"x" * 64})


@pytest.mark.parametrize(
    ("secret", "needle"),
    [
        (" " * 16, "whitespace"),  # issue 15: 16 spaces were accepted as a ledger key
        (" \t" * 40, "whitespace"),  # long, but only whitespace
        ("x" * 31, "31 bytes of key material"),
        ("0123456789abcdef" * 2, "16 bytes of key material"),  # hex digits count half
    ],
)
def test_weak_ledger_keys_are_refused(secret, needle):
    with pytest.raises(ValueError, match=needle) as error:
        load_keyring({"AUTOWELD_SECRET_KEY": secret})
    assert "at least 32" in str(error.value) or "whitespace" in str(error.value)
    with pytest.raises(ValueError, match=needle):
        KeyRing.from_secret(secret)
    with pytest.raises(ValueError):  # a retired key is held to the same rule
        load_keyring({"AUTOWELD_SECRET_KEY": SECRET, "AUTOWELD_VERIFY_KEYS": "k0:" + secret})
    # the boundary: `openssl rand -hex 32` (64 hex digits, 32 bytes) and 32 plain bytes will do
    hex_key = "0123456789abcdef" * 4
    assert load_keyring({"AUTOWELD_SECRET_KEY": hex_key}).signing_key == hex_key.encode()
    assert KeyRing.from_secret("x-" * 16).signing_key == b"x-" * 16  # 32 bytes of plain text


def _base64_key(n_bytes: int) -> str:
    import base64

    return base64.b64encode(bytes(range(7, 7 + n_bytes))).decode()


@pytest.mark.parametrize(
    ("secret", "held"),
    [
        (_base64_key(24), 24),  # `openssl rand -base64 24`: 32 characters, 24 bytes
        (_base64_key(31), 31),  # 44 characters with one '=' of padding
        ("x" * 32, 24),  # 32 characters of the base64 alphabet encode 24 bytes, not 32
        ("s" * 40, 30),
    ],
)
def test_base64_keys_are_counted_decoded(monkeypatch, secret, held):
    """issue 15: base64 key material was counted by its text length (32 characters = "32
    bytes") although it encodes three bytes in four characters."""
    from autoweld.bundle import BundleError, bundle_key_from_env

    needle = f"{held} bytes of key material"
    with pytest.raises(ValueError, match=needle):
        load_keyring({"AUTOWELD_SECRET_KEY": secret})
    with pytest.raises(ValueError, match=needle):
        load_keyring({"AUTOWELD_SECRET_KEY": SECRET, "AUTOWELD_VERIFY_KEYS": "k0:" + secret})
    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY", secret)
    with pytest.raises(BundleError, match=rf"AUTOWELD_BUNDLE_KEY .*{needle}"):
        bundle_key_from_env()


def test_base64_and_hex_keys_of_32_bytes_are_accepted(tmp_path, monkeypatch):
    for secret in (_base64_key(32), "0123456789abcdef" * 4, "x-" * 16, "s" * 44):
        ring = load_keyring({"AUTOWELD_SECRET_KEY": secret})
        assert ring.signing_key == secret.encode()  # HMAC'd with the text as given
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"k0:{_base64_key(32)}\nk9:{_base64_key(24)}\n")
    with pytest.raises(ValueError, match="24 bytes of key material"):  # key files too
        load_keyring({"AUTOWELD_SECRET_KEY": SECRET, "AUTOWELD_VERIFY_KEYS_FILE": str(key_file)})
    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY", _base64_key(32))
    from autoweld.bundle import bundle_key_from_env

    assert bundle_key_from_env()[1] == _base64_key(32).encode()
