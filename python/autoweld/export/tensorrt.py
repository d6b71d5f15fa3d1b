"""Build a TensorRT engine (``model.plan``) from a bundle's ONNX graph and record it in the bundle.

Uses TensorRT's documented Python API (TensorRT 10): ``Builder`` -> ``create_network`` (explicit
batch is the only mode in TensorRT 10; the flag is passed only to older versions) ->
``OnnxParser`` -> ``BuilderConfig`` with a workspace memory-pool limit, the FP16 flag when asked
and one optimisation profile over the dynamic batch -> ``build_serialized_network``. The plan is
written into the bundle through :func:`autoweld.bundle.write_bundle`, so the manifest lists it
with its sha256, and ``engine.tensorrt`` records the GPU, compute capability and TensorRT version
it was built for; the runtime refuses it anywhere else (see ``autoweld.runtime.engines``).

``tensorrt`` is imported lazily: without it (or without a GPU) :func:`build_tensorrt_plan` raises
a clear error. No torch here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autoweld.bundle import (
    Bundle,
    BundleError,
    TensorRTSpec,
    bundle_key_from_env,
    load_bundle,
    write_bundle,
)

__all__ = [
    "PLAN_NAME",
    "TrtBuildOptions",
    "TrtBuildResult",
    "attach_plan",
    "build_tensorrt_plan",
]

log = logging.getLogger(__name__)

PLAN_NAME = "model.plan"
_NEEDS = (
    "building a TensorRT engine needs the tensorrt package and an NVIDIA GPU: "
    "pip install '.[gpu]' on a machine with an NVIDIA GPU and its driver"
)


@dataclass(frozen=True)
class TrtBuildOptions:
    """How to build the plan. Batches: the optimisation profile's min 1, ``opt_batch``,
    ``max_batch``; ``workspace_mib``: the builder's workspace memory-pool limit."""

    fp16: bool = False
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mib: int = 4096
    device: int = 0

    def __post_init__(self) -> None:
        for name in ("opt_batch", "max_batch", "workspace_mib"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.opt_batch > self.max_batch:
            raise ValueError(
                f"opt_batch ({self.opt_batch}) must not exceed max_batch ({self.max_batch})"
            )
        if isinstance(self.device, bool) or not isinstance(self.device, int) or self.device < 0:
            raise ValueError(f"device must be an int >= 0, got {self.device!r}")


@dataclass(frozen=True)
class TrtBuildResult:
    bundle: Bundle
    plan_bytes: int
    seconds: float
    entry: Mapping[str, Any]


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise RuntimeError(_NEEDS) from None
    return tensorrt


def attach_plan(
    bundle_dir: str | Path, plan: bytes, entry: Mapping[str, Any], *, key: Any = True
) -> Bundle:
    """Rewrites the bundle with ``plan`` as ``model.plan`` and ``entry`` as the manifest's
    ``engine.tensorrt`` (replacing an earlier plan), through ``write_bundle`` so every hash is
    recomputed. A signed bundle is re-signed with the configured key; without one it is refused.
    """
    bundle = load_bundle(bundle_dir, key=key)
    if not plan:
        raise ValueError("plan: empty TensorRT plan")
    if entry.get("plan") != PLAN_NAME:
        raise ValueError(f"entry['plan'] must be {PLAN_NAME!r}, got {entry.get('plan')!r}")
    sign_with = None
    if bundle.signed_by is not None or (bundle.root / "manifest.sig.json").exists():
        sign_with = bundle_key_from_env()
        if sign_with is None:
            raise BundleError(
                f"{bundle.root}: the bundle is signed; set AUTOWELD_BUNDLE_KEY (and "
                "AUTOWELD_BUNDLE_KEY_ID) so the manifest with the plan can be re-signed"
            )
    engine = replace(
        bundle.manifest.engine,
        tensorrt=TensorRTSpec.from_json(entry, str(bundle.root / "manifest.json")),
    )
    manifest = replace(bundle.manifest, engine=engine)
    files: dict[str, Path | bytes] = {
        name: bundle.root / name for name in bundle.manifest.files if name != PLAN_NAME
    }
    files[PLAN_NAME] = bytes(plan)
    return write_bundle(bundle.root, manifest, files, sign_with=sign_with)


def _gpu(device: int) -> tuple[str, str]:
    from autoweld.runtime.gpu import detect_gpu

    gpu = detect_gpu(device)
    if gpu is None:
        raise RuntimeError(_NEEDS + " (no CUDA GPU found)")
    return gpu.name, gpu.compute_capability


def build_tensorrt_plan(
    bundle_dir: str | Path, options: TrtBuildOptions | None = None
) -> TrtBuildResult:
    """Builds ``model.plan`` from the bundle's ONNX graph on this GPU and writes it into the
    bundle (see the module docstring). Raises ``RuntimeError`` without TensorRT or a GPU,
    ``ValueError`` when TensorRT cannot parse or build the graph."""
    options = options or TrtBuildOptions()
    bundle = load_bundle(bundle_dir)
    trt = _import_tensorrt()
    gpu_name, capability = _gpu(options.device)
    version = str(trt.__version__)
    major = int(version.split(".")[0])
    start = time.perf_counter()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major < 10:  # explicit batch is the only mode (and the flag deprecated) from TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{bundle.onnx_path}: TensorRT cannot parse the graph: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ValueError(
                f"--fp16: TensorRT {version} has no FP16 builder flag (TensorRT 11 builds "
                "strongly typed networks only); use TensorRT 10 or an FP16 ONNX graph"
            )
        config.set_flag(trt.BuilderFlag.FP16)

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) < 1 or any(d < 1 for d in shape[1:]):
            raise ValueError(
                f"{bundle.onnx_path}: input {tensor.name!r} has shape {shape}; only the batch "
                "dimension may be dynamic"
            )
        rest = shape[1:]
        profile.set_shape(
            tensor.name,
            (1, *rest),
            (options.opt_batch, *rest),
            (options.max_batch, *rest),
        )
    config.add_optimization_profile(profile)

    log.info("building TensorRT %s plan (fp16=%s) on %s", version, options.fp16, gpu_name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{bundle.onnx_path}: TensorRT could not build an engine (see its log)")
    plan = bytes(serialized)
    seconds = time.perf_counter() - start
    entry = {
        "plan": PLAN_NAME,
        "gpu": gpu_name,
        "compute_capability": capability,
        "tensorrt_version": version,
        "fp16": bool(options.fp16),
        "batch": {"min": 1, "opt": options.opt_batch, "max": options.max_batch},
        "workspace_mib": options.workspace_mib,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    written = attach_plan(bundle.root, plan, entry)
    log.info("wrote %s (%d bytes) in %.1fs", written.root / PLAN_NAME, len(plan), seconds)
    return TrtBuildResult(bundle=written, plan_bytes=len(plan), seconds=seconds, entry=entry)
