"""The lean runtime: engine runners and the Inspector. Never imports torch."""

from autoweld.runtime.batcher import BatchingInspector, BatchStats
from autoweld.runtime.decode import DecodeLimits, ImageError, decode_image
from autoweld.runtime.engines import OnnxRunner, available_providers, resolve_providers
from autoweld.runtime.inspector import InspectionResult, Inspector, failed_result

__all__ = [
    "BatchStats",
    "BatchingInspector",
    "DecodeLimits",
    "ImageError",
    "InspectionResult",
    "Inspector",
    "OnnxRunner",
    "available_providers",
    "decode_image",
    "failed_result",
    "resolve_providers",
]
