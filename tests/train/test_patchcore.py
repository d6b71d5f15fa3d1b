import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoweld import native
from autoweld.train.backbones import build_backbone
from autoweld.train.heads import HeadContext, InspectionGraph, available_heads, build_head
from autoweld.train.patchcore import PatchCoreHead, PatchCoreSettings, adaptive_pool_matrix

needs_native = pytest.mark.skipif(
    not (hasattr(native, "coreset") and hasattr(native, "bank_neighbours")),
    reason="autoweld.native.coreset/bank_neighbours not merged yet",
)


@pytest.mark.parametrize(("d_in", "d_out"), [(152, 64), (1536, 1024), (10, 10), (7, 3)])
def test_projection_matrix_equals_adaptive_average_pooling(d_in, d_out):
    x = torch.randn(5, d_in)
    want = F.adaptive_avg_pool1d(x[:, None], d_out)[:, 0]
    got = x @ torch.from_numpy(adaptive_pool_matrix(d_in, d_out))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_embeddings_are_row_major_local_averages_of_both_taps():
    head = PatchCoreHead((3, 5), PatchCoreSettings())
    shallow = torch.randn(2, 3, 8, 8)
    deep = torch.randn(2, 5, 4, 4)
    out = head(torch.zeros(2, 3, 64, 64), [shallow, deep])
    assert out.shape == (2, 64, 8)
    i, j = 3, 6
    # 3x3 mean with zero padding counted (AvgPool2d's default), at one location
    window = F.pad(shallow, (1, 1, 1, 1))[:, :, i : i + 3, j : j + 3]
    torch.testing.assert_close(out[:, i * 8 + j, :3], window.mean(dim=(2, 3)))
    deep_pooled = F.avg_pool2d(deep, 3, 1, 1)
    up = F.interpolate(deep_pooled, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, i * 8 + j, 3:], up[:, :, i, j])


def test_projection_setting_changes_the_embedding_dim():
    head = PatchCoreHead((40, 112), PatchCoreSettings(embedding_dim=64))
    out = head(torch.zeros(1, 3, 64, 64), [torch.randn(1, 40, 8, 8), torch.randn(1, 112, 4, 4)])
    assert out.shape == (1, 64, 64)
    assert head.embedding_dim == 64


def test_settings_are_checked():
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCoreSettings(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="coreset_max"):
        PatchCoreSettings(coreset_max=0)
    with pytest.raises(ValueError, match="unknown key"):
        PatchCoreSettings.from_mapping({"coreset_size": 3})


def test_registry_builds_patchcore_and_rejects_unknown_heads():
    assert "patchcore" in available_heads()
    extractor = build_backbone("resnet18", random_weights=True)
    head = build_head("patchcore", HeadContext(extractor, 64, {"coreset_max": 50}))
    assert isinstance(head, PatchCoreHead) and head.in_dim == 128 + 256
    with pytest.raises(ValueError, match="not implemented"):
        build_head("no_such_head", HeadContext(extractor, 64, {}))


def test_unfitted_head_cannot_be_exported():
    head = PatchCoreHead((3, 5), PatchCoreSettings())
    with pytest.raises(ValueError, match="not fitted"):
        head.bundle_files()


@needs_native
def test_fit_builds_a_coreset_bank_of_the_configured_size():
    extractor = build_backbone("efficientnet_lite0")
    head = build_head(
        "patchcore",
        HeadContext(extractor, 64, {"coreset_ratio": 0.25, "coreset_max": 40}),
    )
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 64, 64) for _ in range(2)]  # 4 images x 64 patches = 256
    head.fit(extractor, batches)
    bank, neighbours = head.memory_bank, head.bank_neighbours
    assert bank.shape == (40, 152)  # min(0.25 * 256, 40)
    assert neighbours.shape == (40, 9)
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(40))
    embeddings = head.embed(extractor, batches)
    # every bank row is one of the fitted patch embeddings
    d = ((bank[:, None, :] - embeddings[None]) ** 2).sum(-1).min(axis=1)
    assert d.max() < 1e-8
    entry = head.manifest_entry()
    assert entry["bank_size"] == 40 and entry["reweight_neighbours"] == 9
    assert entry["embedding_dim"] == 152 and entry["n_patches_fitted"] == 256
    graph = InspectionGraph(extractor, [head])
    assert graph.output_names == ["patchcore_embeddings"]


def test_knn_basis_for_the_runtime_only_when_pruning_pays():
    rng = np.random.default_rng(0)
    head = PatchCoreHead((32, 32), PatchCoreSettings())  # D = 64
    concentrated = (rng.standard_normal((2000, 3)) @ rng.standard_normal((3, 64))).astype(
        np.float32
    ) + 0.01 * rng.standard_normal((2000, 64)).astype(np.float32)
    head.set_bank(concentrated, np.zeros((2000, 1), np.int64))
    basis = head.knn_basis()
    assert basis is not None and basis.dtype == np.float32 and basis.shape == (8, 64)
    np.testing.assert_allclose(basis @ basis.T, np.eye(8), atol=1e-5)
    assert head.manifest_entry()["knn_basis"] == "knn_basis.npy"
    np.testing.assert_array_equal(head.bundle_files()["knn_basis.npy"], basis)
    spread = rng.standard_normal((2000, 64)).astype(np.float32)
    head.set_bank(spread, np.zeros((2000, 1), np.int64))  # a new bank: a new decision
    assert head.knn_basis() is None
    assert head.manifest_entry()["knn_basis"] is None
    assert "knn_basis.npy" not in head.bundle_files()
