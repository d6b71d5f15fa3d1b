"""Safe image decoding for the station: check the header first, decode second.

A station must never be taken down by one bad file, so every way an image can be wrong ends in
:class:`ImageError` (a ``ValueError``) with a message that says why:

- unreadable (missing file, no permission), not a regular file (a FIFO, a device, a directory:
  refused at once, never waited on; see :mod:`autoweld.safe_files`) or empty (0 bytes);
- a format we do not read: PNG, JPEG, BMP and baseline TIFF are read (what cameras and MVTec AD
  use; training reads the same four). A multi-page TIFF is inspected on its first page; BigTIFF
  and TIFFs in CMYK or other colour spaces are refused;
- a **decompression bomb**: width x height is read from the header *before* anything is decoded
  and refused above ``DecodeLimits.max_pixels`` (64 megapixels by default), so a small file that
  claims 10000 x 10000 pixels never allocates 300 MB; files above ``max_bytes`` are not read at all;
- truncated or corrupt: PNG chunks are walked and their CRCs checked up to ``IEND``; a JPEG must
  reach its end-of-image marker; every strip or tile a TIFF's first directory lists must lie
  inside the file; anything OpenCV cannot decode is refused;
- channels: 1 (grey) and 3 (BGR) are inspected; the Inspector expands grey to BGR with
  :func:`as_bgr` exactly as training's ``cv2.IMREAD_COLOR`` does, so CLAHE (on Lab L for colour)
  sees the same pixels in both. Images
  with an alpha channel (grey+alpha, BGRA) are **refused**: a camera does not produce alpha, so
  one means the image was composited or exported wrongly, and dropping it could hide that;
- bit depth: only 8-bit images are inspected. 16-bit images are **refused**, not scaled: the
  bundle was fitted on 8-bit images and any 16 → 8 mapping (shift, window, gamma) is an exposure
  choice the station must make explicitly before handing the image over.

Plain PNGs (8-bit grey or RGB, not interlaced, no chunk outside ``_PNG_PLAIN_CHUNKS``) are
inflated with libdeflate and their scanlines rebuilt by ``native.png_unfilter``: OpenCV's bytes
in about a third of its time. Everything else, and any stream that path cannot rebuild, is
decoded (or refused) by OpenCV.

Decoded images are ``uint8`` arrays, ``(H, W)`` grey or ``(H, W, 3)`` BGR, C-contiguous.

**EXIF orientation is ignored, here and in training** (``autoweld.data.mvtec`` reads with
``cv2.IMREAD_IGNORE_ORIENTATION`` too): the pixels are the sensor's, in both, so a camera that
writes an orientation tag cannot make the station see a rotated picture the bundle never saw.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoweld import native
from autoweld.safe_files import FileRefused, read_regular

try:  # libdeflate's inflate for the PNG fast path; zlib's when the package is missing
    import deflate as _deflate
except ImportError:  # pragma: no cover - a dependency; the fallback is tested by monkeypatching
    _deflate = None

__all__ = [
    "DecodeLimits",
    "as_bgr",
    "image_for_inspection",
    "ImageError",
    "ImageHeader",
    "check_array",
    "decode_image",
    "read_header",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
# JPEG start-of-frame markers (baseline, progressive, lossless, ...), not DHT/JPG/DAC
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    """An image that cannot be inspected; the message says which and why."""


@dataclass(frozen=True)
class DecodeLimits:
    """What the decoder accepts. ``max_pixels`` guards against decompression bombs."""

    max_pixels: int = 64_000_000
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")


@dataclass(frozen=True)
class ImageHeader:
    """What the file header says, read without decoding any pixels."""

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int


def read_header(data: bytes, name: str = "image") -> ImageHeader:
    """Parse width, height, channels and bit depth from a PNG, JPEG, BMP or TIFF header.

    Raises :class:`ImageError` for empty data, an unknown format or a malformed header.
    """
    if len(data) == 0:
        raise ImageError(f"{name}: empty (0 bytes)")
    if data.startswith(_PNG_SIGNATURE):
        return _png_header(data, name)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data, name)
    if data.startswith(b"BM"):
        return _bmp_header(data, name)
    if data[:2] in (b"II", b"MM"):
        return _tiff_header(data, name)
    raise ImageError(f"{name}: not a PNG, JPEG, BMP or TIFF image (first bytes {data[:8]!r})")


def _png_header(data: bytes, name: str) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(f"{name}: truncated PNG (no complete IHDR header)")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    if colour_type not in _PNG_CHANNELS:
        raise ImageError(f"{name}: PNG with invalid colour type {colour_type}")
    channels = _PNG_CHANNELS[colour_type]
    if colour_type == 3:
        bit_depth = 8  # palette indices of any depth expand to 8-bit colour
    elif bit_depth < 8:
        bit_depth = 8  # 1/2/4-bit grey expands to 8-bit
    return ImageHeader("PNG", width, height, channels, bit_depth)


def _jpeg_header(data: bytes, name: str) -> ImageHeader:
    pos = 2
    size = len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            raise ImageError(f"{name}: corrupt JPEG (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise ImageError(f"{name}: corrupt JPEG (segment length {length})")
        if marker in _JPEG_SOF:
            if pos + 10 > size:
                break
            precision, height, width, channels = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            return ImageHeader("JPEG", width, height, channels, precision)
        if marker == 0xDA:  # start of scan before any frame header
            raise ImageError(f"{name}: corrupt JPEG (scan data before the frame header)")
        pos += 2 + length
    raise ImageError(f"{name}: truncated JPEG (no frame header)")


def _bmp_header(data: bytes, name: str) -> ImageHeader:
    if len(data) < 30:
        raise ImageError(f"{name}: truncated BMP header")
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack("<HHHH", data[18:26])
    else:
        width, height, _, bpp = struct.unpack("<iiHH", data[18:30])
    height = abs(height)  # negative height = top-down rows
    if width <= 0:
        raise ImageError(f"{name}: BMP with invalid width {width}")
    channels = {32: 4, 24: 3, 16: 3}.get(bpp, 3 if bpp <= 8 else 0)
    if channels == 0:
        raise ImageError(f"{name}: BMP with unsupported {bpp} bits per pixel")
    return ImageHeader("BMP", width, height, channels, 8)


# TIFF tags the header reader needs, and the field types whose values it reads.
_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_BITS, _TIFF_PHOTOMETRIC = 256, 257, 258, 262
_TIFF_STRIP_OFFSETS, _TIFF_SAMPLES, _TIFF_STRIP_BYTES = 273, 277, 279
_TIFF_TILE_OFFSETS, _TIFF_TILE_BYTES, _TIFF_SAMPLE_FORMAT = 324, 325, 339
_TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4)}  # BYTE, SHORT, LONG
# Photometric interpretations read: grey (0 white-is-zero, 1 black-is-zero), RGB, palette, YCbCr.
_TIFF_PHOTOMETRICS = frozenset({0, 1, 2, 3, 6})


def _tiff_header(data: bytes, name: str) -> ImageHeader:
    """Baseline TIFF: the first image directory's size, samples and bit depth, and a check that
    every strip (or tile) it lists lies inside the file (what truncation cuts off)."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise ImageError(f"{name}: truncated TIFF header")
    (magic,) = struct.unpack(order + "H", data[2:4])
    if magic == 43:
        raise ImageError(f"{name}: BigTIFF is not read (save as baseline TIFF, PNG or BMP)")
    if magic != 42:
        raise ImageError(f"{name}: corrupt TIFF (magic number {magic}, expected 42)")
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd < 8 or ifd + 2 > len(data):
        raise ImageError(
            f"{name}: truncated TIFF (image directory at byte {ifd} is not in the file)"
        )
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    if ifd + 2 + 12 * count > len(data):
        raise ImageError(f"{name}: truncated TIFF (image directory cut short)")
    tags: dict[int, list[int]] = {}
    for i in range(count):
        entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind, n = struct.unpack(order + "HHI", entry[:8])
        if kind not in _TIFF_TYPES:
            continue  # rationals, ASCII, ...: nothing we need
        code, size = _TIFF_TYPES[kind]
        if n * size <= 4:
            raw = entry[8 : 8 + n * size]
        else:
            (offset,) = struct.unpack(order + "I", entry[8:12])
            if offset + n * size > len(data):
                raise ImageError(f"{name}: truncated TIFF (values of tag {tag} cut off)")
            raw = data[offset : offset + n * size]
        tags[tag] = list(struct.unpack(f"{order}{n}{code}", raw))
    if _TIFF_WIDTH not in tags or _TIFF_HEIGHT not in tags:
        raise ImageError(f"{name}: corrupt TIFF (no image width or height)")
    width, height = tags[_TIFF_WIDTH][0], tags[_TIFF_HEIGHT][0]
    samples = tags.get(_TIFF_SAMPLES, [1])[0]
    bits = tags.get(_TIFF_BITS, [1])
    photometric = tags.get(_TIFF_PHOTOMETRIC, [1])[0]
    if photometric not in _TIFF_PHOTOMETRICS:
        raise ImageError(
            f"{name}: TIFF photometric interpretation {photometric} (CMYK, Lab, ...) is not "
            "read; save as grey or RGB"
        )
    if tags.get(_TIFF_SAMPLE_FORMAT, [1])[0] != 1:  # 1: unsigned integer
        raise ImageError(f"{name}: TIFF with signed or floating-point samples; only 8-bit unsigned")
    if photometric == 3:
        channels, bit_depth = 3, 8  # palette indices expand to 8-bit colour
    else:
        channels, bit_depth = samples, max(bits)
        bit_depth = 8 if bit_depth < 8 else bit_depth  # 1/2/4-bit grey expands to 8-bit
    offsets = tags.get(_TIFF_STRIP_OFFSETS) or tags.get(_TIFF_TILE_OFFSETS)
    lengths = tags.get(_TIFF_STRIP_BYTES) or tags.get(_TIFF_TILE_BYTES)
    if not offsets or not lengths or len(offsets) != len(lengths):
        raise ImageError(f"{name}: corrupt TIFF (no strip or tile offsets and byte counts)")
    for i, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
        if offset + length > len(data):
            raise ImageError(
                f"{name}: truncated TIFF (strip {i} ends at byte {offset + length}, the file "
                f"has {len(data)})"
            )
    return ImageHeader("TIFF", width, height, channels, bit_depth)


