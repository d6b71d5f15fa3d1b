import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from autoweld.runtime.decode import (
    DecodeLimits,
    ImageError,
    check_array,
    decode_image,
    read_header,
)


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid-looking PNG whose header claims width x height RGB pixels; the file is tiny."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # one compressed row of zeros: decoding would need width*height*3 bytes of memory
    idat = zlib.compress(b"\x00" * (1 + 3 * width))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def colour():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp"])
def test_lossless_round_trip_colour_and_grey(ext, colour):
    np.testing.assert_array_equal(decode_image(_encode(ext, colour)), colour)
    grey = colour[:, :, 1].copy()
    decoded = decode_image(_encode(ext, grey))
    # BMP stores 8-bit grey as a palette image: it comes back as BGR with equal channels
    if decoded.ndim == 3:
        for c in range(3):
            np.testing.assert_array_equal(decoded[:, :, c], grey)
    else:
        np.testing.assert_array_equal(decoded, grey)


def test_jpeg_decodes_to_header_size(tmp_path):
    colour = np.zeros((30, 41, 3), np.uint8)
    colour[:, :20] = (200, 100, 50)
    path = tmp_path / "a.jpg"
    path.write_bytes(_encode(".jpg", colour))
    decoded = decode_image(path)
    assert decoded.shape == colour.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - colour).mean() < 8  # lossy, but the same picture
    header = read_header(path.read_bytes())
    assert (header.format, header.width, header.height, header.channels) == ("JPEG", 41, 30, 3)


def test_header_is_read_without_decoding():
    header = read_header(bomb_png(12345, 678))
    assert (header.format, header.width, header.height, header.channels, header.bit_depth) == (
        "PNG",
        12345,
        678,
        3,
        8,
    )


def test_decompression_bomb_refused_before_decoding(monkeypatch):
    data = bomb_png()
    assert len(data) < 1_000  # tiny file claiming 100 megapixels

    def no_decoding(*args, **kwargs):
        raise AssertionError("imdecode must not be reached for a bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(
        ImageError, match=r"10000x10000 = 100.0 megapixels exceeds.*decompression bomb"
    ):
        decode_image(data)


def test_pixel_limit_is_configurable(colour):
    data = _encode(".png", colour)
    with pytest.raises(ImageError, match="megapixels exceeds"):
        decode_image(data, DecodeLimits(max_pixels=30 * 41 - 1))
    assert decode_image(data, DecodeLimits(max_pixels=30 * 41)).shape == colour.shape
    with pytest.raises(ImageError, match="exceeds the limit of 100"):
        decode_image(data, DecodeLimits(max_bytes=100))
    with pytest.raises(ValueError, match="max_pixels"):
        DecodeLimits(max_pixels=0)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
        decode_image(path)


def test_unreadable_paths(tmp_path):
    with pytest.raises(ImageError, match="cannot be read"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="cannot be read"):
        decode_image(tmp_path)  # a directory
    with pytest.raises(ImageError, match="expected a path or encoded bytes"):
        decode_image(12)  # type: ignore[arg-type]


def test_not_an_image():
    with pytest.raises(ImageError, match="not a PNG, JPEG, BMP or TIFF"):
        decode_image(b"hello, I am text, not pixels")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_files_are_refused(ext, keep, colour):
    data = _encode(ext, colour)
    with pytest.raises(ImageError, match="truncated|corrupt"):
        decode_image(data[: int(len(data) * keep)])


def test_truncated_jpeg_is_not_padded_with_grey(colour):
    # some libjpeg builds "decode" a cut file to a partly grey picture; ours refuses it up front
    data = _encode(".jpg", colour)
    cut = data[: len(data) - 10]
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(cut)


def test_corrupt_png_crc(colour):
    data = bytearray(_encode(".png", colour))
    data[60] ^= 0xFF  # inside the IDAT data
    with pytest.raises(ImageError, match="CRC mismatch"):
        decode_image(bytes(data))


def test_alpha_channels_are_refused():
    rgba = np.zeros((5, 6, 4), np.uint8)
    with pytest.raises(ImageError, match=r"4 channels \(colour\+alpha\)"):
        decode_image(_encode(".png", rgba))
    # grey + alpha PNG (colour type 4), written by hand since OpenCV does not write it
    raw = b"".join(b"\x00" + b"\x80\xff" * 6 for _ in range(5))
    ihdr = struct.pack(">IIBBBBB", 6, 5, 8, 4, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match=r"2 channels \(grey\+alpha\)"):
        decode_image(data)


def test_sixteen_bit_is_refused():
    deep = np.full((4, 4), 4000, np.uint16)
    with pytest.raises(ImageError, match="16-bit image; only 8-bit"):
        decode_image(_encode(".png", deep))


