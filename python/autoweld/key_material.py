"""How much key material a signing key holds, and the one rule for bundle and ledger keys.

A key is used as the UTF-8 bytes of the text given (that is what is HMAC'd with; existing
ledgers and bundles keep verifying). What it must *hold* is at least :data:`MIN_KEY_BYTES` bytes
of key material, counted as the bytes the text encodes:

* hex digits only, an even number of them (``openssl rand -hex 32``): half its length;
* otherwise, standard padded base64 (``openssl rand -base64 32``: letters, digits, ``+`` and
  ``/``, a multiple of four characters with at most two ``=`` at the end): the bytes it decodes
  to, three for every four characters;
* any other text: its UTF-8 length.

So a text is never credited with more bytes than it can encode: 32 base64 characters hold 24
bytes, not 32. A key that is empty or only whitespace is refused whatever its length.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["MIN_KEY_BYTES", "key_material_bytes", "weak_key_reason"]

#: the least key material, in bytes, a bundle or ledger key must hold
MIN_KEY_BYTES = 32

_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def key_material_bytes(key: str | bytes) -> int:
    """Bytes of key material in ``key``: hex counts half, base64 what it decodes to, any other
    text its UTF-8 bytes (see the module docstring)."""
    material = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    try:
        text = material.decode("ascii")
    except UnicodeDecodeError:
        return len(material)
    if _HEX.fullmatch(text):
        return len(text) // 2
    if text and _BASE64.fullmatch(text):
        try:
            return len(base64.b64decode(text, validate=True))
        except binascii.Error:  # pragma: no cover - the pattern admits only valid base64
            return len(material)
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
            "hex digits count half, base64 what it decodes to); generate one with "
            "`openssl rand -hex 32`"
        )
    return None