def _check_header(header: ImageHeader, limits: DecodeLimits, name: str) -> None:
    if header.width == 0 or header.height == 0:
        raise ImageError(f"{name}: {header.format} header says {header.width}x{header.height}")
    pixels = header.width * header.height
    if pixels > limits.max_pixels:
        raise ImageError(
            f"{name}: {header.width}x{header.height} = {pixels / 1e6:.1f} megapixels exceeds the "
            f"limit of {limits.max_pixels / 1e6:.1f} megapixels (refused before decoding: "
            "possible decompression bomb)"
        )
    if header.bit_depth != 8:
        raise ImageError(
            f"{name}: {header.bit_depth}-bit image; only 8-bit images are inspected "
            "(convert to 8-bit at the camera or station, choosing the exposure mapping)"
        )
    if header.channels not in (1, 3):
        what = {2: "grey+alpha", 4: "colour+alpha"}.get(header.channels, "unsupported")
        raise ImageError(
            f"{name}: {header.channels} channels ({what}); only 1-channel grey or 3-channel "
            "colour images are inspected"
        )


def _png_chunks(data: bytes, name: str) -> list[tuple[bytes, int, int]]:
    """Every chunk of a PNG as (type, first data byte, end), CRCs checked, up to ``IEND``."""
    chunks = []
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ImageError(f"{name}: truncated PNG (ends inside a chunk, no IEND)")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunk_type = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageError(
                f"{name}: truncated PNG ({chunk_type.decode('latin-1')} chunk cut short)"
            )
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) != crc:
            raise ImageError(
                f"{name}: corrupt PNG (CRC mismatch in {chunk_type.decode('latin-1')} chunk)"
            )
        chunks.append((chunk_type, pos + 8, end))
        if chunk_type == b"IEND":
            return chunks
        pos = end + 4


