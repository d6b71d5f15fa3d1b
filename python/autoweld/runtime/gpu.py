"""What this machine can run: its CUDA GPU, its TensorRT version, its ONNX Runtime providers.

The one place that detects the GPU, for the runtime (engine selection, docs/gpu.md) and for
export (``autoweld-export --trt`` records the GPU a plan was built on). The GPU is read from our
own CUDA build first, then from CuPy; ``tensorrt`` and ``cupy`` are imported lazily, only here
and only when asked, so importing this module costs nothing on a CPU-only station.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EngineEnvironment",
    "GpuInfo",
    "current_environment",
    "detect_gpu",
    "tensorrt_version",
]


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device as a TensorRT plan cares about it."""

    name: str
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class EngineEnvironment:
    """What this machine can run: the facts engine selection decides on."""

    ort_providers: tuple[str, ...]
    gpu: GpuInfo | None = None
    tensorrt_version: str | None = None  # None: the tensorrt package is not importable


def _gpu_from_native(device: int) -> GpuInfo | None:
    from autoweld import native

    if not native.cuda_available() or device >= native._native.cuda_device_count():
        return None
    text = native.cuda_device_name(device)  # "NAME (sm_90)"
    name, _, sm = text.rpartition(" (sm_")
    digits = sm.rstrip(")")
    return GpuInfo(name=name, compute_capability=f"{digits[:-1]}.{digits[-1:]}")


def _gpu_from_cupy(device: int) -> GpuInfo | None:
    try:
        import cupy  # lazy: only on GPU machines
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() <= device:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(device)
    except Exception:  # noqa: BLE001 - no driver / no device: no GPU
        return None
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return GpuInfo(name=name, compute_capability=f"{props['major']}.{props['minor']}")


def detect_gpu(device: int = 0) -> GpuInfo | None:
    """CUDA device ``device`` (our CUDA build's view, else CuPy's), or None without one."""
    return _gpu_from_native(device) or _gpu_from_cupy(device)


def tensorrt_version() -> str | None:
    """The installed TensorRT Python package's version, or None when it cannot be imported."""
    try:
        import tensorrt  # lazy: large, GPU machines only
    except ImportError:
        return None
    return str(tensorrt.__version__)


def current_environment() -> EngineEnvironment:
    """The :class:`EngineEnvironment` of this machine (imports tensorrt/cupy if present)."""
    from autoweld.runtime.engines.providers import available_providers

    return EngineEnvironment(
        ort_providers=tuple(available_providers()),
        gpu=detect_gpu(),
        tensorrt_version=tensorrt_version(),
    )
