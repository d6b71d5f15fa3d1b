"""Student-teacher head: shapes, hard-feature loss, training, quantile maps, registry, ONNX."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from autoweld.train.backbones import build_backbone
from autoweld.train.feature_maps import aggregate_taps
from autoweld.train.heads import HeadContext, InspectionGraph, available_heads, build_head
from autoweld.train.student_teacher import (
    StudentTeacherConfig,
    StudentTeacherHead,
    hard_feature_loss,
)

SIZE = 64


def textures(count: int, seed: int, defect: bool = False) -> torch.Tensor:
    """Diagonal stripes with random phase + noise (unit scale, like preprocessed input); with
    ``defect`` a bright square is painted into each image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    images = np.empty((count, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(count):
        stripes = np.sin((x + y) * 0.45 + rng.uniform(0, 2 * np.pi))
        images[i] = 0.8 * stripes[None] + rng.normal(0, 0.15, size=(3, SIZE, SIZE))
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
    config = StudentTeacherConfig(steps=80, batch_size=4, learning_rate=2e-3)
    head = StudentTeacherHead(extractor.channels, SIZE, config, seed=1)
    fit = textures(12, seed=1)
    head.fit(extractor, [fit[:6], fit[6:]])
    head.fit_validation(extractor, [textures(8, seed=2)])
    return head


def test_hard_feature_loss_is_the_mean_of_the_top_quantile():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 10, 10, generator=generator)
    student = torch.randn(2, 5, 10, 10, generator=generator)
    squared = np.sort(((teacher - student) ** 2).flatten().numpy())[::-1]
    for q in (0.0, 0.9, 0.999):
        keep = max(1, math.ceil((1 - q) * squared.size))
        expected = squared[:keep].mean()
        assert float(hard_feature_loss(teacher, student, q)) == pytest.approx(expected, rel=1e-5)
    # q = 0 keeps everything: the plain MSE
    assert float(hard_feature_loss(teacher, student, 0.0)) == pytest.approx(
        float(((teacher - student) ** 2).mean()), rel=1e-5
    )


def test_shapes(fitted, extractor):
    images = textures(3, seed=5)
    with torch.no_grad():
        teacher = fitted.standardise(aggregate_taps(extractor(images)))
        student = fitted.student(images)
        reconstruction = fitted.autoencoder(images)
        out = fitted(images, extractor(images))
    channels = sum(extractor.channels)
    assert teacher.shape == (3, channels, 8, 8)
    assert student.shape == (3, 2 * channels, 8, 8)
    assert reconstruction.shape == (3, channels, 8, 8)
    assert out.shape == (3, 8, 8)
    assert fitted.feature_map_size(SIZE) == (8, 8)


@pytest.mark.parametrize("size", [40, 72, 96])
def test_student_and_autoencoder_follow_the_stride_8_tap_at_other_sizes(extractor, size):
    head = StudentTeacherHead(extractor.channels, size, StudentTeacherConfig(steps=1))
    images = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        taps = extractor(images)
        out = head(images, taps)
    assert tuple(out.shape[-2:]) == tuple(taps[0].shape[-2:]) == head.feature_map_size(size)


def test_every_loss_decreases_with_training(fitted):
    history = np.asarray(fitted.loss_history)
    assert history.shape == (80, 3)
    first, last = history[:5].mean(axis=0), history[-10:].mean(axis=0)
    assert last[0] < 0.8 * first[0], "hard-feature loss"
    assert last[1] < first[1], "autoencoder loss"
    summary = fitted.manifest_entry()["training"]
    assert summary["final_losses"]["hard"] < summary["first_losses"]["hard"]


def test_maps_are_normalised_by_validation_quantiles(fitted, extractor):
    """q_a (0.9) of each map on the validation normals lands on 0, q_b (0.995) on 0.1."""
    val = textures(8, seed=2)
    with torch.no_grad():
        teacher = fitted.standardise(aggregate_taps(extractor(val)))
        local, global_ = fitted.raw_maps(val, teacher)
        combined = fitted(val, extractor(val))
    for raw, quantiles in ((local, fitted.local_quantiles), (global_, fitted.global_quantiles)):
        normalised = fitted._normalise(raw, quantiles).flatten().numpy()
        q_a, q_b = np.quantile(normalised, [0.9, 0.995])
        assert q_a == pytest.approx(0.0, abs=1e-5)
        assert q_b == pytest.approx(0.1, abs=1e-5)
    expected = 0.5 * fitted._normalise(local, fitted.local_quantiles) + 0.5 * fitted._normalise(
        global_, fitted.global_quantiles
    )
    torch.testing.assert_close(combined, expected)
    entry = fitted.manifest_entry()
    assert entry["quantiles"]["q_a"] == 0.9 and entry["quantiles"]["q_b"] == 0.995
    assert entry["quantiles"]["local"] == pytest.approx(fitted.local_quantiles.tolist())


def test_a_painted_defect_scores_above_the_normals(fitted, extractor):
    normal = textures(6, seed=20)
    defective = textures(6, seed=20, defect=True)
    with torch.no_grad():
        normal_scores = fitted(normal, extractor(normal)).flatten(1).amax(dim=1)
        defect_scores = fitted(defective, extractor(defective)).flatten(1).amax(dim=1)
    assert defect_scores.min() > normal_scores.max()


def test_seeded_training_is_deterministic(extractor):
    fit = textures(4, seed=1)
    outputs = []
    for _ in range(2):
        config = StudentTeacherConfig(steps=3, batch_size=2)
        head = StudentTeacherHead(extractor.channels, SIZE, config, seed=4)
        head.fit(extractor, [fit])
        head.fit_validation(extractor, [fit])
        with torch.no_grad():
            outputs.append(head(fit, extractor(fit)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_registry_builds_it_from_recipe_settings(extractor):
    assert "student_teacher" in available_heads()
    context = HeadContext(extractor, SIZE, {"steps": 9, "student_channels": 32}, seed=2)
    head = build_head("student_teacher", context)
    assert isinstance(head, StudentTeacherHead)
    assert head.config.steps == 9 and head.config.student_channels == 32 and head.seed == 2
    assert (head.kind, head.output_name) == ("map", "student_teacher_map")


@pytest.mark.parametrize(
    ("settings", "word"),
    [
        ({"step": 10}, "unknown key"),
        ({"steps": 0}, "steps"),
        ({"hard_quantile": 1.0}, "hard_quantile"),
        ({"quantile_a": 0.99, "quantile_b": 0.9}, "quantile_a"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_key(extractor, settings, word):
    with pytest.raises(ValueError, match=word):
        build_head("student_teacher", HeadContext(extractor, SIZE, settings))


def test_bad_inputs_and_order_of_calls_are_value_errors(extractor):
    head = StudentTeacherHead(extractor.channels, SIZE, StudentTeacherConfig(steps=1))
    with pytest.raises(ValueError, match="fit\\(\\) must run before"):
        head.fit_validation(extractor, [textures(2, seed=0)])
    with pytest.raises(ValueError, match="no map quantiles"):
        head.manifest_entry()
    with pytest.raises(ValueError, match="64px"):
        head.fit(extractor, [torch.zeros(2, 3, 96, 96)])
    with pytest.raises(ValueError, match="image_size"):
        StudentTeacherHead(extractor.channels, 8)


def test_onnx_export_matches_torch(fitted, extractor, tmp_path):
    from autoweld.export.onnx_export import export_onnx

    graph = InspectionGraph(extractor, [fitted])
    result = export_onnx(graph, tmp_path / "model.onnx", SIZE)
    assert result.output_names == ("student_teacher_map",)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    images = textures(3, seed=30, defect=True)
    (got,) = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        want = graph(images)[0].numpy()
    assert got.shape == (3, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
