"""The Inspector: one bundle, many images, a fail-safe decision for each.

Scoring follows docs/bundle.md, "From head outputs to a decision", step by step:
patch score map per head -> image score per head -> anomaly map per head at S x S -> Platt
probability per head -> fused probability and decision -> fused anomaly map at the image's size.
The first two steps run in one scorer per head kind, the rest in :class:`Fusion`
(:mod:`autoweld.runtime.scoring`); this module decodes, runs the engine, applies the fail-safe
rules and assembles one :class:`InspectionResult` per image.
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

import numpy as np

from autoweld import native
from autoweld.bundle import (
    Bundle,
    HeadSpec,
    SignatureError,
    load_bundle,
    require_signed_from_env,
)
from autoweld.runtime.decode import DecodeLimits, image_for_inspection
from autoweld.runtime.engines import BaseRunner, open_engine
from autoweld.runtime.scoring import BatchScores, Fusion, HeadScorer, HeadScores, head_scorer

__all__ = [
    "STAGES",
    "ImageInput",
    "InspectionResult",
    "Inspector",
    "ScoredBatch",
    "assemble_result",
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


@dataclass(frozen=True)
class ScoredBatch:
    """Steps 1-5 for a batch of engine outputs: each head's scores, the calibrated and fused
    values, and image -> why it fails (those images hold zeros in the arrays)."""

    head_scores: dict[str, HeadScores]
    scores: BatchScores
    failures: dict[int, str]


class HeadScoringError(ValueError):
    """A head's scorer failed; the message names the head."""


def _describe(error: BaseException) -> str:
    text = str(error).strip() or "no message"
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


def load_checked_bundle(
    bundle_or_path: Bundle | str | os.PathLike[str], require_signed: bool | None = None
) -> Bundle:
    """The bundle, loaded and checked (``require_signed``: see :func:`load_bundle`; None reads
    ``AUTOWELD_REQUIRE_SIGNED``), with the one loud warning a station gets when it will decide
    with a bundle nobody vouched for. Used by the Inspector and by the Triton client."""
    if isinstance(bundle_or_path, Bundle):
        bundle = bundle_or_path
        required = require_signed_from_env() if require_signed is None else require_signed
        if required and not bundle.signed:
            raise SignatureError(
                f"{bundle.root}: refused, signed bundles are required but this one was loaded "
                "without a checked signature"
            )
    else:
        bundle = load_bundle(Path(bundle_or_path), require_signed=require_signed)
    if not bundle.signed:
        log.warning(
            "UNSIGNED BUNDLE %s (%s): no bundle key checked it, so an edited calibration, "
            "threshold or ONNX graph with fixed-up hashes would go unnoticed; every quality "
            "record will say bundle_signed=false. Set AUTOWELD_BUNDLE_KEY, and refuse unsigned "
            "bundles with --require-signed or AUTOWELD_REQUIRE_SIGNED=1",
            bundle.sha256[:12],
            bundle.root,
        )
    return bundle


