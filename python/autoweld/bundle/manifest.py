"""Write and load model bundles (format described in docs/bundle.md). No torch here."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoweld.bundle.schema import (
    FORMAT_VERSION,
    BundleError,
    FileEntry,
    HeadSpec,
    Manifest,
    PreprocessSpec,
)
from autoweld.key_material import weak_key_reason
from autoweld.safe_files import MANIFEST_MAX_BYTES, FileRefused, open_regular, read_regular

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig.json"
BUNDLE_KEY_ENV = "AUTOWELD_BUNDLE_KEY"
BUNDLE_KEY_ID_ENV = "AUTOWELD_BUNDLE_KEY_ID"
#: "1" (or true/yes/on): refuse any bundle without a valid signature, key or no key
REQUIRE_SIGNED_ENV = "AUTOWELD_REQUIRE_SIGNED"
DEFAULT_BUNDLE_KEY_ID = "bundle-k1"
_CHUNK = 1 << 20


class SignatureError(BundleError):
    """A bundle refused for its signature: missing while one is required, unreadable, made with
    another key, or not matching ``manifest.json``."""


@dataclass(frozen=True)
class Bundle:
    """A loaded, checked bundle. ``manifest`` is the typed :class:`Manifest`; ``sha256`` is the
    hash of manifest.json: the bundle's identity."""

    root: Path
    manifest: Manifest
    sha256: str
    signed_by: str | None

    @property
    def signed(self) -> bool:
        """Whether the manifest's signature was checked against a bundle key (``signed_by``)."""
        return self.signed_by is not None

    # Shorthands for what every reader needs; the rest is on ``manifest``.
    @property
    def category(self) -> str:
        return self.manifest.category

    @property
    def format_version(self) -> int:
        return self.manifest.format_version

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.manifest.preprocess

    @property
    def heads(self) -> Mapping[str, HeadSpec]:
        return self.manifest.heads

    @property
    def fusion_weights(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.manifest.fusion.weights.items()}

    @property
    def threshold(self) -> float:
        return float(self.manifest.fusion.threshold)

    @property
    def map_sigma(self) -> float:
        return float(self.manifest.scoring.map_sigma)

    @property
    def onnx_path(self) -> Path:
        return self.path(self.manifest.engine.onnx)

    def path(self, name: str) -> Path:
        """Path of a file the manifest lists (names outside the bundle are refused)."""
        if name not in self.manifest.files:
            raise BundleError(f"{self.root}: {name!r} is not a file of this bundle")
        return self.root / name

    def read_verified(self, name: str) -> bytes:
        """The bytes of a bundle file, checked against the manifest's size and sha256 *as read*.

        Use these bytes rather than re-opening the path: a file replaced after
        :func:`load_bundle` checked it (a concurrent re-export) is refused here instead of being
        used unchecked. Not cached: each call reads the file again (the bank can be ~100 MB).
        """
        path = self.path(name)
        entry = self.manifest.files[name]
        try:
            data = read_regular(path, entry.bytes)
        except FileRefused as error:
            raise BundleError(f"{error} (changed since the bundle was loaded?)") from None
        if len(data) != entry.bytes:
            raise BundleError(
                f"{path}: size {len(data)} bytes, manifest says {entry.bytes} "
                "(changed since the bundle was loaded)"
            )
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise BundleError(
                f"{path}: sha256 does not match the manifest (changed since the bundle was loaded)"
            )
        return data

    def load_array(self, name: str, *, mmap: bool = False) -> np.ndarray:
        """Load a ``.npy`` file of the bundle (never with pickle) from bytes checked by
        :meth:`read_verified`. ``mmap=True`` maps the file instead, which cannot be re-checked:
        use it only for tools that read large banks and trust the directory."""
        if mmap:
            return np.load(self.path(name), allow_pickle=False, mmap_mode="r")
        return np.load(io.BytesIO(self.read_verified(name)), allow_pickle=False)


def sha256_file(path: Path, limit: int | None = None) -> str:
    """sha256 of a regular file, read in chunks; with ``limit``, a file larger than ``limit``
    bytes is refused (:class:`BundleError`) before or while it is read. FIFOs, devices and
    directories are refused at once (:mod:`autoweld.safe_files`)."""
    return _sha256_and_size(path, limit)[0]


