"""Multi-head fusion: SLSQP weights, export without touching the test split, every --models subset
exported and scored by the runtime exactly as by the torch reference."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import autoweld.data
from autoweld import native
from autoweld.train.calibration import fit_fusion_weights, fit_platt, platt

HEADS = ("patchcore", "student_teacher", "feature_ae")
SIZE = 64

needs_data = pytest.mark.skipif(
    not hasattr(autoweld.data, "load_category"),
    reason="autoweld.data.load_category (branch data-weld) is not merged yet",
)
needs_runtime = pytest.mark.skipif(
    importlib.util.find_spec("autoweld.runtime.inspector") is None,
    reason="autoweld.runtime.inspector (branch runtime) is not merged yet",
)


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ---- fusion weights ----------------------------------------------------------------------------


def test_slsqp_weights_are_a_convex_mix_no_worse_than_any_single_model():
    """Two detectors with complementary blind spots: A sees defect type 1 only, B type 2 only.
    Each gets its own Platt scaling; the fused probability must beat both on BCE."""
    rng = np.random.default_rng(0)
    n = 200
    kind = np.repeat([0, 1, 2], n)  # 0 normal, 1 and 2 two defect types
    labels = (kind > 0).astype(np.int64)
    score_a = rng.normal(0, 1, kind.size) + np.where(kind == 1, 4.0, 0.0)
    score_b = rng.normal(0, 1, kind.size) + np.where(kind == 2, 4.0, 0.0)
    probabilities = np.stack([platt(s, *fit_platt(s, labels)) for s in (score_a, score_b)], axis=1)
    weights = fit_fusion_weights(probabilities, labels)
    assert weights.shape == (2,)
    assert (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    fused = _bce(probabilities @ weights, labels)
    singles = [_bce(probabilities[:, j], labels) for j in range(2)]
    assert fused <= min(singles) + 1e-9
    assert fused < min(singles) - 0.02  # here the mix is clearly better, not merely equal
    assert weights.min() > 0.2  # both detectors are needed


def test_slsqp_gives_a_useless_model_no_weight_and_matches_the_good_one():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 150)
    good = labels * 3.0 + rng.normal(0, 1, labels.size)
    noise = rng.normal(0, 1, labels.size)
    probabilities = np.stack(
        [platt(s, *fit_platt(s, labels)) for s in (good, noise, good + noise)], axis=1
    )
    weights = fit_fusion_weights(probabilities, labels)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert weights[1] < 0.05
    fused = _bce(probabilities @ weights, labels)
    assert fused <= min(_bce(probabilities[:, j], labels) for j in range(3)) + 1e-9


# ---- end-to-end export on a tiny category --------------------------------------------------------


def _texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = np.sin((x + y) * 0.3 + rng.uniform(0, 2 * np.pi))
    base = 128 + 60 * stripes + rng.normal(0, 8, (size, size))
    return np.clip(np.repeat(base[..., None], 3, axis=2), 0, 255).astype(np.uint8)


def _write_category(root: Path, seed: int = 0) -> Path:
    """A tiny MVTec-layout category 'plate' whose test split exists and must never be opened."""
    rng = np.random.default_rng(seed)
    category = root / "plate"
    for folder in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (category / folder).mkdir(parents=True)
    for i in range(12):
        cv2.imwrite(str(category / "train" / "good" / f"{i:03d}.png"), _texture(rng))
    for i in range(3):
        cv2.imwrite(str(category / "test" / "good" / f"{i:03d}.png"), _texture(rng))
        image = _texture(rng)
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.line(image, (20, 30 + 10 * i), (70, 40 + 10 * i), (20, 20, 20), 3)
        cv2.line(mask, (20, 30 + 10 * i), (70, 40 + 10 * i), 255, 3)
        cv2.imwrite(str(category / "test" / "scratch" / f"{i:03d}.png"), image)
        cv2.imwrite(str(category / "ground_truth" / "scratch" / f"{i:03d}_mask.png"), mask)
    return category


def _write_recipe(path: Path) -> Path:
    path.write_text(
        """
