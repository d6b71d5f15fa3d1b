"""Model bundle: the contract between export and runtime (see docs/bundle.md). No torch.

:class:`Manifest` (``schema.py``) is the typed ``manifest.json``; :func:`load_bundle` checks a
bundle directory and gives a :class:`Bundle`; :func:`write_bundle` writes one atomically.
"""

from autoweld.bundle.manifest import (
    REQUIRE_SIGNED_ENV,
    Bundle,
    SignatureError,
    bundle_key_from_env,
    canonical_json,
    load_bundle,
    manifest_identity,
    require_signed_from_env,
    sha256_file,
    write_bundle,
)
from autoweld.bundle.schema import (
    FORMAT_VERSION,
    HEAD_KINDS,
    BackboneSpec,
    BundleError,
    Calibration,
    EngineSpec,
    FileEntry,
    FusionSpec,
    HeadSpec,
    KnnHeadSpec,
    Manifest,
    MapHeadSpec,
    PreprocessSpec,
    Provenance,
    ScoringSpec,
    TensorRTSpec,
    head_from_json,
)

__all__ = [
    "FORMAT_VERSION",
    "REQUIRE_SIGNED_ENV",
    "HEAD_KINDS",
    "BackboneSpec",
    "Bundle",
    "BundleError",
    "Calibration",
    "EngineSpec",
    "FileEntry",
    "FusionSpec",
    "HeadSpec",
    "KnnHeadSpec",
    "Manifest",
    "MapHeadSpec",
    "PreprocessSpec",
    "Provenance",
    "SignatureError",
    "ScoringSpec",
    "TensorRTSpec",
    "bundle_key_from_env",
    "canonical_json",
    "load_bundle",
    "manifest_identity",
    "require_signed_from_env",
    "sha256_file",
    "head_from_json",
    "write_bundle",
]
