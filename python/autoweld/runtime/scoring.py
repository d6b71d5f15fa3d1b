"""Scoring a batch of engine outputs, as docs/bundle.md ("From head outputs to a decision") says.

One scorer per head kind turns that head's engine output into patch score maps and image scores
(steps 1-2): :class:`KnnHeadScorer` (PatchCore: distance to the memory bank, re-weighted maximum)
and :class:`MapHeadScorer` (the output is the map, its maximum the score). :class:`Fusion` then
makes the per-head anomaly maps, Platt probabilities and the fused probability of a batch
(steps 3-5) and the fused anomaly map of one image (step 6). No torch here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Union

import numpy as np

from autoweld import native
from autoweld.bundle import Bundle, HeadSpec, KnnHeadSpec, MapHeadSpec

__all__ = [
    "BatchScores",
    "Fusion",
    "HeadScorer",
    "HeadScores",
    "KnnHeadScorer",
    "KnnState",
    "MapHeadScorer",
    "head_scorer",
]


@dataclass(frozen=True)
class KnnState:
    """What a kNN head searches: the exact index over its memory bank (float32 ``(M, D)``) and
    each bank row's nearest bank rows (int64 ``(M, b)``, the row itself first).
    ``memory_bank`` is the index's own read-only copy: the bank is held once."""

    index: native.KnnIndex
    memory_bank: np.ndarray
    bank_neighbours: np.ndarray

    @classmethod
    def load(cls, bundle: Bundle, name: str, head: KnnHeadSpec, threads: int | None) -> KnnState:
        """Bank and neighbours from the bundle (hash-checked bytes), and the head's index."""
        for key in ("memory_bank", "bank_neighbours"):
            if getattr(head, key) is None:
                raise ValueError(f"{bundle.root}: head {name!r} names no {key}")
        bank = np.ascontiguousarray(bundle.load_array(head.memory_bank), dtype=np.float32)
        neighbours = np.ascontiguousarray(bundle.load_array(head.bank_neighbours), dtype=np.int64)
        if bank.ndim != 2 or neighbours.ndim != 2 or neighbours.shape[0] != bank.shape[0]:
            raise ValueError(
                f"{bundle.root}: head {name!r}: memory bank {bank.shape} and "
                f"bank neighbours {neighbours.shape} do not fit together"
            )
        index = _knn_index(bundle, name, head, bank, threads)
        return cls(index, index.bank, neighbours)


def _knn_index(
    bundle: Bundle, name: str, head: KnnHeadSpec, bank: np.ndarray, threads: int | None
) -> native.KnnIndex:
    """The head's exact kNN index: pruned with the bundle's basis when export stored one,
    brute force when export found pruning not worth it (``knn_basis: null``), the automatic
    choice for bundles written before the key existed."""
    if head.choose_pruning:
        return native.KnnIndex(bank, threads=threads)
    if head.knn_basis is None:
        return native.KnnIndex(bank, threads=threads, prune=False)
    basis = bundle.load_array(head.knn_basis)
    try:
        return native.KnnIndex(bank, threads=threads, basis=basis)
    except ValueError as error:
        raise ValueError(f"{bundle.root}: head {name!r}: knn_basis: {error}") from error


@dataclass(frozen=True)
class HeadScores:
    """One head's steps 1-2 for a batch: patch score maps float32 ``(n, h, w)`` and image
    scores float64 ``(n,)``. Skipped images hold 0 in both."""

    patch_maps: np.ndarray
    image_scores: np.ndarray


class KnnHeadScorer:
    """PatchCore: patch score = distance to the nearest bank row; image score = the largest,
    re-weighted by its support in the bank (``native.patchcore_score``)."""

    #: the stage of :data:`autoweld.runtime.inspector.STAGES` its time counts to
    stage = "knn"

    def __init__(self, head: KnnHeadSpec, knn: KnnState, threads: int | None = None) -> None:
        self.head = head
        self.knn = knn
        self.threads = threads

    def score(self, output: np.ndarray, skip: Collection[int] = ()) -> HeadScores:
        """``output``: the head's embeddings ``[n, h·w, D]``; images in ``skip`` are not scored."""
        h, w = self.head.feature_map
        n, patches = output.shape[0], h * w
        if output.shape[1] != patches:
            raise ValueError(
                f"engine output {self.head.output!r} has {output.shape[1]} patches; the manifest "
                f"says feature_map {h}x{w}"
            )
        maps = np.zeros((n, h, w), dtype=np.float32)
        scores = np.zeros(n)
        good = [i for i in range(n) if i not in skip]
        if good:
            # One search over every patch of every image: one parallel pass over the bank.
            queries = np.ascontiguousarray(output[good].reshape(-1, output.shape[2]), np.float32)
            distances, indices = self.knn.index.search(queries, 1, threads=self.threads)
            for j, i in enumerate(good):
                rows = slice(j * patches, (j + 1) * patches)
                maps[i] = distances[rows, 0].reshape(h, w)
                scores[i] = native.patchcore_score(
                    queries[rows],
                    distances[rows],
                    indices[rows],
                    self.knn.memory_bank,
                    self.knn.bank_neighbours,
                )
        return HeadScores(maps, scores)