class Inspector:
    """Inspects images against one bundle; every failure becomes a FAIL result, never a raise.

    ``bundle_or_path`` is a loaded :class:`~autoweld.bundle.Bundle` or a bundle directory (loaded
    and checked here; a bad bundle raises :class:`~autoweld.bundle.BundleError` from the
    constructor — callers that must stay up, like ``autoweld-inspect``, turn that into a FAIL).
    Everything is loaded once at construction: the engine session, the memory bank and its
    neighbours, and the kNN index. ``require_signed`` refuses a bundle without a checked
    signature (:class:`~autoweld.bundle.SignatureError`; default: ``AUTOWELD_REQUIRE_SIGNED``);
    an unsigned bundle that is allowed is logged once, loudly, here, and ``bundle_signed`` says
    so for the records.

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
        require_signed: bool | None = None,
    ) -> None:
        self.bundle = load_checked_bundle(bundle_or_path, require_signed)
        #: whether the bundle's signature was checked (what each quality record carries)
        self.bundle_signed = self.bundle.signed
        self.threads = threads
        self.decode_limits = decode_limits or DecodeLimits()
        self.preprocess_spec = self.bundle.preprocess
        self.heads: Mapping[str, HeadSpec] = self.bundle.heads
        self.threshold = self.bundle.threshold
        self.map_sigma = self.bundle.map_sigma
        self.fusion = Fusion(
            self.heads,
            self.bundle.fusion_weights,
            self.map_sigma,
            self.preprocess_spec.size,
            threads,
        )
        if not self.fusion.fused_heads:
            raise ValueError(f"{self.bundle.root}: fusion weights are all zero")
        self.fused_heads = self.fusion.fused_heads
        self.fusion_weights = self.fusion.weights
        self._scorers: dict[str, HeadScorer] = {
            name: head_scorer(self.bundle, name, threads) for name in self.heads
        }
        self._outputs = [h.output for h in self.heads.values()]
        self._closed = threading.Event()
        # providers=None: scoring only, for engine outputs computed elsewhere (a Triton ensemble
        # runs the graph in its own model; autoweld.serving)
        self.engine: BaseRunner | None = None
        if providers is not None:
            self.engine = open_engine(self.bundle, providers=providers, threads=threads)
            missing = [name for name in self._outputs if name not in self.engine.output_names]
            if missing:
                self.engine.close()
                raise ValueError(
                    f"{self.bundle.onnx_path}: graph lacks output(s) {missing} the manifest names"
                )
        log.info(
            "inspector ready: bundle %s (%s), heads %s, providers %s",
            self.bundle.sha256[:12],
            self.bundle.category,
            list(self.heads),
            self.engine.active_providers if self.engine is not None else None,
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

    def close(self) -> None:
        """Release the engine. Later inspections return FAIL ("inspector is closed")."""
        self._closed.set()
        if self.engine is not None:
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
        """docs/bundle.md's steps for a batch. An image whose engine output or head score is not
        finite fails alone; an exception fails the batch (``_score_safely`` then retries)."""
        n = len(images)
        spec = self.preprocess_spec
        timings: dict[str, float] = {}

        start = time.perf_counter()
        batch = native.preprocess_batch(images, spec.size, threads=self.threads, **spec.as_kwargs())
        timings["preprocess"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        outputs = self.engine_outputs(batch)
        timings["engine"] = (time.perf_counter() - start) * 1e3

        scored = self.score_engine_outputs(outputs, n, timings)
        share = {stage: ms / n for stage, ms in timings.items()}
        return [
            failed_result(scored.failures[i], self.threshold, share)
            if i in scored.failures
            else self._result(image, i, scored.head_scores, scored.scores, share, keep_head_maps)
            for i, image in enumerate(images)
        ]

    def engine_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's head outputs for a preprocessed float32 ``[n, 3, S, S]`` batch."""
        if self.engine is None:
            raise RuntimeError("this inspector has no engine (opened with providers=None)")
        return self.engine.infer(batch, self._outputs)

    def score_engine_outputs(
        self,
        outputs: Mapping[str, np.ndarray],
        n: int,
        timings: dict[str, float] | None = None,
    ) -> ScoredBatch:
        """Steps 1-5 for the head outputs of ``n`` images (what :meth:`engine_outputs` gives).
        An image with a non-finite output or head score fails alone; an exception fails the
        batch. ``timings`` (when given) gets the ``knn`` and ``scoring`` stages."""
        timings = {} if timings is None else timings
        failures = self._engine_failures(outputs, n)
        head_scores: dict[str, HeadScores] = {}
        start = time.perf_counter()
        self._run_scorers("knn", outputs, failures, head_scores)
        timings["knn"] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        self._run_scorers("scoring", outputs, failures, head_scores)
        head_scores = self._fail_non_finite_scores(head_scores, failures)
        scores = self.fusion.calibrate(head_scores)
        timings["scoring"] = (time.perf_counter() - start) * 1e3
        return ScoredBatch(head_scores, scores, failures)

    def _engine_failures(self, outputs: Mapping[str, np.ndarray], n: int) -> dict[int, str]:
        """Image -> why it fails, for images with a non-finite engine output (the others in the
        batch are still valid). An output of the wrong shape fails the batch."""
        failures: dict[int, str] = {}
        for name, head in self.heads.items():
            out = outputs[head.output]
            if out.ndim != 3 or out.shape[0] != n:
                raise ValueError(
                    f"engine output {head.output!r} has shape {out.shape}; expected 3-D "
                    f"with batch {n}"
                )
            finite = np.isfinite(out.reshape(n, -1)).all(axis=1)
            for i in np.flatnonzero(~finite):
                failures.setdefault(
                    int(i), f"engine output {head.output!r} (head {name}) has NaN/Inf"
                )
        return failures

    def _run_scorers(
        self,
        stage: str,
        outputs: Mapping[str, np.ndarray],
        failures: Mapping[int, str],
        into: dict[str, HeadScores],
    ) -> None:
        """Steps 1-2 for the heads whose time counts to ``stage``; an exception names the head."""
        for name, scorer in self._scorers.items():
            if scorer.stage != stage:
                continue
            try:
                into[name] = scorer.score(outputs[scorer.head.output], failures)
            except Exception as error:
                raise HeadScoringError(f"head {name!r}: {_describe(error)}") from error

    def _fail_non_finite_scores(
        self, head_scores: dict[str, HeadScores], failures: dict[int, str]
    ) -> dict[str, HeadScores]:
        """Fail every image with a non-finite image score or patch score of some head (a kNN
        distance or re-weighted score that overflowed, say), naming the head, and give back
        the scores with those images zeroed: a NaN never reaches a probability or a decision."""
        failed: list[int] = []
        for name in self.heads:
            scores = head_scores[name]
            n = scores.image_scores.shape[0]
            finite = np.isfinite(scores.image_scores) & np.isfinite(
                scores.patch_maps.reshape(n, -1)
            ).all(axis=1)
            for i in np.flatnonzero(~finite):
                if int(i) not in failures:
                    value = scores.image_scores[i]
                    failures[int(i)] = f"head {name!r} scored a non-finite value (score {value})"
                    failed.append(int(i))
        if not failed:
            return head_scores
        cleared = {}
        for name, scores in head_scores.items():
            maps, values = scores.patch_maps.copy(), scores.image_scores.copy()
            maps[failed] = 0.0
            values[failed] = 0.0
            cleared[name] = HeadScores(maps, values)
        return cleared

    def _result(
        self,
        image: np.ndarray,
        i: int,
        head_scores: Mapping[str, HeadScores],
        scores: BatchScores,
        share: Mapping[str, float],
        keep_head_maps: bool,
    ) -> InspectionResult:
        """Image ``i``'s result: its decision, and its maps resized to the image."""
        start = time.perf_counter()
        result = assemble_result(
            image.shape,
            probability=float(scores.fused[i]),
            scores={name: float(head_scores[name].image_scores[i]) for name in self.heads},
            probabilities={name: float(scores.probabilities[name][i]) for name in self.heads},
            threshold=self.threshold,
            fused_map=self.fusion.fused_map(scores, i),
            head_maps={name: scores.maps[name][i] for name in self.heads} if keep_head_maps else {},
        )
        result.timings_ms = {
            **share,
            "scoring": share["scoring"] + (time.perf_counter() - start) * 1e3,
        }
        return result


