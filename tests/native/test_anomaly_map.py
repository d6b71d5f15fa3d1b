"""native.anomaly_map against the torch computation (interpolate + anomalib's GaussianBlur2d)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoweld import native


def torch_reference(scores: np.ndarray, out_size: tuple[int, int], sigma: float) -> np.ndarray:
    t = torch.from_numpy(scores)
    batched = t if t.ndim == 3 else t[None]
    up = torch.nn.functional.interpolate(
        batched[:, None], size=out_size, mode="bilinear", align_corners=False
    )
    if sigma > 0:
        ksize = 2 * int(4.0 * sigma + 0.5) + 1
        x = torch.arange(ksize, dtype=torch.float32) - ksize // 2
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        pad = ksize // 2
        up = torch.nn.functional.pad(up, (pad, pad, pad, pad), mode="reflect")
        up = torch.nn.functional.conv2d(up, kernel.view(1, 1, 1, -1))
        up = torch.nn.functional.conv2d(up, kernel.view(1, 1, -1, 1))
    out = up[:, 0].numpy()
    return out if scores.ndim == 3 else out[0]


@pytest.mark.parametrize(
    "shape,out_size,sigma",
    [
        ((28, 28), 224, 4.0),
        ((2, 28, 28), (224, 224), 4.0),
        ((1, 7, 9), (50, 61), 2.0),
        ((3, 16, 16), (256, 200), 0.0),
        ((32, 32), 20, 1.0),  # downsampling too
        ((1, 1), 40, 4.0),
    ],
)
def test_matches_torch(shape, out_size, sigma):
    rng = np.random.default_rng(0)
    scores = (rng.random(shape) * 5).astype(np.float32)
    size = (out_size, out_size) if isinstance(out_size, int) else out_size
    got = native.anomaly_map(scores, out_size, sigma=sigma, threads=2)
    expected = torch_reference(scores, size, sigma)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_constant_map_stays_constant():
    scores = np.full((2, 5, 6), 3.5, np.float32)
    assert np.allclose(native.anomaly_map(scores, (33, 47)), 3.5, rtol=1e-6)


def test_small_output_with_large_kernel_is_defined():
    """torch refuses reflect padding wider than the map; we fold the reflection again."""
    scores = np.random.default_rng(1).random((4, 4)).astype(np.float32)
    out = native.anomaly_map(scores, 8, sigma=4.0)
    assert out.shape == (8, 8) and np.isfinite(out).all()
    assert scores.min() - 1e-6 <= out.min() and out.max() <= scores.max() + 1e-6


@pytest.mark.parametrize(
    "scores,kwargs,match",
    [
        (np.zeros((4, 4), np.float64), {}, "float32"),
        (np.zeros((4, 4), np.uint8), {}, "float32"),
        (np.zeros(4, np.float32), {}, "patch_scores"),
        (np.zeros((1, 1, 4, 4), np.float32), {}, "patch_scores"),
        (np.zeros((0, 4), np.float32), {}, "empty"),
        (np.array([[np.nan, 0]], np.float32), {}, "NaN"),
        (np.array([[np.inf, 0]], np.float32), {}, "NaN or Inf"),
        (np.zeros((4, 4), np.float32), {"out_size": 0}, "out_size"),
        (np.zeros((4, 4), np.float32), {"out_size": (4,)}, "out_size"),
        (np.zeros((4, 4), np.float32), {"sigma": -1.0}, "sigma"),
        (np.zeros((4, 4), np.float32), {"sigma": float("nan")}, "sigma"),
        (np.zeros((4, 4), np.float32), {"threads": -2}, "threads"),
    ],
)
def test_bad_input_raises_value_error(scores, kwargs, match):
    kwargs = {"out_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        native.anomaly_map(scores, **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    out_h=st.integers(1, 64),
    out_w=st.integers(1, 64),
    sigma=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_match_torch(n, h, w, out_h, out_w, sigma, seed):
    scores = np.random.default_rng(seed).random((n, h, w)).astype(np.float32)
    got = native.anomaly_map(scores, (out_h, out_w), sigma=sigma)
    assert got.shape == (n, out_h, out_w)
    radius = int(4.0 * sigma + 0.5) if sigma > 0 else 0
    if radius < min(out_h, out_w):  # torch's reflect pad needs pad < size
        expected = torch_reference(scores, (out_h, out_w), sigma)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
)
def test_property_bad_input_never_crashes(dtype, shape):
    scores = np.zeros(shape, dtype=dtype)
    try:
        out = native.anomaly_map(scores, 5)
    except ValueError:
        return
    assert out.shape[-2:] == (5, 5)
