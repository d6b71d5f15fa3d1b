import sys
from pathlib import Path

import pytest

# The tiny ONNX graph + bundle builders live beside the runtime tests; evaluation shares them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from tinybundle import write_tiny_bundle  # noqa: E402


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")
