"""Public face of the C++ core (``autoweld._native``).

Every function here checks its arguments once (dtype, shape, contiguity, emptiness, NaN/Inf
where they matter) and raises ``ValueError`` naming the argument, then calls the core with the
GIL released. ``threads=None`` means all hardware threads; the count is always per call, never a
process-wide setting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoweld import _native

__all__ = [
    "anomaly_map",
    "clahe",
    "hardware_threads",
    "has_avx2_fma",
    "has_avx512",
    "png_unfilter",
    "preprocess",
    "preprocess_batch",
]


def has_avx2_fma() -> bool:
    """True when the kernels run their AVX2+FMA paths on this CPU."""
    return bool(_native.has_avx2_fma())


def has_avx512() -> bool:
    """True when the kNN kernels run their AVX-512 path on this CPU."""
    return bool(_native.has_avx512())


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


def _image_u8(image: object, name: str = "image") -> np.ndarray:
    """Checks an 8-bit gray (HxW) or BGR (HxWx3) image; returns it C-contiguous.

    A non-contiguous array (a crop, a channel-reversed view) is copied once here.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim == 3:
        if image.shape[2] != 3:
            raise ValueError(
                f"{name} must have 1 or 3 channels (gray HxW or BGR HxWx3), got {image.shape[2]}"
            )
    elif image.ndim != 2:
        raise ValueError(f"{name} must be HxW or HxWx3, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {image.shape}")
    if image.shape[0] > 2**31 - 1 or image.shape[1] > 2**31 - 1:
        raise ValueError(f"{name} is too large: {image.shape}")
    return np.ascontiguousarray(image)


def _clip_limit(clip_limit: object) -> float:
    if isinstance(clip_limit, bool) or not isinstance(clip_limit, (int, float, np.number)):
        raise ValueError(f"clip_limit must be a number, got {clip_limit!r}")
    value = float(clip_limit)
    if not math.isfinite(value):
        raise ValueError(f"clip_limit must be finite, got {clip_limit!r}")
    return value


def _tile_grid(tile_grid: object) -> tuple[int, int]:
    if isinstance(tile_grid, np.ndarray):
        tile_grid = tuple(tile_grid.tolist())
    if (
        not isinstance(tile_grid, Sequence)
        or len(tile_grid) != 2
        or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tile_grid)
    ):
        raise ValueError(f"tile_grid must be a pair of ints (x, y), got {tile_grid!r}")
    tiles_x, tiles_y = int(tile_grid[0]), int(tile_grid[1])
    if tiles_x < 1 or tiles_y < 1:
        raise ValueError(f"tile_grid must be >= 1 in each direction, got {tile_grid!r}")
    if tiles_x * tiles_y > 2**16:
        raise ValueError(f"tile_grid is too large (at most 65536 tiles), got {tile_grid!r}")
    return tiles_x, tiles_y


#: Largest Gaussian sigma in pixels (csrc/common.hpp kMaxSigma).
MAX_SIGMA = 1000.0


def _sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)):
        raise ValueError(f"sigma must be a number, got {sigma!r}")
    value = float(sigma)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    if value > MAX_SIGMA:  # the C++ kernels refuse it too (kernel radius would overflow)
        raise ValueError(f"sigma must be <= {MAX_SIGMA:g}, got {sigma!r}")
    return value


def _size(size: object, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"{name} must be >= 1, got {size!r}")
    if size > 16384:
        raise ValueError(f"{name} must be <= 16384, got {size!r}")
    return int(size)


def _triple(values: object, name: str, nonzero: bool = False) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, got {values!r}") from None
    if len(triple) != 3 or not all(math.isfinite(v) for v in triple):
        raise ValueError(f"{name} must be three finite numbers, got {values!r}")
    if nonzero and any(v == 0 for v in triple):
        raise ValueError(f"{name} must not contain 0, got {values!r}")
    return triple  # type: ignore[return-value]


