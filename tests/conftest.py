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


class _Deadline:
    """Run a call in a thread and fail the test if it has not returned within ``seconds``.

    ``fifos`` are named pipes the call might block on: when the deadline passes, their write
    ends are opened and closed so a blocked reader sees end-of-file and the thread ends."""

    def __call__(self, seconds, fn, *args, fifos=(), **kwargs):
        import threading

        box: dict = {}

        def target():
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - handed back to the test
                box["error"] = error

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            for fifo in fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
            thread.join(5)
            pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {seconds} s (hang)")
        if "error" in box:
            raise box["error"]
        return box.get("value")


@pytest.fixture
def deadline():
    """``deadline(seconds, fn, *args, fifos=())``: fn's result, or the test fails as a hang."""
    return _Deadline()
