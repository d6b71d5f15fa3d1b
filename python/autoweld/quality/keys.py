"""Signing keys for the quality ledger: where they come from, and key rotation.

The current signing key is ``AUTOWELD_SECRET_KEY`` (its id ``AUTOWELD_KEY_ID``, default ``k1``).
There is no default key: a ledger without one is refused. Older keys stay available for
verification through ``AUTOWELD_VERIFY_KEYS="k0:secret,..."`` and/or a key file named by
``AUTOWELD_VERIFY_KEYS_FILE`` (one ``key_id:secret`` per line, ``#`` starts a comment).

A key is the exact text given, taken as UTF-8 bytes (recommended: ``openssl rand -hex 32`` or
``openssl rand -base64 32``); it must hold at least 32 bytes of key material — hex counted half,
base64 as the bytes it decodes to — and not be whitespace (:mod:`autoweld.key_material`). The
same rule holds for the signing key, the verification keys and every line of the key file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autoweld.key_material import MIN_KEY_BYTES as MIN_KEY_BYTES
from autoweld.key_material import weak_key_reason

ENV_SECRET_KEY = "AUTOWELD_SECRET_KEY"
ENV_KEY_ID = "AUTOWELD_KEY_ID"
ENV_VERIFY_KEYS = "AUTOWELD_VERIFY_KEYS"
ENV_VERIFY_KEYS_FILE = "AUTOWELD_VERIFY_KEYS_FILE"
DEFAULT_KEY_ID = "k1"


class MissingKeyError(ValueError):
    """No signing key is configured; the ledger refuses to run without one."""


def _check_key_id(key_id: str, source: str) -> str:
    if not isinstance(key_id, str) or not key_id or any(c in key_id for c in ":, \t\r\n"):
        raise ValueError(
            f"key_id from {source} must be a non-empty string without ':', ',' or spaces, "
            f"got {key_id!r}"
        )
    return key_id


def _check_secret(secret: str | bytes, key_id: str, source: str) -> bytes:
    material = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    reason = weak_key_reason(material)
    if reason is not None:
        raise ValueError(f"key {key_id!r} from {source} {reason}")
    return material


@dataclass(frozen=True)
class KeyRing:
    """The signing key (``signing_key_id``) plus every key known for verification, by id."""

    signing_key_id: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        _check_key_id(self.signing_key_id, "signing_key_id")
        if self.signing_key_id not in self.keys:
            raise ValueError(f"signing_key_id {self.signing_key_id!r} has no key in keys")
        for key_id, secret in self.keys.items():
            _check_key_id(key_id, "keys")
            _check_secret(secret, key_id, "keys")

    @property
    def signing_key(self) -> bytes:
        """The key new records are signed with."""
        return self.keys[self.signing_key_id]

    def key_for(self, key_id: str) -> bytes | None:
        """The key with this id, or ``None`` when it is not known."""
        return self.keys.get(key_id)

    @classmethod
    def from_secret(
        cls,
        secret: str | bytes,
        key_id: str = DEFAULT_KEY_ID,
        verify_keys: Mapping[str, str | bytes] | None = None,
    ) -> KeyRing:
        """Build a key ring in code (tests, embedding) instead of from the environment."""
        _check_key_id(key_id, "key_id")
        keys = {key_id: _check_secret(secret, key_id, "secret")}
        for old_id, old_secret in (verify_keys or {}).items():
            _check_key_id(old_id, "verify_keys")
            if old_id == key_id:
                continue
            keys[old_id] = _check_secret(old_secret, old_id, "verify_keys")
        return cls(signing_key_id=key_id, keys=keys)


def _parse_pairs(text: str, source: str, separator: str) -> dict[str, str]:
    """``key_id:secret`` entries. A malformed entry is named by its position only: its text may
    be (or hold) a secret, so no part of it is echoed in the error."""
    pairs: dict[str, str] = {}
    what = "line" if separator == "\n" else "entry"
    for number, raw in enumerate(text.split(separator), start=1):
        entry = raw.split("#", 1)[0].strip() if separator == "\n" else raw.strip()
        if not entry:
            continue
        key_id, sep, secret = entry.partition(":")
        if not sep or not secret:
            raise ValueError(
                f"{source}: {what} {number} is not of the form key_id:secret "
                "(its text is not shown: it may hold a secret)"
            )
        try:
            pairs[_check_key_id(key_id.strip(), source)] = secret.strip()
        except ValueError:
            raise ValueError(
                f"{source}: {what} {number}: the key id must be non-empty, without ',' or "
                "spaces (its text is not shown: it may hold a secret)"
            ) from None
    return pairs


def load_keyring(environ: Mapping[str, str] | None = None) -> KeyRing:
    """Read the key ring from the environment (see the module docstring).

    Raises:
        MissingKeyError: ``AUTOWELD_SECRET_KEY`` is unset or empty.
        ValueError: a key is too short, or a key id / verify-key entry is malformed.
    """
    env = os.environ if environ is None else environ
    secret = env.get(ENV_SECRET_KEY, "")
    if not secret:
        raise MissingKeyError(
            f"no ledger signing key: set {ENV_SECRET_KEY} (e.g. `export {ENV_SECRET_KEY}="
            f"$(openssl rand -hex 32)`) and optionally {ENV_KEY_ID}; AutoWeld has no default key"
        )
    key_id = env.get(ENV_KEY_ID, "") or DEFAULT_KEY_ID
    verify: dict[str, str] = {}
    key_file = env.get(ENV_VERIFY_KEYS_FILE, "")
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise ValueError(f"{ENV_VERIFY_KEYS_FILE}={key_file!r} is not a readable file")
        verify.update(_parse_pairs(path.read_text(encoding="utf-8"), ENV_VERIFY_KEYS_FILE, "\n"))
    verify.update(_parse_pairs(env.get(ENV_VERIFY_KEYS, ""), ENV_VERIFY_KEYS, ","))
    if key_id in verify and verify[key_id] != secret:
        raise ValueError(
            f"key id {key_id!r} is given twice with different secrets ({ENV_SECRET_KEY} and "
            "the verification keys); a key id must always name the same key"
        )
    return KeyRing.from_secret(secret, _check_key_id(key_id, ENV_KEY_ID), verify)
