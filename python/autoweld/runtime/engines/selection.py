"""Engine selection: which runner a bundle gets on this machine (docs/gpu.md, "Engines").

:func:`open_engine` picks one by name or the best available -- ``"tensorrt"`` (the bundle's own
serialised TensorRT plan, run by :class:`~autoweld.runtime.engines.trt.TensorRTRunner`),
``"cuda"`` (ONNX Runtime's CUDA execution provider), ``"cpu"``; ``"best"`` means that order,
skipping what cannot run here. A plan is refused when it was built for another GPU or another
TensorRT version (the manifest's ``engine.tensorrt`` records both): the runtime then warns and
runs the ONNX graph instead. The decision is :func:`choose_engine`, a pure function of the
manifest and an :class:`~autoweld.runtime.gpu.EngineEnvironment`, so it is tested without a GPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoweld.bundle import Manifest
from autoweld.runtime.engines.base import BaseRunner
from autoweld.runtime.engines.onnxrt import OnnxRunner
from autoweld.runtime.engines.providers import PROVIDER_ALIASES, available_providers
from autoweld.runtime.engines.trt import TensorRTRunner
from autoweld.runtime.gpu import EngineEnvironment, current_environment

if TYPE_CHECKING:
    from autoweld.bundle import Bundle

__all__ = [
    "EngineChoice",
    "PlanCheck",
    "available_engines",
    "check_engine_request",
    "check_plan",
    "choose_engine",
    "open_engine",
]

log = logging.getLogger(__name__)

_ENGINE_ALIASES = {"trt": "tensorrt", "tensorrt": "tensorrt", "cuda": "cuda", "cpu": "cpu"}


# ---- the manifest's engine entry: the only reads of it in the engine code -----------------


def _plan_entry(manifest: Manifest | Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The manifest's ``engine.tensorrt`` entry as JSON (None without a plan). A plain mapping
    is accepted for the bundle-free check of :func:`check_engine_request` and for tests."""
    if isinstance(manifest, Manifest):
        plan = manifest.engine.tensorrt
        return plan.to_json() if plan is not None else None
    return manifest.get("engine", {}).get("tensorrt")


def _has_plan(bundle: Bundle) -> bool:
    return bundle.manifest.engine.tensorrt is not None


def _onnx_file(bundle: Bundle) -> str:
    """The bundle's ONNX graph file name (``engine.onnx``)."""
    return bundle.manifest.engine.onnx


# ---- the decision -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanCheck:
    """Whether a bundle's TensorRT plan may run here, and if not, why."""

    usable: bool
    reason: str


@dataclass(frozen=True)
class EngineChoice:
    """The decision of :func:`choose_engine`: a TensorRT plan or ONNX Runtime providers."""

    engine: str  # "tensorrt" or "onnx"
    providers: tuple[str, ...] = ()  # ORT provider names when engine == "onnx"
    plan: str | None = None  # plan file name when engine == "tensorrt"
    warnings: tuple[str, ...] = field(default_factory=tuple)


def check_plan(plan: Mapping[str, Any] | None, env: EngineEnvironment) -> PlanCheck:
    """Decides whether the manifest's ``engine.tensorrt`` entry can run in ``env``.

    A plan is bound to the TensorRT version that built it and to the GPU (TensorRT's default
    engines are specific to the device's compute capability, and their tactics were timed on
    that GPU model), so all three must match exactly.
    """
    if not plan:
        return PlanCheck(
            False, "the bundle has no TensorRT plan (autoweld-export --trt builds one)"
        )
    if env.tensorrt_version is None:
        return PlanCheck(False, "the tensorrt package is not installed (pip install '.[gpu]')")
    if env.gpu is None:
        return PlanCheck(False, "no CUDA GPU is available")
    for key in ("plan", "gpu", "compute_capability", "tensorrt_version"):
        if not plan.get(key):
            return PlanCheck(False, f"the manifest's engine.tensorrt lacks {key!r}")
    if str(plan["tensorrt_version"]) != env.tensorrt_version:
        return PlanCheck(
            False,
            f"the plan was built with TensorRT {plan['tensorrt_version']}, this machine has "
            f"TensorRT {env.tensorrt_version}",
        )
    if str(plan["compute_capability"]) != env.gpu.compute_capability:
        return PlanCheck(
            False,
            f"the plan was built for compute capability {plan['compute_capability']} "
            f"({plan['gpu']}), this GPU is {env.gpu.compute_capability} ({env.gpu.name})",
        )
    if str(plan["gpu"]) != env.gpu.name:
        return PlanCheck(
            False, f"the plan was built on a {plan['gpu']}, this GPU is a {env.gpu.name}"
        )
    return PlanCheck(True, "built for this GPU and TensorRT version")


def available_engines(env: EngineEnvironment) -> list[str]:
    """Engine names that can run in ``env`` (tensorrt: the library and a GPU; a bundle's plan
    is checked separately)."""
    names = []
    if env.tensorrt_version is not None and env.gpu is not None:
        names.append("tensorrt")
    if "CUDAExecutionProvider" in env.ort_providers:
        names.append("cuda")
    names.append("cpu")
    return names


