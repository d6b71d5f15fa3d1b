import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autoweld.export.onnx_export import export_onnx, verify_onnx
from autoweld.train.backbones import build_backbone
from autoweld.train.heads import ExportHead, InspectionGraph
from autoweld.train.patchcore import PatchCoreHead, PatchCoreSettings


class _MapHead(ExportHead):
    name = "test_map"
    kind = "map"
    output_name = "test_map_out"

    def forward(self, image, features):
        return features[1].pow(2).mean(dim=1)

    def feature_map_size(self, image_size):
        return (image_size // 16, image_size // 16)


@pytest.fixture(scope="module")
def lite0_graph():
    extractor = build_backbone("efficientnet_lite0")
    patchcore = PatchCoreHead(extractor.channels, PatchCoreSettings(embedding_dim=96))
    return InspectionGraph(extractor, [patchcore, _MapHead()])


@pytest.fixture(scope="module")
def exported(lite0_graph, tmp_path_factory):
    return export_onnx(lite0_graph, tmp_path_factory.mktemp("onnx") / "model.onnx", 64)


def test_export_is_checked_and_equals_torch(lite0_graph, exported):
    result = exported
    assert result.opset >= 17
    assert result.output_names == ("patchcore_embeddings", "test_map_out")
    assert result.max_abs_diff <= 1e-4
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    # no distance computation in the graph: kNN is the runtime's job
    ops = {node.op_type for node in model.graph.node}
    assert "TopK" not in ops and "ReduceMin" not in ops
    # dynamic batch: a batch size never seen at export time runs and matches torch
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    got = session.run(None, {"image": x})
    with torch.no_grad():
        want = lite0_graph(torch.from_numpy(x))
    assert got[0].shape == (3, 64, 96) and got[1].shape == (3, 4, 4)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4)


def test_the_unused_tail_of_the_backbone_is_not_exported(lite0_graph, exported):
    path = exported.path
    n_exported = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    used = sum(p.numel() for p in lite0_graph.extractor.model._blocks[:11].parameters())
    total = sum(p.numel() for p in lite0_graph.extractor.model.parameters())
    assert n_exported < used * 1.1 < total  # head conv, fc and blocks 11-15 stay out


def test_verify_catches_a_graph_that_differs(lite0_graph, exported):
    path = exported.path
    head = lite0_graph.heads[0]
    saved = head.projection.clone()
    try:
        head.projection.mul_(1.01)
        with pytest.raises(ValueError, match="differs from torch"):
            verify_onnx(lite0_graph, path, 64)
    finally:
        head.projection.copy_(saved)


def test_export_rejects_bad_arguments(lite0_graph, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(lite0_graph, tmp_path / "m.onnx", 64, opset=13)
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(lite0_graph, tmp_path / "m.onnx", 60)
