import sys
from pathlib import Path

import pytest

# The tiny ONNX graph + bundle builders live beside the runtime tests; the bench tests share them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_helpers import write_images  # noqa: E402
from tinybundle import write_tiny_bundle  # noqa: E402


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images")
