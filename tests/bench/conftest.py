import sys
from pathlib import Path

import cv2
import pytest

# The tiny ONNX graph + bundle builders live beside the runtime tests; the bench tests share them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from tinybundle import defect_image, normal_image, write_tiny_bundle  # noqa: E402


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")


def write_images(folder: Path, n_normal: int = 3, n_defect: int = 2, size: int = 48) -> Path:
    """PNG files of the tiny bundle's normal and defective images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        cv2.imwrite(str(folder / f"good_{i:02d}.png"), normal_image(10 + i, size=size))
    for i in range(n_defect):
        cv2.imwrite(str(folder / f"defect_{i:02d}.png"), defect_image(20 + i, size=size))
    return folder


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images")
