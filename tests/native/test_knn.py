"""autoweld.native.knn / KnnIndex / bank_neighbours against a numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoweld import native

# Every ISA cap this CPU runs (the kernels' flavours).
ISAS = (
    ["portable"]
    + (["avx2"] if native.has_avx2_fma() else [])
    + (["avx512"] if native.has_avx512() else [])
)


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
    (9, 130, 2100),  # two depth chunks (deeper than 2048): partial sums carried between them
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("q,m,d", SHAPES)
@pytest.mark.parametrize("k", [1, 9, 16])
def test_knn_equals_brute_force(isa, q, m, d, k):
    k = min(k, m)
    queries = tie_free(q, d, 1)
    bank = tie_free(m, d, 2)
    distances, indices = native._native.knn(queries, bank, k, 2, isa)
    assert_matches(queries, bank, k, distances, indices)
    if isa == ISAS[-1]:
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


@pytest.mark.parametrize("q,m,d", [(40, 700, 24), (9, 130, 2100)])
def test_index_with_its_packed_bank_equals_knn_at_any_thread_count(q, m, d):
    # The brute-force index packs its bank once; knn() packs per call (shared between threads
    # when there are several): the same kernel on the same layout, the same bits.
    bank, queries = tie_free(m, d, 3), tie_free(q, d, 4)
    index = native.KnnIndex(bank, threads=2, prune=False)
    reference = native.knn(queries, bank, 5, threads=1)
    for threads in (1, 2, 3):
        for got in (
            index.search(queries, 5, threads=threads),
            native.knn(queries, bank, 5, threads),
        ):
            np.testing.assert_array_equal(got[1], reference[1])
            np.testing.assert_array_equal(got[0], reference[0])
    assert_matches(queries, bank, 5, *reference)


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


def test_core_rejects_unknown_isa_and_float64():
    with pytest.raises(ValueError, match="isa"):
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


# ---- pruned KnnIndex: a lower bound from the bank's principal axes ------------------------


def low_rank(rows: int, dim: int, rank: int, seed: int, noise: float = 0.05) -> np.ndarray:
    """Rows near a rank-`rank` subspace, as patch features of one product are: most of the
    variance on few axes, so the pruning bound is tight and really prunes."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((rank, dim)) * np.linspace(3.0, 1.0, rank)[:, None]
    rows_ = rng.standard_normal((rows, rank)) @ mix + noise * rng.standard_normal((rows, dim))
    return rows_.astype(np.float32)