def clahe(
    image: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)
) -> np.ndarray:
    """Contrast limited adaptive histogram equalisation of an 8-bit image.

    Gray ``HxW``: bit-identical to ``cv2.createCLAHE(clip_limit, tile_grid).apply(image)`` for any
    size, clip limit (``<= 0`` means no clipping) and grid. Colour ``HxWx3`` (BGR): CLAHE on the L
    channel of OpenCV's 8-bit Lab, then back to BGR (the same bytes as the cv2 chain in all our
    tests, guaranteed within one grey level). ``tile_grid`` is ``(x, y)`` as in OpenCV.
    Non-contiguous input is copied. Returns a new uint8 array of the same shape.
    """
    array = _image_u8(image)
    tiles_x, tiles_y = _tile_grid(tile_grid)
    return _native.clahe(array, _clip_limit(clip_limit), tiles_x, tiles_y, 0)


def preprocess(
    image: np.ndarray,
    size: int,
    *,
    clahe: bool = True,
    clip_limit: float = 2.0,
    tile_grid: tuple[int, int] = (8, 8),
    sigma: float = 0.0,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    threads: int | None = None,
) -> np.ndarray:
    """Turns one 8-bit image into the engine's normalised float32 ``(3, size, size)`` input.

    Chain: CLAHE (``clahe=True``; on Lab lightness for colour) -> Gaussian smoothing
    (``sigma``, 0 = off; OpenCV's kernel for ``GaussianBlur(ksize=(0, 0), sigmaX=sigma)``,
    reflect-101 borders) -> area resize to ``size x size`` (``cv2.INTER_AREA`` semantics, also
    when upscaling) -> BGR to RGB -> ``(x / 255 - mean) / std`` -> CHW. ``image`` is BGR
    ``HxWx3`` or gray ``HxW`` (replicated to three channels). Within one grey level of the same
    chain done with OpenCV and numpy, fused into one pass over the image. Non-contiguous input
    is copied.
    """
    array = _image_u8(image)
    tiles_x, tiles_y = _tile_grid(tile_grid)
    return _native.preprocess(
        array,
        _size(size),
        bool(clahe),
        _clip_limit(clip_limit),
        tiles_x,
        tiles_y,
        _sigma(sigma),
        _triple(mean, "mean"),
        _triple(std, "std", nonzero=True),
        _threads(threads),
    )


