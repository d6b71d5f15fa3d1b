"""Training and the station preprocess a grey file identically, bit for bit.

Training reads every file with ``Sample.load_image()`` (cv2.IMREAD_COLOR: grey becomes 3-channel
BGR, and CLAHE then works on Lab L); the station decodes with ``decode_image`` and the
Inspector's ``image_for_inspection`` expands grey with ``as_bgr``. With CLAHE on, grey kept
single-channel would be equalised on grey values instead, up to ~1 normalised unit away. EXIF
orientation is ignored by both.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from autoweld import native
from autoweld.data import Sample
from autoweld.runtime.decode import as_bgr, decode_image, image_for_inspection

SPEC = {
    "clahe": True,
    "clip_limit": 2.0,
    "tile_grid": (8, 8),
    "sigma": 0.8,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


def grey_texture(seed: int, height: int = 120, width: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(30, 200, width)[None, :] + np.linspace(0, 40, height)[:, None]
    return np.clip(ramp + rng.normal(0, 25, (height, width)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_grey_file_preprocesses_bit_for_bit_like_training(tmp_path, suffix):
    path = tmp_path / f"part{suffix}"
    grey = grey_texture(3)
    assert cv2.imwrite(str(path), grey)
    assert decode_image(path).ndim == 2  # the file really is single-channel

    trained = Sample(path, 0, "good").load_image()
    seen = image_for_inspection(path)
    assert seen.shape == trained.shape == (*grey.shape, 3)
    np.testing.assert_array_equal(seen, trained)
    a = native.preprocess(trained, 64, **SPEC)
    b = native.preprocess(seen, 64, **SPEC)
    np.testing.assert_array_equal(a, b)
    # and keeping the file grey would not have been the same: the fix matters
    grey_way = native.preprocess(decode_image(path), 64, **SPEC)
    assert np.abs(grey_way - a).max() > 0.05


def test_grey_array_is_expanded_like_a_grey_file():
    grey = grey_texture(5)
    ok, encoded = cv2.imencode(".png", grey)
    assert ok
    from_file = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(as_bgr(grey), from_file)
    colour = from_file.copy()
    assert as_bgr(colour) is colour


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment with only the Orientation tag after the JPEG's SOI."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + segment + jpeg[2:]


def test_exif_orientation_is_ignored_by_training_and_station(tmp_path):
    image = np.dstack([grey_texture(7), grey_texture(8), grey_texture(9)])  # 120 x 96, colour
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(encoded.tobytes(), 6))  # "rotate 90 CW to view"
    # OpenCV's plain reader would rotate it: the test file does carry the tag
    assert cv2.imread(str(path), cv2.IMREAD_COLOR).shape[:2] == (96, 120)
    trained = Sample(path, 0, "good").load_image()
    seen = image_for_inspection(path)
    assert trained.shape[:2] == seen.shape[:2] == (120, 96)
    np.testing.assert_array_equal(trained, seen)