PRUNED_SHAPES = [
    # queries, bank rows, dim, basis rows, k
    (1, 30, 8, 2, 1),
    (5, 7, 3, 1, 7),  # k = bank size
    (17, 245, 40, 8, 9),  # one past the panel; bank not a multiple of the 6/24-row tiles
    (50, 1500, 152, 16, 1),  # the weld shape, scaled down
    (33, 500, 64, 16, 16),
    (16, 481, 257, 8, 5),  # depth past 256
    (20, 700, 96, 24, 2),  # deeper bases than the bundles' 16 axes
    (40, 1200, 152, 40, 3),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("q,m,d,p,k", PRUNED_SHAPES)
def test_pruned_index_equals_brute_force(isa, q, m, d, p, k):
    bank = low_rank(m, d, rank=max(1, p // 2), seed=m + d)
    normal = low_rank(q, d, rank=max(1, p // 2), seed=m + d + 1)
    # Some queries far from the bank (anomalies): their bound admits many rows.
    queries = np.concatenate([normal, 5.0 * tie_free(3, d, 7)]).astype(np.float32)
    basis = native.principal_axes(bank).axes[:p].copy()
    index = native._native.KnnIndex(bank, basis, 2)
    assert index.prefix == p
    distances, indices = index.search(queries, k, 2, isa)
    assert_matches(queries, bank, k, distances, indices)
    # Same answer as the brute-force index on the same bank, whatever the thread count.
    d1, i1 = native._native.KnnIndex(bank, basis, 1).search(queries, k, 3, isa)
    np.testing.assert_array_equal(i1, indices)
    np.testing.assert_array_equal(d1, distances)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("p", [8, 16, 40])
def test_pruned_index_is_the_brute_force_to_the_bit(isa, p):
    # Whatever the depth of the bound, the neighbours and their float32 distances are the brute
    # force's: the bound only decides which rows get the full distance, never its value.
    bank = low_rank(2000, 152, rank=12, seed=5)
    queries = np.concatenate([low_rank(60, 152, rank=12, seed=6), 4.0 * tie_free(8, 152, 9)])
    queries = queries.astype(np.float32)
    basis = native.principal_axes(bank).axes[:p].copy()
    pruned = native._native.KnnIndex(bank, basis, 2).search(queries, 1, 2, isa)
    brute = native._native.KnnIndex(bank, 2).search(queries, 1, 2, isa)
    np.testing.assert_array_equal(pruned[1], brute[1])
    np.testing.assert_array_equal(pruned[0], brute[0])


def test_pruned_index_on_isotropic_data_is_still_exact():
    # Variance spread evenly: the bound prunes little, the answer must not change.
    bank = tie_free(700, 24, 11)
    queries = tie_free(40, 24, 12)
    index = native.KnnIndex(bank, prune=True)
    assert index.prefix_dims > 0
    assert_matches(queries, bank, 4, *index.search(queries, 4))


def test_pruned_index_ties_list_the_lower_index_first():
    base = low_rank(200, 16, 3, seed=5)
    bank = np.concatenate([base, base[:50]])  # rows 200..249 duplicate rows 0..49
    index = native.KnnIndex(bank, prune=True)
    distances, indices = index.search(base[:50], 2)
    np.testing.assert_array_equal(indices[:, 0], np.arange(50))
    np.testing.assert_array_equal(indices[:, 1], np.arange(200, 250))
    # Equal rows, equal distances (0 up to the round-off of |q|^2 + |b|^2 - 2 q.b).
    np.testing.assert_array_equal(distances[:, 0], distances[:, 1])
    assert (distances[:, 0] <= 1e-3 * np.linalg.norm(base[:50], axis=1)).all()


@pytest.mark.parametrize("isa", ISAS)
def test_pruned_index_breaks_ties_between_equal_rows_as_the_brute_force(isa):
    # Every value the pruned search compares is summed as the brute force sums it, whatever
    # row batch it falls in: equal rows, equal distances, the lower index first - exactly the
    # brute force's answer, on every ISA.
    for seed in range(40):
        rng = np.random.default_rng(seed)
        nb, dim, m = int(rng.integers(30, 230)), int(rng.integers(9, 69)), int(rng.integers(1, 5))
        bank = rng.uniform(-1, 1, (nb, dim)).astype(np.float32)
        half = nb // 2
        bank[half:] = bank[rng.integers(0, half, nb - half)]  # each later row repeats one
        queries = rng.uniform(-1, 1, (int(rng.integers(1, 21)), dim)).astype(np.float32)
        basis = np.eye(m, dim, dtype=np.float32)
        pruned = native._native.KnnIndex(bank, basis, 1)
        brute = native._native.KnnIndex(bank, 1)
        for k in (1, 3, 8):
            d1, i1 = pruned.search(queries, k, 1, isa)
            d2, i2 = brute.search(queries, k, 1, isa)
            np.testing.assert_array_equal(i1, i2)
            np.testing.assert_array_equal(d1, d2)


def clustered(clusters: int, per: int, dim: int, seed: int, spread: float = 4.0) -> np.ndarray:
    """Tight clusters far apart, as the patches of a few kinds of surface are: most bank tiles
    are out of reach of a query, so the pruned search skips them."""
    rng = np.random.default_rng(seed)
    centres = spread * rng.standard_normal((clusters, dim)) * np.linspace(3.0, 0.2, dim)
    rows_ = np.repeat(centres, per, axis=0) + 0.1 * rng.standard_normal((clusters * per, dim))
    return rng.permutation(rows_).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1, 5, 30, 60])  # 30, 60: more rows than one 24-row tile
def test_pruned_index_skipping_tiles_keeps_the_brute_force_answer(isa, k):
    bank = clustered(40, 75, 48, seed=3)
    rng = np.random.default_rng(4)
    near = bank[rng.integers(0, len(bank), 40)] + 0.05 * rng.standard_normal((40, 48))
    between = 0.5 * (bank[rng.integers(0, len(bank), 20)] + bank[rng.integers(0, len(bank), 20)])
    far = 20.0 * tie_free(6, 48, 5)  # anomalies: no tile is near
    exact = bank[rng.integers(0, len(bank), 10)]  # on a row: distance 0, inside its box
    queries = np.concatenate([near, between, far, exact]).astype(np.float32)
    basis = native.principal_axes(bank).axes[:8].copy()
    d1, i1 = native._native.KnnIndex(bank, basis, 2).search(queries, k, 2, isa)
    d2, i2 = native._native.KnnIndex(bank, 2).search(queries, k, 2, isa)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


@pytest.mark.parametrize("isa", ISAS)
def test_pruned_index_tile_margins_hold_far_from_the_origin(isa):
    # Rows and queries share a large offset, so |q|^2 + |b|^2 - 2 q.b loses most of its digits:
    # the computed values of near rows differ by round-off alone, and a tile test without its
    # round-off margins drops rows the brute force keeps.
    rng = np.random.default_rng(8)
    offset = 300.0 * rng.standard_normal(32)
    bank = (offset + clustered(30, 40, 32, seed=9, spread=0.02)).astype(np.float32)
    queries = bank[rng.integers(0, len(bank), 64)] + 1e-3 * rng.standard_normal((64, 32))
    queries = queries.astype(np.float32)
    basis = native.principal_axes(bank).axes[:8].copy()
    for k in (1, 4):
        d1, i1 = native._native.KnnIndex(bank, basis, 2).search(queries, k, 2, isa)
        d2, i2 = native._native.KnnIndex(bank, 2).search(queries, k, 2, isa)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(d1, d2)


BF16_CASES = {
    # name: (bank, queries); dims odd and even, past 256, ties and near-ties
    "random": (tie_free(700, 64, 21), tie_free(50, 64, 22)),
    "odd_dim": (tie_free(300, 3, 23), tie_free(33, 3, 24)),
    "one_dim": (tie_free(100, 1, 25), tie_free(17, 1, 26)),
    "deep": (tie_free(500, 301, 27), tie_free(20, 301, 28)),
    "clustered": (clustered(30, 40, 64, seed=29), clustered(4, 10, 64, seed=29)),
    "far_from_origin": (
        (100.0 + clustered(20, 30, 32, seed=30, spread=0.01)).astype(np.float32),
        (100.0 + clustered(2, 20, 32, seed=30, spread=0.01)).astype(np.float32),
    ),
}


@pytest.mark.parametrize("case", sorted(BF16_CASES))
def test_brute_force_index_is_the_brute_force_to_the_bit_on_every_isa(case):
    # On a CPU with AVX-512 BF16 the brute-force index's k = 1 search takes a bf16 first pass
    # and computes exact values only for the rows that pass its bound: the neighbours and
    # distances must still be the FP32 brute force's, to the bit (ties to the lower index).
    bank, queries = BF16_CASES[case]
    rng = np.random.default_rng(31)
    dup = bank[rng.integers(0, len(bank), len(bank) // 4)]
    bank = np.concatenate([bank, dup, bank[:5]]).astype(np.float32)  # exact duplicates: ties
    queries = np.concatenate([queries, bank[:7], 30.0 * queries[:3]]).astype(np.float32)
    index = native._native.KnnIndex(bank, 2)
    for isa in ISAS:
        reference = native._native.knn(queries, bank, 1, 2, isa)  # the FP32 GEMM of that ISA
        d, i = index.search(queries, 1, 2, isa)
        np.testing.assert_array_equal(i, reference[1])
        np.testing.assert_array_equal(d, reference[0])


def test_absurd_k_is_a_value_error_not_a_memory_error():
    bank, queries = tie_free(50, 8, 1), tie_free(3, 8, 2)
    for search in (
        lambda k: native._native.knn(queries, bank, k, 1),
        lambda k: native._native.KnnIndex(bank, 1).search(queries, k, 1),
        lambda k: native._native.KnnIndex(bank, np.eye(2, 8, dtype=np.float32), 1).search(
            queries, k, 1
        ),
    ):
        with pytest.raises(ValueError, match="exceeds the memory bank size"):
            search(2**40)


def test_small_banks_skip_the_principal_axes(monkeypatch):
    def no_pca(*args, **kwargs):
        raise AssertionError("a bank too small to prune must not pay for a PCA")

    monkeypatch.setattr(native, "principal_axes", no_pca)
    assert native.KnnIndex(low_rank(native.PRUNE_MIN_ROWS - 1, 64, 4, seed=0)).prefix_dims == 0


def test_automatic_choice_prunes_concentrated_banks_only():
    concentrated = low_rank(2000, 64, 4, seed=1)
    auto = native.KnnIndex(concentrated)
    assert 0 < auto.prefix_dims <= 16 and auto.prefix_dims % 8 == 0
    assert native.KnnIndex(concentrated, prune=False).prefix_dims == 0
    assert native.KnnIndex(tie_free(2000, 64, 2)).prefix_dims == 0  # spread: brute force
    assert native.KnnIndex(low_rank(500, 64, 4, seed=3)).prefix_dims == 0  # too small
    assert native.KnnIndex(tie_free(2000, 64, 2), prune=True).prefix_dims > 0
    basis = native.principal_axes(concentrated).axes[:24].copy()
    assert native.KnnIndex(concentrated, basis=basis).prefix_dims == 24
    queries = low_rank(64, 64, 4, seed=9)
    assert_matches(queries, concentrated, 3, *auto.search(queries, 3))


def test_principal_axes_are_orthonormal_sorted_and_deterministic():
    bank = low_rank(3000, 32, 3, seed=4)
    pca = native.principal_axes(bank)
    assert pca.axes.shape == (32, 32) and pca.axes.dtype == np.float32
    np.testing.assert_allclose(pca.axes @ pca.axes.T, np.eye(32), atol=1e-5)
    cumulative = pca.cumulative_variance
    assert (np.diff(cumulative) >= -1e-12).all() and abs(cumulative[-1] - 1.0) < 1e-9
    assert cumulative[2] > 0.95  # three axes hold a rank-3 bank's variance
    assert pca.prefix_for(0.8) == 8
    np.testing.assert_array_equal(native.principal_axes(bank).axes, pca.axes)
    constant = native.principal_axes(np.ones((10, 4), np.float32))
    assert np.isfinite(constant.cumulative_variance).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"basis": 2.0 * np.eye(3, 8, dtype=np.float32)}, "orthonormal"),
        ({"basis": np.eye(3, 7, dtype=np.float32)}, "basis must be"),
        ({"basis": np.eye(8, 8, dtype=np.float32)}, "basis must be"),
        ({"basis": np.eye(3, 8)}, "basis must be float32"),
        ({"basis": np.full((2, 8), np.nan, np.float32)}, "basis"),
        ({"prune": "yes"}, "prune"),
    ],
)
def test_pruned_index_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        native.KnnIndex(tie_free(50, 8, 1), **kwargs)


def test_pruning_needs_two_features():
    with pytest.raises(ValueError, match="at least 2 features"):
        native.KnnIndex(tie_free(50, 1, 1), prune=True)
    assert native.KnnIndex(tie_free(50, 1, 1)).prefix_dims == 0


@settings(max_examples=40, deadline=None)
@given(
    q=st.integers(0, 40),
    m=st.integers(1, 80),
    d=st.integers(2, 40),
    p=st.integers(1, 39),
    k=st.integers(1, 20),
    seed=st.integers(0, 1000),
)
def test_pruned_index_property(q, m, d, p, k, seed):
    p, k = min(p, d - 1), min(k, m)
    bank = low_rank(m, d, rank=max(1, d // 4), seed=seed)
    queries = (
        low_rank(q, d, rank=max(1, d // 4), seed=seed + 1) if q else np.zeros((0, d), np.float32)
    )
    basis = native.principal_axes(bank).axes[:p].copy()
    distances, indices = native.KnnIndex(bank, basis=basis).search(queries, k)
    assert distances.shape == indices.shape == (q, k)
    if q:
        assert_matches(queries, bank, k, distances, indices)


# ---- KnnIndex owns its bank ----------------------------------------------------------------


@pytest.mark.parametrize("prune", [False, True])
def test_index_owns_its_bank(prune):
    bank = low_rank(1500, 32, 4, seed=21)
    queries = low_rank(40, 32, 4, seed=22)
    original = bank.copy()
    index = native.KnnIndex(bank, prune=prune)
    assert (index.prefix_dims > 0) == prune
    before = index.search(queries, 5)
    # The caller's array changes afterwards: row 0 becomes every query's nearest, the rest far.
    bank[0] = queries[0]
    bank[1:] = 1e3
    after = index.search(queries, 5)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert_matches(queries, original, 5, *after)
    # The index's copy: the original rows, not the caller's memory, and read-only for good.
    view = index.bank
    assert view.dtype == np.float32 and view.shape == bank.shape
    np.testing.assert_array_equal(view, original)
    assert not np.shares_memory(view, bank)
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0, 0] = 1.0
    with pytest.raises(ValueError):
        view.flags.writeable = True
    # Scoring can share the view instead of keeping a second copy of the bank.
    neighbours = native.bank_neighbours(original, 3)
    distances, indices = after[0][:, :1].copy(), after[1][:, :1].copy()
    assert native.patchcore_score(queries, distances, indices, view, neighbours) == (
        native.patchcore_score(queries, distances, indices, original, neighbours)
    )
    del index  # the view keeps the index's memory alive
    np.testing.assert_array_equal(view, original)


# ---- pruning on a bank with a large common offset (round-off margin) -----------------------


@pytest.mark.parametrize("isa", ISAS)
def test_pruned_index_with_a_large_common_offset_equals_brute_force(isa):
    # Values near 300, spread 0.05, 48 dims: |b|^2 is about 4.3e6, so the float32 values the
    # search ranks by (|b|^2 - 2 q.b, and the bound's |Ub|^2 - 2 Uq.Ub next to the slack
    # |q|^2 - |Uq|^2) carry round-off of about 0.5, more than the squared distances between
    # bank rows (about 0.1). Only the round-off margin keeps the bound from dropping rows the
    # brute force keeps.
    spread = low_rank(3000, 48, 4, seed=31, noise=0.02)
    scale = 0.05 / spread.std()
    bank = (300.0 + scale * spread).astype(np.float32)
    assert abs(float(bank.mean()) - 300.0) < 0.01 and 0.04 < float(bank.std()) < 0.06
    # The automatic choice prunes this bank (its variance is on a few axes).
    assert native.KnnIndex(bank).prefix_dims > 0
    index = native._native.KnnIndex(bank, native.principal_axes(bank).basis(), 2)
    assert 0 < index.prefix < 48
    near = 300.0 + scale * low_rank(200, 48, 4, seed=32, noise=0.02)
    # Queries among the bank rows: float32 clamps every distance to 0 (round-off exceeds
    # them), so the distances are all ties; the neighbours are still the rows the brute force
    # ranks first (its ranking values differ), and the pruned search must find the same ones.
    queries = near.astype(np.float32)
    d_brute, i_brute = native._native.knn(queries, bank, 5, 2, isa)
    d_pruned, i_pruned = index.search(queries, 5, 2, isa)
    np.testing.assert_array_equal(i_pruned, i_brute)
    np.testing.assert_array_equal(d_pruned, d_brute)
    # Queries 0.3 off the bank: distances above the round-off, so they tell rows apart.
    queries = (near + 0.3 * tie_free(200, 48, 33)).astype(np.float32)
    d_brute, i_brute = native._native.knn(queries, bank, 5, 2, isa)
    assert np.mean(d_brute > 0) > 0.9
    d_pruned, i_pruned = index.search(queries, 5, 2, isa)
    np.testing.assert_array_equal(d_pruned, d_brute)
    np.testing.assert_array_equal(i_pruned, i_brute)
