"""The TensorRT runner: a serialised plan (TensorRT 10 Python API, tensor-address execution).

``tensorrt`` and CuPy are imported lazily, when a runner is made (``pip install '.[gpu]'``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoweld.runtime.engines.base import BaseRunner

__all__ = ["TensorRTRunner"]


class TensorRTRunner(BaseRunner):
    """Runs a serialised TensorRT plan on one GPU.

    Same ``infer``/``close``/context-manager interface as every runner (host in, host out), plus
    :meth:`infer_device`, which takes and returns CuPy device arrays so the outputs can go
    straight to :class:`autoweld.native.GpuScorer`.

    Safe to share across threads: the plan has one execution context, whose input shapes and
    tensor addresses are per-call state, so a lock makes each call's set-shapes/set-addresses/
    enqueue one step (and ``infer``'s copy back too). Calls therefore run one at a time; all are
    enqueued on :attr:`stream`. :meth:`close` waits for a running call.
    """

    model_noun = "plan"

    def __init__(
        self,
        plan: str | os.PathLike[str] | bytes,
        device: int = 0,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(image_shape)
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
        self._lock = threading.Lock()
        self._device = cupy.cuda.Device(device)
        data = bytes(plan) if isinstance(plan, (bytes, bytearray)) else Path(plan).read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        with self._device:
            # the runtime must outlive the engine it deserialised: kept on the runner
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

    @property
    def active_providers(self) -> list[str]:
        self.require_open()
        return [f"TensorRT {self._trt.__version__}"]

    @property
    def stream(self) -> Any:
        """The CuPy stream the runner enqueues on (pass ``stream.ptr`` to the GPU scorer)."""
        return self._stream

    def infer_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run on device arrays (CuPy); returns CuPy outputs, enqueued on :attr:`stream`
        (synchronise it before reading them)."""
        self.require_open()
        feed = self.feed(inputs)
        with self._lock:
            return self._enqueue(feed)

    def infer_impl(self, feed: dict[str, Any], outputs: list[str]) -> dict[str, np.ndarray]:
        cupy = self._cupy
        with self._lock, self._device:
            result = self._enqueue({k: cupy.asarray(v) for k, v in feed.items()})
            self._stream.synchronize()
            return {n: cupy.asnumpy(result[n]) for n in outputs}

    def _enqueue(self, feed: dict[str, Any]) -> dict[str, Any]:
        """Binds ``feed`` and fresh outputs to the context and enqueues one execution. The
        caller holds ``_lock``: shapes and addresses set here belong to this call only."""
        context = self._context
        if context is None:  # closed while this call waited for the lock
            self.require_open()
        cupy = self._cupy
        outputs: dict[str, Any] = {}
        with self._device:
            for name in self.input_names:
                array = cupy.ascontiguousarray(feed[name], dtype=self._dtypes[name])
                feed[name] = array  # keeps the device copy alive until the call returns
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

    def release(self) -> None:
        with self._lock:  # never free the context under a running call
            self._context = None
            self._engine = None
