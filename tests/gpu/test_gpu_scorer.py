"""The whole device scoring path (kNN, PatchCore, map head, anomaly map, Platt, fusion) against
the CPU kernels the Inspector uses."""

import numpy as np
import pytest

from autoweld import native

pytestmark = pytest.mark.gpu


def cpu_reference(emb, maps, bank, neighbours, heads, size, sigma):
    n, (fh, fw) = emb.shape[0], heads[0].feature_map
    index = native.KnnIndex(bank, threads=1)
    patch_maps = np.zeros((n, fh, fw), np.float32)
    knn_scores = np.zeros(n)
    for i in range(n):
        d, idx = index.search(emb[i], 1)
        patch_maps[i] = d[:, 0].reshape(fh, fw)
        knn_scores[i] = native.patchcore_score(emb[i], d, idx, bank, neighbours)
    map_scores = maps.reshape(n, -1).max(axis=1).astype(np.float64)
    probs = [
        native.platt(s, h.platt_a, h.platt_b)
        for s, h in zip((knn_scores, map_scores), heads, strict=True)
    ]
    fused = native.fuse(np.stack(probs, axis=1), np.array([h.weight for h in heads]))
    full = [native.anomaly_map(m, size, sigma=sigma, threads=1) for m in (patch_maps, maps)]
    fused_map = np.zeros((n, size, size), np.float32)
    for m, h in zip(full, heads, strict=True):
        z = np.clip(np.float32(h.platt_a) * m + np.float32(h.platt_b), -88.0, 88.0)
        fused_map += np.float32(h.weight) * (1.0 / (1.0 + np.exp(z, dtype=np.float32)))
    return (knn_scores, map_scores), probs, fused, fused_map


def test_gpu_scorer_matches_cpu(cupy):
    rng = np.random.default_rng(0)
    n, fh, fw, dim, size, sigma = 3, 8, 8, 48, 64, 4.0
    bank = rng.standard_normal((700, dim), dtype=np.float32)
    neighbours = native.bank_neighbours(bank, 9, threads=1)
    emb = rng.standard_normal((n, fh * fw, dim), dtype=np.float32)
    maps = rng.random((n, fh, fw), dtype=np.float32)
    heads = [
        native.GpuHeadSpec("patchcore", "knn", (fh, fw), -1.2, 6.0, 0.6, bank, neighbours),
        native.GpuHeadSpec("feature_ae", "map", (fh, fw), -4.0, 2.0, 0.4),
    ]
    scorer = native.GpuScorer(heads, out_size=size, sigma=sigma)
    fused_map = cupy.zeros((n, size, size), dtype=cupy.float32)
    result = scorer.score(
        {"patchcore": cupy.asarray(emb), "feature_ae": cupy.asarray(maps)},
        n,
        fused_map=fused_map,
    )
    scores, probs, fused, want_map = cpu_reference(emb, maps, bank, neighbours, heads, size, sigma)
    np.testing.assert_allclose(result.scores["patchcore"], scores[0], rtol=1e-4)
    np.testing.assert_allclose(result.scores["feature_ae"], scores[1], rtol=1e-6)
    np.testing.assert_allclose(result.probabilities["patchcore"], probs[0], atol=1e-5)
    np.testing.assert_allclose(result.fused, fused, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(fused_map), want_map, atol=1e-4)
    assert result.finite.all()


def test_gpu_scorer_fails_only_the_image_with_nan(cupy):
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((100, 16), dtype=np.float32)
    neighbours = native.bank_neighbours(bank, 3, threads=1)
    emb = rng.standard_normal((3, 16, 16), dtype=np.float32)
    emb[1, 5, 2] = np.nan
    spec = native.GpuHeadSpec("patchcore", "knn", (4, 4), -1.0, 3.0, 1.0, bank, neighbours)
    result = native.GpuScorer([spec], out_size=16, sigma=0.0).score(
        {"patchcore": cupy.asarray(emb)}, 3
    )
    assert result.finite.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="expected"):
        native.GpuScorer([spec], out_size=16, sigma=0.0).score(
            {"patchcore": cupy.asarray(emb[:, :8])}, 3
        )
