import cv2
import numpy as np
import pytest
import torch

from autoweld.train.backbones import build_backbone
from autoweld.train.heads import ExportHead, InspectionGraph
from autoweld.train.patchcore import PatchCoreHead, PatchCoreSettings
from autoweld.train.reference import (
    ScoringSettings,
    TorchReference,
    anomaly_maps,
    gaussian_kernel,
    patchcore_scores,
)


def _brute_neighbours(bank, b):
    d = ((bank[:, None] - bank[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :b]


def test_patchcore_score_matches_the_paper_formula_in_float64():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 6)).astype(np.float32)
    emb = rng.normal(size=(20, 6)).astype(np.float32)
    neighbours = _brute_neighbours(bank, 5)
    patch, score = patchcore_scores(
        torch.from_numpy(emb), torch.from_numpy(bank), torch.from_numpy(neighbours)
    )
    d = np.sqrt(((emb[:, None].astype(np.float64) - bank[None]) ** 2).sum(-1))
    want_patch = d.min(axis=1)
    np.testing.assert_allclose(patch.numpy(), want_patch, atol=1e-5)
    p = int(np.argmax(want_patch))
    m = int(np.argmin(d[p]))
    support = d[p, neighbours[m]]
    weight = 1.0 - np.exp(support[0]) / np.exp(support).sum()
    assert float(score) == pytest.approx(weight * want_patch[p], abs=1e-5)
    assert 0.0 < weight < 1.0


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_anomaly_map_matches_opencv_resize_and_gaussian(sigma):
    rng = np.random.default_rng(1)
    patch = rng.random((2, 8, 8)).astype(np.float32)
    got = anomaly_maps(torch.from_numpy(patch), 64, sigma).numpy()
    ksize = 2 * int(np.floor(4 * sigma + 0.5)) + 1
    for n in range(2):
        up = cv2.resize(patch[n], (64, 64), interpolation=cv2.INTER_LINEAR)
        want = cv2.GaussianBlur(
            up, (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
        )
        np.testing.assert_allclose(got[n], want, atol=1e-5)


def test_gaussian_kernel_size_and_sum():
    k = gaussian_kernel(4.0)
    assert k.numel() == 33
    assert float(k.sum()) == pytest.approx(1.0)
    assert int(torch.argmax(k)) == 16


class _MaxMapHead(ExportHead):
    """A tiny map head for tests: channel mean of the shallow tap."""

    name = "test_map"
    kind = "map"
    output_name = "test_map_out"

    def forward(self, image, features):
        return features[0].mean(dim=1)

    def feature_map_size(self, image_size):
        return (image_size // 8, image_size // 8)


def _graph_and_settings():
    extractor = build_backbone("resnet18", random_weights=True)
    patchcore = PatchCoreHead(extractor.channels, PatchCoreSettings())
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(30, patchcore.embedding_dim)).astype(np.float32)
    patchcore.set_bank(bank, _brute_neighbours(bank, 9))
    graph = InspectionGraph(extractor, [patchcore, _MaxMapHead()])
    return graph, patchcore


def test_reference_scores_maps_and_fusion():
    graph, patchcore = _graph_and_settings()
    platt = {"patchcore": (-0.5, 3.0), "test_map": (-2.0, 0.1)}
    weights = {"patchcore": 0.7, "test_map": 0.3}
    reference = TorchReference.from_graph(graph, map_sigma=2.0, platt=platt, fusion_weights=weights)
    batch = torch.randn(3, 3, 64, 64)
    result = reference.score(batch)
    assert result.scores["patchcore"].shape == (3,)
    assert result.maps["patchcore"].shape == (3, 64, 64)
    with torch.no_grad():
        out = graph(batch)
    np.testing.assert_allclose(
        result.scores["test_map"], out[1].flatten(1).amax(1).numpy(), rtol=1e-6
    )
    for n in range(3):
        _, s = patchcore_scores(
            out[0][n],
            torch.from_numpy(patchcore.memory_bank),
            torch.from_numpy(patchcore.bank_neighbours),
        )
        assert result.scores["patchcore"][n] == pytest.approx(float(s), rel=1e-6)
    p = {k: 1 / (1 + np.exp(a * result.scores[k] + b)) for k, (a, b) in platt.items()}
    np.testing.assert_allclose(result.probabilities["patchcore"], p["patchcore"], rtol=1e-6)
    np.testing.assert_allclose(result.fused, 0.7 * p["patchcore"] + 0.3 * p["test_map"], rtol=1e-6)
    pixel = {k: 1 / (1 + np.exp(a * result.maps[k] + b)) for k, (a, b) in platt.items()}
    np.testing.assert_allclose(
        result.fused_map, 0.7 * pixel["patchcore"] + 0.3 * pixel["test_map"], atol=1e-6
    )


def test_reference_without_calibration_gives_raw_scores_only():
    graph, _ = _graph_and_settings()
    result = TorchReference.from_graph(graph).score(np.zeros((1, 3, 64, 64), np.float32))
    assert result.probabilities is None and result.fused is None
    assert set(result.scores) == {"patchcore", "test_map"}


def test_reference_needs_a_bank_for_knn_heads():
    graph, _ = _graph_and_settings()
    with pytest.raises(ValueError, match="no memory bank"):
        TorchReference(graph, ScoringSettings(banks={}))
    reference = TorchReference.from_graph(graph)
    with pytest.raises(ValueError, match="batch"):
        reference.score(torch.zeros(2, 64, 64, 3))
