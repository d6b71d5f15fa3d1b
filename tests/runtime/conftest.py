from pathlib import Path

import pytest
from tinybundle import write_tiny_bundle


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")
