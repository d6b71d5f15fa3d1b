"""The runtime (ONNX Runtime + native kernels) scores exactly as the torch reference pipeline.

A small real bundle is exported (Lite0 backbone with random weights at 64 px, PatchCore, from a
tiny MVTec-layout category written here), then the same images are scored by the Inspector and
by ``autoweld.train.reference.TorchReference`` on the same preprocessed input: image scores,
probabilities and the fused probability must agree within 1e-4 relative, and the anomaly maps
closely.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tinybundle import defect_image, normal_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("torch")
    from autoweld.export import pipeline
    from autoweld.train import reference as reference_module

    root = tmp_path_factory.mktemp("parity")
    base = root / "data" / "unit"
    (base / "train" / "good").mkdir(parents=True)
    (base / "test" / "good").mkdir(parents=True)
    for i in range(10):
        cv2.imwrite(str(base / "train" / "good" / f"{i:03d}.png"), normal_image(i, size=72))
    cv2.imwrite(str(base / "test" / "good" / "000.png"), normal_image(99, size=72))
    result = pipeline.export_category(
        pipeline.ExportOptions(
            category="unit",
            data_root=root / "data",
            out_dir=root / "bundles",
            random_weights=True,
            image_size=64,
            models=["patchcore"],
        )
    )
    reference = reference_module.TorchReference.from_bundle(result.bundle_dir, result.graph)
    return result.bundle_dir, reference


def test_runtime_equals_torch_reference(exported):
    from autoweld import native
    from autoweld.runtime.inspector import Inspector

    bundle_dir, reference = exported
    images = [normal_image(50 + i, size=72) for i in range(3)]
    images += [defect_image(60 + i, size=72) for i in range(3)]
    with Inspector(bundle_dir, threads=1) as inspector:
        results = inspector.inspect_batch(images)
        spec = inspector.preprocess_spec
        batch = native.preprocess_batch(images, spec.size, **spec.as_kwargs())
        expected = reference.score(batch)
    assert all(r.error is None for r in results), [r.error for r in results]
    for i, result in enumerate(results):
        for name, score in result.scores.items():
            assert score == pytest.approx(float(expected.scores[name][i]), rel=1e-4)
            assert result.probabilities[name] == pytest.approx(
                float(expected.probabilities[name][i]), rel=1e-4
            )
        assert result.probability == pytest.approx(float(expected.fused[i]), rel=1e-4)
        # the fused map at S x S, resized to the image like the runtime does
        size = images[i].shape[1], images[i].shape[0]
        resized = cv2.resize(expected.fused_map[i], size, interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(result.anomaly_map, resized, rtol=1e-3, atol=1e-5)
    # not a degenerate comparison: the images get different, non-zero scores
    scores = [r.scores["patchcore"] for r in results]
    assert min(scores) > 0 and len({round(s, 6) for s in scores}) > 1
