"""Write and load model bundles (format described in docs/bundle.md). No torch here."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig.json"
BUNDLE_KEY_ENV = "AUTOWELD_BUNDLE_KEY"
BUNDLE_KEY_ID_ENV = "AUTOWELD_BUNDLE_KEY_ID"
DEFAULT_BUNDLE_KEY_ID = "bundle-k1"
HEAD_KINDS = ("knn", "map")
_REQUIRED_KEYS = ("format_version", "category", "preprocess", "engine", "models", "fusion", "files")
_CHUNK = 1 << 20
_WEIGHT_SUM_TOLERANCE = 1e-6


class BundleError(ValueError):
    """A bundle that cannot be used: the message names the file and says why."""


@dataclass(frozen=True)
class PreprocessSpec:
    """The arguments of ``autoweld.native.preprocess`` the bundle was trained with."""

    size: int
    clahe: bool
    clip_limit: float
    tile_grid: tuple[int, int]
    sigma: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "clahe": self.clahe,
            "clip_limit": self.clip_limit,
            "tile_grid": self.tile_grid,
            "sigma": self.sigma,
            "mean": self.mean,
            "std": self.std,
        }


@dataclass(frozen=True)
class HeadSpec:
    """One model head of the bundle (see docs/bundle.md, 'Heads')."""

    name: str
    kind: str
    output: str
    feature_map: tuple[int, int]
    platt_a: float
    platt_b: float
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Bundle:
    """A loaded, checked bundle. ``sha256`` is the hash of manifest.json: the bundle's identity."""

    root: Path
    manifest: Mapping[str, Any]
    sha256: str
    signed_by: str | None

    @property
    def category(self) -> str:
        return str(self.manifest["category"])

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def preprocess(self) -> PreprocessSpec:
        p = self.manifest["preprocess"]
        return PreprocessSpec(
            size=int(p["size"]),
            clahe=bool(p.get("clahe", True)),
            clip_limit=float(p.get("clip_limit", 2.0)),
            tile_grid=(int(p["tile_grid"][0]), int(p["tile_grid"][1]))
            if "tile_grid" in p
            else (8, 8),
            sigma=float(p.get("sigma", 0.0)),
            mean=tuple(float(v) for v in p["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in p["std"]),  # type: ignore[arg-type]
        )

    @property
    def heads(self) -> dict[str, HeadSpec]:
        heads = {}
        for name, spec in self.manifest["models"].items():
            heads[name] = HeadSpec(
                name=name,
                kind=spec["kind"],
                output=spec["output"],
                feature_map=(int(spec["feature_map"][0]), int(spec["feature_map"][1])),
                platt_a=float(spec["calibration"]["a"]),
                platt_b=float(spec["calibration"]["b"]),
                settings=spec,
            )
        return heads

    @property
    def fusion_weights(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.manifest["fusion"]["weights"].items()}

    @property
    def threshold(self) -> float:
        return float(self.manifest["fusion"]["threshold"])

    @property
    def map_sigma(self) -> float:
        return float(self.manifest.get("scoring", {}).get("map_sigma", 4.0))

    @property
    def onnx_path(self) -> Path:
        return self.path(self.manifest["engine"]["onnx"])

    def path(self, name: str) -> Path:
        """Path of a file the manifest lists (names outside the bundle are refused)."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.root}: {name!r} is not a file of this bundle")
        return self.root / name

    def read_verified(self, name: str) -> bytes:
        """The bytes of a bundle file, checked against the manifest's size and sha256 *as read*.

        Use these bytes rather than re-opening the path: a file replaced after
        :func:`load_bundle` checked it (a concurrent re-export) is refused here instead of being
        used unchecked. Not cached: each call reads the file again (the bank can be ~100 MB).
        """
        path = self.path(name)
        entry = self.manifest["files"][name]
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BundleError(f"{path}: cannot be read ({error.strerror or error})") from None
        if len(data) != entry.get("bytes"):
            raise BundleError(
                f"{path}: size {len(data)} bytes, manifest says {entry.get('bytes')} "
                "(changed since the bundle was loaded)"
            )
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_identity(bundle_dir: str | Path) -> str:
    """sha256 of ``manifest.json`` even for a bundle that is refused, so a record can name it.

    Without a readable manifest it is the sha256 of no bytes (e3b0c442...), which names no
    bundle; the record's error then says why.
    """
    try:
        data = (Path(bundle_dir) / MANIFEST_NAME).read_bytes()
    except OSError:
        data = b""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The one serialisation of the manifest: sorted keys, two-space indent, UTF-8, newline.

    NaN and infinities are refused (``ValueError``): they are not JSON, and a NaN threshold
    would pass every part."""
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def bundle_key_from_env() -> tuple[str, bytes] | None:
    """(key id, key) from AUTOWELD_BUNDLE_KEY / AUTOWELD_BUNDLE_KEY_ID, or None when unset."""
    key = os.environ.get(BUNDLE_KEY_ENV, "")
    if not key:
        return None
    return os.environ.get(BUNDLE_KEY_ID_ENV) or DEFAULT_BUNDLE_KEY_ID, key.encode("utf-8")


def _sign(manifest_bytes: bytes, key: bytes) -> str:
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def write_bundle(
    out_dir: str | Path,
    manifest: Mapping[str, Any],
    files: Mapping[str, Path | bytes | np.ndarray],
    *,
    sign_with: tuple[str, bytes] | None = None,
    overwrite: bool = True,
) -> Bundle:
    """Write a bundle atomically: into a temporary sibling directory, then renamed into place.

    ``files`` maps a file name (no directories) to a path to copy, raw bytes, or a numpy array
    (saved as ``.npy``). The manifest's ``files`` entry is filled in here; ``format_version`` is
    set when missing. ``sign_with=(key_id, key)`` also writes ``manifest.sig.json``.
    """
    out_dir = Path(out_dir)
    for name in files:
        if not name or Path(name).name != name or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise BundleError(f"bad bundle file name {name!r}: a plain file name is required")
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} exists (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        listed: dict[str, dict[str, Any]] = {}
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
            listed[name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
        full = dict(manifest)
        full.setdefault("format_version", FORMAT_VERSION)
        full["files"] = listed
        _check_manifest(full, staging / MANIFEST_NAME)
        try:
            manifest_bytes = canonical_json(full)
        except ValueError as error:  # NaN/Infinity somewhere the checks above do not look
            raise BundleError(f"{out_dir / MANIFEST_NAME}: not serialisable ({error})") from None
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        if sign_with is not None:
            key_id, key = sign_with
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
    return load_bundle(out_dir, key=sign_with)


def _check_manifest(manifest: Mapping[str, Any], where: Path) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{where}: manifest lacks required field(s) {', '.join(missing)}")
    version = manifest["format_version"]
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{where}: format_version {version!r} is not supported by this autoweld "
            f"(supported: {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); "
            "re-export the bundle or upgrade autoweld"
        )
    models = manifest["models"]
    if not isinstance(models, Mapping) or not models:
        raise BundleError(f"{where}: manifest lists no models")
    for name, spec in models.items():
        for key in ("kind", "output", "feature_map", "calibration"):
            if key not in spec:
                raise BundleError(f"{where}: model {name!r} lacks {key!r}")
        if spec["kind"] not in HEAD_KINDS:
            raise BundleError(f"{where}: model {name!r} has unknown kind {spec['kind']!r}")
        _check_feature_map(spec["feature_map"], f"{where}: model {name!r} feature_map")
        calibration = spec["calibration"]
        if not isinstance(calibration, Mapping):
            raise BundleError(f"{where}: model {name!r} calibration must be an object")
        for key in ("a", "b"):
            _finite_number(calibration.get(key), f"{where}: model {name!r} calibration.{key}")
    fusion = manifest["fusion"]
    if not isinstance(fusion, Mapping):
        raise BundleError(f"{where}: fusion must be an object")
    weights = fusion.get("weights", {})
    if not isinstance(weights, Mapping) or not weights:
        raise BundleError(f"{where}: fusion weights must be a non-empty object")
    if set(weights) - set(models):
        raise BundleError(
            f"{where}: fusion weights name unknown models {sorted(set(weights) - set(models))}"
        )
    total = 0.0
    for name, weight in weights.items():
        value = _finite_number(weight, f"{where}: fusion weight {name!r}")
        if value < 0.0:
            raise BundleError(f"{where}: fusion weight {name!r} is negative ({value!r})")
        total += value
    if abs(total - 1.0) > _WEIGHT_SUM_TOLERANCE:
        raise BundleError(f"{where}: fusion weights sum to {total!r}, not 1")
    if "threshold" not in fusion:
        raise BundleError(f"{where}: fusion lacks 'threshold'")
    threshold = _finite_number(fusion["threshold"], f"{where}: fusion threshold")
    if not 0.0 < threshold <= 1.0:
        # fused probabilities lie in [0, 1]: a threshold above 1 would pass every part
        raise BundleError(f"{where}: fusion threshold {threshold!r} is outside (0, 1]")


def _finite_number(value: Any, what: str) -> float:
    """``value`` as a float if it is a finite JSON number (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise BundleError(f"{what} must be finite, got {value!r}")
    return number


def _check_feature_map(value: Any, what: str) -> None:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise BundleError(f"{what} must be two positive integers, got {value!r}")


def load_bundle(
    path: str | Path,
    *,
    verify_files: bool = True,
    key: tuple[str, bytes] | None | bool = True,
) -> Bundle:
    """Load a bundle and check it; raises :class:`BundleError` naming the file and the reason.

    ``key=True`` (default) takes the signing key from the environment: when
    ``AUTOWELD_BUNDLE_KEY`` is set, an unsigned bundle or a bad signature is refused. Pass
    ``key=(key_id, key)`` to check against a given key, or ``key=None`` to skip signatures.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no bundle directory here")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing — not a bundle, or a half-written one")
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: not a JSON object")
    _check_manifest(manifest, manifest_path)

    signed_by = _check_signature(
        root, manifest_bytes, bundle_key_from_env() if key is True else key
    )

    if verify_files:
        for name, entry in manifest["files"].items():
            file_path = root / name
            if Path(name).name != name:
                raise BundleError(f"{manifest_path}: file name {name!r} leaves the bundle")
            if not file_path.is_file():
                raise BundleError(f"{file_path}: listed in the manifest but missing")
            size = file_path.stat().st_size
            if size != entry.get("bytes"):
                raise BundleError(
                    f"{file_path}: size {size} bytes, manifest says {entry.get('bytes')} "
                    "(truncated or replaced)"
                )
            if sha256_file(file_path) != entry.get("sha256"):
                raise BundleError(
                    f"{file_path}: sha256 does not match the manifest (file was modified)"
                )
    return Bundle(
        root=root,
        manifest=manifest,
        sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signed_by=signed_by,
    )


def _check_signature(
    root: Path, manifest_bytes: bytes, key: tuple[str, bytes] | None | bool
) -> str | None:
    signature_path = root / SIGNATURE_NAME
    if not key:
        return None
    key_id, secret = key  # type: ignore[misc]
    if not signature_path.is_file():
        raise BundleError(
            f"{signature_path}: missing — a bundle key is configured, so only signed bundles are accepted"
        )
    try:
        signature = json.loads(signature_path.read_bytes())
        mac = str(signature["mac"])
        signed_key_id = str(signature.get("key_id", ""))
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{signature_path}: unreadable signature ({error})") from None
    if signed_key_id != key_id:
        raise BundleError(
            f"{signature_path}: signed with key {signed_key_id!r}, station has key {key_id!r}"
        )
    if not hmac.compare_digest(mac, _sign(manifest_bytes, secret)):
        raise BundleError(
            f"{signature_path}: signature does not match manifest.json (bundle was modified)"
        )
    return key_id
