"""The GPU API in a build without CUDA (the default): present, says False, refuses clearly."""

import numpy as np
import pytest

from autoweld import native

pytestmark = pytest.mark.skipif(
    native.built_with_cuda(), reason="this extension was built with CUDA (tests/gpu covers it)"
)


def test_cuda_is_reported_absent():
    assert native.cuda_available() is False
    assert native.built_with_cuda() is False


def test_gpu_classes_say_how_to_build_with_cuda():
    bank = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(RuntimeError, match=r"AUTOWELD_CUDA=ON pip install '\.\[gpu\]'"):
        native.GpuKnnIndex(bank)
    spec = native.GpuHeadSpec("m", "map", (2, 2), -1.0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="built without CUDA"):
        native.GpuScorer([spec], out_size=8, sigma=0.0)
    with pytest.raises(RuntimeError, match="built without CUDA"):
        native.cuda_device_name()


class FakeDeviceArray:
    """Only the __cuda_array_interface__ protocol (a dict), as CuPy/torch/Numba expose it."""

    def __init__(self, shape, typestr="<f4", strides=None, ptr=0x7F0000001000):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "strides": strides,
            "data": (ptr, False),
            "version": 3,
        }


def test_device_array_reads_the_interface_and_checks_it():
    a = native.device_array(FakeDeviceArray((2, 5)), "queries", np.float32, 2)
    assert a.ptr == 0x7F0000001000 and a.shape == (2, 5) and a.dtype == np.float32
    c_strides = native.device_array(FakeDeviceArray((2, 5), strides=(20, 4)), "q", np.float32, 2)
    assert c_strides.shape == (2, 5)
    with pytest.raises(ValueError, match="queries must be float32, got float64"):
        native.device_array(FakeDeviceArray((2, 5), "<f8"), "queries", np.float32, 2)
    with pytest.raises(ValueError, match="must be 2-D"):
        native.device_array(FakeDeviceArray((10,)), "queries", np.float32, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.device_array(FakeDeviceArray((2, 5), strides=(4, 8)), "queries", np.float32, 2)
    with pytest.raises(ValueError, match="null device pointer"):
        native.device_array(FakeDeviceArray((2, 5), ptr=0), "queries", np.float32, 2)
    with pytest.raises(ValueError, match="must be a device array"):
        native.device_array(np.zeros((2, 5), np.float32), "queries", np.float32, 2)
