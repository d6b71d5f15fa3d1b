"""autoweld.native.coreset against a straightforward numpy greedy k-center."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoweld import native


def greedy_reference(x: np.ndarray, n: int, start: int) -> np.ndarray:
    """PatchCore's greedy farthest-point selection, float64, lowest index on ties."""
    x = x.astype(np.float64)
    chosen = [start]
    min_dist = ((x - x[start]) ** 2).sum(1)
    min_dist[start] = -1.0
    for _ in range(n - 1):
        nxt = int(np.argmax(min_dist))
        chosen.append(nxt)
        min_dist = np.minimum(min_dist, ((x - x[nxt]) ** 2).sum(1))
        min_dist[chosen] = -1.0
    return np.array(chosen, dtype=np.int64)


def features(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def test_projection_is_seeded_gaussian_and_used():
    p = native.coreset_projection(300, 64, seed=3)
    assert p.shape == (300, 64) and p.dtype == np.float32
    np.testing.assert_array_equal(p, native.coreset_projection(300, 64, seed=3))
    assert not np.array_equal(p, native.coreset_projection(300, 64, seed=4))
    assert abs(p.mean()) < 0.01 and abs(p.var() * 64 - 1.0) < 0.05
    f = features(500, 300, 1)
    projected = native.coreset_project(f, 64, seed=3)
    np.testing.assert_allclose(projected, f @ p, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows,dim,projection_dim,n", [(2000, 300, 64, 60), (1500, 40, 128, 50)])
def test_coreset_equals_numpy_greedy(rows, dim, projection_dim, n):
    f = features(rows, dim, 2)
    got = native.coreset(f, n, projection_dim=projection_dim, seed=11, threads=2)
    x = native.coreset_project(f, projection_dim, seed=11) if dim > projection_dim else f
    # The first index is the seeded start; the rest must follow the greedy rule exactly.
    np.testing.assert_array_equal(got, greedy_reference(x, n, int(got[0])))


def test_coreset_without_projection_and_both_kernels():
    f = features(20000, 24, 5)  # above 8192 rows per worker: several workers
    ref = greedy_reference(f, 25, 123)
    isas = ["portable"] + (["avx2"] if native.has_avx2_fma() else [])
    for isa in isas:
        for threads in (1, 3):
            got = native._native.coreset_select(f, 25, 123, threads, isa)
            np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(native.coreset(f, 25, projection_dim=0, seed=9)[1:3].size, 2)


def test_coreset_deterministic_distinct_seeded():
    f = features(3000, 200, 6)
    a = native.coreset(f, 300, seed=1, threads=1)
    b = native.coreset(f, 300, seed=1, threads=2)
    c = native.coreset(f, 300, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64 and len(np.unique(a)) == 300
    assert ((a >= 0) & (a < 3000)).all()


def test_coreset_all_and_duplicates():
    f = np.ones((30, 3), dtype=np.float32)
    f[:4, 0] = np.arange(4)
    np.testing.assert_array_equal(native.coreset(f, 30), np.arange(30))
    picked = native.coreset(f, 20, seed=4)
    assert len(np.unique(picked)) == 20
    # The four distinct points come first (after the start, which may be any).
    assert set(range(4)) <= set(picked[:5].tolist())


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros((5, 3), np.float64), 2), "features must be float32"),
        ((np.zeros((5,), np.float32), 2), "features must be 2-D"),
        ((np.zeros((0, 3), np.float32), 1), "no rows"),
        ((np.zeros((5, 0), np.float32), 1), "dimension"),
        ((np.zeros((5, 3), np.float32), 0), "n must be in"),
        ((np.zeros((5, 3), np.float32), 6), "n must be in"),
        ((np.zeros((5, 3), np.float32), 2, -1), "projection_dim"),
        ((np.zeros((5, 3), np.float32), 2, 2, -5), "seed"),
    ],
)
def test_coreset_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        native.coreset(*args)


def test_coreset_rejects_non_finite():
    f = features(10, 3, 0)
    f[3, 1] = np.nan
    with pytest.raises(ValueError, match="features"):
        native.coreset(f, 2)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 60),
    dim=st.integers(0, 12),
    n=st.integers(-1, 70),
    projection_dim=st.integers(0, 8),
    dtype=st.sampled_from([np.float32, np.float64, np.int64]),
)
def test_coreset_property(rows, dim, n, projection_dim, dtype):
    f = np.random.default_rng(rows + dim).standard_normal((rows, dim)).astype(dtype)
    if dtype != np.float32 or rows == 0 or dim == 0 or not 1 <= n <= rows:
        with pytest.raises(ValueError):
            native.coreset(f, n, projection_dim=projection_dim)
        return
    got = native.coreset(f, n, projection_dim=projection_dim)
    assert got.shape == (n,) and len(np.unique(got)) == n


@pytest.mark.slow
def test_coreset_200k_by_1536():
    f = np.random.default_rng(0).standard_normal((200_000, 1536), dtype=np.float32)
    got = native.coreset(f, 200, seed=0, threads=2)
    assert len(np.unique(got)) == 200


@settings(max_examples=30, deadline=None)
@given(dim=st.integers(-2, 40), projection_dim=st.integers(-2, 40), seed=st.integers(-1, 2**64))
def test_coreset_projection_property(dim, projection_dim, seed):
    if dim < 1 or projection_dim < 1 or not 0 <= seed < 2**64:
        with pytest.raises(ValueError):
            native.coreset_projection(dim, projection_dim, seed)
        return
    p = native.coreset_projection(dim, projection_dim, seed)
    assert p.shape == (dim, projection_dim) and np.isfinite(p).all()


@pytest.mark.parametrize("entry", ["coreset", "coreset_select"])
def test_binding_checks_n_before_allocating(entry):
    """The raw bindings (behind native.coreset's own checks) refuse n > rows before they
    allocate n outputs: a huge n is a ValueError, not a MemoryError or a crash."""
    from autoweld import _native

    features = np.zeros((5, 3), np.float32)
    huge = 1 << 60  # 8 EiB of int64 if allocated first
    args = (features, huge, 0, 0) if entry == "coreset" else (features, huge, 0, 1, "portable")
    with pytest.raises(ValueError, match="n must be <= the number of feature rows"):
        getattr(_native, entry)(*args)
