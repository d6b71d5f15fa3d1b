"""Public face of the C++ core (``autoweld._native``).

Every function here checks its arguments once (dtype, shape, contiguity, emptiness, NaN/Inf
where they matter) and raises ``ValueError`` naming the argument, then calls the core with the
GIL released. ``threads=None`` means all hardware threads; the count is always per call, never a
process-wide setting.
"""

from __future__ import annotations

import numpy as np

from autoweld import _native

__all__ = ["has_avx2_fma", "hardware_threads"]


def has_avx2_fma() -> bool:
    """True when the kernels run their AVX2+FMA paths on this CPU."""
    return bool(_native.has_avx2_fma())


def hardware_threads() -> int:
    """Number of hardware threads the core uses when ``threads=None``."""
    return int(_native.hardware_threads())


def _threads(threads: int | None) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return threads


# ---- image kernels: clahe, preprocess, anomaly map ------------------------------------


# ---- numeric kernels: knn, coreset, scoring -------------------------------------------

__all__ += [
    "KnnIndex",
    "bank_neighbours",
    "coreset",
    "coreset_project",
    "coreset_projection",
    "fuse",
    "knn",
    "patchcore_score",
    "platt",
]


def _float32_matrix(value: object, name: str) -> np.ndarray:
    """A C-contiguous float32 2-D array, or ValueError naming ``name``. No dtype conversion."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {value.dtype}")
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {value.shape}")
    return np.ascontiguousarray(value)


def _int64_matrix(value: object, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.int64:
        raise ValueError(f"{name} must be int64, got {value.dtype}")
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {value.shape}")
    return np.ascontiguousarray(value)


def _count(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f", {high}"
        raise ValueError(f"{name} must be in [{low}{upper}], got {value}")
    return value


def _finite(array: np.ndarray, name: str) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")


def _bank(bank: object) -> np.ndarray:
    bank = _float32_matrix(bank, "bank")
    if bank.shape[0] == 0:
        raise ValueError("bank: memory bank is empty")
    if bank.shape[1] == 0:
        raise ValueError("bank: feature dimension must be at least 1")
    return bank


def _queries(queries: object, dim: int) -> np.ndarray:
    queries = _float32_matrix(queries, "queries")
    if queries.shape[1] != dim:
        raise ValueError(
            f"queries have {queries.shape[1]} features but the bank has {dim}: they must match"
        )
    return queries


def knn(
    queries: np.ndarray, bank: np.ndarray, k: int, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest bank rows of every query row.

    Args:
        queries: float32 ``(Q, D)``.
        bank: float32 ``(M, D)`` memory bank, ``M >= 1``.
        k: neighbours per query, ``1 <= k <= M``.
        threads: worker threads (``None``: all hardware threads).

    Returns:
        ``(distances, indices)``: float32 and int64, both ``(Q, k)``; Euclidean (not squared)
        distances ascending per row, equal distances listing the lower bank index first.
    """
    bank = _bank(bank)
    queries = _queries(queries, bank.shape[1])
    k = _count(k, "k", 1, bank.shape[0])
    # NaN/Inf in queries or bank: checked by the core (one vectorised pass), ValueError.
    return _native.knn(queries, bank, k, _threads(threads))


class KnnIndex:
    """A memory bank prepared for repeated exact kNN search (its squared norms precomputed).

    Holds a reference to ``bank`` (copied only if it is not C-contiguous); the bank must not be
    modified while the index is in use.
    """

    def __init__(self, bank: np.ndarray, threads: int | None = None) -> None:
        bank = _bank(bank)
        self._index = _native.KnnIndex(bank, _threads(threads))

    @property
    def size(self) -> int:
        """Number of bank rows."""
        return int(self._index.size)

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self._index.dim)

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Same result as :func:`knn` with this index's bank."""
        queries = _queries(queries, self.dim)
        k = _count(k, "k", 1, self.size)
        return self._index.search(queries, k, _threads(threads))


def bank_neighbours(bank: np.ndarray, b: int, threads: int | None = None) -> np.ndarray:
    """For each bank row, its ``b`` nearest bank rows, itself first: int64 ``(M, b)``.

    Precomputed at export for :func:`patchcore_score`'s re-weighting.
    """
    bank = _bank(bank)
    b = _count(b, "b", 1, bank.shape[0])
    return _native.bank_neighbours(bank, b, _threads(threads))


def _features(features: object) -> np.ndarray:
    features = _float32_matrix(features, "features")
    if features.shape[0] == 0:
        raise ValueError("features: no rows")
    if features.shape[1] == 0:
        raise ValueError("features: feature dimension must be at least 1")
    return features


def _seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return int(seed)


def coreset(
    features: np.ndarray,
    n: int,
    projection_dim: int = 128,
    seed: int = 0,
    threads: int | None = None,
) -> np.ndarray:
    """PatchCore's approximate greedy k-center coreset: int64 indices ``(n,)``, distinct.

    The features (float32 ``(N, D)``) are projected with :func:`coreset_projection` to
    ``projection_dim`` dimensions (not when ``D <= projection_dim`` or ``projection_dim == 0``);
    the first index is a seeded random row, each next one the row farthest from those chosen.
    ``n == N`` returns ``0..N-1``. Deterministic for a seed; memory O(input + N).
    """
    features = _features(features)
    n = _count(n, "n", 1, features.shape[0])
    projection_dim = _count(projection_dim, "projection_dim", 0)
    return _native.coreset(features, n, projection_dim, _seed(seed), _threads(threads))


