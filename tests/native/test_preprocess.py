"""native.preprocess against the OpenCV + numpy chain (within one grey level), and bad input."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoweld import native

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
TOLERANCE = 1.0 + 1e-3  # one grey level, plus float round-off


def reference_chain(image, size, clahe=True, clip=2.0, grid=(8, 8), sigma=0.0):
    """The chain done the usual way: OpenCV stages rounding to uint8 each, then numpy."""
    x = image
    if clahe:
        c = cv2.createCLAHE(clip, grid)
        if x.ndim == 2:
            x = c.apply(x)
        else:
            lab = cv2.cvtColor(x, cv2.COLOR_BGR2LAB)
            lab[..., 0] = c.apply(np.ascontiguousarray(lab[..., 0]))
            x = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    x = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    return x[..., ::-1].astype(np.float64)  # RGB, grey levels


def grey_levels(out):
    return (out.transpose(1, 2, 0).astype(np.float64) * STD + MEAN) * 255


def textured(seed, shape):
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur((rng.random(shape) * 255).astype(np.uint8), (0, 0), 2)
    return np.clip(image.astype(int) * 3 - 180, 0, 255).astype(np.uint8)


CASES = [
    ((1024, 1024, 3), 224, 0.0),  # downscale, non-integer factor
    ((512, 512, 3), 256, 2.0),  # integer factor, blur
    ((300, 400, 3), 224, 1.0),
    ((257, 263), 128, 4.0),  # gray
    ((100, 120, 3), 224, 0.0),  # upscale
    ((100, 120), 224, 1.5),  # upscale with blur
    ((97, 300, 3), 128, 0.7),  # one axis up, one down: OpenCV's bilinear branch for both
    ((224, 224, 3), 224, 0.0),  # same size
    ((1, 1), 8, 0.0),
]


@pytest.mark.parametrize("shape,size,sigma", CASES)
@pytest.mark.parametrize("clahe", [True, False])
def test_within_one_grey_level_of_opencv_chain(shape, size, sigma, clahe):
    image = textured(sum(shape), shape)
    out = native.preprocess(image, size, clahe=clahe, sigma=sigma, threads=2)
    assert out.shape == (3, size, size) and out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    diff = np.abs(grey_levels(out) - reference_chain(image, size, clahe, sigma=sigma))
    assert diff.max() <= TOLERANCE


def test_channel_order_and_normalisation():
    """A pure-blue BGR image must come out with only the third (B of RGB) plane at 1.0."""
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 255
    out = native.preprocess(image, 8, clahe=False, mean=(0, 0, 0), std=(1, 1, 1))
    assert np.allclose(out[0], 0) and np.allclose(out[1], 0) and np.allclose(out[2], 1.0)
    out = native.preprocess(image, 8, clahe=False)
    assert np.allclose(out[2], (1.0 - 0.406) / 0.225, atol=1e-5)
    assert np.allclose(out[0], -0.485 / 0.229, atol=1e-5)


def test_gray_replicated_to_three_channels():
    image = textured(5, (64, 48))
    out = native.preprocess(image, 32, mean=(0, 0, 0), std=(1, 1, 1))
    assert np.allclose(out[0], out[1]) and np.allclose(out[1], out[2])


@pytest.mark.parametrize("shape", [(64, 64, 3), (64, 64), (1, 1, 3), (300, 300, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_frame_at_engine_size_is_normalised_exactly(shape, threads):
    """No CLAHE, no blur, already at the engine's size: each output is the float32 expression
    pixel * (1 / (255 std)) - mean / std of its own pixel (the resampling weights are exactly 1),
    with the bits of numpy's float32 arithmetic."""
    image = np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8)
    out = native.preprocess(
        image, shape[0], clahe=False, sigma=0.0, mean=MEAN, std=STD, threads=threads
    )
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., ::-1]
    scale = (1.0 / (255.0 * STD)).astype(np.float32)
    bias = (-MEAN / STD).astype(np.float32)
    expected = rgb.astype(np.float32) * scale + bias
    np.testing.assert_array_equal(out, np.ascontiguousarray(expected.transpose(2, 0, 1)))
    # a frame one pixel wider resamples and so differs somewhere: the case above is the shortcut
    if shape[0] > 1:
        wider = np.concatenate([image, image[:, :1]], axis=1)
        resampled = native.preprocess(
            wider, shape[0], clahe=False, sigma=0.0, mean=MEAN, std=STD, threads=threads
        )
        assert not np.array_equal(resampled, out)


def test_thread_count_does_not_change_result():
    image = textured(6, (333, 517, 3))
    one = native.preprocess(image, 224, sigma=1.2, threads=1)
    for threads in (2, 3, 7):
        assert np.array_equal(one, native.preprocess(image, 224, sigma=1.2, threads=threads))


def test_batch_stacks_single_results():
    images = [textured(i, (120, 140, 3)) for i in range(3)]
    batch = native.preprocess_batch(images, 64, sigma=0.5)
    assert batch.shape == (3, 3, 64, 64)
    for i, image in enumerate(images):
        assert np.array_equal(batch[i], native.preprocess(image, 64, sigma=0.5))
    with pytest.raises(ValueError, match="images"):
        native.preprocess_batch([], 64)
    with pytest.raises(ValueError, match="images"):
        native.preprocess_batch(images[0], 64)


@pytest.mark.parametrize(
    "image,kwargs,match",
    [
        (np.zeros((8, 8), np.float32), {}, "uint8"),
        (np.zeros((8, 8, 4), np.uint8), {}, "channels"),
        (np.zeros((0, 8, 3), np.uint8), {}, "empty"),
        (np.zeros((8, 8), np.uint8), {"size": 0}, "size"),
        (np.zeros((8, 8), np.uint8), {"size": 2.5}, "size"),
        (np.zeros((8, 8), np.uint8), {"sigma": -1.0}, "sigma"),
        (np.zeros((8, 8), np.uint8), {"sigma": float("nan")}, "sigma"),
        (np.zeros((8, 8), np.uint8), {"sigma": 5e9}, "sigma must be <= 1000"),
        (np.zeros((8, 8), np.uint8), {"clip_limit": float("inf")}, "clip_limit"),
        (np.zeros((8, 8), np.uint8), {"tile_grid": (0, 1)}, "tile_grid"),
        (np.zeros((8, 8), np.uint8), {"std": (1, 0, 1)}, "std"),
        (np.zeros((8, 8), np.uint8), {"mean": (1, 2)}, "mean"),
        (np.zeros((8, 8), np.uint8), {"threads": 0}, "threads"),
    ],
)
def test_bad_input_raises_value_error(image, kwargs, match):
    kwargs = {"size": 4, **kwargs}
    size = kwargs.pop("size")
    with pytest.raises(ValueError, match=match):
        native.preprocess(image, size, **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    colour=st.booleans(),
    size=st.integers(1, 48),
    sigma=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    clahe=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_match_reference(h, w, colour, size, sigma, clahe, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3) if colour else (h, w), dtype=np.uint8)
    out = native.preprocess(image, size, clahe=clahe, sigma=sigma)
    assert out.shape == (3, size, size) and out.dtype == np.float32
    diff = np.abs(grey_levels(out) - reference_chain(image, size, clahe, sigma=sigma))
    assert diff.max() <= TOLERANCE


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.int32]),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    size=st.integers(-2, 6),
)
def test_property_bad_shapes_and_dtypes_never_crash(dtype, shape, size):
    image = np.zeros(shape, dtype=dtype)
    try:
        out = native.preprocess(image, size)
    except ValueError:
        return
    assert out.shape == (3, size, size)
