"""The PNG fast path (libdeflate + ``native.png_unfilter``) returns exactly OpenCV's pixels,
and hands every PNG it does not fully understand to OpenCV."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from test_decode import _png_chunk as _chunk

from autoweld import native
from autoweld.runtime import decode
from autoweld.runtime.decode import ImageError, decode_image


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_row(kind: int, row: np.ndarray, prior: np.ndarray, bpp: int) -> bytes:
    """PNG's encoder side of one filter type (section 9), written plainly as the reference."""
    out = bytearray(len(row))
    for i, x in enumerate(row.tolist()):
        a = int(row[i - bpp]) if i >= bpp else 0
        b = int(prior[i])
        c = int(prior[i - bpp]) if i >= bpp else 0
        predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
        out[i] = (x - predictor) % 256
    return bytes([kind]) + bytes(out)


def _png(image: np.ndarray, filters, extra_chunks=(), interlace=0, scanlines=None) -> bytes:
    """A PNG of ``image`` (grey, or RGB given as BGR) with the given filter type per row."""
    grey = image.ndim == 2
    rgb = image if grey else image[:, :, ::-1]
    h, w = image.shape[:2]
    bpp = 1 if grey else 3
    rows = rgb.reshape(h, w * bpp)
    if scanlines is None:
        prior = np.zeros(w * bpp, np.uint8)
        parts = []
        for r in range(h):
            parts.append(_filter_row(filters[r % len(filters)], rows[r], prior, bpp))
            prior = rows[r]
        scanlines = b"".join(parts)
    stream = zlib.compress(scanlines, 6)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if grey else 2, 0, 0, interlace)
    # the stream split over several IDAT chunks, as encoders do
    idats = b"".join(_chunk(b"IDAT", stream[i : i + 97]) for i in range(0, len(stream), 97))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + b"".join(_chunk(kind, payload) for kind, payload in extra_chunks)
        + idats
        + _chunk(b"IEND", b"")
    )


def _opencv(data: bytes, grey: bool) -> np.ndarray:
    flags = (cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def _fast(data: bytes):
    return decode._decode_png_fast(data, decode._png_chunks(data, "test"))


def _ramp(rng, shape):
    """Smooth ramps that wrap around 255: the Average and Paeth predictors take every branch."""
    ramp = np.add.outer(np.arange(shape[0]) * 37, np.arange(shape[1]) * 11)
    if len(shape) == 3:
        ramp = ramp[:, :, None] + np.arange(shape[2]) * 85
    return (ramp % 256).astype(np.uint8)


IMAGES = {
    "noise": lambda rng, shape: rng.integers(0, 256, shape, dtype=np.uint8),
    "ramp": _ramp,
}


@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [4, 3, 2, 1, 0]])
@pytest.mark.parametrize("shape", [(5, 1), (6, 7), (4, 33, 3), (7, 1, 3), (3, 2, 3)])
@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_every_filter_type_matches_opencv(filters, shape, kind):
    image = np.ascontiguousarray(IMAGES[kind](np.random.default_rng(len(shape) * 7), shape))
    data = _png(image, filters)
    fast = _fast(data)
    assert fast is not None, "a plain 8-bit PNG must take the fast path"
    np.testing.assert_array_equal(fast, image)
    np.testing.assert_array_equal(fast, _opencv(data, image.ndim == 2))
    np.testing.assert_array_equal(decode_image(data), image)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
@pytest.mark.parametrize("channels", [1, 3])
def test_opencv_written_pngs_take_the_fast_path(level, channels):
    rng = np.random.default_rng(level)
    shape = (64, 80, 3) if channels == 3 else (64, 80)
    # part noise, part smooth: libpng's adaptive filtering picks different filters per row
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image[32:] = cv2.GaussianBlur(image, (9, 9), 3)[32:]
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, level])
    assert ok
    data = encoded.tobytes()
    fast = _fast(data)
    assert fast is not None
    np.testing.assert_array_equal(fast, image)
    np.testing.assert_array_equal(fast, _opencv(data, channels == 1))


def test_zlib_is_used_when_libdeflate_is_missing(monkeypatch):
    image = np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    data = _png(image, [4, 1, 3])
    monkeypatch.setattr(decode, "_deflate", None)
    np.testing.assert_array_equal(_fast(data), image)
    # a stream one row short is refused by the zlib path too
    short = _png(image, [0], scanlines=b"\x00" * (8 * (1 + 13 * 3)))
    assert _fast(short) is None


def test_other_pngs_go_to_opencv():
    image = np.random.default_rng(4).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    gamma = _png(image, [0], extra_chunks=[(b"gAMA", struct.pack(">I", 45455))])
    assert _fast(gamma) is None
    np.testing.assert_array_equal(decode_image(gamma), _opencv(gamma, False))
    # chunks that do not touch pixels keep the fast path
    text = _png(image, [2], extra_chunks=[(b"tEXt", b"Software\x00test"), (b"pHYs", bytes(9))])
    np.testing.assert_array_equal(_fast(text), image)
    assert _fast(_png(image, [0], interlace=1)) is None
    # IDAT chunks split by another chunk break the PNG rules: OpenCV's verdict stands
    plain = _png(image, [0])
    first_idat = plain.index(b"IDAT") - 4
    split = plain[:first_idat] + _chunk(b"IDAT", b"") + _chunk(b"tEXt", b"a\x00b")
    split += plain[first_idat:]
    assert _fast(split) is None
    ok, deep = cv2.imencode(".png", np.full((4, 4), 4000, np.uint16))
    with pytest.raises(ImageError, match="16-bit"):
        decode_image(deep.tobytes())


def test_streams_the_fast_path_cannot_rebuild_end_as_opencv_says():
    image = np.random.default_rng(5).integers(0, 256, (6, 5), dtype=np.uint8)
    row = 1 + 5
    good = b"".join(_filter_row(0, image[r], image[r], 1) for r in range(6))
    bad_filter = _png(image, [0], scanlines=good[: 2 * row] + b"\x05" + good[2 * row + 1 :])
    short = _png(image, [0], scanlines=good[: 5 * row])
    for data in (bad_filter, short):
        assert _fast(data) is None
        assert _opencv(data, True) is None, "OpenCV reads this stream; the test needs a new case"
        with pytest.raises(ImageError, match="corrupt PNG"):
            decode_image(data)
    # a stream with a row too many: libpng ignores the extra data; we hand it to OpenCV
    long = _png(image, [0], scanlines=good + good[:row])
    assert _fast(long) is None
    np.testing.assert_array_equal(decode_image(long), _opencv(long, True))


def test_png_unfilter_refuses_bad_arguments():
    with pytest.raises(ValueError, match="expected 12"):
        native.png_unfilter(b"\x00" * 11, 2, 5, 1)
    with pytest.raises(ValueError, match="filter type 9"):
        native.png_unfilter(b"\x00" * 6 + b"\x09" + b"\x00" * 5, 2, 5, 1)
    with pytest.raises(ValueError, match="channels"):
        native.png_unfilter(b"\x00" * 12, 2, 5, 2)
    with pytest.raises(ValueError, match="height"):
        native.png_unfilter(b"", 0, 5, 1)
    with pytest.raises(ValueError, match="bytes"):
        native.png_unfilter(np.zeros(12, np.uint8), 2, 5, 1)
    grey = native.png_unfilter(bytes([1, 10, 20, 2, 1, 1]), 2, 2, 1)
    np.testing.assert_array_equal(grey, [[10, 30], [11, 31]])  # Sub, then Up