def _sha256_and_size(
    path: Path, limit: int | None, expect_size: int | None = None
) -> tuple[str, int]:
    """(sha256, bytes read) of a regular file of at most ``limit`` bytes (no limit: None),
    opened once. With ``expect_size``, a file of another size (as opened) is refused first."""
    cap = (1 << 62) if limit is None else limit
    digest = hashlib.sha256()
    read = 0
    try:
        with open_regular(path, 1 << 62) as (handle, size):
            if expect_size is not None and size != expect_size:
                raise BundleError(
                    f"{path}: size {size} bytes, manifest says {expect_size} "
                    "(truncated or replaced)"
                )
            if size > cap:
                raise BundleError(f"{path}: {size} bytes exceeds the limit of {cap} bytes")
            while chunk := handle.read(min(_CHUNK, cap + 1 - read)):
                digest.update(chunk)
                read += len(chunk)
                if read > cap:
                    raise BundleError(f"{path}: grew past {cap} bytes while being read")
    except FileRefused as error:
        raise BundleError(str(error)) from None
    except OSError as error:
        raise BundleError(f"{path}: cannot be read ({error.strerror or error})") from None
    return digest.hexdigest(), read


def manifest_identity(bundle_dir: str | Path) -> str:
    """sha256 of ``manifest.json`` even for a bundle that is refused, so a record can name it.

    Without a readable manifest it is the sha256 of no bytes (e3b0c442...), which names no
    bundle; the record's error then says why.
    """
    try:
        data = read_regular(Path(bundle_dir) / MANIFEST_NAME, MANIFEST_MAX_BYTES)
    except (FileRefused, OSError):
        data = b""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The one serialisation of the manifest: sorted keys, two-space indent, UTF-8, newline.

    NaN and infinities are refused (``ValueError``): they are not JSON, and a NaN threshold
    would pass every part."""
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def bundle_key_from_env() -> tuple[str, bytes] | None:
    """(key id, key) from AUTOWELD_BUNDLE_KEY / AUTOWELD_BUNDLE_KEY_ID, or None when unset.

    A key that is set but weak (under 32 bytes of key material, or whitespace) raises
    :class:`BundleError`: it is never used, and never silently ignored."""
    key = os.environ.get(BUNDLE_KEY_ENV, "")
    if not key:
        return None
    _check_bundle_key(key.encode("utf-8"), BUNDLE_KEY_ENV)
    return os.environ.get(BUNDLE_KEY_ID_ENV) or DEFAULT_BUNDLE_KEY_ID, key.encode("utf-8")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def require_signed_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``AUTOWELD_REQUIRE_SIGNED`` asks for signed bundles only (1/true/yes/on; unset,
    0/false/no/off: no). Any other value raises :class:`BundleError`: a typo in a safety
    setting must not silently turn it off."""
    value = (os.environ if environ is None else environ).get(REQUIRE_SIGNED_ENV, "")
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise BundleError(f"{REQUIRE_SIGNED_ENV}={value!r}: expected 1/true/yes/on or 0/false/no/off")


def _check_bundle_key(key: bytes, source: str) -> None:
    reason = weak_key_reason(key)
    if reason is not None:
        raise BundleError(f"bundle key from {source} {reason}")


def _sign(manifest_bytes: bytes, key: bytes) -> str:
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def write_bundle(
    out_dir: str | Path,
    manifest: Manifest | Mapping[str, Any],
    files: Mapping[str, Path | bytes | np.ndarray],
    *,
    sign_with: tuple[str, bytes] | None = None,
    overwrite: bool = True,
) -> Bundle:
    """Write a bundle atomically: into a temporary sibling directory, then renamed into place.

    ``manifest`` is a :class:`Manifest` (what export builds) or its JSON object (checked here
    through :meth:`Manifest.from_json`; ``format_version`` is set when missing). Its file table
    is filled in here from ``files``, which maps a file name (no directories) to a path to copy,
    raw bytes, or a numpy array (saved as ``.npy``). ``sign_with=(key_id, key)`` also writes
    ``manifest.sig.json``.
    """
    out_dir = Path(out_dir)
    where = str(out_dir / MANIFEST_NAME)
    for name in files:
        if not name or Path(name).name != name or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise BundleError(f"bad bundle file name {name!r}: a plain file name is required")
    # checked before anything is written: a Manifest built in code goes through the same
    # checks as one read from disk
    json_form = manifest.to_json() if isinstance(manifest, Manifest) else manifest
    manifest = Manifest.from_json(
        {"format_version": FORMAT_VERSION, **json_form, "files": {}}, where
    )
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} exists (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        listed: dict[str, FileEntry] = {}
        for name, content in files.items():
            target = staging / name
            if isinstance(content, np.ndarray):
                if content.dtype == object:
                    raise BundleError(f"{name}: object arrays cannot be stored in a bundle")
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(content), allow_pickle=False)
                target.write_bytes(buffer.getvalue())
            elif isinstance(content, (bytes, bytearray)):
                target.write_bytes(bytes(content))
            else:
                shutil.copyfile(content, target)
            listed[name] = FileEntry(sha256=sha256_file(target), bytes=target.stat().st_size)
        try:
            manifest_bytes = canonical_json(manifest.with_files(listed).to_json())
        except ValueError as error:  # NaN/Infinity somewhere the checks do not look
            raise BundleError(f"{where}: not serialisable ({error})") from None
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        if sign_with is not None:
            key_id, key = sign_with
            _check_bundle_key(key, "sign_with")
            signature = {
                "algorithm": "HMAC-SHA256",
                "key_id": key_id,
                "mac": _sign(manifest_bytes, key),
            }
            (staging / SIGNATURE_NAME).write_bytes(canonical_json(signature))
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(out_dir, key=sign_with, require_signed=False)


