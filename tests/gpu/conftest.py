"""GPU tests: each module is marked ``gpu`` (tests/conftest.py skips them on machines without an NVIDIA GPU)
and skipped with a stated reason when this build lacks CUDA, or CuPy / TensorRT are missing."""

import sys
from pathlib import Path

import pytest

from autoweld import native

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # tinybundle


@pytest.fixture
def cuda():
    if not native.built_with_cuda():
        pytest.skip("autoweld was built without CUDA (AUTOWELD_CUDA=ON pip install '.[gpu]')")
    if not native.cuda_available():
        pytest.skip("autoweld has CUDA kernels but no CUDA device is usable")
    return native.cuda_device_name()


@pytest.fixture
def cupy(cuda):
    return pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[gpu]')")


@pytest.fixture
def tensorrt(cuda):
    return pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (pip install '.[gpu]')"
    )
