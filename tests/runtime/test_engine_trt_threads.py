"""TensorRTRunner's sharing logic without a GPU: fake ``tensorrt`` and ``cupy`` modules whose one
execution context, like TensorRT's, keeps the input shapes and tensor addresses set by the last
caller. A call that lets another thread rebind the context between its set-address and its
execute gets the other call's data (or none), which these tests detect."""

from __future__ import annotations

import itertools
import sys
import threading
import time
import types

import numpy as np
import pytest

from autoweld.runtime.engines import TensorRTRunner

SHAPE = (3, 4, 4)
_addresses = itertools.count(1)
_memory: dict[int, FakeDeviceArray] = {}


class FakeDeviceArray:
    """A "device" array: host memory behind an address the fake context resolves."""

    def __init__(self, host: np.ndarray) -> None:
        self.host = np.ascontiguousarray(host)
        self.shape, self.dtype = self.host.shape, self.host.dtype
        self.data = types.SimpleNamespace(ptr=next(_addresses))
        _memory[self.data.ptr] = self


class FakeContext:
    """One TensorRT execution context: shapes and addresses are state shared by all callers."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.in_execute = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = shape
        time.sleep(0.0005)  # give another thread the chance to rebind the context
        return True

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr
        time.sleep(0.0005)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["image"]

    def execute_async_v3(self, stream: int) -> bool:
        self.in_execute.set()
        self.gate.wait(5)
        source, target = _memory[self.addresses["image"]], _memory[self.addresses["doubled"]]
        if source.shape != target.shape:
            return False
        target.host[...] = 2 * source.host
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self) -> None:
        self.context = FakeContext()

    def get_tensor_name(self, i: int) -> str:
        return ("image", "doubled")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name == "image" else "output"

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def create_execution_context(self) -> FakeContext:
        return self.context


def fake_modules() -> tuple[types.ModuleType, types.ModuleType]:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input")
    trt.nptype = np.dtype

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            return FakeEngine()

    trt.Runtime = Runtime

    class Device:
        def __init__(self, device: int) -> None:
            pass

        def __enter__(self) -> None:
            pass

        def __exit__(self, *exc: object) -> None:
            pass

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(
        Device=Device,
        Stream=lambda non_blocking: types.SimpleNamespace(ptr=7, synchronize=lambda: None),
    )
    cupy.asarray = lambda a: a if isinstance(a, FakeDeviceArray) else FakeDeviceArray(a)
    cupy.ascontiguousarray = lambda a, dtype: FakeDeviceArray(np.asarray(a.host, dtype=dtype))
    cupy.empty = lambda shape, dtype: FakeDeviceArray(np.full(shape, np.nan, dtype=dtype))
    cupy.asnumpy = lambda a: a.host.copy()
    return trt, cupy


@pytest.fixture
def runner(monkeypatch):
    trt, cupy = fake_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    with TensorRTRunner(b"plan", image_shape=SHAPE) as runner:
        yield runner


def test_fake_runner_runs_and_checks_inputs(runner):
    assert runner.input_names == ["image"] and runner.output_names == ["doubled"]
    x = np.arange(2 * 48, dtype=np.float32).reshape(2, *SHAPE)
    np.testing.assert_array_equal(runner.infer(x)["doubled"], 2 * x)
    with pytest.raises(ValueError, match="must be float32, got float64"):
        runner.infer(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"\[N, 3, 4, 4\]"):
        runner.infer(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="not in the plan's outputs"):
        runner.infer(x, outputs=["nope"])
    with pytest.raises(ValueError, match="empty batch"):
        runner.infer_device({"image": FakeDeviceArray(np.zeros((0, *SHAPE), np.float32))})


def test_shared_runner_keeps_each_callers_data(runner):
    """Eight threads, each with its own batch size and values, through one execution context."""
    failures: list[str] = []

    def work(worker: int) -> None:
        x = np.full((1 + worker % 3, *SHAPE), worker, dtype=np.float32)
        for _ in range(10):
            try:
                got = runner.infer(x)["doubled"]
            except Exception as error:  # noqa: BLE001 - collected and reported below
                failures.append(f"worker {worker}: {error}")
                return
            if got.shape != x.shape or not np.array_equal(got, 2 * x):
                failures.append(f"worker {worker}: got another call's output")
                return

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_close_waits_for_a_running_call_and_is_idempotent(runner):
    context = runner._context
    context.gate.clear()
    x = np.ones((1, *SHAPE), np.float32)
    result: dict = {}
    call = threading.Thread(target=lambda: result.update(runner.infer(x)))
    call.start()
    assert context.in_execute.wait(5)
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive(), "close() freed the context under a running call"
    context.gate.set()
    call.join(5)
    closer.join(5)
    np.testing.assert_array_equal(result["doubled"], 2 * x)
    runner.close()  # again: nothing happens
    with pytest.raises(RuntimeError, match="TensorRTRunner is closed"):
        runner.infer(x)
    with pytest.raises(RuntimeError, match="closed"):
        runner.active_providers  # noqa: B018 - the property raises