def load_bundle(
    path: str | Path,
    *,
    verify_files: bool = True,
    key: tuple[str, bytes] | None | bool = True,
    require_signed: bool | None = None,
) -> Bundle:
    """Load a bundle and check it; raises :class:`BundleError` naming the file and the reason.

    ``key=True`` (default) takes the signing key from the environment: when
    ``AUTOWELD_BUNDLE_KEY`` is set, an unsigned bundle or a bad signature is refused. Pass
    ``key=(key_id, key)`` to check against a given key, or ``key=None`` to skip signatures.
    ``require_signed=True`` also refuses a bundle whose signature cannot be checked because no
    key is given (:class:`SignatureError`); ``None`` (default) reads ``AUTOWELD_REQUIRE_SIGNED``.
    A bundle loaded without a checked signature has ``signed_by=None``.
    """
    if require_signed is None:
        require_signed = require_signed_from_env()
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no bundle directory here")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.exists() and not manifest_path.is_symlink():
        raise BundleError(f"{manifest_path}: missing — not a bundle, or a half-written one")
    try:
        manifest_bytes = read_regular(manifest_path, MANIFEST_MAX_BYTES)
    except FileRefused as error:
        raise BundleError(str(error)) from None
    try:
        parsed = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error})") from None
    manifest = Manifest.from_json(parsed, str(manifest_path))

    signed_by = _check_signature(
        root, manifest_bytes, bundle_key_from_env() if key is True else key
    )
    if signed_by is None and require_signed:
        raise SignatureError(
            f"{root}: refused, signed bundles are required (--require-signed or "
            f"{REQUIRE_SIGNED_ENV}=1) but no bundle key is configured to check its signature: "
            f"set {BUNDLE_KEY_ENV} (and {BUNDLE_KEY_ID_ENV}) to the key it was exported with"
        )

    if verify_files:
        for name, entry in manifest.files.items():
            file_path = root / name
            if not file_path.exists() and not file_path.is_symlink():
                raise BundleError(f"{file_path}: listed in the manifest but missing")
            digest = _check_size_and_hash(file_path, entry)
            if digest != entry.sha256:
                raise BundleError(
                    f"{file_path}: sha256 does not match the manifest (file was modified)"
                )
    return Bundle(
        root=root,
        manifest=manifest,
        sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signed_by=signed_by,
    )


def _check_size_and_hash(path: Path, entry: FileEntry) -> str:
    """sha256 of a listed file, refused unless it is a regular file of exactly its listed size;
    at most that many bytes (plus one) are read, from the one descriptor that was checked."""
    digest, read = _sha256_and_size(path, entry.bytes, expect_size=entry.bytes)
    if read != entry.bytes:
        raise BundleError(
            f"{path}: {read} bytes read, manifest says {entry.bytes} (changed while being checked)"
        )
    return digest


def _check_signature(
    root: Path, manifest_bytes: bytes, key: tuple[str, bytes] | None | bool
) -> str | None:
    signature_path = root / SIGNATURE_NAME
    if not key:
        return None
    key_id, secret = key  # type: ignore[misc]
    _check_bundle_key(secret, "key")
    if not signature_path.exists() and not signature_path.is_symlink():
        raise SignatureError(
            f"{signature_path}: missing — a bundle key is configured, so only signed bundles are accepted"
        )
    try:
        raw = read_regular(signature_path, MANIFEST_MAX_BYTES)
    except FileRefused as error:
        raise SignatureError(str(error)) from None
    try:
        signature = json.loads(raw)
        mac = str(signature["mac"])
        signed_key_id = str(signature.get("key_id", ""))
    except (ValueError, KeyError, TypeError) as error:
        raise SignatureError(f"{signature_path}: unreadable signature ({error})") from None
    if signed_key_id != key_id:
        raise SignatureError(
            f"{signature_path}: signed with key {signed_key_id!r}, station has key {key_id!r}"
        )
    if not hmac.compare_digest(mac, _sign(manifest_bytes, secret)):
        raise SignatureError(
            f"{signature_path}: signature does not match manifest.json (bundle was modified)"
        )
    return key_id
