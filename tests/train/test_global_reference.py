"""The global-reference head: what it compares with, both variants, export, registry.

Most tests drive the head with a stand-in "backbone" that returns the image itself as both taps,
so the expected scores can be computed by hand: the aggregation (3x3 average, concatenation) is
linear, so the aggregated features of the fit images' mean image are the reference itself.
"""

import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autoweld.export.onnx_export import export_onnx
from autoweld.train.backbones import build_backbone
from autoweld.train.global_reference import (
    GlobalReferenceHead,
    GlobalReferenceSettings,
    aggregate_patch_features,
)
from autoweld.train.heads import HeadContext, InspectionGraph, available_heads, build_head

S = 12  # stand-in image side; the identity "backbone" has stride 1


class _IdentityTaps(nn.Module):
    """Both taps are the image: features are [image, image] -> 6 channels after aggregation."""

    def forward(self, image):
        return [image, image]


def _head(variant="l2", floor=0.1):
    return GlobalReferenceHead((3, 3), (S, S), GlobalReferenceSettings(variant, floor), stride=1)


def _fit_images(seed=0, n=10, offset=0.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, S, S, generator=generator) + offset


def _score(head, images):
    with torch.no_grad():
        return head(images, _IdentityTaps()(images))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_fit_set_mean_scores_zero_and_the_fit_images_do_not():
    images = _fit_images()
    head = _head()
    head.fit(_IdentityTaps(), [images[:4], images[4:]])  # two batches: the merge is exact
    assert int(head.n_images_fitted) == 10
    reference = aggregate_patch_features([images, images]).mean(dim=0)
    torch.testing.assert_close(head.reference_mean, reference, atol=1e-6, rtol=0)
    mean_image = images.mean(dim=0, keepdim=True)
    assert float(_score(head, mean_image).abs().max()) < 1e-5
    assert float(_score(head, images).amin(dim=(1, 2)).min()) > 1e-3


def test_a_local_change_scores_high_there_and_zero_far_away():
    images = _fit_images()
    head = _head()
    head.fit(_IdentityTaps(), [images])
    test = images.mean(dim=0, keepdim=True).clone()
    test[:, :, 2:4, 2:4] += 1.0
    score = _score(head, test)[0]
    assert float(score[2:4, 2:4].min()) > 0.5
    assert float(score[7:, 7:].max()) < 1e-5  # outside the bump and its 3x3 neighbourhood
    assert int(torch.argmax(score)) // S in (2, 3)


def test_the_reference_is_the_fit_set_not_the_test_image_itself():
    """A uniformly offset image differs from the fit set everywhere. Comparing the image with its
    own mean (the wrong comparison) would remove the offset and score ~0; the head must score
    c * sqrt(6) in the interior (6 channels, each off by c; borders see zero padding)."""
    images = _fit_images()
    head = _head()
    head.fit(_IdentityTaps(), [images])
    offset = 0.25
    test = images.mean(dim=0, keepdim=True) + offset
    score = _score(head, test)[0]
    torch.testing.assert_close(
        score[1:-1, 1:-1], torch.full((S - 2, S - 2), offset * math.sqrt(6)), atol=1e-5, rtol=0
    )
    # and it grows with the offset, which an image's own mean would have absorbed
    doubled = _score(head, images.mean(dim=0, keepdim=True) + 2 * offset)[0]
    torch.testing.assert_close(doubled[1:-1, 1:-1], 2 * score[1:-1, 1:-1], atol=1e-5, rtol=0)


def test_the_score_depends_on_which_normal_images_were_fitted():
    set_a, set_b = _fit_images(seed=1), _fit_images(seed=2, offset=0.5)
    head_a, head_b = _head(), _head()
    head_a.fit(_IdentityTaps(), [set_a])
    head_b.fit(_IdentityTaps(), [set_b])
    test = set_b.mean(dim=0, keepdim=True)
    assert float(_score(head_b, test).max()) < 1e-5
    assert float(_score(head_a, test).mean()) > 0.5


