"""Feature autoencoder head: layout, training, threshold rule, registry, ONNX parity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from autoweld.train.backbones import build_backbone
from autoweld.train.feature_ae import FeatureAEConfig, FeatureAEHead, FeatureAutoencoder
from autoweld.train.feature_maps import aggregate_taps
from autoweld.train.heads import HeadContext, InspectionGraph, available_heads, build_head

SIZE = 64


def textures(count: int, seed: int, defect: bool = False) -> torch.Tensor:
    """Diagonal stripes with random phase + noise, roughly unit scale like preprocessed input;
    with ``defect`` a bright square is painted into each image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    images = np.empty((count, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin((x + y) * 0.45 + phase)
        noise = rng.normal(0, 0.15, size=(3, SIZE, SIZE))
        images[i] = 0.8 * stripes[None] + noise
        if defect:
            top, left = rng.integers(16, 40, size=2)
            images[i, :, top : top + 14, left : left + 14] = 2.5
    return torch.from_numpy(images)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: on a shared two-core machine, intra-op threads cost more in
    synchronisation than they gain (measured ~10x slower with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def extractor(one_thread):
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def fitted(extractor):
    head = FeatureAEHead(extractor.channels, FeatureAEConfig(steps=60, batch_size=4), seed=3)
    fit = textures(12, seed=1)
    head.fit(extractor, [fit[:6], fit[6:]])
    head.fit_validation(extractor, [textures(6, seed=2)])
    return head


def test_layout_is_the_issue_s_encoder_and_mirrored_decoder():
    model = FeatureAutoencoder(152, 50)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size) for c in convs]
    middle = (152 + 100) // 2
    assert shapes == [
        (152, middle, (1, 1)),
        (middle, 100, (1, 1)),
        (100, 50, (1, 1)),
        (50, 100, (1, 1)),
        (100, middle, (1, 1)),
        (middle, 152, (1, 1)),
    ]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [middle, 100, 50, 100, middle]


def test_output_shape_and_that_it_is_the_reconstruction_error(fitted, extractor):
    images = textures(3, seed=9)
    with torch.no_grad():
        out = fitted(images, extractor(images))
        standardised = fitted.standardise(aggregate_taps(extractor(images)))
        expected = (standardised - fitted.autoencoder(standardised)).pow(2).mean(dim=1)
    assert out.shape == (3, 8, 8)
    assert fitted.feature_map_size(SIZE) == (8, 8)
    torch.testing.assert_close(out, expected)
    assert (out >= 0).all()


def test_standardisation_uses_fit_set_channel_statistics(fitted, extractor):
    fit = textures(12, seed=1)
    with torch.no_grad():
        features = aggregate_taps(extractor(fit))
    mean = features.mean(dim=(0, 2, 3))
    std = features.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(fitted.feature_mean.flatten(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fitted.feature_std.flatten(), std, rtol=1e-4, atol=1e-5)


def test_training_reduces_the_loss(fitted):
    losses = fitted.loss_history
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


def test_threshold_is_mean_plus_three_sigma_of_validation_image_scores(fitted, extractor):
    val = textures(6, seed=2)
    with torch.no_grad():
        scores = fitted(val, extractor(val)).flatten(1).amax(dim=1).double().numpy()
    entry = fitted.manifest_entry()
    assert entry["threshold_rule"] == "mean+3sigma"
    assert entry["threshold"] == pytest.approx(scores.mean() + 3 * scores.std(), rel=1e-5)
    assert entry["threshold_stats"]["n_normal"] == 6
    assert entry["latent_dim"] == 50 and entry["channels"] == 152


def test_a_painted_defect_scores_above_every_normal(fitted, extractor):
    normal = textures(6, seed=20)
    defective = textures(6, seed=20, defect=True)
    with torch.no_grad():
        normal_scores = fitted(normal, extractor(normal)).flatten(1).amax(dim=1)
        defect_scores = fitted(defective, extractor(defective)).flatten(1).amax(dim=1)
    assert defect_scores.min() > normal_scores.max()
    assert defect_scores.min() > fitted.threshold


def test_seeded_training_is_deterministic(extractor):
    fit = textures(6, seed=1)
    outputs = []
    for _ in range(2):
        head = FeatureAEHead(extractor.channels, FeatureAEConfig(steps=5, batch_size=3), seed=11)
        head.fit(extractor, [fit])
        with torch.no_grad():
            outputs.append(head(fit[:2], extractor(fit[:2])))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_caller_random_state_is_left_alone(extractor):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    FeatureAEHead(extractor.channels, FeatureAEConfig(steps=1), seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_registry_builds_it_from_recipe_settings(extractor):
    assert "feature_ae" in available_heads()
    head = build_head("feature_ae", HeadContext(extractor, SIZE, {"latent_dim": 20, "steps": 7}))
    assert isinstance(head, FeatureAEHead)
    assert head.config.latent_dim == 20 and head.config.steps == 7
    assert (head.kind, head.output_name) == ("map", "feature_ae_map")


@pytest.mark.parametrize(
    ("settings", "word"),
    [
        ({"latent": 10}, "unknown key"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"steps": 2.5}, "steps"),
        ({"learning_rate": -1.0}, "learning_rate"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_key(extractor, settings, word):
    with pytest.raises(ValueError, match=word):
        build_head("feature_ae", HeadContext(extractor, SIZE, settings))


def test_bad_batches_and_order_of_calls_are_value_errors(extractor):
    head = FeatureAEHead(extractor.channels, FeatureAEConfig(steps=1))
    with pytest.raises(ValueError, match="fit\\(\\) must run before"):
        head.fit_validation(extractor, [textures(2, seed=0)])
    with pytest.raises(ValueError, match="no threshold"):
        head.manifest_entry()
    with pytest.raises(ValueError, match=r"batches\[0\]"):
        head.fit(extractor, [torch.zeros(2, 1, SIZE, SIZE)])
    bad = textures(2, seed=0)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        head.fit(extractor, [bad])
    with pytest.raises(ValueError, match="no images"):
        head.fit(extractor, [])


def test_onnx_export_matches_torch(fitted, extractor, tmp_path):
    from autoweld.export.onnx_export import export_onnx

    graph = InspectionGraph(extractor, [fitted])
    result = export_onnx(graph, tmp_path / "model.onnx", SIZE)
    assert result.output_names == ("feature_ae_map",)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    images = textures(3, seed=30, defect=True)
    (got,) = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        want = graph(images)[0].numpy()
    assert got.shape == (3, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
