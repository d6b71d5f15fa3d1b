"""The server models' scoring (autoweld.serving.backend) without a server: the Inspector's
numbers, and its fail-safe rules, from preprocessed images or from head outputs."""

from __future__ import annotations

import numpy as np
import pytest
from tinybundle import defect_image, normal_image, write_tiny_bundle

from autoweld import native
from autoweld.bundle import BundleError, load_bundle
from autoweld.runtime import Inspector
from autoweld.serving.backend import BundleScoring


def _batch(bundle, images):
    spec = bundle.preprocess
    return native.preprocess_batch(images, spec.size, **spec.as_kwargs())


def test_scores_equal_the_inspectors_from_images_and_from_head_outputs(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    images = [normal_image(1, 32), defect_image(2, 32), normal_image(3, 32)]
    with Inspector(bundle) as inspector:
        expected = inspector.inspect_batch(images, keep_head_maps=True)
        outputs = inspector.engine_outputs(_batch(bundle, images))
    scoring = BundleScoring(tiny_bundle, bundle.sha256)
    graph_free = BundleScoring(tiny_bundle, bundle.sha256, providers=None)
    try:
        from_images = scoring.score_images(_batch(bundle, images), head_maps=True)
        from_outputs = graph_free.score_outputs(outputs, head_maps=True)
    finally:
        scoring.close()
        graph_free.close()
    for scored in (from_images, from_outputs):
        assert scored.errors == ["", "", ""]
        for i, result in enumerate(expected):
            assert scored.probability[i] == result.probability
            assert list(scored.scores[i]) == [result.scores[h] for h in bundle.heads]
            assert list(scored.probabilities[i]) == [result.probabilities[h] for h in bundle.heads]
            # images are 32 x 32 = S: the Inspector's resize is the identity
            np.testing.assert_array_equal(scored.anomaly_map[i], result.anomaly_map)
            for j, head in enumerate(bundle.heads):
                np.testing.assert_array_equal(scored.head_maps[i, j], result.head_maps[head])


def test_a_non_finite_image_fails_alone_naming_the_head(tmp_path):
    bundle_dir = write_tiny_bundle(tmp_path / "nan", offset=0.2)  # dark images give NaN
    bundle = load_bundle(bundle_dir)
    dark = np.zeros((32, 32, 3), np.uint8)
    scoring = BundleScoring(bundle_dir, bundle.sha256)
    try:
        scored = scoring.score_images(_batch(bundle, [normal_image(1, 32), dark]), head_maps=False)
    finally:
        scoring.close()
    assert scored.errors[0] == "" or "NaN" in scored.errors[0]
    assert "feature_ae" in scored.errors[1] and "NaN" in scored.errors[1]
    assert np.isnan(scored.probability[1])
    assert scored.head_maps is None


def test_an_exception_fails_only_the_image_that_raised(tiny_bundle, monkeypatch):
    bundle = load_bundle(tiny_bundle)
    scoring = BundleScoring(tiny_bundle, bundle.sha256)
    real = native.patchcore_score
    calls = {"n": 0}

    def second_call_raises(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (2, 4):  # the batch's 2nd image, then that image alone
            raise ValueError("planted")
        return real(*args, **kwargs)

    monkeypatch.setattr(native, "patchcore_score", second_call_raises)
    try:
        images = [normal_image(1, 32), normal_image(2, 32), normal_image(3, 32)]
        scored = scoring.score_images(_batch(bundle, images), head_maps=False)
    finally:
        scoring.close()
    assert scored.errors[0] == "" and scored.errors[2] == ""
    assert "planted" in scored.errors[1] and "patchcore" in scored.errors[1]
    assert np.isfinite(scored.probability[[0, 2]]).all()


def test_refuses_a_bundle_other_than_the_config_names(tiny_bundle):
    with pytest.raises(BundleError, match="is not the"):
        BundleScoring(tiny_bundle, "0" * 64)
