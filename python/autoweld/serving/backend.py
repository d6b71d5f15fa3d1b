"""What the Python-backend models of an AutoWeld Triton repository run (no Triton import here).

:class:`BundleScoring` is the Inspector's steps after preprocessing, for one bundle: with the
graph (the pure-Python-backend variant: ONNX Runtime inside the model) it takes preprocessed
images, without it (the ensemble's scoring model) the graph's head outputs. Either way it gives
:class:`ScoredImages`, the arrays of :mod:`autoweld.serving.contract`, with the same fail-safe
rules as the Inspector: an image whose engine output or head score is not finite fails alone,
with ``error`` naming the head; an exception fails the batch, which is then scored image by image
so the others still get a result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoweld.bundle import BundleError, load_bundle
from autoweld.runtime.inspector import Inspector, ScoredBatch
from autoweld.runtime.inspector import _describe as describe_error

__all__ = ["BundleScoring", "ScoredImages"]

log = logging.getLogger(__name__)


@dataclass
class ScoredImages:
    """Per image: fused probability ``(n,)``, head scores and probabilities ``(n, H)``, fused map
    ``(n, S, S)``, head maps ``(n, H, S, S)`` (None unless asked for), errors (``""`` = none)."""

    probability: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    anomaly_map: np.ndarray
    head_maps: np.ndarray | None
    errors: list[str]

    @classmethod
    def concatenate(cls, parts: Sequence[ScoredImages]) -> ScoredImages:
        with_maps = all(p.head_maps is not None for p in parts)
        return cls(
            np.concatenate([p.probability for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.probabilities for p in parts]),
            np.concatenate([p.anomaly_map for p in parts]),
            np.concatenate([p.head_maps for p in parts]) if with_maps else None,  # type: ignore[misc]
            [e for p in parts for e in p.errors],
        )

    def rows(self, start: int, stop: int) -> ScoredImages:
        """Images ``start:stop`` (one request's share of a dynamic batch)."""
        part = slice(start, stop)
        return ScoredImages(
            self.probability[part],
            self.scores[part],
            self.probabilities[part],
            self.anomaly_map[part],
            None if self.head_maps is None else self.head_maps[part],
            self.errors[part],
        )


class BundleScoring:
    """One bundle's scoring inside a server model.

    ``expected_sha256``: the bundle sha256 the model's config names; a bundle that hashes
    otherwise is refused (the server reports only what it really serves). ``providers``: ONNX
    Runtime providers for the graph, or None when the graph runs in another model.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        expected_sha256: str,
        *,
        providers: Sequence[str] | None = ("cpu",),
        threads: int | None = None,
    ) -> None:
        bundle = load_bundle(Path(bundle_dir))
        if bundle.sha256 != expected_sha256:
            raise BundleError(
                f"{bundle_dir}: bundle sha256 {bundle.sha256} is not the {expected_sha256} the "
                "model's config names (repository changed by hand?)"
            )
        self.inspector = Inspector(bundle, providers=providers, threads=threads)
        self.sha256 = bundle.sha256
        self.heads = list(bundle.heads)
        self.size = bundle.preprocess.size
        #: the graph outputs the scoring reads, in head order (the ensemble's scoring inputs)
        self.head_outputs = [head.output for head in bundle.heads.values()]

    def score_images(self, batch: np.ndarray, head_maps: bool) -> ScoredImages:
        """Scores of a preprocessed float32 ``[n, 3, S, S]`` batch (graph in this model)."""
        return self._safely(batch.shape[0], lambda rows: self._images(batch[rows], head_maps))

    def score_outputs(self, outputs: Mapping[str, np.ndarray], head_maps: bool) -> ScoredImages:
        """Scores of the graph's head outputs for ``n`` images (graph in another model)."""
        n = next(iter(outputs.values())).shape[0]
        return self._safely(
            n, lambda rows: self._outputs({k: v[rows] for k, v in outputs.items()}, head_maps)
        )

    def close(self) -> None:
        self.inspector.close()

    def _images(self, batch: np.ndarray, head_maps: bool) -> ScoredImages:
        return self._outputs(self.inspector.engine_outputs(batch), head_maps)

    def _outputs(self, outputs: Mapping[str, np.ndarray], head_maps: bool) -> ScoredImages:
        n = next(iter(outputs.values())).shape[0]
        scored = self.inspector.score_engine_outputs(outputs, n)
        return self._arrays(scored, n, head_maps)

    def _safely(self, n: int, score) -> ScoredImages:
        """``score(rows)`` for all images; after an exception, image by image (the Inspector's
        rule: one image that spoils a batch fails alone)."""
        try:
            return score(slice(0, n))
        except Exception as error:  # noqa: BLE001 - fail safe: becomes the images' error
            if n == 1:
                log.warning("scoring failed: %s", error)
                return self._failed(1, describe_error(error))
        return ScoredImages.concatenate(
            [self._safely(1, lambda _rows, i=i: score(slice(i, i + 1))) for i in range(n)]
        )

    def _arrays(self, scored: ScoredBatch, n: int, head_maps: bool) -> ScoredImages:
        fusion = self.inspector.fusion
        result = ScoredImages(
            probability=np.asarray(scored.scores.fused, dtype=np.float64).reshape(n),
            scores=np.stack([scored.head_scores[h].image_scores for h in self.heads], axis=1),
            probabilities=np.stack([scored.scores.probabilities[h] for h in self.heads], axis=1),
            anomaly_map=np.stack([fusion.fused_map(scored.scores, i) for i in range(n)]),
            head_maps=(
                np.stack([scored.scores.maps[h] for h in self.heads], axis=1).astype(np.float32)
                if head_maps
                else None
            ),
            errors=[scored.failures.get(i, "") for i in range(n)],
        )
        for i in scored.failures:
            result.probability[i] = np.nan
        return result

    def _failed(self, n: int, error: str) -> ScoredImages:
        h, s = len(self.heads), self.size
        return ScoredImages(
            np.full(n, np.nan),
            np.zeros((n, h)),
            np.zeros((n, h)),
            np.zeros((n, s, s), np.float32),
            np.zeros((n, h, s, s), np.float32),
            [error] * n,
        )
