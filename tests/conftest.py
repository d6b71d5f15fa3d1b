import os

import pytest


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is there; they skip with the reason everywhere else."""
    try:
        import onnxruntime

        has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:  # pragma: no cover - onnxruntime is a hard dependency
        has_cuda = False
    has_cuda = has_cuda or os.path.exists("/dev/nvidia0")
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="no NVIDIA GPU on this machine")
    for item in items:
        # the marker, not item.keywords: keywords also hold the names of parent nodes, so a
        # checkout in a directory called "gpu" would skip every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
