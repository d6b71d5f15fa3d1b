"""How much key material a signing key holds, and the one rule for bundle and ledger keys.

A key is used as the UTF-8 bytes of the text given (that is what is HMAC'd with; existing
ledgers and bundles keep verifying). What it must *hold* is at least :data:`MIN_KEY_BYTES` bytes
of key material: a key written as hex digits only (``openssl rand -hex 32``) holds half its
length in bytes, any other text its UTF-8 length. A key that is empty or only whitespace is
refused whatever its length.
"""

from __future__ import annotations

import string

__all__ = ["MIN_KEY_BYTES", "key_material_bytes", "weak_key_reason"]

#: the least key material, in bytes, a bundle or ledger key must hold
MIN_KEY_BYTES = 32

_HEX = frozenset(string.hexdigits)


def key_material_bytes(key: str | bytes) -> int:
    """Bytes of key material in ``key``: hex digits count half, other text its UTF-8 bytes."""
    material = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    try:
        text = material.decode("ascii")
    except UnicodeDecodeError:
        return len(material)
    if text and len(text) % 2 == 0 and set(text) <= _HEX:
        return len(text) // 2
    return len(material)


def weak_key_reason(key: str | bytes) -> str | None:
    """Why ``key`` is too weak to sign with (never quoting it), or ``None`` when it will do."""
    material = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not material.strip():
        return "is empty or only whitespace"
    held = key_material_bytes(material)
    if held < MIN_KEY_BYTES:
        return (
            f"is too short ({held} bytes of key material, at least {MIN_KEY_BYTES} needed; "
            "hex digits count half); generate one with `openssl rand -hex 32`"
        )
    return None
