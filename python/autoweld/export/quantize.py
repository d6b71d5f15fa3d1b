"""INT8 engines: the verified FP32 ONNX graph quantised to QDQ with ONNX Runtime, statically
calibrated on the fit images (docs/bundle.md, "INT8 engines").

:func:`quantize_onnx` runs ONNX Runtime's pre-processing (shape inference, graph clean-up) and
``quantize_static`` in QDQ format: weights INT8 per output channel, activations UINT8
(asymmetric, what x86 VNNI kernels take), ranges from a :class:`FitImageReader` over an evenly
spaced subset of the *fit* images' preprocessed tensors -- never validation, calibration or test
images. ``fp32_leading_convs`` leaves the first convolutions (graph order: the stem and the
early, high-resolution blocks, where rounding errors start and grow) in FP32, and ``keep_fp32``
named groups of nodes (``"embedding"``: the heads' layers behind the backbone taps).

The bundle's memory bank and calibration must come from the graph that serves:
:func:`refit_banks` re-embeds the fit images with the INT8 graph and rebuilds each kNN head's
coreset bank; :class:`EngineScorer` scores the calibration data with it, for export's Platt,
fusion and threshold fit.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_METHODS",
    "FP32_GROUPS",
    "EngineScorer",
    "FitImageReader",
    "QuantizationSettings",
    "QuantizedOnnx",
    "engine_outputs",
    "fp32_node_names",
    "quantize_onnx",
    "refit_banks",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: Node groups ``keep_fp32`` may name.
FP32_GROUPS = ("embedding",)
#: Images per calibration batch. The calibrator keeps every intermediate tensor of every batch
#: until it reduces them (ORT 1.32's ``CalibMaxIntermediateOutputs`` drops the batches it clears
#: instead of reducing them, so it cannot bound this): ``calibration_images`` bounds the memory,
#: about 30 MB per 256 px Lite0 image.
_CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class QuantizationSettings:
    """The recipe's ``[engine]`` table, for ``precision = "int8"``."""

    calibration_method: str = "minmax"
    calibration_images: int = 32
    fp32_leading_convs: int = 3
    keep_fp32: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"got {self.calibration_method!r}"
            )
        if self.calibration_images < 1:
            raise ValueError(f"calibration_images must be >= 1, got {self.calibration_images}")
        if self.fp32_leading_convs < 0:
            raise ValueError(f"fp32_leading_convs must be >= 0, got {self.fp32_leading_convs}")
        unknown = sorted(set(self.keep_fp32) - set(FP32_GROUPS))
        if unknown:
            raise ValueError(
                f"keep_fp32: unknown group(s) {unknown}; known: {', '.join(FP32_GROUPS)}"
            )

    @classmethod
    def from_mapping(cls, engine: Mapping[str, Any]) -> QuantizationSettings:
        """From the recipe's ``[engine]`` table (other keys, e.g. ``precision``, ignored)."""
        defaults = cls()
        return cls(
            calibration_method=str(engine.get("calibration_method", defaults.calibration_method)),
            calibration_images=int(engine.get("calibration_images", defaults.calibration_images)),
            fp32_leading_convs=int(engine.get("fp32_leading_convs", defaults.fp32_leading_convs)),
            keep_fp32=tuple(str(v) for v in engine.get("keep_fp32", defaults.keep_fp32)),
        )

    def to_recipe(self) -> dict[str, Any]:
        """The ``[engine]`` keys these settings come from, for the recipe record."""
        return {
            "calibration_method": self.calibration_method,
            "calibration_images": self.calibration_images,
            "fp32_leading_convs": self.fp32_leading_convs,
            "keep_fp32": list(self.keep_fp32),
        }


@dataclass(frozen=True)
class QuantizedOnnx:
    """The INT8 graph and how it was made."""

    path: Path
    settings: QuantizationSettings
    n_calibration_images: int
    fp32_nodes: tuple[str, ...]
    n_quantize_nodes: int
    n_dequantize_nodes: int
    seconds: float


class FitImageReader:
    """ONNX Runtime's calibration data reader over preprocessed fit images ``[n, 3, S, S]``:
    ``n_images`` of them, evenly spaced (deterministic), in batches of ``batch_size``.
    ``indices`` says which rows it hands out (tests check they are fit images)."""

    def __init__(
        self, images: np.ndarray, input_name: str, n_images: int, batch_size: int = 4
    ) -> None:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be [n>0, 3, S, S], got {images.shape}")
        count = min(int(n_images), images.shape[0])
        self.indices = np.unique(np.linspace(0, images.shape[0] - 1, count).round().astype(int))
        self._images = images
        self._input_name = input_name
        self._batches = [
            self.indices[i : i + batch_size] for i in range(0, len(self.indices), batch_size)
        ]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        rows = self._batches[self._next]
        self._next += 1
        return {self._input_name: np.ascontiguousarray(self._images[rows])}

    def rewind(self) -> None:
        self._next = 0


