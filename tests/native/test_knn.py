"""autoweld.native.knn / KnnIndex / bank_neighbours against a numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoweld import native

PATHS = ["portable"] + (["avx2"] if native.has_avx2_fma() else [])


def brute_force(queries: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 distances, stable argsort: ties keep the lower index first."""
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    squared = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * q @ b.T
    squared = np.maximum(squared, 0.0)
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(squared, order, 1)), order


def tie_free(rows: int, dim: int, seed: int) -> np.ndarray:
    """Random data whose distances have no exact ties (continuous values)."""
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def assert_matches(queries, bank, k, distances, indices):
    ref_d, ref_i = brute_force(queries, bank, k)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    assert distances.shape == indices.shape == (queries.shape[0], k)
    np.testing.assert_allclose(distances, ref_d, rtol=1e-4, atol=1e-3)
    # Indices must agree except where the reference has a near-tie (round-off can swap them).
    sorted_d = np.sort(
        np.sqrt(np.maximum(brute_force(queries, bank, bank.shape[0])[0], 0)), axis=1
    )[:, : k + 1]
    gaps = np.diff(sorted_d, axis=1)
    near_tie = np.zeros_like(ref_i, dtype=bool)
    near_tie[:, : gaps.shape[1]] |= gaps[:, :k] < 1e-4
    near_tie[:, 1:] |= gaps[:, : k - 1] < 1e-4
    assert (indices[~near_tie] == ref_i[~near_tie]).all()
    assert (np.diff(distances, axis=1) >= 0).all()


SHAPES = [
    (1, 1, 1),
    (1, 20, 5),
    (7, 1, 3),
    (16, 96, 8),
    (17, 241, 13),  # one past the 16-query panel, one past the 240-row block
    (50, 500, 152),
    (33, 300, 257),  # one past the 256-wide depth chunk
    (5, 64, 1),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("q,m,d", SHAPES)
@pytest.mark.parametrize("k", [1, 9, 16])
def test_knn_equals_brute_force(path, q, m, d, k):
    k = min(k, m)
    queries = tie_free(q, d, 1)
    bank = tie_free(m, d, 2)
    distances, indices = native._native.knn(queries, bank, k, 2, path)
    assert_matches(queries, bank, k, distances, indices)
    if path == PATHS[-1]:
        d2, i2 = native.knn(queries, bank, k, threads=1)
        np.testing.assert_array_equal(i2, indices)


def test_knn_large_dims():
    queries = tie_free(300, 1536, 3)
    bank = tie_free(5000, 1536, 4)
    distances, indices = native.knn(queries, bank, 9, threads=2)
    assert_matches(queries, bank, 9, distances, indices)


def test_knn_k_up_to_bank_size_and_exact_ties():
    bank = np.array([[1, 1], [0, 0], [1, 1], [0, 0]], dtype=np.float32)
    queries = np.array([[0.9, 0.9], [0.0, 0.0]], dtype=np.float32)
    distances, indices = native.knn(queries, bank, 4)
    np.testing.assert_array_equal(indices, [[0, 2, 1, 3], [1, 3, 0, 2]])
    assert distances[1, 0] == 0.0 and distances[1, 1] == 0.0


def test_knn_index_matches_knn_and_keeps_bank():
    bank = tie_free(400, 24, 5)
    queries = tie_free(30, 24, 6)
    index = native.KnnIndex(bank, threads=2)
    assert index.size == 400 and index.dim == 24
    d1, i1 = index.search(queries, 5)
    d2, i2 = native.knn(queries, bank, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    with pytest.raises(ValueError, match="k"):
        index.search(queries, 401)
    with pytest.raises(ValueError, match="queries"):
        index.search(tie_free(3, 23, 0), 1)


def test_non_contiguous_input_is_accepted():
    bank = tie_free(100, 40, 7)
    queries = tie_free(20, 80, 8)[:, ::2]
    assert not queries.flags.c_contiguous
    distances, indices = native.knn(queries, bank[::-1], 3)
    assert_matches(np.ascontiguousarray(queries), bank[::-1].copy(), 3, distances, indices)


def test_bank_neighbours_itself_first():
    bank = tie_free(200, 16, 9)
    neighbours = native.bank_neighbours(bank, 6)
    assert neighbours.shape == (200, 6) and neighbours.dtype == np.int64
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(200))
    _, ref = brute_force(bank, bank, 6)
    np.testing.assert_array_equal(neighbours, ref)
    duplicated = np.zeros((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(native.bank_neighbours(duplicated, 3)[:, 0], [0, 1, 2])


@pytest.mark.parametrize(
    "queries,bank,k,match",
    [
        (np.zeros((2, 3), np.float64), np.zeros((4, 3), np.float32), 1, "queries must be float32"),
        (np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float64), 1, "bank must be float32"),
        (np.zeros(3, np.float32), np.zeros((4, 3), np.float32), 1, "queries must be 2-D"),
        (np.zeros((2, 3), np.float32), np.zeros((4, 3, 1), np.float32), 1, "bank must be 2-D"),
        (np.zeros((2, 3), np.float32), np.zeros((0, 3), np.float32), 1, "memory bank is empty"),
        (np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32), 1, "must match"),
        (np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), 5, "k must be in"),
        (np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), 0, "k must be in"),
        (np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), 1.5, "k must be an int"),
        ([[0.0]], np.zeros((4, 1), np.float32), 1, "queries must be a numpy array"),
    ],
)
def test_knn_bad_input(queries, bank, k, match):
    with pytest.raises(ValueError, match=match):
        native.knn(queries, bank, k)