def choose_engine(
    requested: Sequence[str] | str, manifest: Manifest | Mapping[str, Any], env: EngineEnvironment
) -> EngineChoice:
    """Picks the engine for a bundle. Pure: no GPU, TensorRT or ONNX Runtime is touched.

    ``requested`` is an ordered preference: ``"best"``, engine names (``"tensorrt"``/``"trt"``,
    ``"cuda"``, ``"cpu"``) or ONNX Runtime provider names. ``"best"`` expands to the available
    engines in the order tensorrt, cuda, cpu. TensorRT is used when it comes first and the
    bundle's plan passes :func:`check_plan`; otherwise, if it was asked for, a warning says why
    and the remaining names are used with ONNX Runtime (the available GPU/CPU providers when
    nothing remains). An unknown name is a ``ValueError`` listing the available engines; a known
    ONNX Runtime provider that is not installed is a ``ValueError`` too.
    """
    names = [requested] if isinstance(requested, str) else list(requested)
    if not names:
        raise ValueError("providers must name at least one engine")
    available = available_engines(env)
    listing = ", ".join(["best", *available])
    expanded: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"providers: bad engine name {name!r}; available: {listing}")
        key = name.lower()
        if key == "best":
            expanded.extend(n for n in available if n not in expanded)
        elif key in _ENGINE_ALIASES:
            if _ENGINE_ALIASES[key] not in expanded:
                expanded.append(_ENGINE_ALIASES[key])
        elif name.endswith("ExecutionProvider") or key in PROVIDER_ALIASES:
            if name not in expanded:
                expanded.append(name)
        else:
            raise ValueError(f"providers: engine {name!r} is unknown; available: {listing}")

    notes: list[str] = []
    if expanded[0] == "tensorrt":
        plan = _plan_entry(manifest)
        check = check_plan(plan, env)
        if check.usable:
            return EngineChoice(engine="tensorrt", plan=str(plan["plan"]))  # type: ignore[index]
        notes.append(f"TensorRT plan not used: {check.reason}; running the ONNX graph instead")
    onnx_names = [n for n in expanded if n != "tensorrt"]
    if not onnx_names:
        onnx_names = [n for n in available if n != "tensorrt"]
    providers: list[str] = []
    for name in onnx_names:
        ort_name = PROVIDER_ALIASES.get(name.lower(), name)
        if ort_name not in env.ort_providers:
            raise ValueError(
                f"providers: {name!r} is not available in this onnxruntime; available: {listing}"
            )
        if ort_name not in providers:
            providers.append(ort_name)
    return EngineChoice(engine="onnx", providers=tuple(providers), warnings=tuple(notes))


def _environment_for(names: Sequence[str]) -> EngineEnvironment:
    """What open_engine looks at: the whole environment only when TensorRT may be wanted (a
    plain ONNX Runtime request does not import tensorrt/cupy for nothing)."""
    wants_trt = any(isinstance(n, str) and n.lower() in ("best", "tensorrt", "trt") for n in names)
    if wants_trt:
        return current_environment()
    return EngineEnvironment(ort_providers=tuple(available_providers()))


def check_engine_request(providers: Sequence[str] | str) -> None:
    """Raises ``ValueError`` now for a ``providers`` request that :func:`open_engine` would
    refuse on this machine whatever the bundle (an unknown name, an ONNX Runtime provider that is
    not installed): for command lines, before anything is inspected or recorded. ``"best"`` and
    ``"tensorrt"`` always pass (without a usable plan they run the ONNX graph, with a warning)."""
    names = [providers] if isinstance(providers, str) else list(providers)
    choose_engine(names, {}, _environment_for(names))


def open_engine(
    bundle: Bundle,
    providers: Sequence[str] | str = ("best",),
    threads: int | None = None,
    environment: EngineEnvironment | None = None,
) -> BaseRunner:
    """The runner for a bundle: its TensorRT plan or its ONNX graph, chosen by
    :func:`choose_engine` (``providers``: ``"best"``, engine names or ORT provider names). The
    runner checks every input against the bundle's image shape ``[N, C, S, S]``.

    A plan that cannot be used here (other GPU, other TensorRT, no tensorrt package) is not an
    error: the ONNX graph runs instead, with a ``RuntimeWarning`` and a log warning saying why.
    """
    names = [providers] if isinstance(providers, str) else list(providers)
    if environment is None:
        environment = _environment_for(names)
    choice = choose_engine(names, bundle.manifest, environment)
    explicit_trt = any(isinstance(n, str) and n.lower() in ("tensorrt", "trt") for n in names)
    # "best" quietly skips a missing plan; an explicit request for TensorRT, or a plan the
    # bundle has but this machine refuses, is worth a warning.
    if explicit_trt or _has_plan(bundle):
        for message in choice.warnings:
            log.warning("%s: %s", bundle.root, message)
            warnings.warn(f"{bundle.root}: {message}", RuntimeWarning, stacklevel=2)
    spec = bundle.preprocess
    image_shape = (len(spec.mean), spec.size, spec.size)  # one mean per channel
    if choice.engine == "tensorrt":
        assert choice.plan is not None
        return TensorRTRunner(bundle.read_verified(choice.plan), image_shape=image_shape)
    # from the bytes checked against the manifest, not the path (which may have changed since)
    return OnnxRunner(
        bundle.read_verified(_onnx_file(bundle)),
        providers=list(choice.providers),
        threads=threads,
        image_shape=image_shape,
    )
