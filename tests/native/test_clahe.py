"""native.clahe against OpenCV: bit-identical on gray, bit-exact Lab for colour, bad input."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoweld import native


def _textured(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Noise with low-frequency structure, so that CLAHE's tiles see different histograms."""
    noise = rng.random(shape)
    h, w = shape[:2]
    ramp = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 0.5, w))
    if len(shape) == 3:
        ramp = ramp[..., None]
    return np.clip((0.6 * noise + 0.6 * ramp) * 200, 0, 255).astype(np.uint8)


SIZES = [(1, 1), (1, 37), (37, 1), (5, 3), (7, 9), (64, 64), (100, 37), (255, 256), (513, 511)]
CLIPS = [0.0, 0.5, 2.0, 40.0]
GRIDS = [(1, 1), (8, 8), (3, 5), (16, 16)]


@pytest.mark.parametrize("size", SIZES)
def test_gray_bit_identical_to_opencv(size):
    rng = np.random.default_rng(sum(size))
    image = _textured(rng, size)
    for clip in CLIPS:
        for grid in GRIDS:
            expected = cv2.createCLAHE(clip, grid).apply(image)
            got = native.clahe(image, clip, grid)
            assert got.dtype == np.uint8 and got.shape == image.shape
            assert np.array_equal(got, expected), (size, clip, grid)


def test_gray_negative_clip_means_no_clipping_as_opencv():
    image = _textured(np.random.default_rng(3), (60, 80))
    expected = cv2.createCLAHE(-1.0, (4, 4)).apply(image)
    assert np.array_equal(native.clahe(image, -1.0, (4, 4)), expected)
    assert np.array_equal(native.clahe(image, -1.0, (4, 4)), native.clahe(image, 0.0, (4, 4)))


def test_gray_constant_image_and_extremes():
    for value in (0, 17, 255):
        image = np.full((33, 47), value, np.uint8)
        assert np.array_equal(native.clahe(image), cv2.createCLAHE(2.0, (8, 8)).apply(image))


def test_non_contiguous_input_is_accepted():
    image = _textured(np.random.default_rng(4), (90, 120))
    view = image[::2, 1::3]
    expected = cv2.createCLAHE(2.0, (8, 8)).apply(np.ascontiguousarray(view))
    assert np.array_equal(native.clahe(view), expected)


def _cv2_colour_clahe(image, clip=2.0, grid=(8, 8)):
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    lab[..., 0] = cv2.createCLAHE(clip, grid).apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (64, 64, 3), (301, 257, 3)])
@pytest.mark.parametrize("clip,grid", [(2.0, (8, 8)), (0.0, (3, 5)), (40.0, (1, 1))])
def test_colour_within_one_level_of_opencv(shape, clip, grid):
    image = _textured(np.random.default_rng(shape[0]), shape)
    expected = _cv2_colour_clahe(image, clip, grid).astype(int)
    got = native.clahe(image, clip, grid)
    assert got.shape == image.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_colour_lab_round_trip_matches_opencv_on_many_colours():
    """With a 1x1 grid and no clipping the L LUT is a plain equalisation; a grey-ramp-free image
    of many distinct colours exercises the Lab conversions both ways."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    expected = _cv2_colour_clahe(image, 0.0, (1, 1))
    assert np.array_equal(native.clahe(image, 0.0, (1, 1)), expected)


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((4, 4), np.float32), "uint8"),
        (np.zeros((4, 4), np.uint16), "uint8"),
        (np.zeros((4, 4, 4), np.uint8), "channels"),
        (np.zeros((4, 4, 1), np.uint8), "channels"),
        (np.zeros((0, 4), np.uint8), "empty"),
        (np.zeros((4, 0, 3), np.uint8), "empty"),
        (np.zeros((2, 2, 2, 3), np.uint8), "HxW"),
        (np.zeros(5, np.uint8), "HxW"),
        ([[1, 2], [3, 4]], "numpy"),
    ],
)
def test_bad_images_raise_value_error(image, match):
    with pytest.raises(ValueError, match=match):
        native.clahe(image)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"clip_limit": float("nan")}, "clip_limit"),
        ({"clip_limit": float("inf")}, "clip_limit"),
        ({"clip_limit": "2"}, "clip_limit"),
        ({"tile_grid": (0, 8)}, "tile_grid"),
        ({"tile_grid": (8, -1)}, "tile_grid"),
        ({"tile_grid": (8,)}, "tile_grid"),
        ({"tile_grid": (2.5, 2)}, "tile_grid"),
        ({"tile_grid": (257, 256)}, "tile_grid"),
        ({"tile_grid": "88"}, "tile_grid"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        native.clahe(np.zeros((8, 8), np.uint8), **kwargs)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    colour=st.booleans(),
    clip=st.floats(-5, 100, allow_nan=False),
    gx=st.integers(1, 12),
    gy=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_match_opencv(h, w, colour, clip, gx, gy, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3) if colour else (h, w), dtype=np.uint8)
    got = native.clahe(image, clip, (gx, gy))
    assert got.shape == image.shape and got.dtype == np.uint8
    if colour:
        assert np.abs(got.astype(int) - _cv2_colour_clahe(image, clip, (gx, gy))).max() <= 1
    else:
        assert np.array_equal(got, cv2.createCLAHE(clip, (gx, gy)).apply(image))


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.float32, np.float64, np.int64]),
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
)
def test_property_random_dtypes_and_shapes_never_crash(dtype, shape):
    image = np.zeros(shape, dtype=dtype)
    valid = (
        dtype == np.uint8
        and len(shape) in (2, 3)
        and (len(shape) == 2 or shape[2] == 3)
        and shape[0] > 0
        and shape[1] > 0
    )
    if valid:
        assert native.clahe(image).shape == image.shape
    else:
        with pytest.raises(ValueError):
            native.clahe(image)


@pytest.mark.slow
def test_colour_exact_on_every_24_bit_colour():
    """All 2^24 BGR colours in one 4096x4096 image: the L histogram (forward Lab of every colour)
    and the way back (inverse Lab of every equalised triplet) must both be OpenCV's bytes."""
    codes = np.arange(1 << 24, dtype=np.uint32)
    image = np.stack([codes & 255, (codes >> 8) & 255, codes >> 16], axis=-1)
    image = image.astype(np.uint8).reshape(4096, 4096, 3)
    assert np.array_equal(native.clahe(image, 2.0, (8, 8)), _cv2_colour_clahe(image))
