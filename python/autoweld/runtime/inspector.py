"""The Inspector: one bundle, many images, a fail-safe decision for each.

Scoring follows docs/bundle.md, "From head outputs to a decision", step by step:
patch score map per head -> image score per head -> anomaly map per head at S x S -> Platt
probability per head -> fused probability and decision -> fused anomaly map at the image's size.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from autoweld import native
from autoweld.bundle import Bundle, HeadSpec, KnnHeadSpec, load_bundle
from autoweld.runtime.decode import DecodeLimits, image_for_inspection
from autoweld.runtime.engines import BaseRunner, open_engine

__all__ = [
    "STAGES",
    "ImageInput",
    "InspectionResult",
    "Inspector",
    "decide",
    "failed_result",
]

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "engine", "knn", "scoring")
ImageInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray]  # noqa: UP007 (runtime alias)


@dataclass
class InspectionResult:
    """What one inspection found. ``decision`` is ``"FAIL"`` whenever ``error`` is set.

    ``scores`` are the heads' raw image scores, ``probabilities`` their Platt-calibrated
    probabilities, ``probability`` the fused probability compared with ``threshold``.
    ``anomaly_map`` is the fused per-pixel probability map, float32 at the image's own H x W (None
    when the inspection failed). ``head_maps`` holds each head's raw score map at the image's size
    when asked for (``keep_head_maps=True``; used by evaluation). ``timings_ms`` has one entry per
    stage of :data:`STAGES` that ran; in a batch each image carries its share of the batch stages.
    """

    decision: str
    probability: float
    scores: dict[str, float]
    probabilities: dict[str, float]
    threshold: float
    anomaly_map: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    image_shape: tuple[int, ...] | None = None
    head_maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.decision == "PASS"

    def to_json(self) -> dict[str, Any]:
        """The JSON-safe summary (no maps): the keys of ``autoweld-inspect --json``."""
        return {
            "decision": self.decision,
            "probability": _json_float(self.probability),
            "scores": {k: _json_float(v) for k, v in self.scores.items()},
            "probabilities": {k: _json_float(v) for k, v in self.probabilities.items()},
            "threshold": _json_float(self.threshold),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "error": self.error,
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def failed_result(
    error: str, threshold: float = float("nan"), timings_ms: dict[str, float] | None = None
) -> InspectionResult:
    """A FAIL result for an inspection that could not be completed."""
    return InspectionResult(
        decision="FAIL",
        probability=float("nan"),
        scores={},
        probabilities={},
        threshold=threshold,
        anomaly_map=None,
        timings_ms=dict(timings_ms or {}),
        error=error,
    )


def decide(probability: float, threshold: float) -> str:
    """``"PASS"`` only for a finite probability strictly below a finite threshold in (0, 1].

    Written so that NaN anywhere gives FAIL: ``nan >= t`` is False, so the obvious
    ``"FAIL" if p >= t else "PASS"`` would pass a part on a NaN probability or threshold.
    """
    if (
        math.isfinite(probability)
        and math.isfinite(threshold)
        and 0.0 < threshold <= 1.0
        and probability < threshold
    ):
        return "PASS"
    return "FAIL"


def _describe(error: BaseException) -> str:
    text = str(error).strip() or "no message"
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


def _platt(values: np.ndarray, a: float, b: float) -> np.ndarray:
    """p = 1 / (1 + exp(a*s + b)) per pixel, in float32 (maps need no more); the exponent is
    clipped where the result is 0 or 1 to float32 precision anyway, so exp never overflows."""
    z = np.clip(np.float32(a) * values + np.float32(b), -88.0, 88.0)
    return 1.0 / (1.0 + np.exp(z, dtype=np.float32))


class Inspector:
    """Inspects images against one bundle; every failure becomes a FAIL result, never a raise.

    ``bundle_or_path`` is a loaded :class:`~autoweld.bundle.Bundle` or a bundle directory (loaded
    and checked here; a bad bundle raises :class:`~autoweld.bundle.BundleError` from the
    constructor — callers that must stay up, like ``autoweld-inspect``, turn that into a FAIL).
    Everything is loaded once at construction: the engine session, the memory bank and its
    neighbours, and the kNN index.

    ``inspect`` and ``inspect_batch`` never raise for a bad image, a failing engine, non-finite
    outputs or a rejected argument inside the scoring: the result is ``decision="FAIL"`` with
    ``error`` saying why, and the Inspector stays usable for the next image.

    **Thread safety:** an Inspector may be shared by several threads and called concurrently.
    After construction it holds only read-only state (bundle settings, bank arrays, the kNN index)
    and its engine, which is safe to share: an ONNX Runtime session runs concurrent calls in
    parallel; a TensorRT plan has one execution context, so its runner takes a lock and the
    engine stage of concurrent calls runs one at a time (the other stages still overlap). Each
    call keeps its intermediate arrays and timings to itself. ``close`` must not race with
    running inspections.
    """

    def __init__(
        self,
        bundle_or_path: Bundle | str | os.PathLike[str],
        providers: Sequence[str] | str = ("cpu",),
        threads: int | None = None,
        decode_limits: DecodeLimits | None = None,
    ) -> None:
        self.bundle = (
            bundle_or_path
            if isinstance(bundle_or_path, Bundle)
            else load_bundle(Path(bundle_or_path))
        )
        self.threads = threads
        self.decode_limits = decode_limits or DecodeLimits()
        self.preprocess_spec = self.bundle.preprocess
        self.heads: Mapping[str, HeadSpec] = self.bundle.heads
        self.threshold = self.bundle.threshold
        self.map_sigma = self.bundle.map_sigma
        weights = self.bundle.fusion_weights
        self.fused_heads = [name for name in self.heads if weights.get(name, 0.0) > 0.0]
        if not self.fused_heads:
            raise ValueError(f"{self.bundle.root}: fusion weights are all zero")
        self.fusion_weights = np.array([weights[n] for n in self.fused_heads], dtype=np.float64)
        self._knn: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}
        for name, head in self.heads.items():
            if head.kind == "knn":
                for key in ("memory_bank", "bank_neighbours"):
                    if getattr(head, key) is None:
                        raise ValueError(f"{self.bundle.root}: head {name!r} names no {key}")
                bank = np.ascontiguousarray(
                    self.bundle.load_array(head.memory_bank), dtype=np.float32
                )
                neighbours = np.ascontiguousarray(
                    self.bundle.load_array(head.bank_neighbours), dtype=np.int64
                )
                if bank.ndim != 2 or neighbours.ndim != 2 or neighbours.shape[0] != bank.shape[0]:
                    raise ValueError(
                        f"{self.bundle.root}: head {name!r}: memory bank {bank.shape} and "
                        f"bank neighbours {neighbours.shape} do not fit together"
                    )
                self._knn[name] = (
                    self._knn_index(name, head, bank, threads),
                    bank,
                    neighbours,
                )
        self.engine: BaseRunner = open_engine(self.bundle, providers=providers, threads=threads)
        missing = [
            h.output for h in self.heads.values() if h.output not in self.engine.output_names
        ]
        if missing:
            self.engine.close()
            raise ValueError(
                f"{self.bundle.onnx_path}: graph lacks output(s) {missing} the manifest names"
            )
        self._outputs = [h.output for h in self.heads.values()]
        self._closed = threading.Event()
        log.info(
            "inspector ready: bundle %s (%s), heads %s, providers %s",
            self.bundle.sha256[:12],
            self.bundle.category,
            list(self.heads),
            self.engine.active_providers,
        )

    # ---- public API --------------------------------------------------------------------------

    def inspect(self, image: ImageInput, *, keep_head_maps: bool = False) -> InspectionResult:
        """Inspect one image (path, encoded bytes, or uint8 BGR/grey array). Never raises."""
        return self.inspect_batch([image], keep_head_maps=keep_head_maps)[0]

    def inspect_batch(
        self, images: Sequence[ImageInput], *, keep_head_maps: bool = False
    ) -> list[InspectionResult]:
        """Inspect several images with one engine call; one result per image, in order.

        An image that cannot be decoded fails alone; a failure of the engine fails the batch.
        Never raises.
        """
        if isinstance(images, (str, bytes, bytearray, os.PathLike)):
            return [
                failed_result(
                    f"images: expected a sequence of images, got one {type(images).__name__} "
                    "(use inspect for a single image)",
                    self.threshold,
                )
            ]
        try:
            images = list(images)
        except Exception as error:  # noqa: BLE001 - fail safe: a bad argument is a FAIL too
            return [failed_result(f"images: {_describe(error)}", self.threshold)]
        results: list[InspectionResult | None] = [None] * len(images)
        if not images:
            return []
        if self._closed.is_set():
            return [failed_result("inspector is closed", self.threshold) for _ in images]

        decoded: list[np.ndarray] = []
        positions: list[int] = []
        decode_ms: list[float] = []
        for i, image in enumerate(images):
            start = time.perf_counter()
            try:
                array = self._decode(image)
            except Exception as error:  # noqa: BLE001 - fail safe
                elapsed = (time.perf_counter() - start) * 1e3
                results[i] = failed_result(_describe(error), self.threshold, {"decode": elapsed})
                continue
            decode_ms.append((time.perf_counter() - start) * 1e3)
            decoded.append(array)
            positions.append(i)

        if decoded:
            scored = self._score_safely(decoded, keep_head_maps)
            for j, (position, result) in enumerate(zip(positions, scored, strict=True)):
                result.timings_ms = {"decode": decode_ms[j], **result.timings_ms}
                results[position] = result
        return [r if r is not None else failed_result("not inspected") for r in results]

    def _knn_index(
        self, name: str, head: KnnHeadSpec, bank: np.ndarray, threads: int | None
    ) -> native.KnnIndex:
        """The head's exact kNN index: pruned with the bundle's basis when export stored one,
        brute force when export found pruning not worth it (``knn_basis: null``), the automatic
        choice for bundles written before the key existed."""
        if head.choose_pruning:
            return native.KnnIndex(bank, threads=threads)
        if head.knn_basis is None:
            return native.KnnIndex(bank, threads=threads, prune=False)
        basis = self.bundle.load_array(head.knn_basis)
        try:
            return native.KnnIndex(bank, threads=threads, basis=basis)
        except ValueError as error:
            raise ValueError(f"{self.bundle.root}: head {name!r}: knn_basis: {error}") from error

    def close(self) -> None:
        """Release the engine. Later inspections return FAIL ("inspector is closed")."""
        self._closed.set()
        self.engine.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- stages ------------------------------------------------------------------------------

    def _decode(self, image: ImageInput) -> np.ndarray:
        """The image as the bundle was trained on it: checked, decoded, grey expanded to BGR
        (training reads every file with cv2.IMREAD_COLOR)."""
        return image_for_inspection(image, self.decode_limits)

    def _score_safely(
        self, images: list[np.ndarray], keep_head_maps: bool
    ) -> list[InspectionResult]:
        """_score, but a failure fails only the image that caused it, never raises."""
        try:
            return self._score(images, keep_head_maps)
        except Exception as error:  # noqa: BLE001 - fail safe: engine/native/shape failures
            if len(images) == 1:
                log.warning("inspection failed: %s", _describe(error))
                return [failed_result(_describe(error), self.threshold)]
        # One image spoilt the batch: score one by one so the others still get a result.
        results: list[InspectionResult] = []
        for image in images:
            results += self._score_safely([image], keep_head_maps)
        return results

    def _score(self, images: list[np.ndarray], keep_head_maps: bool) -> list[InspectionResult]:
        n = len(images)
        spec = self.preprocess_spec
        size = spec.size
        timings: dict[str, float] = {}

        start = time.perf_counter()
        batch = native.preprocess_batch(images, size, threads=self.threads, **spec.as_kwargs())
        timings["preprocess"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        outputs = self.engine.infer(batch, self._outputs)
        timings["engine"] = (time.perf_counter() - start) * 1e3

        # Non-finite engine output fails that image only (others in the batch are still valid).
        bad: dict[int, str] = {}
        for name, head in self.heads.items():
            out = outputs[head.output]
            expect = 3
            if out.ndim != expect or out.shape[0] != n:
                raise ValueError(
                    f"engine output {head.output!r} has shape {out.shape}; expected {expect}-D "
                    f"with batch {n}"
                )
            finite = np.isfinite(out.reshape(n, -1)).all(axis=1)
            for i in np.flatnonzero(~finite):
                bad.setdefault(int(i), f"engine output {head.output!r} (head {name}) has NaN/Inf")

        start = time.perf_counter()
        patch_maps: dict[str, np.ndarray] = {}  # head -> float32 (n, h, w)
        image_scores: dict[str, np.ndarray] = {}  # head -> float64 (n,)
        for name, head in self.heads.items():
            h, w = head.feature_map
            out = outputs[head.output]
            if head.kind != "knn":
                continue
            if out.shape[1] != h * w:
                raise ValueError(
                    f"engine output {head.output!r} has {out.shape[1]} patches; the manifest "
                    f"says feature_map {h}x{w}"
                )
            index, bank, neighbours = self._knn[name]
            maps = np.zeros((n, h, w), dtype=np.float32)
            scores = np.zeros(n)  # images in `bad` keep 0: their results are FAIL anyway
            good = [i for i in range(n) if i not in bad]
            if good:
                # One search over every patch of every image: one parallel pass over the bank.
                queries = np.ascontiguousarray(out[good].reshape(-1, out.shape[2]), np.float32)
                distances, indices = index.search(queries, 1, threads=self.threads)
                patches = h * w
                for j, i in enumerate(good):
                    rows = slice(j * patches, (j + 1) * patches)
                    maps[i] = distances[rows, 0].reshape(h, w)
                    scores[i] = native.patchcore_score(
                        queries[rows], distances[rows], indices[rows], bank, neighbours
                    )
            patch_maps[name] = maps
            image_scores[name] = scores
        timings["knn"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        for name, head in self.heads.items():
            if head.kind != "map":
                continue
            out = outputs[head.output]
            if tuple(out.shape[1:]) != head.feature_map:
                raise ValueError(
                    f"engine output {head.output!r} has map shape {out.shape[1:]}; the manifest "
                    f"says feature_map {head.feature_map}"
                )
            maps = np.ascontiguousarray(out, dtype=np.float32)
            if bad:
                maps = maps.copy()
                maps[list(bad)] = 0.0
            patch_maps[name] = maps
            image_scores[name] = maps.reshape(n, -1).max(axis=1).astype(np.float64)

        full_maps = {
            name: native.anomaly_map(
                patch_maps[name], size, sigma=self.map_sigma, threads=self.threads
            )
            for name in self.heads
        }
        probabilities = {
            name: np.asarray(
                native.platt(image_scores[name], head.platt_a, head.platt_b), dtype=np.float64
            )
            for name, head in self.heads.items()
        }
        fused_probability = np.asarray(
            native.fuse(
                np.stack([probabilities[name] for name in self.fused_heads], axis=1),
                self.fusion_weights,
            ),
            dtype=np.float64,
        ).reshape(n)
        timings["scoring"] = (time.perf_counter() - start) * 1e3

        results: list[InspectionResult] = []
        share = {stage: ms / n for stage, ms in timings.items()}
        for i, image in enumerate(images):
            if i in bad:
                results.append(failed_result(bad[i], self.threshold, share))
                continue
            start = time.perf_counter()
            height, width = image.shape[:2]
            fused_map = np.zeros((size, size), dtype=np.float32)
            for weight, name in zip(self.fusion_weights, self.fused_heads, strict=True):
                head = self.heads[name]
                fused_map += np.float32(weight) * _platt(
                    full_maps[name][i], head.platt_a, head.platt_b
                )
            anomaly_map = cv2.resize(fused_map, (width, height), interpolation=cv2.INTER_LINEAR)
            head_maps = {}
            if keep_head_maps:
                head_maps = {
                    name: cv2.resize(
                        full_maps[name][i], (width, height), interpolation=cv2.INTER_LINEAR
                    )
                    for name in self.heads
                }
            probability = float(fused_probability[i])
            own = {**share, "scoring": share["scoring"] + (time.perf_counter() - start) * 1e3}
            scores_i = {name: float(image_scores[name][i]) for name in self.heads}
            probs_i = {name: float(probabilities[name][i]) for name in self.heads}
            if not math.isfinite(probability) or not all(map(math.isfinite, scores_i.values())):
                results.append(
                    failed_result("scoring produced a non-finite value", self.threshold, own)
                )
                continue
            results.append(
                InspectionResult(
                    decision=decide(probability, self.threshold),
                    probability=probability,
                    scores=scores_i,
                    probabilities=probs_i,
                    threshold=self.threshold,
                    anomaly_map=anomaly_map,
                    timings_ms=own,
                    error=None,
                    image_shape=tuple(image.shape),
                    head_maps=head_maps,
                )
            )
        return results