def test_standardised_scores_less_where_the_fit_set_varies_more():
    generator = torch.Generator().manual_seed(3)
    images = torch.full((40, 3, S, S), 0.5)
    spread = torch.ones(S, S) * 0.05
    spread[:, S // 2 :] = 0.5  # right half varies ten times more than the left
    images = images + torch.randn(40, 3, S, S, generator=generator) * spread
    head = _head("standardised", floor=1e-3)
    head.fit(_IdentityTaps(), [images])
    test = images.mean(dim=0, keepdim=True) + 0.2  # the same deviation everywhere
    score = _score(head, test)[0]
    left, right = score[2:-2, 2 : S // 2 - 2], score[2:-2, S // 2 + 2 : -2]
    assert float(left.min()) > 3 * float(right.max())
    # RMS z-score: the deviation over the fit std, about 0.2 / (0.05 / 3) = 12 on the left (the
    # 3x3 average shrinks the noise by 3); a wide tolerance for 40 samples
    assert 6 < float(left.median()) < 24
    # the l2 variant ignores the spread: equal scores on both halves
    l2 = _head("l2")
    l2.fit(_IdentityTaps(), [images])
    l2_score = _score(l2, test)[0]
    torch.testing.assert_close(
        l2_score[2:-2, 2 : S // 2 - 2].mean(),
        l2_score[2:-2, S // 2 + 2 : -2].mean(),
        atol=1e-4,
        rtol=0,
    )


def test_the_variance_floor_bounds_z_scores_where_fit_images_agree():
    images = _fit_images(n=20)
    images[:, :, :, :4] = 0.3  # these columns never vary in the fit set
    head = _head("standardised", floor=0.1)
    head.fit(_IdentityTaps(), [images])
    assert torch.isfinite(head.inverse_std).all()
    # every variance is at least 0.1 x its channel's mean variance
    aggregated = aggregate_patch_features([images, images])
    channel_mean_var = aggregated.double().var(dim=0, unbiased=False).mean(dim=(1, 2))
    bound = (0.1 * channel_mean_var).rsqrt().float()
    assert bool((head.inverse_std.amax(dim=(1, 2)) <= bound * (1 + 1e-4)).all())
    test = images.mean(dim=0, keepdim=True)
    test[:, :, :, :2] += 0.01
    score = _score(head, test)[0]
    assert torch.isfinite(score).all()
    assert float(score[:, 0].max()) < 10.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"variant": "mahalanobis"}, "variant"),
        ({"variance_floor": 0}, "variance_floor"),
        ({"variance_floor": float("nan")}, "variance_floor"),
        ({"variance_floor": True}, "variance_floor"),
        ({"varaint": "l2"}, "unknown key"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        GlobalReferenceSettings.from_mapping(values)


def test_bad_fit_and_forward_inputs_are_value_errors():
    head = _head()
    with pytest.raises(ValueError, match="no fit images"):
        head.fit(_IdentityTaps(), [])
    with pytest.raises(ValueError, match=r"batches\[0\]"):
        head.fit(_IdentityTaps(), [torch.zeros(2, 1, S, S)])
    with pytest.raises(ValueError, match="NaN"):
        head.fit(_IdentityTaps(), [torch.full((2, 3, S, S), float("nan"))])
    with pytest.raises(ValueError, match="not fitted"):
        head.manifest_entry()
    with pytest.raises(ValueError, match="do not match the reference"):
        _score(head, torch.zeros(1, 3, S + 2, S + 2))
    with pytest.raises(ValueError, match="feature_map"):
        GlobalReferenceHead((3, 3), (0, 4), GlobalReferenceSettings())


def test_registered_head_follows_the_backbone_grid_and_round_trips_its_state():
    assert "global_reference" in available_heads()
    extractor = build_backbone("efficientnet_lite0", random_weights=True)
    context = HeadContext(extractor, 64, {"variant": "standardised"})
    head = build_head("global_reference", context)
    assert head.kind == "map" and head.feature_map_size(64) == (8, 8)
    assert tuple(head.reference_mean.shape) == (40 + 112, 8, 8)
    generator = torch.Generator().manual_seed(0)
    head.fit(extractor, [torch.randn(3, 3, 64, 64, generator=generator)])
    entry = head.manifest_entry()
    assert entry["variant"] == "standardised" and entry["n_images_fitted"] == 3
    assert head.bundle_files() == {}  # the reference lives inside the graph
    # a freshly built head (as load_reference builds it) takes the fitted state strictly
    again = build_head("global_reference", context)
    again.load_state_dict(head.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(again(x, extractor(x)), head(x, extractor(x)))


@pytest.mark.parametrize("variant", ["l2", "standardised"])
def test_onnx_export_matches_torch(tmp_path, variant):
    """Lite0 with random weights (shape and numerics only) + the head, one graph, opset 18."""
    extractor = build_backbone("efficientnet_lite0", random_weights=True)
    head = build_head("global_reference", HeadContext(extractor, 64, {"variant": variant}))
    generator = torch.Generator().manual_seed(1)
    head.fit(extractor, [torch.randn(4, 3, 64, 64, generator=generator)])
    graph = InspectionGraph(extractor, [head])
    result = export_onnx(graph, tmp_path / "model.onnx", 64)
    assert result.max_abs_diff <= 1e-4
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["global_reference_map"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    (out,) = session.run(None, {"image": image})
    assert out.shape == (3, 8, 8)
    with torch.no_grad():
        want = graph(torch.from_numpy(image))[0].numpy()
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=0)


def test_aggregation_matches_patchcore_embeddings():
    """Same features as PatchCore's memory bank, laid out as a map."""
    from autoweld.train.patchcore import PatchCoreHead, PatchCoreSettings

    shallow, deep = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    patchcore = PatchCoreHead((3, 5), PatchCoreSettings())
    embeddings = patchcore(torch.zeros(2, 3, 64, 64), [shallow, deep])
    aggregated = aggregate_patch_features([shallow, deep])
    torch.testing.assert_close(aggregated.permute(0, 2, 3, 1).reshape(2, 64, 8), embeddings)


def _part(seed: int, size: int = 72) -> np.ndarray:
    """A fixtured "part": the same horizontal band in every image, plus noise (BGR uint8)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 90, np.uint8)
    image[size // 3 : 2 * size // 3] = 170
    noise = rng.normal(0, 6, (size, size, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_export_pipeline_and_runtime_score_the_head_like_torch(tmp_path):
    """``--models patchcore,global_reference`` end to end (Lite0 with random weights, 64 px, a
    tiny fixtured category written here): the manifest describes the head, and the runtime
    (ONNX Runtime + native maps) gives the torch reference's scores and probabilities."""
    import cv2

    from autoweld import native
    from autoweld.export import pipeline
    from autoweld.train.reference import TorchReference

    if not all(hasattr(native, f) for f in ("coreset", "bank_neighbours", "preprocess_batch")):
        pytest.skip("native kernels not merged yet")
    from autoweld.runtime.inspector import Inspector

    base = tmp_path / "data" / "part"
    (base / "train" / "good").mkdir(parents=True)
    (base / "test" / "good").mkdir(parents=True)
    for i in range(10):
        cv2.imwrite(str(base / "train" / "good" / f"{i:03d}.png"), _part(i))
    cv2.imwrite(str(base / "test" / "good" / "000.png"), _part(99))
    result = pipeline.export_category(
        pipeline.ExportOptions(
            category="part",
            data_root=tmp_path / "data",
            out_dir=tmp_path / "bundles",
            random_weights=True,
            image_size=64,
            models=["patchcore", "global_reference"],
        )
    )
    entry = result.bundle.manifest.to_json()["models"]["global_reference"]
    assert entry["kind"] == "map" and entry["output"] == "global_reference_map"
    assert entry["feature_map"] == [8, 8] and entry["n_images_fitted"] == result.n_fit
    assert set(result.bundle.manifest.fusion.weights) == {"patchcore", "global_reference"}
    reference = TorchReference.from_bundle(result.bundle_dir, result.graph)
    images = [_part(50 + i) for i in range(2)]
    for i in range(2):
        broken = _part(60 + i)
        broken[10:30, 20:40] = 255  # a bright blob where the part is dark
        images.append(broken)
    with Inspector(result.bundle_dir, threads=1) as inspector:
        results = inspector.inspect_batch(images)
        spec = inspector.preprocess_spec
        batch = native.preprocess_batch(images, spec.size, **spec.as_kwargs())
    expected = reference.score(batch)
    assert all(r.error is None for r in results), [r.error for r in results]
    for i, inspected in enumerate(results):
        got = inspected.scores["global_reference"]
        assert got == pytest.approx(float(expected.scores["global_reference"][i]), rel=1e-4)
        assert inspected.probabilities["global_reference"] == pytest.approx(
            float(expected.probabilities["global_reference"][i]), rel=1e-4
        )
    scores = [r.scores["global_reference"] for r in results]
    assert min(scores[2:]) > max(scores[:2])  # the blob is far from the fit-set mean