def assemble_result(
    image_shape: tuple[int, ...],
    *,
    probability: float,
    scores: dict[str, float],
    probabilities: dict[str, float],
    threshold: float,
    fused_map: np.ndarray,
    head_maps: Mapping[str, np.ndarray],
) -> InspectionResult:
    """One image's result from its scored values (maps at S x S, resized here to the image's
    H x W); a non-finite fused probability is a FAIL. Shared by the Inspector and the Triton
    client (autoweld.serving), so both give the same result from the same numbers."""
    height, width = image_shape[:2]
    if not math.isfinite(probability):
        return failed_result(
            f"scoring produced a non-finite fused probability ({probability})", threshold
        )
    return InspectionResult(
        decision=decide(probability, threshold),
        probability=probability,
        scores=scores,
        probabilities=probabilities,
        threshold=threshold,
        anomaly_map=resize_map(fused_map, width, height),
        error=None,
        image_shape=tuple(image_shape),
        head_maps={
            name: resize_map(head_map, width, height) for name, head_map in head_maps.items()
        },
    )


def resize_map(anomaly_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """``anomaly_map`` bilinearly resized to ``height x width`` (``cv2.resize``, INTER_LINEAR),
    always a new array. A map already at that size is copied, which is what ``cv2.resize`` does
    for it; OpenCV is imported only when a map really changes size, so a station whose frames
    are at the engine's size never loads it."""
    if anomaly_map.shape[:2] == (height, width):
        return np.array(anomaly_map, copy=True, order="C")
    import cv2

    return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)
