"""Export an :class:`~autoweld.train.heads.InspectionGraph` to one ONNX file.

One input ``image`` (float32 ``[N, 3, S, S]``, dynamic N), one output per head in head order. The
graph holds no distance computation: kNN heads output patch embeddings laid out for the runtime's
kNN. The exported file is checked with ``onnx.checker`` and its outputs compared with the eager
model on ONNX Runtime (within ``atol``) before it is accepted.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from autoweld.train.heads import InspectionGraph

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPSET", "OnnxExport", "export_onnx", "verify_onnx"]

DEFAULT_OPSET = 18
MIN_OPSET = 17


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress to stdout and logs every graph pass at INFO; keep the
    command's own output readable (its errors still propagate)."""
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # deprecations and dynamic-shape notes
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


@dataclass(frozen=True)
class OnnxExport:
    """Where the graph went and how it was checked."""

    path: Path
    opset: int
    input_name: str
    output_names: tuple[str, ...]
    max_abs_diff: float


def export_onnx(
    graph: InspectionGraph,
    path: str | Path,
    image_size: int,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    verify_batch: int = 2,
) -> OnnxExport:
    """Export ``graph`` for ``image_size`` inputs, check it, verify it against torch."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if image_size < 32 or image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 and >= 32, got {image_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = graph.eval()
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[graph.input_name],
            output_names=graph.output_names,
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            external_data=False,
            optimize=True,
            verify=False,
        )
    assert program is not None
    with tempfile.TemporaryDirectory() as scratch:
        # Save via the ONNXProgram, then reload it as a plain ModelProto so the file on disk is
        # one self-contained protobuf (no external data) and can be checked.
        raw = Path(scratch) / "model.onnx"
        program.save(str(raw), external_data=False)
        model = onnx.load(str(raw))
    onnx.checker.check_model(model, full_check=True)
    actual_opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    onnx.save(model, str(path))
    diff = verify_onnx(graph, path, image_size, batch=verify_batch, atol=atol)
    logger.info("onnx: %s (opset %d), max |onnx - torch| = %.3g", path, actual_opset, diff)
    return OnnxExport(
        path=path,
        opset=int(actual_opset),
        input_name=graph.input_name,
        output_names=tuple(graph.output_names),
        max_abs_diff=diff,
    )


def verify_onnx(
    graph: InspectionGraph,
    path: str | Path,
    image_size: int,
    *,
    batch: int = 2,
    atol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Run the ONNX file on ONNX Runtime (CPU) and the eager graph on the same random batch;
    raise ``ValueError`` when any output differs by more than ``atol``. Returns the max diff."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(graph.output_names, {graph.input_name: image})
    with torch.no_grad():
        want = [t.numpy() for t in graph(torch.from_numpy(image))]
    worst = 0.0
    for name, g, w in zip(graph.output_names, got, want, strict=True):
        if g.shape != w.shape:
            raise ValueError(f"onnx output {name!r}: shape {g.shape}, torch gives {w.shape}")
        diff = float(np.max(np.abs(g - w))) if g.size else 0.0
        if not diff <= atol:
            raise ValueError(f"onnx output {name!r} differs from torch by {diff:.3g} > {atol}")
        worst = max(worst, diff)
    return worst