def test_check_array():
    grey = np.zeros((3, 4), np.uint8)
    assert check_array(grey).shape == (3, 4)
    assert check_array(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4)
    strided = np.zeros((6, 8, 3), np.uint8)[::2, ::2]
    assert check_array(strided).flags.c_contiguous
    with pytest.raises(ImageError, match="4 channels"):
        check_array(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ImageError, match="2 channels"):
        check_array(np.zeros((3, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="dtype float32"):
        check_array(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ImageError, match="empty image"):
        check_array(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        check_array(np.zeros((2, 3, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="numpy array"):
        check_array([[1, 2]])  # type: ignore[arg-type]


# ---- TIFF ---------------------------------------------------------------------------------


def tiff_bytes(
    pixels: np.ndarray,
    order: str = ">",
    *,
    claim: tuple[int, int] | None = None,
    photometric: int | None = None,
    extra: dict[int, tuple[int, list[int]]] | None = None,
) -> bytes:
    """An uncompressed baseline TIFF written by hand: header, first image directory right after
    it, then the pixels as one strip (the layout other writers use; OpenCV puts the directory
    last). ``claim`` overrides the width x height the header states."""
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    if claim is not None:
        width, height = claim
    tags: dict[int, tuple[int, list[int]]] = {
        256: (4, [width]),
        257: (4, [height]),
        258: (3, [8] * samples),
        259: (3, [1]),  # no compression
        262: (3, [photometric if photometric is not None else (1 if samples == 1 else 2)]),
        273: (4, [0]),  # strip offset, patched below
        277: (3, [samples]),
        278: (4, [height]),
        279: (4, [pixels.nbytes]),
    }
    tags.update(extra or {})
    ifd_size = 2 + 12 * len(tags) + 4
    values = b""
    value_base = 8 + ifd_size
    entries = b""
    for tag in sorted(tags):
        kind, vals = tags[tag]
        code, size = {3: ("H", 2), 4: ("I", 4)}[kind]
        raw = struct.pack(f"{order}{len(vals)}{code}", *vals)
        if len(raw) <= 4:
            field = raw.ljust(4, b"\x00")
        else:
            field = struct.pack(order + "I", value_base + len(values))
            values += raw
        entries += struct.pack(order + "HHI", tag, kind, len(vals)) + field
    strip_at = value_base + len(values)
    entries = entries.replace(
        struct.pack(order + "HHI", 273, 4, 1) + struct.pack(order + "I", 0),
        struct.pack(order + "HHI", 273, 4, 1) + struct.pack(order + "I", strip_at),
    )
    magic = b"MM\x00*" if order == ">" else b"II*\x00"
    ifd = struct.pack(order + "H", len(tags)) + entries + b"\x00\x00\x00\x00"
    return magic + struct.pack(order + "I", 8) + ifd + values + pixels.tobytes()


@pytest.mark.parametrize("order", ["<", ">"])
def test_tiff_written_by_hand_decodes_exactly(order, colour):
    for pixels in (colour[:, :, ::-1].copy(), colour[:, :, 0].copy()):  # RGB on disk, grey
        data = tiff_bytes(pixels, order)
        header = read_header(data)
        assert (header.format, header.width, header.height, header.bit_depth) == ("TIFF", 41, 30, 8)
        assert header.channels == (1 if pixels.ndim == 2 else 3)
        decoded = decode_image(data)
        expected = colour if pixels.ndim == 3 else pixels  # colour comes back as BGR
        np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("ext", [".tif", ".tiff"])
def test_tiff_from_opencv_round_trips(ext, colour, tmp_path):
    path = tmp_path / f"part{ext}"
    path.write_bytes(_encode(ext, colour))
    np.testing.assert_array_equal(decode_image(path), colour)
    grey = colour[:, :, 2].copy()
    np.testing.assert_array_equal(decode_image(_encode(ext, grey)), grey)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_tiff_is_refused(keep, colour):
    for data in (_encode(".tif", colour), tiff_bytes(colour)):  # directory last / first
        with pytest.raises(ImageError, match="truncated TIFF"):
            decode_image(data[: int(len(data) * keep)])


def test_tiff_strip_outside_the_file_is_named():
    data = tiff_bytes(np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageError, match=r"truncated TIFF \(strip 0 ends at byte"):
        decode_image(data[:-1])


def test_tiff_bomb_refused_before_decoding(monkeypatch):
    data = tiff_bytes(np.zeros((2, 2), np.uint8), claim=(20_000, 20_000))
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("must not decode a bomb"))
    with pytest.raises(ImageError, match="400.0 megapixels exceeds"):
        decode_image(data)


def test_tiff_refusals_say_why(colour):
    with pytest.raises(ImageError, match="16-bit image"):
        decode_image(_encode(".tif", colour.astype(np.uint16) * 200))
    with pytest.raises(ImageError, match=r"4 channels \(colour\+alpha\)"):
        decode_image(_encode(".tif", np.dstack([colour, colour[:, :, :1]])))
    cmyk = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ImageError, match="photometric interpretation 5"):
        decode_image(tiff_bytes(cmyk, photometric=5))
    with pytest.raises(ImageError, match="floating-point"):
        decode_image(tiff_bytes(np.zeros((4, 4), np.uint8), extra={339: (3, [3])}))
    with pytest.raises(ImageError, match="BigTIFF"):
        decode_image(b"II+\x00" + b"\x00" * 12)
    with pytest.raises(ImageError, match="corrupt TIFF"):
        decode_image(b"II\x07\x00\x08\x00\x00\x00")
    no_strips = tiff_bytes(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError, match="no strip or tile"):
        read_header(
            no_strips.replace(struct.pack(">HHI", 279, 4, 1), struct.pack(">HHI", 280, 4, 1))
        )


def test_a_fifo_or_device_given_as_an_image_is_refused_at_once(tmp_path, deadline):
    """Issue 15: a FIFO as --image used to hang forever; now it is an ImageError at once."""
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"camera\.png: cannot be read: a FIFO"):
        deadline(5, decode_image, fifo, fifos=[fifo])
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match=r"zero\.png: cannot be read: a character device"):
        deadline(5, decode_image, zero)