def _leading_convs(graph: onnx.GraphProto, count: int) -> list[str]:
    """The first ``count`` Conv nodes in graph (topological) order."""
    return [n.name for n in graph.node if n.op_type == "Conv"][:count]


def _embedding_nodes(graph: onnx.GraphProto, head_outputs: Sequence[str]) -> list[str]:
    """Nodes between the backbone's last convolution that feeds a head output and the output:
    the heads' pooling, resampling, concatenation and layout (PatchCore's embedding)."""
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[str] = set()
    names: list[str] = []
    stack = [producer[o] for o in head_outputs if o in producer]
    while stack:
        node = stack.pop()
        if node.name in seen or node.op_type == "Conv":
            continue
        seen.add(node.name)
        names.append(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return names


def fp32_node_names(model: onnx.ModelProto, settings: QuantizationSettings) -> list[str]:
    """The names of the nodes ``settings`` leaves in FP32, in ``model``."""
    names = _leading_convs(model.graph, settings.fp32_leading_convs)
    outputs = [o.name for o in model.graph.output]
    for group in settings.keep_fp32:
        if group == "embedding":
            names += _embedding_nodes(model.graph, outputs)
        else:
            raise ValueError(f"keep_fp32: unknown group {group!r}; known: {', '.join(FP32_GROUPS)}")
    return list(dict.fromkeys(names))


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    fit_images: np.ndarray,
    settings: QuantizationSettings,
    input_name: str = "image",
) -> QuantizedOnnx:
    """Quantise the FP32 graph at ``fp32_path`` to a QDQ INT8 graph at ``out_path``, ranges
    calibrated on ``fit_images`` (preprocessed fit images only); the result is checked with
    ``onnx.checker`` and must hold QuantizeLinear/DequantizeLinear pairs."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    out_path = Path(out_path)
    reader = FitImageReader(fit_images, input_name, settings.calibration_images, _CALIBRATION_BATCH)
    with tempfile.TemporaryDirectory(prefix="autoweld-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        fp32_nodes = fp32_node_names(onnx.load(str(prepared)), settings)
        quantize_static(
            str(prepared),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=fp32_nodes,
            calibrate_method=_calibrate_method(settings.calibration_method),
        )
    model = onnx.load(str(out_path))
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    n_q, n_dq = ops.count("QuantizeLinear"), ops.count("DequantizeLinear")
    if n_q == 0 or n_dq == 0:
        raise ValueError(f"{out_path}: quantisation left no QuantizeLinear/DequantizeLinear nodes")
    seconds = time.perf_counter() - started
    logger.info(
        "int8: %s (%s, %d calibration images, %d Q / %d DQ nodes, %d FP32 nodes) in %.1fs",
        out_path,
        settings.calibration_method,
        len(reader.indices),
        n_q,
        n_dq,
        len(fp32_nodes),
        seconds,
    )
    return QuantizedOnnx(
        out_path, settings, len(reader.indices), tuple(fp32_nodes), n_q, n_dq, seconds
    )


def _session(path: str | Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def engine_outputs(
    path: str | Path,
    images: np.ndarray,
    output_names: Sequence[str],
    input_name: str = "image",
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Every named output of the graph at ``path`` for ``images`` ``[n, 3, S, S]``, stacked."""
    session = _session(path)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for start in range(0, images.shape[0], batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
        values = session.run(list(output_names), {input_name: batch})
        for name, value in zip(output_names, values, strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def refit_banks(
    graph: Any, engine_path: str | Path, fit_images: np.ndarray, batch_size: int
) -> None:
    """Rebuild every kNN head's memory bank from the INT8 graph's embeddings of the fit images,
    so the bank lives in the space the serving graph embeds into."""
    knn_heads = [head for head in graph.heads if head.kind == "knn"]
    if not knn_heads:
        return
    outputs = engine_outputs(
        engine_path,
        fit_images,
        [head.output_name for head in knn_heads],
        graph.input_name,
        batch_size,
    )
    for head in knn_heads:
        embeddings = outputs[head.output_name]
        head.fit_embeddings(embeddings.reshape(-1, embeddings.shape[-1]))
        logger.info("int8: %s memory bank refitted on the INT8 graph's embeddings", head.name)


class EngineScorer:
    """Export's calibration scoring with an exported graph's outputs instead of the eager
    model's: ONNX Runtime runs ``engine_path``, the torch reference scores the outputs."""

    def __init__(self, engine_path: str | Path, reference: Any) -> None:
        self._session = _session(engine_path)
        self._reference = reference

    def patch_scores(self, batch: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """As :meth:`autoweld.train.reference.TorchReference.patch_scores`."""
        import torch

        graph = self._reference.graph
        feed = {graph.input_name: np.ascontiguousarray(batch.numpy(), dtype=np.float32)}
        values = self._session.run(graph.output_names, feed)
        outputs = {
            head.name: torch.from_numpy(value)
            for head, value in zip(graph.heads, values, strict=True)
        }
        return self._reference.head_scores(outputs, int(batch.shape[-1]))