@pytest.mark.parametrize("name", ["queries", "bank"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_knn_rejects_non_finite(name, bad):
    arrays = {"queries": tie_free(3, 4, 0), "bank": tie_free(5, 4, 1)}
    arrays[name][1, 2] = bad
    with pytest.raises(ValueError, match=name):
        native.knn(arrays["queries"], arrays["bank"], 2)
    if name == "bank":
        with pytest.raises(ValueError, match="bank"):
            native.KnnIndex(arrays["bank"])


def test_core_rejects_unknown_path_and_float64():
    with pytest.raises(ValueError, match="path"):
        native._native.knn(tie_free(2, 2, 0), tie_free(2, 2, 1), 1, 1, "gpu")
    with pytest.raises(TypeError):  # the core itself never converts dtypes silently
        native._native.knn(np.zeros((2, 2)), tie_free(2, 2, 1), 1)


@settings(max_examples=60, deadline=None)
@given(
    q=st.integers(0, 40),
    m=st.integers(0, 40),
    d=st.integers(0, 20),
    k=st.integers(-1, 45),
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32]),
)
def test_knn_property_shapes_or_value_error(q, m, d, k, dtype):
    rng = np.random.default_rng(q * 1000 + m * 10 + d)
    queries = rng.standard_normal((q, d)).astype(dtype)
    bank = rng.standard_normal((m, d)).astype(dtype)
    valid = dtype == np.float32 and m >= 1 and d >= 1 and 1 <= k <= m
    if not valid:
        with pytest.raises(ValueError):
            native.knn(queries, bank, k)
        return
    distances, indices = native.knn(queries, bank, k)
    assert distances.shape == indices.shape == (q, k)
    assert ((indices >= 0) & (indices < m)).all()
    if q:
        assert_matches(queries, bank, k, distances, indices)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 30),
    d=st.integers(0, 6),
    b=st.integers(-1, 35),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
)
def test_bank_neighbours_property(m, d, b, dtype):
    bank = np.random.default_rng(m * 7 + d).standard_normal((m, d)).astype(dtype)
    if dtype != np.float32 or m == 0 or d == 0 or not 1 <= b <= m:
        with pytest.raises(ValueError):
            native.bank_neighbours(bank, b)
        return
    neighbours = native.bank_neighbours(bank, b)
    assert neighbours.shape == (m, b)
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(m))
    assert all(len(set(row)) == b for row in neighbours.tolist())


@settings(max_examples=40, deadline=None)
@given(
    q=st.integers(0, 20),
    m=st.integers(1, 30),
    dq=st.integers(1, 6),
    db=st.integers(1, 6),
    k=st.integers(0, 32),
)
def test_knn_index_property(q, m, dq, db, k):
    rng = np.random.default_rng(q * 31 + m)
    index = native.KnnIndex(rng.standard_normal((m, db)).astype(np.float32))
    queries = rng.standard_normal((q, dq)).astype(np.float32)
    if dq != db or not 1 <= k <= m:
        with pytest.raises(ValueError):
            index.search(queries, k)
        return
    distances, indices = index.search(queries, k)
    assert distances.shape == indices.shape == (q, k)
    assert (np.diff(distances, axis=1) >= 0).all()