category = "plate"
profile = "efficientnet_lite0"
seed = 0
[preprocess]
clahe = false
[calibration]
val_fraction = 0.34
anomalies_per_image = 2
[efficientnet_lite0]
backbone = "efficientnet_lite0"
image_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
models = ["patchcore", "student_teacher", "feature_ae"]
batch_size = 4
[efficientnet_lite0.patchcore]
coreset_ratio = 0.5
coreset_max = 200
[efficientnet_lite0.student_teacher]
steps = 6
batch_size = 4
[efficientnet_lite0.feature_ae]
steps = 6
batch_size = 4
""",
        encoding="utf-8",
    )
    return path


class _OpenRecorder:
    """Records every file the process opens while active: Python's ``open`` audit event (covers
    open(), Path.open, io, np.load and np.fromfile) plus ``cv2.imread``, which opens in C.
    Audit hooks cannot be removed, so one hook is installed once and switched on and off."""

    installed = False
    active = False
    paths: list[str] = []

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if cls.active and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            cls.paths.append(
                str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode()))
            )

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        if not _OpenRecorder.installed:
            sys.addaudithook(_OpenRecorder._hook)
            _OpenRecorder.installed = True
        real_imread = cv2.imread

        def imread(filename, *args, **kwargs):
            if _OpenRecorder.active:
                _OpenRecorder.paths.append(str(Path(filename)))
            return real_imread(filename, *args, **kwargs)

        monkeypatch.setattr(cv2, "imread", imread)

    def __enter__(self) -> list[str]:
        _OpenRecorder.paths = []
        _OpenRecorder.active = True
        return _OpenRecorder.paths

    def __exit__(self, *exc: object) -> None:
        _OpenRecorder.active = False


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads cost more than they gain on a shared two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _export(tmp_path: Path, models: list[str], precision: str | None = None):
    from autoweld.export.pipeline import ExportOptions, export_category

    category = _write_category(tmp_path / "data")
    recipe = _write_recipe(tmp_path / "plate.toml")
    options = ExportOptions(
        category="plate",
        data_root=tmp_path / "data",
        out_dir=tmp_path / "out",
        recipe=recipe,
        models=models,
        save_reference=False,
        precision=precision,
    )
    return category, export_category(options)


def _check_runtime_matches_reference(result, category: Path, models: list[str]) -> None:
    """The runtime scores the bundle as the torch reference does: per head and fused."""
    from autoweld.runtime.inspector import Inspector
    from autoweld.train.reference import TorchReference

    paths = sorted((category / "test").rglob("*.png"))
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    reference = TorchReference.from_bundle(result.bundle_dir, result.graph)
    spec = result.bundle.preprocess
    batch = torch.from_numpy(
        np.stack([native.preprocess(image, spec.size, **spec.as_kwargs()) for image in images])
    )
    want = reference.score(batch)
    with Inspector(result.bundle_dir) as inspector:
        got = inspector.inspect_batch(images)
    for i, inspection in enumerate(got):
        assert inspection.error is None, inspection.error
        assert sorted(inspection.scores) == sorted(models)
        for name in models:
            assert inspection.scores[name] == pytest.approx(
                float(want.scores[name][i]), rel=1e-4, abs=1e-4
            ), name
        assert inspection.probability == pytest.approx(float(want.fused[i]), abs=1e-4)
        assert 0.0 <= inspection.probability <= 1.0


@needs_data
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_export_never_opens_a_file_under_test(tmp_path, monkeypatch, precision):
    """Also for an INT8 graph (issue 19): its ranges, bank and calibration come from the
    training images only (tests/export/test_quantize.py checks the ranges come from fit ones)."""
    recorder = _OpenRecorder(monkeypatch)
    with recorder as opened:
        category, result = _export(tmp_path, list(HEADS), precision)
    category = category.resolve()
    resolved = [Path(p).resolve() for p in opened]
    train_reads = [p for p in resolved if p.is_relative_to(category / "train")]
    assert len(train_reads) >= 12, "the recorder saw the training images being read"
    forbidden = [
        p
        for p in resolved
        if p.is_relative_to(category / "test") or p.is_relative_to(category / "ground_truth")
    ]
    assert forbidden == []
    assert not any("/test/" in p for p in opened)

    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert manifest["engine"].get("precision", "fp32") == precision
    assert sorted(manifest["models"]) == sorted(HEADS)
    data = manifest["calibration_data"]
    assert data["source"] == "synthesised"
    assert data["n_normal"] == 4 and data["n_anomalous"] == 8
    weights = manifest["fusion"]["weights"]
    assert sorted(weights) == sorted(HEADS)
    assert all(w >= 0 for w in weights.values())
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    assert manifest["fusion"]["threshold_method"] == "best_f1"
    ae = manifest["models"]["feature_ae"]
    assert ae["kind"] == "map" and ae["output"] == "feature_ae_map"
    assert ae["threshold_rule"] == "mean+3sigma" and np.isfinite(ae["threshold"])
    assert ae["threshold_stats"]["n_normal"] == 4
    st = manifest["models"]["student_teacher"]
    assert st["kind"] == "map" and st["feature_map"] == [8, 8]
    assert st["quantiles"]["local"][1] > st["quantiles"]["local"][0]


SUBSETS = [list(c) for r in range(1, len(HEADS) + 1) for c in itertools.combinations(HEADS, r)]


@needs_data
@needs_runtime
@pytest.mark.parametrize(
    "models",
    [
        pytest.param(s, id="+".join(s), marks=() if len(s) == len(HEADS) else pytest.mark.slow)
        for s in SUBSETS
    ],
)
def test_every_models_subset_exports_and_the_runtime_scores_it(tmp_path, models):
    category, result = _export(tmp_path, models)
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert sorted(manifest["models"]) == sorted(models)
    assert set(manifest["fusion"]["weights"]) == set(models)
    _check_runtime_matches_reference(result, category, models)


# ---- the default export's choice among candidates -------------------------------------------------

_SELECTION = """
anomaly_sources = ["generic", "perlin", "subtle"]
[selection]
time_budget_s = 600
latency_budget_ms = {budget}
candidates = [
    {{ name = "small" }},
    {{ name = "wider", image_size = 72, coreset_ratio = 0.3 }},
    {{ name = "lite1", backbone = "efficientnet_lite1" }},
]
"""


def _selection_recipe(path: Path, budget: float) -> Path:
    text = _write_recipe(path).read_text(encoding="utf-8")
    text = text.replace(
        'models = ["patchcore", "student_teacher", "feature_ae"]', 'models = ["patchcore"]'
    )
    head, _, rest = text.partition("[efficientnet_lite0]")
    calibration, _, after = head.partition("anomalies_per_image = 2\n")
    selection = _SELECTION.format(budget=budget)
    sources, _, table = selection.partition("[selection]")
    head = (
        calibration
        + "anomalies_per_image = 2\n"
        + sources.strip()
        + "\n"
        + after
        + "[selection]"
        + table
    )
    path.write_text(head + "[efficientnet_lite0]" + rest, encoding="utf-8")
    return path


@needs_data
@needs_runtime
def test_selection_scores_candidates_on_calibration_data_only(tmp_path, monkeypatch):
    from autoweld.export.pipeline import ExportOptions, export_category

    category = _write_category(tmp_path / "data").resolve()
    options = ExportOptions(
        category="plate",
        data_root=tmp_path / "data",
        out_dir=tmp_path / "out",
        recipe=_selection_recipe(tmp_path / "plate.toml", budget=10_000),
        save_reference=False,
    )
    from autoweld.export import pipeline

    exported = []
    real_export_onnx = pipeline.export_onnx

    def counting_export_onnx(*args, **kwargs):
        exported.append(args[1])
        return real_export_onnx(*args, **kwargs)

    monkeypatch.setattr(pipeline, "export_onnx", counting_export_onnx)
    with _OpenRecorder(monkeypatch) as opened:
        result = export_category(options)
    # one graph per candidate, for its timing; the winner's is reused, not exported again
    assert len(exported) == 3
    resolved = [Path(p).resolve() for p in opened]
    assert sum(p.is_relative_to(category / "train") for p in resolved) >= 12
    assert [
        p
        for p in resolved
        if p.is_relative_to(category / "test") or p.is_relative_to(category / "ground_truth")
    ] == []

    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    selection = manifest["recipe"]["selection"]
    results = {r["name"]: r for r in selection["results"]}
    assert list(results) == ["small", "wider", "lite1"]
    scored = {n: r["score"] for n, r in results.items()}
    assert all(0.0 <= s <= 1.0 for s in scored.values())
    best = max(scored, key=scored.get)  # max keeps the first of equals, as the choice does
    assert selection["chosen"] == best and results[best]["status"] == "chosen"
    assert results[best]["latency_ms"] > 0
    assert all(r["latency_ms"] > 0 for r in results.values())  # each timed after its fit
    assert selection["seconds"] >= sum(r["seconds"] for r in results.values()) - 0.1
    chosen = results[best]["settings"]
    assert manifest["preprocess"]["size"] == chosen.get("image_size", SIZE)
    assert manifest["backbone"]["name"] == chosen.get("backbone", "efficientnet_lite0")
    assert set(manifest["calibration_data"]["anomaly_kinds"]) == {"synthetic", "perlin", "subtle"}


@needs_data
@needs_runtime
def test_selection_respects_the_latency_budget_and_quick_skips_it(tmp_path):
    from autoweld.export.pipeline import ExportOptions, export_category

    _write_category(tmp_path / "data")
    recipe = _selection_recipe(tmp_path / "plate.toml", budget=0.001)  # nothing is that fast
    options = ExportOptions(
        category="plate",
        data_root=tmp_path / "data",
        out_dir=tmp_path / "out",
        recipe=recipe,
        save_reference=False,
    )
    selection = export_category(options).recipe.selection
    latencies = {r["name"]: r["latency_ms"] for r in selection["results"]}
    assert all(v is not None for v in latencies.values())  # every candidate was timed
    assert selection["chosen"] == min(latencies, key=latencies.get)
    assert "no candidate within" in selection["reason"]

    quick = export_category(ExportOptions(**{**options.__dict__, "quick": True}))
    assert "chosen" not in quick.recipe.selection
    assert quick.recipe.image_size == SIZE and quick.recipe.backbone == "efficientnet_lite0"


def test_selection_skips_a_candidate_its_expected_time_would_carry_past_the_budget(monkeypatch):
    """The budget check looks ahead: a candidate is skipped when the time so far plus the
    slowest candidate yet, scaled by input pixels, passes the budget (the first always runs)."""
    from autoweld.export import pipeline
    from autoweld.export.recipes import resolve_recipe
    from autoweld.export.selection import CandidateScore, SelectionSettings

    clock = [0.0]

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock[0]

    def fake_fit(options, recipe, score: CandidateScore):
        spent = 50.0 * (recipe.image_size / 224) ** 2  # 224 px: 50 s, 448 px: 200 s
        clock[0] += spent
        score.seconds, score.score, score.status = spent, 0.5, "scored"
        return pipeline._Candidate(recipe, None, None, None, score)

    def fake_time(candidate, options, threads, scratch):
        candidate.score.latency_ms = 1.0

    monkeypatch.setattr(pipeline, "time", FakeTime)
    monkeypatch.setattr(pipeline, "_fit_candidate", fake_fit)
    monkeypatch.setattr(pipeline, "_time_candidate", fake_time)
    recipe = resolve_recipe("default")
    settings = SelectionSettings(
        candidates=(
            {"name": "a"},  # 224: 50 s
            {"name": "b", "image_size": 224},  # expected 50 s: 100 s <= 160
            {"name": "c", "image_size": 448},  # expected 4 x 50 = 200 s (unscaled: 50): skipped
            {"name": "d", "image_size": 160},  # expected 25.5 s: 125.5 s <= 160, runs
            {"name": "e", "image_size": 224},  # expected 50 s: 175.5 s > 160, skipped
        ),
        time_budget_s=160.0,
    )
    fitted, scores = pipeline._try_candidates(None, recipe, settings, Path("unused"))
    assert [c.score.name for c in fitted] == ["a", "b", "d"]
    status = {s.name: s.status for s in scores}
    assert status["a"] == status["b"] == status["d"] == "scored"
    assert status["c"] == "skipped: time budget 160 s (100 s spent, about 200 s more needed)"
    assert status["e"].startswith("skipped: time budget 160 s (126 s spent, about 50 s")


def test_latency_probe_is_the_median_over_the_images_it_is_given(monkeypatch):
    """The probe answers what autoweld-bench reports as p50: the median of its runs, not the
    fastest one, over several images in turn; no image is a clear error."""
    import numpy as np

    import autoweld.runtime.inspector as inspector_module
    from autoweld.export import selection

    clock = [0.0]
    durations = iter([5.0, 5.0] + [0.010, 0.030, 0.020, 0.030, 0.040] * 3)  # 2 warm-up calls
    seen = []

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock[0]

    class FakeInspector:
        def __init__(self, bundle_dir, threads):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def inspect(self, image):
            seen.append(int(image[0, 0, 0]))
            clock[0] += next(durations)

            class Result:
                error = None

            return Result()

    monkeypatch.setattr(selection, "time", FakeTime)
    monkeypatch.setattr(inspector_module, "Inspector", FakeInspector)
    images = [np.full((8, 8, 3), v, np.uint8) for v in (1, 2, 3)]
    assert selection.measure_latency_ms(Path("b"), images, threads=2) == pytest.approx(30.0)
    assert set(seen) == {1, 2, 3}
    with pytest.raises(ValueError, match="no image"):
        selection.measure_latency_ms(Path("b"), [], threads=2)
