"""Model bundle: the contract between export and runtime (see docs/bundle.md). No torch."""

from autoweld.bundle.manifest import (
    FORMAT_VERSION,
    Bundle,
    BundleError,
    HeadSpec,
    PreprocessSpec,
    bundle_key_from_env,
    load_bundle,
    manifest_identity,
    sha256_file,
    write_bundle,
)

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "HeadSpec",
    "PreprocessSpec",
    "bundle_key_from_env",
    "load_bundle",
    "manifest_identity",
    "sha256_file",
    "write_bundle",
]
