"""Engine runners: run the bundle's ONNX graph (loader -> runner, in the Polygraphy style).

``OnnxRunner`` wraps one ONNX Runtime session. Providers are chosen by short name (``"cpu"``,
``"cuda"``, ``"tensorrt"``) or by ONNX Runtime's own names (``"CPUExecutionProvider"``); a name
that is unknown or not available in the installed onnxruntime is a ``ValueError`` that lists the
available ones. onnxruntime is imported lazily, inside the runner, so importing this module costs
nothing and a GPU build of onnxruntime is only touched when a runner is made.

A runner owns its session and is a context manager. ONNX Runtime allows concurrent ``run`` calls
on one session, so one runner may be shared by several threads.

Engines (docs/gpu.md): :func:`open_engine` picks one by name or the best available --
``"tensorrt"`` (the bundle's own serialised TensorRT plan, run by :class:`TensorRTRunner`),
``"cuda"`` (ONNX Runtime's CUDA execution provider), ``"cpu"``; ``"best"`` means that order,
skipping what cannot run here. A plan is refused when it was built for another GPU or another
TensorRT version (the manifest's ``engine.tensorrt`` records both): the runtime then warns and
runs the ONNX graph instead. The decision is :func:`choose_engine`, a pure function of the
manifest and an :class:`EngineEnvironment`, so it is tested without a GPU. ``tensorrt`` (the
Python package) and CuPy are imported lazily, only by the TensorRT runner.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from autoweld.bundle import Manifest

if TYPE_CHECKING:
    from autoweld.bundle import Bundle

__all__ = [
    "ENGINE_NAMES",
    "PROVIDER_ALIASES",
    "EngineChoice",
    "EngineEnvironment",
    "GpuInfo",
    "OnnxRunner",
    "PlanCheck",
    "TensorRTRunner",
    "available_engines",
    "available_providers",
    "check_plan",
    "choose_engine",
    "current_environment",
    "open_engine",
    "check_engine_request",
    "resolve_providers",
]

log = logging.getLogger(__name__)

PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def _ort() -> Any:
    import onnxruntime  # lazy: a GPU build loads CUDA libraries on import

    return onnxruntime


def available_providers() -> list[str]:
    """ONNX Runtime execution providers available in this installation."""
    return list(_ort().get_available_providers())


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


class OnnxRunner:
    """One ONNX Runtime session over a graph file or serialised model bytes.

    ``threads`` sets ONNX Runtime's intra-op thread count (``None``: ORT's default, all cores).
    ``spinning``: let ORT's idle worker threads busy-wait for the next job (ORT's default). Off
    by default: between two graph runs the Inspector runs its own threaded kernels (kNN,
    preprocessing), and spinning ORT workers take the cores from them — on two cores that made
    kNN and preprocessing about 1.5x slower (autoweld-bench).

    Use as a context manager or call :meth:`close`. Safe to share across threads: ``infer`` holds
    no per-call state on the runner, and ORT sessions support concurrent ``run`` calls.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        providers: Sequence[str] | str = ("cpu",),
        threads: int | None = None,
        spinning: bool = False,
    ) -> None:
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.providers = resolve_providers(providers)
        ort = _ort()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        source = bytes(model) if isinstance(model, (bytes, bytearray)) else str(Path(model))
        self._session: Any = ort.InferenceSession(
            source, sess_options=options, providers=self.providers
        )
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        log.debug(
            "onnx session on %s, outputs %s", self._session.get_providers(), self.output_names
        )

    @property
    def active_providers(self) -> list[str]:
        """Providers the session actually runs on (ORT may drop one it cannot initialise)."""
        return list(self._require_session().get_providers())

    def _require_session(self) -> Any:
        if self._session is None:
            raise RuntimeError("OnnxRunner is closed")
        return self._session

    def infer(
        self,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the graph; a bare array feeds the single input. Returns output name -> array."""
        session = self._require_session()
        if isinstance(inputs, np.ndarray):
            if len(self.input_names) != 1:
                raise ValueError(
                    f"inputs: the graph has {len(self.input_names)} inputs "
                    f"({', '.join(self.input_names)}); pass a dict"
                )
            inputs = {self.input_names[0]: inputs}
        names = list(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"outputs: {unknown} not in the graph's outputs {self.output_names}")
        results = session.run(names, dict(inputs))
        return dict(zip(names, results, strict=True))

    def close(self) -> None:
        """Release the session (idempotent)."""
        self._session = None

    def __enter__(self) -> OnnxRunner:
        self._require_session()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---- engine selection ---------------------------------------------------------------------

ENGINE_NAMES: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
_ENGINE_ALIASES = {"trt": "tensorrt", "tensorrt": "tensorrt", "cuda": "cuda", "cpu": "cpu"}


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device as a TensorRT plan cares about it."""

    name: str
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class EngineEnvironment:
    """What this machine can run: the facts :func:`choose_engine` decides on."""

    ort_providers: tuple[str, ...]
    gpu: GpuInfo | None = None
    tensorrt_version: str | None = None  # None: the tensorrt package is not importable


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
        plan = _tensorrt_entry(manifest)
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


def _tensorrt_entry(manifest: Manifest | Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The manifest's ``engine.tensorrt`` entry as JSON (None without a plan)."""
    if isinstance(manifest, Manifest):
        plan = manifest.engine.tensorrt
        return plan.to_json() if plan is not None else None
    return manifest.get("engine", {}).get("tensorrt")


def _gpu_from_native(device: int = 0) -> GpuInfo | None:
    from autoweld import native

    if not native.cuda_available() or device >= native._native.cuda_device_count():
        return None
    text = native.cuda_device_name(device)  # "NAME (sm_90)"
    name, _, sm = text.rpartition(" (sm_")
    digits = sm.rstrip(")")
    return GpuInfo(name=name, compute_capability=f"{digits[:-1]}.{digits[-1:]}")


def _gpu_from_cupy(device: int = 0) -> GpuInfo | None:
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


def _tensorrt_version() -> str | None:
    try:
        import tensorrt  # lazy: large, GPU machines only
    except ImportError:
        return None
    return str(tensorrt.__version__)


def current_environment() -> EngineEnvironment:
    """The :class:`EngineEnvironment` of this machine (imports tensorrt/cupy if present)."""
    gpu = _gpu_from_native() or _gpu_from_cupy()
    return EngineEnvironment(
        ort_providers=tuple(available_providers()),
        gpu=gpu,
        tensorrt_version=_tensorrt_version(),
    )


# ---- the TensorRT plan runner ----------------------------------------------------------------


class TensorRTRunner:
    """Runs a serialised TensorRT plan (TensorRT 10 Python API, tensor-address execution).

    Same ``infer``/``close``/context-manager interface as :class:`OnnxRunner`, plus
    ``infer_device``, which takes and returns CuPy device arrays so the outputs can go straight
    to :class:`autoweld.native.GpuScorer`. Needs the ``tensorrt`` and ``cupy`` packages
    (``pip install '.[gpu]'``). One execution context: calls are serialised by the caller.
    """

    def __init__(self, plan: str | os.PathLike[str] | bytes, device: int = 0) -> None:
        try:
            import cupy
            import tensorrt as trt
        except ImportError as error:
            raise RuntimeError(
                f"the TensorRT engine needs the tensorrt and cupy packages ({error}); "
                "pip install '.[gpu]' on a machine with an NVIDIA GPU"
            ) from None
        self._trt = trt
        self._cupy = cupy
        self._device = cupy.cuda.Device(device)
        data = bytes(plan) if isinstance(plan, (bytes, bytearray)) else Path(plan).read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        with self._device:
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise ValueError("the TensorRT plan could not be deserialised (see TensorRT log)")
            self._engine: Any = engine
            self._context: Any = engine.create_execution_context()
            self._stream = cupy.cuda.Stream(non_blocking=True)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) != mode]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.providers = ["TensorRT"]

    @property
    def active_providers(self) -> list[str]:
        self._require_engine()
        return [f"TensorRT {self._trt.__version__}"]

    @property
    def stream(self) -> Any:
        """The CuPy stream the runner enqueues on (pass ``stream.ptr`` to the GPU scorer)."""
        return self._stream

    def _require_engine(self) -> Any:
        if self._context is None:
            raise RuntimeError("TensorRTRunner is closed")
        return self._context

    def infer_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run on device arrays (CuPy); returns CuPy outputs, enqueued on :attr:`stream`."""
        context = self._require_engine()
        cupy = self._cupy
        outputs: dict[str, Any] = {}
        with self._device:
            for name in self.input_names:
                if name not in inputs:
                    raise ValueError(f"inputs: missing {name!r} (inputs: {self.input_names})")
                array = cupy.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
                inputs = {**inputs, name: array}
                if not context.set_input_shape(name, tuple(array.shape)):
                    raise ValueError(
                        f"inputs: shape {array.shape} of {name!r} is outside the plan's profile"
                    )
                context.set_tensor_address(name, array.data.ptr)
            for name in self.output_names:
                shape = tuple(context.get_tensor_shape(name))
                outputs[name] = cupy.empty(shape, dtype=self._dtypes[name])
                context.set_tensor_address(name, outputs[name].data.ptr)
            if not context.execute_async_v3(self._stream.ptr):
                raise RuntimeError("TensorRT execution failed (see TensorRT log)")
        return outputs

    def infer(
        self,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Host in, host out (the ``OnnxRunner`` contract)."""
        if isinstance(inputs, np.ndarray):
            if len(self.input_names) != 1:
                raise ValueError(f"inputs: the plan has inputs {self.input_names}; pass a dict")
            inputs = {self.input_names[0]: inputs}
        names = list(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"outputs: {unknown} not in the plan's outputs {self.output_names}")
        with self._device:
            device_in = {k: self._cupy.asarray(v) for k, v in inputs.items()}
            result = self.infer_device(device_in)
            self._stream.synchronize()
            return {n: self._cupy.asnumpy(result[n]) for n in names}

    def close(self) -> None:
        """Release the context and engine (idempotent)."""
        self._context = None
        self._engine = None

    def __enter__(self) -> TensorRTRunner:
        self._require_engine()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
) -> OnnxRunner | TensorRTRunner:
    """The runner for a bundle: its TensorRT plan or its ONNX graph, chosen by
    :func:`choose_engine` (``providers``: ``"best"``, engine names or ORT provider names).

    A plan that cannot be used here (other GPU, other TensorRT, no tensorrt package) is not an
    error: the ONNX graph runs instead, with a ``RuntimeWarning`` and a log warning saying why.
    """
    names = [providers] if isinstance(providers, str) else list(providers)
    if environment is None:
        environment = _environment_for(names)
    choice = choose_engine(names, bundle.manifest, environment)
    explicit_trt = any(isinstance(n, str) and n.lower() in ("tensorrt", "trt") for n in names)
    for message in choice.warnings:
        # "best" quietly skips a missing plan; an explicit request for TensorRT, or a plan the
        # bundle has but this machine refuses, is worth a warning.
        has_plan = bundle.manifest.engine.tensorrt is not None
        if explicit_trt or has_plan:
            log.warning("%s: %s", bundle.root, message)
            warnings.warn(f"{bundle.root}: {message}", RuntimeWarning, stacklevel=2)
    if choice.engine == "tensorrt":
        assert choice.plan is not None
        return TensorRTRunner(bundle.read_verified(choice.plan))
    # from the bytes checked against the manifest, not the path (which may have changed since)
    onnx_bytes = bundle.read_verified(bundle.manifest.engine.onnx)
    return OnnxRunner(onnx_bytes, providers=list(choice.providers), threads=threads)
