"""The ``TritonPythonModel`` of AutoWeld's Python-backend models (Triton's Python backend API).

The repository's ``model.py`` files import this class; ``triton_python_backend_utils`` exists only
inside Triton's backend stub, so it is imported in :meth:`TritonPythonModel.initialize`. Three
roles, set by the model config's ``autoweld_role`` parameter:

- ``inspect`` (the pure-Python-backend variant): preprocessed images in, scores out, ONNX
  Runtime inside the model;
- ``scoring`` (the ensemble's second step): the graph's head outputs in, scores out;
- ``graph`` (the ensemble's first step where Triton has no onnxruntime backend): images in,
  head outputs out, ONNX Runtime inside the model.

Dynamic batching hands :meth:`execute` several requests: their images are scored as one batch
and the rows handed back per request. A failure of the whole model answers every request with
an error, which the client records as a FAIL.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from autoweld.serving import contract

__all__ = ["TritonPythonModel"]

log = logging.getLogger(__name__)

PARAM_ROLE = "autoweld_role"
PARAM_PROVIDERS = "autoweld_providers"
PARAM_THREADS = "autoweld_threads"


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        from autoweld.serving.backend import BundleScoring

        if int(np.__version__.split(".")[0]) >= 2:
            # The backend stub of Triton 2.51 hands back empty tensors from numpy 2 arrays:
            # a silent wrong answer, so refuse to start instead.
            raise RuntimeError(f"numpy {np.__version__}: Triton's Python backend needs numpy<2")
        self.pb = pb_utils
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.role = parameters.get(PARAM_ROLE, "inspect")
        threads = int(parameters.get(PARAM_THREADS) or 0) or None
        providers = [p for p in parameters.get(PARAM_PROVIDERS, "cpu").split(",") if p]
        bundle_dir = Path(args["model_repository"]) / args["model_version"] / "bundle"
        self.scoring = BundleScoring(
            bundle_dir,
            parameters[contract.PARAM_SHA256],
            providers=None if self.role == "scoring" else providers,
            threads=threads,
        )
        self.sha256 = self.scoring.sha256.encode("ascii")
        log.info("AutoWeld %s model ready: bundle %s", self.role, self.scoring.sha256[:12])

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            if self.role == "graph":
                return self._graph(requests)
            return self._score(requests)
        except Exception as error:  # noqa: BLE001 - every request gets the reason
            message = f"{type(error).__name__}: {error}"
            log.error("AutoWeld model failed a batch: %s", message)
            return [
                self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))
                for _ in requests
            ]

    def finalize(self) -> None:
        self.scoring.close()

    # ---- roles -------------------------------------------------------------------------------

    def _inputs(self, requests: list[Any], names: list[str]) -> tuple[dict[str, np.ndarray], list]:
        """Each input concatenated over the requests, and each request's row count."""
        parts = {
            name: [self.pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in names
        }
        counts = [array.shape[0] for array in parts[names[0]]]
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}, counts

    def _graph(self, requests: list[Any]) -> list[Any]:
        inputs, counts = self._inputs(requests, [contract.IMAGES])
        outputs = self.scoring.inspector.engine_outputs(inputs[contract.IMAGES])
        return self._respond(counts, lambda rows: {k: v[rows] for k, v in outputs.items()})

    def _score(self, requests: list[Any]) -> list[Any]:
        head_maps = (
            any(contract.HEAD_MAPS in r.requested_output_names() for r in requests)
            or self.role == "scoring"
        )
        if self.role == "scoring":
            inputs, counts = self._inputs(requests, self.scoring.head_outputs)
            scored = self.scoring.score_outputs(inputs, head_maps)
        else:
            inputs, counts = self._inputs(requests, [contract.IMAGES])
            scored = self.scoring.score_images(inputs[contract.IMAGES], head_maps)
        return self._respond(counts, lambda rows: self._tensors(scored, rows))

    def _tensors(self, scored: Any, rows: slice) -> dict[str, np.ndarray]:
        part = scored.rows(rows.start, rows.stop)
        n = rows.stop - rows.start
        tensors = {
            contract.PROBABILITY: part.probability.reshape(n, 1),
            contract.SCORES: part.scores,
            contract.PROBABILITIES: part.probabilities,
            contract.ANOMALY_MAP: part.anomaly_map,
            contract.ERROR: np.array([[e.encode()] for e in part.errors], dtype=np.object_),
            contract.BUNDLE_SHA256: np.array([[self.sha256]] * n, dtype=np.object_),
        }
        if part.head_maps is not None:  # only when a request asked for them (evaluation)
            tensors[contract.HEAD_MAPS] = part.head_maps
        return tensors

    def _respond(self, counts: list[int], tensors) -> list[Any]:
        responses, start = [], 0
        for count in counts:
            arrays = tensors(slice(start, start + count))
            start += count
            responses.append(
                self.pb.InferenceResponse(
                    output_tensors=[
                        self.pb.Tensor(name, np.ascontiguousarray(a)) for name, a in arrays.items()
                    ]
                )
            )
        return responses
