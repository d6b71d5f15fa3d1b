"""autoweld.native.patchcore_score / platt / fuse against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoweld import native


def score_reference(embeddings, distances, indices, bank, neighbours) -> float:
    p = int(np.argmax(distances[:, 0]))
    s = float(distances[p, 0])
    support = neighbours[indices[p, 0]]
    d = np.linalg.norm(bank[support].astype(np.float64) - embeddings[p].astype(np.float64), axis=1)
    softmax = np.exp(d - d.max()) / np.exp(d - d.max()).sum()
    return (1.0 - softmax[0]) * s


def scoring_case(seed: int, patches: int = 50, bank_rows: int = 200, dim: int = 16, b: int = 5):
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((bank_rows, dim)).astype(np.float32)
    embeddings = rng.standard_normal((patches, dim)).astype(np.float32)
    distances, indices = native.knn(embeddings, bank, 3)
    neighbours = native.bank_neighbours(bank, b)
    return embeddings, distances, indices, bank, neighbours


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patchcore_score_matches_numpy(seed):
    case = scoring_case(seed)
    got = native.patchcore_score(*case)
    assert isinstance(got, float)
    assert got == pytest.approx(score_reference(*case), rel=1e-6)
    # The re-weighting shrinks the raw score s* (weight is in (0, 1)).
    assert 0.0 < got < float(case[1][:, 0].max())


def test_patchcore_score_large_distances_are_stable():
    embeddings, distances, indices, bank, neighbours = scoring_case(3)
    got = native.patchcore_score(embeddings * 1000, distances * 1000, indices, bank, neighbours)
    assert np.isfinite(got)
    ref = score_reference(embeddings * 1000, distances * 1000, indices, bank, neighbours)
    assert got == pytest.approx(ref, rel=1e-6)


def test_patchcore_score_bad_input():
    e, d, i, b, n = scoring_case(4)
    bad_i = i.copy()
    bad_i[np.argmax(d[:, 0]), 0] = 10_000
    with pytest.raises(ValueError, match="indices"):
        native.patchcore_score(e, d, bad_i, b, n)
    bad_n = n.copy()
    bad_n[:, 1] = -1
    with pytest.raises(ValueError, match="bank_neighbours"):
        native.patchcore_score(e, d, i, b, bad_n)
    with pytest.raises(ValueError, match="embeddings must be float32"):
        native.patchcore_score(e.astype(np.float64), d, i, b, n)
    with pytest.raises(ValueError, match="indices must be int64"):
        native.patchcore_score(e, d, i.astype(np.int32), b, n)
    with pytest.raises(ValueError, match="indices must have the shape"):
        native.patchcore_score(e, d, i[:, :2], b, n)
    with pytest.raises(ValueError, match="same feature dimension"):
        native.patchcore_score(e[:, :3], d, i, b, n)
    with pytest.raises(ValueError, match="one row per bank row"):
        native.patchcore_score(e, d, i, b, n[:5])
    with pytest.raises(ValueError, match="memory bank is empty"):
        native.patchcore_score(e, d, i, b[:0], n[:0])
    with pytest.raises(ValueError, match="no patches"):
        native.patchcore_score(e[:0], d[:0], i[:0], b, n)
    nan_d = d.copy()
    nan_d[0, 0] = np.nan
    with pytest.raises(ValueError, match="distances"):
        native.patchcore_score(e, nan_d, i, b, n)


def test_platt_matches_numpy_and_never_overflows():
    scores = np.array([-1e300, -1000.0, -3.0, 0.0, 0.5, 7.0, 1000.0, 1e300])
    got = native.platt(scores, 2.0, -1.0)
    assert got.dtype == np.float64 and got.shape == scores.shape
    with np.errstate(over="ignore"):
        ref = 1.0 / (1.0 + np.exp(2.0 * scores - 1.0))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    grid = native.platt(np.linspace(-5, 5, 12).reshape(3, 4), -1.5, 0.25)
    assert grid.shape == (3, 4)
    np.testing.assert_allclose(
        grid, 1 / (1 + np.exp(-1.5 * np.linspace(-5, 5, 12).reshape(3, 4) + 0.25)), rtol=1e-12
    )
    assert native.platt(0.0, 1.0, 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "scores,a,b,match",
    [
        (np.array([np.nan]), 1.0, 0.0, "scores"),
        (np.array([1.0]), np.inf, 0.0, "a must be finite"),
        (np.array([1.0]), 1.0, np.nan, "b must be finite"),
        (np.array(["x"]), 1.0, 0.0, "scores"),
        (np.array([1.0]), "1", 0.0, "a must be a number"),
    ],
)
def test_platt_bad_input(scores, a, b, match):
    with pytest.raises(ValueError, match=match):
        native.platt(scores, a, b)


def test_fuse_matches_numpy():
    probabilities = np.random.default_rng(0).random((20, 3))
    weights = np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(native.fuse(probabilities, weights), probabilities @ weights)
    single = native.fuse(probabilities[0], weights)
    assert isinstance(single, float)
    assert single == pytest.approx(float(probabilities[0] @ weights))


@pytest.mark.parametrize(
    "probabilities,weights,match",
    [
        (np.array([0.5, 0.5]), np.array([0.5, 0.6]), "sum to 1"),
        (np.array([0.5, 0.5]), np.array([1.5, -0.5]), "non-negative"),
        (np.array([0.5, 1.5]), np.array([0.5, 0.5]), r"\[0, 1\]"),
        (np.array([0.5, np.nan]), np.array([0.5, 0.5]), r"\[0, 1\]"),
        (np.array([0.5, 0.5, 0.5]), np.array([0.5, 0.5]), "one column per weight|m = 2"),
        (np.array([0.5]), np.array([]), "non-empty"),
        (np.array([0.5, 0.5]), np.array([[0.5, 0.5]]), "1-D"),
    ],
)
def test_fuse_bad_input(probabilities, weights, match):
    with pytest.raises(ValueError, match=match):
        native.fuse(probabilities, weights)


@settings(max_examples=50, deadline=None)
@given(
    patches=st.integers(0, 20),
    bank_rows=st.integers(0, 20),
    dim=st.integers(1, 6),
    b=st.integers(1, 4),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_patchcore_score_property(patches, bank_rows, dim, b, dtype):
    rng = np.random.default_rng(patches * 100 + bank_rows)
    bank = rng.standard_normal((bank_rows, dim)).astype(np.float32)
    embeddings = rng.standard_normal((patches, dim)).astype(dtype)
    if bank_rows == 0 or patches == 0 or dtype != np.float32:
        d = np.zeros((patches, 1), np.float32)
        i = np.zeros((patches, 1), np.int64)
        n = np.zeros((bank_rows, b), np.int64)
        with pytest.raises(ValueError):
            native.patchcore_score(embeddings, d, i, bank, n)
        return
    b = min(b, bank_rows)
    d, i = native.knn(embeddings, bank, 1)
    n = native.bank_neighbours(bank, b)
    got = native.patchcore_score(embeddings, d, i, bank, n)
    assert got == pytest.approx(score_reference(embeddings, d, i, bank, n), rel=1e-6, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(0, 10),
    m=st.integers(1, 5),
    ndim=st.sampled_from([1, 2]),
    scale=st.floats(0.0, 2.0),
)
def test_fuse_property(rows, m, ndim, scale):
    rng = np.random.default_rng(rows * 10 + m)
    probabilities = rng.random((rows, m)) if ndim == 2 else rng.random(m)
    weights = np.full(m, scale / m)
    if abs(scale - 1.0) > 1e-6:
        with pytest.raises(ValueError):
            native.fuse(probabilities, weights)
        return
    got = native.fuse(probabilities, weights)
    np.testing.assert_allclose(got, probabilities @ weights, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20),
    a=st.floats(-1e6, 1e6),
    b=st.floats(-1e6, 1e6),
)
def test_platt_property(scores, a, b):
    array = np.array(scores, dtype=np.float64)
    if not np.isfinite(array).all():
        with pytest.raises(ValueError, match="scores"):
            native.platt(array, a, b)
        return
    got = native.platt(array, a, b)
    assert got.shape == array.shape
    assert ((got >= 0) & (got <= 1)).all()
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(got, 1.0 / (1.0 + np.exp(a * array + b)), rtol=1e-9, atol=1e-300)