def coreset_projection(dim: int, projection_dim: int, seed: int = 0) -> np.ndarray:
    """The seeded Gaussian projection :func:`coreset` uses: float32 ``(dim, projection_dim)``.

    Entries are N(0, 1/projection_dim), from splitmix64 + Box-Muller: identical everywhere.
    """
    dim = _count(dim, "dim", 1)
    projection_dim = _count(projection_dim, "projection_dim", 1)
    return _native.coreset_projection(dim, projection_dim, _seed(seed))


def coreset_project(
    features: np.ndarray, projection_dim: int, seed: int = 0, threads: int | None = None
) -> np.ndarray:
    """``features @ coreset_projection(D, projection_dim, seed)`` as :func:`coreset` computes
    it (float32 ``(N, projection_dim)``)."""
    features = _features(features)
    projection_dim = _count(projection_dim, "projection_dim", 1)
    return _native.coreset_project(features, projection_dim, _seed(seed), _threads(threads))


def patchcore_score(
    embeddings: np.ndarray,
    distances: np.ndarray,
    indices: np.ndarray,
    bank: np.ndarray,
    bank_neighbours: np.ndarray,
) -> float:
    """PatchCore's image score with re-weighting (paper eq. 7, as anomalib computes it).

    The patch with the largest nearest-neighbour distance s* is re-weighted by
    ``1 - softmax(d)_0``, where ``d`` are its distances to the bank rows in
    ``bank_neighbours[m*]`` (m* its nearest bank row, which comes first).

    Args:
        embeddings: float32 ``(P, D)`` patch embeddings of one image.
        distances, indices: the :func:`knn` result for ``embeddings`` (``(P, k)``).
        bank: float32 ``(M, D)`` memory bank.
        bank_neighbours: int64 ``(M, b)`` from :func:`bank_neighbours`.
    """
    embeddings = _float32_matrix(embeddings, "embeddings")
    distances = _float32_matrix(distances, "distances")
    indices = _int64_matrix(indices, "indices")
    bank = _bank(bank)
    bank_neighbours = _int64_matrix(bank_neighbours, "bank_neighbours")
    if embeddings.shape[0] == 0:
        raise ValueError("embeddings: no patches")
    if embeddings.shape[1] != bank.shape[1]:
        raise ValueError("embeddings and bank must have the same feature dimension")
    if distances.shape[0] != embeddings.shape[0] or distances.shape[1] == 0:
        raise ValueError("distances must have one row per embedding and at least one column")
    if indices.shape != distances.shape:
        raise ValueError(f"indices must have the shape of distances {distances.shape}")
    if bank_neighbours.shape[0] != bank.shape[0] or bank_neighbours.shape[1] == 0:
        raise ValueError("bank_neighbours must have one row per bank row, at least one column")
    # NaN/Inf: the core checks distances, and the embedding and bank rows it uses (the bank
    # was checked when it was built; a full pass here would cost more than the score).
    return float(_native.patchcore_score(embeddings, distances, indices, bank, bank_neighbours))


def _float64_array(value: object, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.dtype == np.float16:
        raise ValueError(f"{name} must be a real-valued array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float64)


def platt(scores: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """Platt calibration ``p = 1 / (1 + exp(a * s + b))``, overflow-safe; float64, the shape
    of ``scores``."""
    scores = _float64_array(scores, "scores")
    for value, name in ((a, "a"), (b, "b")):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    _finite(scores, "scores")
    out = _native.platt(scores.reshape(-1), float(a), float(b))
    return out.reshape(scores.shape)


def fuse(probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray | float:
    """Weighted sum of calibrated probabilities.

    Args:
        probabilities: ``(m,)`` for one image or ``(N, m)``, values in [0, 1].
        weights: ``(m,)``, non-negative, summing to 1 within 1e-6.

    Returns:
        A float for ``(m,)`` input, else float64 ``(N,)``.
    """
    probabilities = _float64_array(probabilities, "probabilities")
    weights = _float64_array(weights, "weights")
    if weights.ndim != 1 or weights.shape[0] == 0:
        raise ValueError(f"weights must be 1-D and non-empty, got shape {weights.shape}")
    if probabilities.ndim not in (1, 2) or probabilities.shape[-1] != weights.shape[0]:
        raise ValueError(
            f"probabilities must be (m,) or (N, m) with m = {weights.shape[0]} weights, "
            f"got shape {probabilities.shape}"
        )
    _finite(weights, "weights")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    if abs(float(weights.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1 (within 1e-6), got {weights.sum()!r}")
    if np.isnan(probabilities).any() or (probabilities < 0).any() or (probabilities > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    out = _native.fuse(probabilities.reshape(-1, weights.shape[0]), weights)
    return float(out[0]) if probabilities.ndim == 1 else out