class MapHeadScorer:
    """The head's output is its patch score map; the image score is the map's maximum."""

    stage = "scoring"

    def __init__(self, head: MapHeadSpec) -> None:
        self.head = head

    def score(self, output: np.ndarray, skip: Collection[int] = ()) -> HeadScores:
        """``output``: the head's maps ``[n, h, w]``; images in ``skip`` get 0."""
        if tuple(output.shape[1:]) != self.head.feature_map:
            raise ValueError(
                f"engine output {self.head.output!r} has map shape {output.shape[1:]}; the "
                f"manifest says feature_map {self.head.feature_map}"
            )
        maps = np.ascontiguousarray(output, dtype=np.float32)
        if skip:
            maps = maps.copy()
            maps[list(skip)] = 0.0
        scores = maps.reshape(maps.shape[0], -1).max(axis=1).astype(np.float64)
        return HeadScores(maps, scores)


HeadScorer = Union[KnnHeadScorer, MapHeadScorer]  # noqa: UP007 (runtime alias)


def head_scorer(bundle: Bundle, name: str, threads: int | None = None) -> HeadScorer:
    """The scorer of the bundle's head ``name`` (a kNN head's bank and index are loaded here)."""
    head = bundle.heads[name]
    if isinstance(head, KnnHeadSpec):
        return KnnHeadScorer(head, KnnState.load(bundle, name, head, threads), threads)
    if isinstance(head, MapHeadSpec):
        return MapHeadScorer(head)
    raise ValueError(f"{bundle.root}: head {name!r} has kind {head.kind!r}, which has no scorer")


@dataclass(frozen=True)
class BatchScores:
    """Steps 3-5 for a batch, per head: anomaly maps float32 ``(n, S, S)`` and Platt
    probabilities float64 ``(n,)``; and the fused probability float64 ``(n,)``."""

    maps: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]
    fused: np.ndarray


class Fusion:
    """Calibration and late fusion of a bundle's heads (steps 3-6).

    ``weights``: head -> fusion weight; heads of weight 0 get maps and probabilities but do not
    enter the fused values. ``size``: the S of the S x S maps.
    """

    def __init__(
        self,
        heads: Mapping[str, HeadSpec],
        weights: Mapping[str, float],
        map_sigma: float,
        size: int,
        threads: int | None = None,
    ) -> None:
        self.heads = heads
        self.fused_heads = [name for name in heads if weights.get(name, 0.0) > 0.0]
        self.weights = np.array([weights[n] for n in self.fused_heads], dtype=np.float64)
        self.map_sigma = map_sigma
        self.size = size
        self.threads = threads

    def calibrate(self, scores: Mapping[str, HeadScores]) -> BatchScores:
        """Anomaly maps at S x S (step 3), Platt probabilities (4) and their fusion (5); every
        value handed in must be finite (``native`` refuses NaN/Inf)."""
        maps = {
            name: native.anomaly_map(
                scores[name].patch_maps, self.size, sigma=self.map_sigma, threads=self.threads
            )
            for name in self.heads
        }
        probabilities = {
            name: np.asarray(
                native.platt(scores[name].image_scores, head.platt_a, head.platt_b),
                dtype=np.float64,
            )
            for name, head in self.heads.items()
        }
        n = len(next(iter(scores.values())).image_scores)
        fused = np.asarray(
            native.fuse(
                np.stack([probabilities[name] for name in self.fused_heads], axis=1), self.weights
            ),
            dtype=np.float64,
        ).reshape(n)
        return BatchScores(maps, probabilities, fused)

    def fused_map(self, batch: BatchScores, i: int) -> np.ndarray:
        """Image ``i``'s fused anomaly map float32 ``(S, S)``: Σ weight · Platt(map) per pixel
        (step 6, in float32: a map needs no more)."""
        fused_map: np.ndarray | None = None
        for weight, name in zip(self.weights, self.fused_heads, strict=True):
            term = self.heads[name].calibration.probability(batch.maps[name][i], np.float32)
            term *= np.float32(weight)  # a fresh array: weighted in place
            if fused_map is None:
                fused_map = term  # 0 + w·p is w·p exactly (w > 0, p >= +0)
            else:
                fused_map += term
        if fused_map is None:
            return np.zeros((self.size, self.size), dtype=np.float32)
        return fused_map
