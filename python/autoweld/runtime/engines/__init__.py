"""Engine runners (loader -> runner, in the Polygraphy style) and the choice between them.

- :mod:`~autoweld.runtime.engines.base`: :class:`BaseRunner`, the interface and the one input
  check every runner shares;
- :mod:`~autoweld.runtime.engines.onnxrt`: :class:`OnnxRunner` (ONNX Runtime);
- :mod:`~autoweld.runtime.engines.trt`: :class:`TensorRTRunner` (a serialised TensorRT plan);
- :mod:`~autoweld.runtime.engines.providers`: ONNX Runtime provider names;
- :mod:`~autoweld.runtime.engines.selection`: :func:`open_engine` and the pure decision
  :func:`choose_engine` (docs/gpu.md, "Engines").

What the machine offers (GPU, TensorRT version) is detected in :mod:`autoweld.runtime.gpu`.
onnxruntime, tensorrt and CuPy are imported lazily, only by the runner that needs them.
"""

from autoweld.runtime.engines.base import BaseRunner, check_image_batch
from autoweld.runtime.engines.onnxrt import OnnxRunner
from autoweld.runtime.engines.providers import (
    PROVIDER_ALIASES,
    available_providers,
    resolve_providers,
)
from autoweld.runtime.engines.selection import (
    EngineChoice,
    PlanCheck,
    available_engines,
    check_engine_request,
    check_plan,
    choose_engine,
    open_engine,
)
from autoweld.runtime.engines.trt import TensorRTRunner
from autoweld.runtime.gpu import EngineEnvironment, GpuInfo, current_environment

__all__ = [
    "PROVIDER_ALIASES",
    "BaseRunner",
    "EngineChoice",
    "EngineEnvironment",
    "GpuInfo",
    "OnnxRunner",
    "PlanCheck",
    "TensorRTRunner",
    "available_engines",
    "available_providers",
    "check_engine_request",
    "check_image_batch",
    "check_plan",
    "choose_engine",
    "current_environment",
    "open_engine",
    "resolve_providers",
]