def _check_structure(data: bytes, header: ImageHeader, name: str) -> list[tuple[bytes, int, int]]:
    """Catch truncation that decoders would paper over (libjpeg pads a cut file with grey).
    Returns a PNG's chunks (see :func:`_png_chunks`), an empty list for other formats."""
    if header.format == "PNG":
        return _png_chunks(data, name)
    if header.format == "JPEG":
        # The end-of-image marker may be followed by padding or trailer bytes, not by nothing.
        if data.rfind(b"\xff\xd9") < 0:
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    return []


# Chunks that do not change what libpng hands OpenCV for an 8-bit grey or RGB image (text,
# time, physical pixel size). Any other ancillary chunk (gamma, colour profile, transparency,
# significant bits, ...) sends the file to OpenCV's decoder, so the fast path never has to know
# what OpenCV makes of it.
_PNG_PLAIN_CHUNKS = frozenset(
    {b"IHDR", b"IDAT", b"IEND", b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"}
)


def _inflate(stream: bytes, size: int) -> bytes | None:
    """The zlib stream inflated to exactly ``size`` bytes, or None (corrupt, short or long).
    libdeflate (the ``deflate`` package) when installed: about 3x zlib's speed."""
    if _deflate is not None:
        try:
            out = _deflate.zlib_decompress(stream, size)
        except _deflate.DeflateError:
            return None
        return out if len(out) == size else None
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(stream, size)
    except zlib.error:
        return None
    return out if len(out) == size and inflater.eof else None


def _decode_png_fast(data: bytes, chunks: list[tuple[bytes, int, int]]) -> np.ndarray | None:
    """Decode a plain PNG (8-bit grey or RGB, not interlaced, no chunk outside
    ``_PNG_PLAIN_CHUNKS``) by inflating its IDAT stream and reconstructing the scanlines in
    ``_native``: the bytes OpenCV's decoder returns, in about a third of its time. None for any
    other PNG and for any stream the fast path cannot reconstruct exactly (corrupt, short, a bad
    filter byte): OpenCV then decodes it, or says why not, as before."""
    if any(kind not in _PNG_PLAIN_CHUNKS for kind, _, _ in chunks):
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", data[16:29]
    )
    if depth != 8 or colour not in (0, 2) or (compression, filtering, interlace) != (0, 0, 0):
        return None
    channels = 1 if colour == 0 else 3
    idat = [i for i, (kind, _, _) in enumerate(chunks) if kind == b"IDAT"]
    if not idat or idat[-1] - idat[0] + 1 != len(idat):  # PNG wants them consecutive; libpng too
        return None
    stream = b"".join(data[chunks[i][1] : chunks[i][2]] for i in idat)
    scanlines = _inflate(stream, height * (1 + width * channels))
    if scanlines is None:
        return None
    try:
        return native.png_unfilter(scanlines, height, width, channels)
    except ValueError:  # a filter-type byte above 4
        return None


