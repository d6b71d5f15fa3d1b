"""Engine runners: run the bundle's ONNX graph (loader -> runner, in the Polygraphy style).

``OnnxRunner`` wraps one ONNX Runtime session. Providers are chosen by short name (``"cpu"``,
``"cuda"``, ``"tensorrt"``) or by ONNX Runtime's own names (``"CPUExecutionProvider"``); a name
that is unknown or not available in the installed onnxruntime is a ``ValueError`` that lists the
available ones. onnxruntime is imported lazily, inside the runner, so importing this module costs
nothing and a GPU build of onnxruntime is only touched when a runner is made.

A runner owns its session and is a context manager. ONNX Runtime allows concurrent ``run`` calls
on one session, so one runner may be shared by several threads.

TensorRT: ``providers=("tensorrt", "cuda", "cpu")`` runs the graph through ONNX Runtime's TensorRT
execution provider. A runner for the bundle's own serialised TensorRT plan (``engine.tensorrt``
in the manifest) belongs in :func:`open_engine` beside ``OnnxRunner`` (a separate issue); until it
exists, a plan in a bundle is ignored and the ONNX graph is run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from autoweld.bundle import Bundle

__all__ = [
    "PROVIDER_ALIASES",
    "OnnxRunner",
    "available_providers",
    "open_engine",
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


def open_engine(
    bundle: Bundle, providers: Sequence[str] | str = ("cpu",), threads: int | None = None
) -> OnnxRunner:
    """The runner for a bundle's graph. The place where a TensorRT plan runner will be chosen."""
    # A runner over bundle.manifest["engine"]["tensorrt"] (a serialised plan) goes here when it
    # exists; it must offer the same infer()/close() as OnnxRunner.
    return OnnxRunner(bundle.onnx_path, providers=providers, threads=threads)
