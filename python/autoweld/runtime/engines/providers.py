"""ONNX Runtime execution providers: short names (``"cpu"``, ``"cuda"``, ``"tensorrt"``) or ORT's
own (``"CPUExecutionProvider"``), resolved against what the installed onnxruntime offers.

A name that is unknown or not available in this onnxruntime is a ``ValueError`` that lists the
available ones (Polygraphy's habit). onnxruntime is imported lazily: a GPU build loads CUDA
libraries on import, which a process that never opens a session should not pay for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["PROVIDER_ALIASES", "available_providers", "import_onnxruntime", "resolve_providers"]

PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def import_onnxruntime() -> Any:
    """The onnxruntime module, imported on first use."""
    import onnxruntime  # lazy: a GPU build loads CUDA libraries on import

    return onnxruntime


def available_providers() -> list[str]:
    """ONNX Runtime execution providers available in this installation."""
    return list(import_onnxruntime().get_available_providers())


def resolve_providers(names: Sequence[str] | str) -> list[str]:
    """Map short or ORT provider names to ORT names, in order, checking each is available.

    Raises ``ValueError`` naming the bad provider and listing those available.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("providers must name at least one execution provider")
    available = available_providers()
    short = {ort: alias for alias, ort in PROVIDER_ALIASES.items() if alias != "trt"}
    listing = ", ".join(f"{short.get(p, p)} ({p})" if p in short else p for p in available)
    resolved: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"providers: bad provider name {name!r}; available: {listing}")
        ort_name = PROVIDER_ALIASES.get(name.lower(), name)
        if ort_name not in available:
            known = name.lower() in PROVIDER_ALIASES or ort_name.endswith("ExecutionProvider")
            why = "is not available in this onnxruntime" if known else "is unknown"
            raise ValueError(f"providers: {name!r} {why}; available: {listing}")
        if ort_name not in resolved:
            resolved.append(ort_name)
    return resolved