def check_array(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check an already-decoded image and return it C-contiguous.

    Accepts ``uint8`` ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` (BGR); anything else is an
    :class:`ImageError`.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: dtype {image.dtype}; only 8-bit (uint8) images are inspected")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3):
        raise ImageError(f"{name}: shape {image.shape}; expected (H, W) or (H, W, 3)")
    if image.ndim == 3 and image.shape[2] != 3:
        raise ImageError(
            f"{name}: {image.shape[2]} channels; only 1-channel grey or 3-channel colour "
            "images are inspected"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: empty image (shape {image.shape})")
    return np.ascontiguousarray(image)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Grey ``(H, W)`` as BGR ``(H, W, 3)``, pixel for pixel what ``cv2.IMREAD_COLOR`` (the
    training reader) makes of a grey file; a BGR image is returned unchanged."""
    if image.ndim == 2:  # GRAY2BGR copies the value into all three channels
        return np.repeat(image[:, :, np.newaxis], 3, axis=2)
    return image


def decode_image(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    limits: DecodeLimits | None = None,
) -> np.ndarray:
    """Read and decode an image file (path) or encoded bytes into a checked uint8 array.

    The header is parsed and checked against ``limits`` before any pixel is decoded. Returns
    ``(H, W)`` for grey and ``(H, W, 3)`` BGR for colour; raises :class:`ImageError` with the
    reason for anything that cannot be inspected (see the module docstring).
    """
    limits = limits or DecodeLimits()
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "image bytes"
        data = bytes(source)
        if len(data) > limits.max_bytes:
            raise ImageError(f"{name}: {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        try:
            data = read_regular(path, limits.max_bytes)
        except FileRefused as error:
            raise ImageError(str(error)) from None
    else:
        raise ImageError(f"expected a path or encoded bytes, got {type(source).__name__}")

    header = read_header(data, name)
    _check_header(header, limits, name)
    chunks = _check_structure(data, header, name)
    if chunks:
        image = _decode_png_fast(data, chunks)
        if image is not None:
            return image
    # Grey stays grey; colour (and palette) becomes BGR. EXIF orientation is ignored so the
    # pixels are the sensor's, as they were when the bundle was fitted. OpenCV is imported
    # here, not with the module: a station whose camera writes plain PNGs never loads it
    # (a cold start ~20 ms shorter).
    import cv2

    if header.channels == 1:
        flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    else:
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as error:
        raise ImageError(f"{name}: corrupt {header.format} ({error.msg.strip()})") from None
    if image is None:
        raise ImageError(f"{name}: corrupt {header.format} (the decoder could not read it)")
    if image.shape[:2] != (header.height, header.width):
        raise ImageError(
            f"{name}: decoded to {image.shape[1]}x{image.shape[0]}, header says "
            f"{header.width}x{header.height} (corrupt)"
        )
    return check_array(image, name)


def image_for_inspection(
    source: np.ndarray | str | os.PathLike[str] | bytes | bytearray | memoryview,
    limits: DecodeLimits | None = None,
) -> np.ndarray:
    """What the Inspector preprocesses: a decoded file or a checked array, grey expanded to BGR
    with :func:`as_bgr` (as training's reader does). Raises :class:`ImageError`."""
    if isinstance(source, np.ndarray):
        return as_bgr(check_array(source))
    return as_bgr(decode_image(source, limits))
