"""The names and shapes an AutoWeld Triton model exposes: what the repository writer declares,
the Python-backend model produces and the client reads (docs/serving.md, "The model's tensors").

Every AutoWeld model a client talks to (the pure-Python-backend model, or the ensemble) takes
preprocessed images and gives, per image, the fused probability, each head's raw score and
probability, the fused anomaly map and (when asked for) each head's map at S x S, why the
image failed (empty when it did not) and the sha256 of the bundle that scored it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from autoweld.bundle import Bundle, Manifest

__all__ = [
    "IMAGES",
    "MODEL_PREFIX",
    "OUTPUTS",
    "PARAM_HEADS",
    "PARAM_MANIFEST",
    "PARAM_SHA256",
    "PARAM_VARIANT",
    "ServedBundle",
    "model_name",
]

#: the input: float32 [N, 3, S, S], the output of ``autoweld.native.preprocess_batch``
IMAGES = "IMAGES"
PROBABILITY = "PROBABILITY"  # float64 [N, 1]: fused probability
SCORES = "SCORES"  # float64 [N, H]: each head's raw image score, in the manifest's head order
PROBABILITIES = "PROBABILITIES"  # float64 [N, H]: each head's Platt probability
ANOMALY_MAP = "ANOMALY_MAP"  # float32 [N, S, S]: fused probability map
HEAD_MAPS = "HEAD_MAPS"  # float32 [N, H, S, S]: each head's anomaly map (evaluation)
ERROR = "ERROR"  # bytes [N, 1]: why the image failed, b"" when it did not
BUNDLE_SHA256 = "BUNDLE_SHA256"  # bytes [N, 1]: the bundle that scored it
OUTPUTS = (PROBABILITY, SCORES, PROBABILITIES, ANOMALY_MAP, HEAD_MAPS, ERROR, BUNDLE_SHA256)

#: model config parameters (config.pbtxt ``parameters``) every AutoWeld model carries
PARAM_SHA256 = "autoweld_bundle_sha256"
PARAM_MANIFEST = "autoweld_manifest_b64"  # the exact bytes of manifest.json, base64
PARAM_HEADS = "autoweld_heads"  # comma-separated head names: the columns of SCORES
PARAM_VARIANT = "autoweld_variant"  # "python" or "ensemble"

MODEL_PREFIX = "autoweld_"


def model_name(camera: str) -> str:
    """The client-facing model of one camera (one bank per camera: one model each)."""
    return MODEL_PREFIX + camera


@dataclass(frozen=True)
class ServedBundle:
    """What a model says about the bundle it serves (its config parameters), checked: the
    manifest bytes hash to the sha256 it names."""

    sha256: str
    manifest: Manifest
    heads: tuple[str, ...]
    variant: str

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str) -> ServedBundle:
        return cls(bundle.sha256, bundle.manifest, tuple(bundle.heads), variant)

    @staticmethod
    def parameters(bundle: Bundle, variant: str) -> dict[str, str]:
        """The config parameters that name ``bundle``."""
        manifest_bytes = (bundle.root / "manifest.json").read_bytes()
        return {
            PARAM_SHA256: bundle.sha256,
            PARAM_MANIFEST: base64.b64encode(manifest_bytes).decode("ascii"),
            PARAM_HEADS: ",".join(bundle.heads),
            PARAM_VARIANT: variant,
        }

    @classmethod
    def from_parameters(cls, parameters: dict[str, str], where: str) -> ServedBundle:
        """Parse and check the parameters of a served model; ``ValueError`` says what is wrong."""
        import hashlib

        missing = [k for k in (PARAM_SHA256, PARAM_MANIFEST, PARAM_HEADS) if k not in parameters]
        if missing:
            raise ValueError(f"{where}: not an AutoWeld model (no parameter(s) {missing})")
        manifest_bytes = base64.b64decode(parameters[PARAM_MANIFEST], validate=True)
        sha256 = hashlib.sha256(manifest_bytes).hexdigest()
        if sha256 != parameters[PARAM_SHA256]:
            raise ValueError(
                f"{where}: the manifest it carries hashes to {sha256}, not the "
                f"{parameters[PARAM_SHA256]} it names"
            )
        manifest = Manifest.from_json(json.loads(manifest_bytes), where)
        heads = tuple(h for h in parameters[PARAM_HEADS].split(",") if h)
        if heads != tuple(manifest.heads):
            raise ValueError(
                f"{where}: heads {heads} are not the manifest's {list(manifest.heads)}"
            )
        return cls(sha256, manifest, heads, parameters.get(PARAM_VARIANT, "python"))