def preprocess_batch(images: Sequence[np.ndarray], size: int, **options: object) -> np.ndarray:
    """:func:`preprocess` over a list of images; returns float32 ``(N, 3, size, size)``."""
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        raise ValueError("images must be a list of images")
    if len(images) == 0:
        raise ValueError("images must not be empty")
    batch = np.empty((len(images), 3, _size(size), _size(size)), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = preprocess(image, size, **options)  # type: ignore[arg-type]
    return batch


def anomaly_map(
    patch_scores: np.ndarray,
    out_size: int | tuple[int, int],
    sigma: float = 4.0,
    threads: int | None = None,
) -> np.ndarray:
    """Upsamples patch scores to the input resolution and smooths them.

    Bilinear exactly as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``, then anomalib's separable Gaussian (kernel ``2*int(4*sigma+0.5)+1``,
    reflect padding; ``sigma=0`` skips it). ``patch_scores``: float32 ``(h, w)`` or
    ``(N, h, w)``, finite. ``out_size``: int or ``(H, W)``. Returns float32 ``(H, W)`` or
    ``(N, H, W)``. Non-contiguous input is copied.
    """
    if not isinstance(patch_scores, np.ndarray):
        raise ValueError(f"patch_scores must be a numpy array, got {type(patch_scores).__name__}")
    if patch_scores.dtype != np.float32:
        raise ValueError(f"patch_scores must have dtype float32, got {patch_scores.dtype}")
    if patch_scores.ndim not in (2, 3):
        raise ValueError(f"patch_scores must be (h, w) or (N, h, w), got {patch_scores.shape}")
    if patch_scores.size == 0:
        raise ValueError(f"patch_scores must not be empty, got shape {patch_scores.shape}")
    if not np.isfinite(patch_scores).all():
        raise ValueError("patch_scores must be finite (found NaN or Inf)")
    if isinstance(out_size, (int, np.integer)) and not isinstance(out_size, bool):
        out_h = out_w = _size(out_size, "out_size")
    elif isinstance(out_size, Sequence) and len(out_size) == 2:
        out_h, out_w = (_size(v, "out_size") for v in out_size)
    else:
        raise ValueError(f"out_size must be an int or (H, W), got {out_size!r}")
    scores = np.ascontiguousarray(patch_scores)
    batched = scores.reshape((-1, *scores.shape[-2:]))
    result = _native.anomaly_map(batched, out_h, out_w, _sigma(sigma), _threads(threads))
    return result if scores.ndim == 3 else result[0]


def png_unfilter(
    scanlines: bytes | bytearray | memoryview, height: int, width: int, channels: int
) -> np.ndarray:
    """Reconstructs the pixels of an 8-bit, non-interlaced grey (``channels=1``) or RGB
    (``channels=3``) PNG from its inflated IDAT stream: ``height`` scanlines of one filter-type
    byte and ``width * channels`` bytes each. Returns uint8 ``(H, W)`` grey or ``(H, W, 3)``
    **BGR** (as OpenCV decodes colour). Raises ValueError for a stream of the wrong length or a
    filter-type byte above 4.
    """
    if not isinstance(scanlines, (bytes, bytearray, memoryview)):
        raise ValueError(f"scanlines must be bytes, got {type(scanlines).__name__}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
        if value > 2**31 - 1:
            raise ValueError(f"{name} must be below 2**31, got {value!r}")
    view = memoryview(scanlines).cast("B")
    return _native.png_unfilter(view, int(height), int(width), channels, True)


# ---- numeric kernels: knn, coreset, scoring -------------------------------------------

__all__ += [
    "KnnIndex",
    "PrincipalAxes",
    "principal_axes",
    "bank_neighbours",
    "coreset",
    "coreset_project",
    "coreset_projection",
    "fuse",
    "knn",
    "patchcore_score",
    "platt",
]


def _matrix(value: object, name: str, dtype: type[np.generic]) -> np.ndarray:
    """A C-contiguous 2-D array of exactly ``dtype``, or ValueError naming ``name``. No conversion."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {value.dtype}")
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {value.shape}")
    return np.ascontiguousarray(value)


def _float32_matrix(value: object, name: str) -> np.ndarray:
    return _matrix(value, name, np.float32)


def _int64_matrix(value: object, name: str) -> np.ndarray:
    return _matrix(value, name, np.int64)


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


# Pruned KnnIndex: the automatic choice. The bound uses the fewest principal axes (a multiple of
# 8) that hold this share of the bank's variance; pruning is chosen when they are at most this
# share of the dimension and the bank is large enough for the bound pass to pay off.
PRUNE_VARIANCE = 0.8
PRUNE_MAX_SHARE = 0.25
PRUNE_MIN_ROWS = 1024
PCA_SAMPLE_ROWS = 4096


@dataclass(frozen=True)
class PrincipalAxes:
    """The bank's principal axes (rows of ``axes``, float32 ``(D, D)``, largest variance first)
    and the cumulative share of the variance the first 1, 2, ... of them hold."""

    axes: np.ndarray
    cumulative_variance: np.ndarray

    def prefix_for(self, share: float = PRUNE_VARIANCE) -> int:
        """The fewest axes, rounded up to a multiple of 8 (at most D - 1), holding ``share``."""
        dim = self.axes.shape[0]
        needed = int(np.searchsorted(self.cumulative_variance, share) + 1)
        return max(1, min(dim - 1, -(-needed // 8) * 8))

    def worth_pruning(self, rows: int) -> bool:
        """Whether a pruned search should beat brute force on a bank of ``rows`` rows."""
        dim = self.axes.shape[0]
        return dim >= 2 and rows >= PRUNE_MIN_ROWS and self.prefix_for() <= PRUNE_MAX_SHARE * dim

    def basis(self) -> np.ndarray:
        """The pruning basis :class:`KnnIndex` takes: the first :meth:`prefix_for` axes,
        float32 ``(P, D)``, C-contiguous."""
        return np.ascontiguousarray(self.axes[: self.prefix_for()])


def principal_axes(bank: np.ndarray, sample_rows: int = PCA_SAMPLE_ROWS) -> PrincipalAxes:
    """Principal axes of ``bank`` (float32 ``(M, D)``), from at most ``sample_rows`` rows chosen
    with a fixed seed (the same axes every time for the same bank). Computed in float64; the
    axes are orthonormal to float32 precision."""
    bank = _bank(bank)
    _finite(bank, "bank")
    rows = bank.shape[0]
    if rows > sample_rows:
        pick = np.sort(np.random.default_rng(0).choice(rows, sample_rows, replace=False))
        bank = bank[pick]
    x = bank.astype(np.float64)
    x -= x.mean(axis=0)
    eigenvalues, vectors = np.linalg.eigh(x.T @ x)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    total = eigenvalues.sum()
    cumulative = np.cumsum(eigenvalues) / total if total > 0 else np.ones_like(eigenvalues)
    return PrincipalAxes(np.ascontiguousarray(vectors[:, order].T, dtype=np.float32), cumulative)


class KnnIndex:
    """A memory bank prepared for repeated exact kNN search.

    Owns one copy of ``bank``, taken at construction: changing (or dropping) the caller's array
    afterwards changes nothing. :attr:`bank` is that copy, read-only, for callers that need the
    rows too (PatchCore scoring), so that they need not keep a second one. Two forms, with the
    same results:

    * brute force: every query against every bank row, the bank's squared norms precomputed.
      On a CPU with AVX-512 BF16, ``k = 1`` scans the bank in bf16 first and computes the
      float32 distance only for the rows whose bf16 value, less a proven error bound, can still
      be the nearest (a few per query on patch features).
    * pruned: a ``basis`` of ``P`` orthonormal rows (the bank's leading principal axes)
      projects bank and queries; the distance between projections is a lower bound of the true
      one. The bank is kept in tiles of 24 rows that are close on those axes; a search skips
      every tile whose bounding box is out of reach of a panel of 16 queries, computes the bound
      for the rows of the others, and only rows whose bound can beat the k-th nearest found get
      the true distance, computed as the brute force does. Patch features of one product put
      most of their variance on a few axes, so few rows do (weld bundle: 16 of 152 axes; a
      fifth to a third of the tiles in reach, about 2 % of the bank gets the full distance).

    Args:
        bank: float32 ``(M, D)`` memory bank.
        threads: worker threads for building the index (``None``: all hardware threads).
        prune: ``None`` (default): prune when ``basis`` is given, or when the bank has at least
            1024 rows and the axes holding 80 % of its variance are at most a quarter of ``D``;
            ``True``: always (needs ``D >= 2``); ``False``: never.
        basis: float32 ``(P, D)`` with orthonormal rows, ``1 <= P < D`` (export stores the
            bank's in the bundle); ``None`` computes the principal axes here when pruning.
    """

    def __init__(
        self,
        bank: np.ndarray,
        threads: int | None = None,
        prune: bool | None = None,
        basis: np.ndarray | None = None,
    ) -> None:
        bank = _bank(bank)
        if prune is not None and not isinstance(prune, bool):
            raise ValueError(f"prune must be True, False or None, got {prune!r}")
        rows, dim = bank.shape
        if basis is not None:
            basis = _float32_matrix(basis, "basis")
            if basis.shape[1] != dim or not 1 <= basis.shape[0] < dim:
                raise ValueError(
                    f"basis must be (P, {dim}) with 1 <= P < {dim} for this bank, got {basis.shape}"
                )
        elif prune or (prune is None and dim >= 2 and rows >= PRUNE_MIN_ROWS):
            if dim < 2:
                raise ValueError(f"bank: pruning needs at least 2 features, the bank has {dim}")
            pca = principal_axes(bank)  # a D x D eigenproblem: only when it may be used
            if prune or pca.worth_pruning(rows):
                basis = pca.basis()
        if prune is False or basis is None:
            self._index = _native.KnnIndex(bank, _threads(threads))
        else:
            self._index = _native.KnnIndex(bank, basis, _threads(threads))

    @property
    def size(self) -> int:
        """Number of bank rows."""
        return int(self._index.size)

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self._index.dim)

    @property
    def prefix_dims(self) -> int:
        """Rows of the pruning basis; 0 for a brute-force index."""
        return int(self._index.prefix)

    @property
    def bank(self) -> np.ndarray:
        """The index's copy of the bank: float32 ``(M, D)``, read-only (numpy refuses to make
        it writeable), valid as long as the view is referenced."""
        return self._index.bank

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


# ---- GPU section: CUDA kNN and scoring (docs/gpu.md) -----------------------------------
# Present in every build. In a CPU build (AUTOWELD_CUDA off) cuda_available() is False and the
# GPU classes raise RuntimeError saying how to build with CUDA.

__all__ += [
    "DeviceArray",
    "built_with_cuda",
    "GpuHeadSpec",
    "GpuKnnIndex",
    "GpuScorer",
    "GpuScores",
    "cuda_available",
    "cuda_device_name",
    "device_array",
]

_NO_CUDA = (
    "this autoweld was built without CUDA; rebuild with "
    "AUTOWELD_CUDA=ON pip install '.[gpu]' on a machine with nvcc and an NVIDIA GPU"
)


def built_with_cuda() -> bool:
    """True when the extension was compiled with the CUDA kernels (AUTOWELD_CUDA=ON)."""
    return bool(getattr(_native, "WITH_CUDA", False))


def cuda_available() -> bool:
    """True when the extension has the CUDA kernels and a CUDA device is usable. Never raises."""
    return built_with_cuda() and bool(_native.cuda_available())


def _require_cuda() -> None:
    if not built_with_cuda():
        raise RuntimeError(_NO_CUDA)
    if not _native.cuda_available():
        raise RuntimeError("autoweld has CUDA kernels but no CUDA device is available")


def cuda_device_name(device: int = 0) -> str:
    """Name and compute capability of a CUDA device, e.g. ``'NVIDIA H100 80GB HBM3 (sm_90)'``."""
    _require_cuda()
    return str(_native.cuda_device_name(_count(device, "device", 0)))


@dataclass(frozen=True)
class DeviceArray:
    """A C-contiguous array in CUDA device memory, described by its pointer (an int)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def device_array(value: object, name: str, dtype: np.dtype | type, ndim: int) -> DeviceArray:
    """Reads a device array: a :class:`DeviceArray`, anything with ``__cuda_array_interface__``
    (CuPy, torch CUDA tensors, Numba), or an ONNX Runtime ``OrtValue`` on a CUDA device.

    Checks dtype, dimensionality and C-contiguity; raises ``ValueError`` naming ``name``.
    """
    want = np.dtype(dtype)
    if isinstance(value, DeviceArray):
        array = value
    elif hasattr(value, "__cuda_array_interface__"):
        iface = value.__cuda_array_interface__
        shape = tuple(int(s) for s in iface["shape"])
        got = np.dtype(iface["typestr"])
        strides = iface.get("strides")
        if strides is not None:
            expected = []
            step = got.itemsize
            for extent in reversed(shape):
                expected.append(step)
                step *= extent
            if tuple(strides) != tuple(reversed(expected)):
                raise ValueError(f"{name} must be C-contiguous on the device, strides {strides}")
        array = DeviceArray(int(iface["data"][0]), shape, got)
    elif hasattr(value, "data_ptr") and hasattr(value, "device_name") and callable(value.shape):
        # onnxruntime.OrtValue (IOBinding output): float tensors only.
        if value.device_name().lower() != "cuda":
            raise ValueError(f"{name}: OrtValue lives on {value.device_name()}, not on CUDA")
        kind = value.data_type()
        if kind != "tensor(float)":
            raise ValueError(f"{name} must be a float32 tensor, got {kind}")
        array = DeviceArray(int(value.data_ptr()), tuple(value.shape()), np.dtype(np.float32))
    else:
        raise ValueError(
            f"{name} must be a device array (DeviceArray, __cuda_array_interface__, OrtValue), "
            f"got {type(value).__name__}"
        )
    if array.dtype != want:
        raise ValueError(f"{name} must be {want}, got {array.dtype}")
    if len(array.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if array.ptr == 0 and array.size > 0:
        raise ValueError(f"{name}: null device pointer")
    return array


class GpuKnnIndex:
    """A memory bank copied once to a CUDA device (with its norms and, for scoring, its
    ``bank_neighbours``) and searched there: the GPU counterpart of :class:`KnnIndex`.

    ``search`` takes host arrays (copies in and out, for tests and simple use);
    ``search_device`` takes device arrays and a stream and never leaves the device.
    ``k`` is at most 16 on the GPU.
    """

    MAX_K = 16

    def __init__(
        self, bank: np.ndarray, bank_neighbours: np.ndarray | None = None, device: int = 0
    ) -> None:
        _require_cuda()
        bank = _bank(bank)
        _finite(bank, "bank")
        if bank_neighbours is not None:
            bank_neighbours = _int64_matrix(bank_neighbours, "bank_neighbours")
            if bank_neighbours.shape[0] != bank.shape[0]:
                raise ValueError("bank_neighbours must have one row per bank row")
        self._index = _native.GpuKnnIndex(bank, bank_neighbours, _count(device, "device", 0))

    @property
    def size(self) -> int:
        return int(self._index.size)

    @property
    def dim(self) -> int:
        return int(self._index.dim)

    def _k(self, k: int) -> int:
        return _count(k, "k", 1, min(self.size, self.MAX_K))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as :meth:`KnnIndex.search`, computed on the device."""
        queries = _queries(queries, self.dim)
        return self._index.search(queries, self._k(k))

    def search_device(
        self, queries: object, k: int, distances: object, indices: object, stream: int = 0
    ) -> None:
        """kNN of device ``queries`` (float32 ``(Q, D)``) into device ``distances`` (float32
        ``(Q, k)``) and ``indices`` (int64 ``(Q, k)``), enqueued on ``stream``; returns at once."""
        q = device_array(queries, "queries", np.float32, 2)
        d = device_array(distances, "distances", np.float32, 2)
        i = device_array(indices, "indices", np.int64, 2)
        k = self._k(k)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have {q.shape[1]} features but the bank has {self.dim}")
        if d.shape != (q.shape[0], k) or i.shape != (q.shape[0], k):
            raise ValueError(f"distances and indices must be ({q.shape[0]}, {k})")
        self._index.search_device(q.ptr, q.shape[0], k, d.ptr, i.ptr, int(stream))


@dataclass(frozen=True)
class GpuHeadSpec:
    """One head for :class:`GpuScorer` (from the bundle's manifest)."""

    name: str
    kind: str  # "knn" or "map"
    feature_map: tuple[int, int]
    platt_a: float
    platt_b: float
    weight: float
    bank: np.ndarray | None = None
    bank_neighbours: np.ndarray | None = None


@dataclass(frozen=True)
class GpuScores:
    """Per-image results of :meth:`GpuScorer.score` (host arrays, heads in spec order)."""

    scores: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]
    fused: np.ndarray
    finite: np.ndarray


class GpuScorer:
    """Engine output on the device -> image scores, calibrated and fused probabilities, and
    optionally the fused per-pixel probability map, without copying the outputs to the host.

    Same definitions as the CPU Inspector (kNN with k=1, PatchCore re-weighting, map-head max,
    anomaly map, Platt, fusion); banks stay resident on ``device``.
    """

    def __init__(
        self, heads: Sequence[GpuHeadSpec], out_size: int, sigma: float, device: int = 0
    ) -> None:
        _require_cuda()
        if not heads:
            raise ValueError("heads: at least one head is needed")
        if len(heads) > 8:
            raise ValueError(f"heads: at most 8 on the GPU, got {len(heads)}")
        self.heads = list(heads)
        self.out_size = _size(out_size, "out_size")
        self.sigma = _sigma(sigma)
        self._indexes: dict[str, GpuKnnIndex] = {}
        for head in self.heads:
            if head.kind not in ("knn", "map"):
                raise ValueError(f"head {head.name!r}: kind must be 'knn' or 'map'")
            if head.kind == "knn":
                if head.bank is None or head.bank_neighbours is None:
                    raise ValueError(f"head {head.name!r}: a knn head needs bank and neighbours")
                self._indexes[head.name] = GpuKnnIndex(head.bank, head.bank_neighbours, device)
        weights = np.array([h.weight for h in self.heads], dtype=np.float64)
        if (weights < 0).any() or abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"head weights must be >= 0 and sum to 1, got {weights.tolist()}")
        self._workspace = _native.GpuScoreWorkspace()

    def score(
        self,
        outputs: Mapping[str, object],
        images: int,
        stream: int = 0,
        fused_map: object | None = None,
    ) -> GpuScores:
        """Score ``images`` images from device head outputs (``outputs[head.name]``: float32
        ``(N, h*w, D)`` for knn heads, ``(N, h, w)`` for map heads). ``fused_map``: optional
        float32 device array ``(N, S, S)`` that receives the fused probability map."""
        images = _count(images, "images", 1)
        rows = []
        for head in self.heads:
            if head.name not in outputs:
                raise ValueError(f"outputs: no output for head {head.name!r}")
            h, w = head.feature_map
            if head.kind == "knn":
                arr = device_array(outputs[head.name], f"outputs[{head.name!r}]", np.float32, 3)
                want = (images, h * w, self._indexes[head.name].dim)
                index: object = self._indexes[head.name]._index
            else:
                arr = device_array(outputs[head.name], f"outputs[{head.name!r}]", np.float32, 3)
                want = (images, h, w)
                index = None
            if arr.shape != want:
                raise ValueError(f"outputs[{head.name!r}] has shape {arr.shape}, expected {want}")
            rows.append((head.kind, arr.ptr, index, h, w, head.platt_a, head.platt_b, head.weight))
        map_ptr = 0
        if fused_map is not None:
            fm = device_array(fused_map, "fused_map", np.float32, 3)
            if fm.shape != (images, self.out_size, self.out_size):
                raise ValueError(
                    f"fused_map must be ({images}, {self.out_size}, {self.out_size}), got {fm.shape}"
                )
            map_ptr = fm.ptr
        scores, probabilities, fused, finite = _native.gpu_score(
            rows, images, self.out_size, self.sigma, map_ptr, self._workspace, int(stream)
        )
        names = [h.name for h in self.heads]
        return GpuScores(
            scores=dict(zip(names, scores, strict=True)),
            probabilities=dict(zip(names, probabilities, strict=True)),
            fused=fused,
            finite=finite,
        )
