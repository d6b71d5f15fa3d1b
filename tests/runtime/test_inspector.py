import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from test_decode import bomb_png
from tinybundle import (
    CELL,
    FEATURE,
    SIZE,
    defect_image,
    normal_image,
    tiny_bank,
    write_tiny_bundle,
)

from autoweld import native
from autoweld.bundle import BundleError, load_bundle
from autoweld.runtime.inspector import STAGES, Inspector, decide, failed_result


def reference_scores(bundle_dir, image):
    """numpy version of docs/bundle.md steps 1, 2, 4, 5 for the tiny graph, on the same
    preprocessed input (mean 0.5, std 1, no CLAHE: the area-resized RGB image / 255 - 0.5)."""
    bundle = load_bundle(bundle_dir)
    chw = native.preprocess(image, SIZE, **bundle.preprocess.as_kwargs()).astype(np.float64)
    # the preprocessing is the resized image within one grey level (native's own tests are exact)
    resized = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    assert np.abs((chw.transpose(1, 2, 0) + 0.5) * 255 - resized).max() <= 1.0 + 1e-3
    rgb = chw.transpose(1, 2, 0)
    pooled = rgb.reshape(FEATURE, CELL, FEATURE, CELL, 3).mean(axis=(1, 3))  # (h, w, 3)
    emb = pooled.reshape(-1, 3)
    bank = bundle.load_array("memory_bank.npy").astype(np.float64)
    neighbours = bundle.load_array("bank_neighbours.npy")
    d = np.linalg.norm(emb[:, None] - bank[None], axis=2)
    patch = d.min(axis=1)
    p_star = int(patch.argmax())
    m_star = int(d[p_star].argmin())
    dj = np.linalg.norm(emb[p_star] - bank[neighbours[m_star]], axis=1)
    softmax = np.exp(dj - dj.max()) / np.exp(dj - dj.max()).sum()
    scores = {
        "patchcore": (1 - softmax[0]) * patch[p_star],
        "feature_ae": pooled.mean(axis=2).max(),
    }
    probabilities = {}
    for name, head in bundle.heads.items():
        probabilities[name] = 1 / (1 + np.exp(head.platt_a * scores[name] + head.platt_b))
    fused = sum(bundle.fusion_weights[n] * probabilities[n] for n in probabilities)
    return scores, probabilities, fused


@pytest.fixture
def inspector(tiny_bundle):
    with Inspector(tiny_bundle, threads=1) as inspector:
        yield inspector


def _assert_failed(result, pattern):
    assert result.decision == "FAIL"
    assert result.error is not None
    assert pattern in result.error, result.error
    assert result.anomaly_map is None


def test_good_passes_defect_fails_with_reference_scores(inspector, tiny_bundle):
    good, bad = normal_image(1), defect_image(2)
    for image, decision in ((good, "PASS"), (bad, "FAIL")):
        result = inspector.inspect(image)
        assert result.error is None and result.decision == decision
        scores, probabilities, fused = reference_scores(tiny_bundle, image)
        for name in scores:
            assert result.scores[name] == pytest.approx(scores[name], rel=1e-4, abs=1e-6)
            assert result.probabilities[name] == pytest.approx(probabilities[name], rel=1e-4)
        assert result.probability == pytest.approx(fused, rel=1e-4)
        assert result.threshold == 0.5
        assert set(result.timings_ms) == set(STAGES)
        assert all(v >= 0 for v in result.timings_ms.values())
    # the fused map is at the image's own size and hottest where the defect was painted
    result = inspector.inspect(defect_image(2, size=96)[:80])
    assert result.anomaly_map.shape == (80, 96) and result.anomaly_map.dtype == np.float32
    y, x = np.unravel_index(result.anomaly_map.argmax(), result.anomaly_map.shape)
    assert 10 <= y <= 45 and 14 <= x <= 50


def test_paths_and_bytes_and_grey(inspector, tmp_path):
    image = defect_image(3)
    path = tmp_path / "part.png"
    cv2.imwrite(str(path), image)
    from_array = inspector.inspect(image)
    from_path = inspector.inspect(path)
    from_bytes = inspector.inspect(path.read_bytes())
    assert from_path.scores == from_array.scores == from_bytes.scores
    grey = inspector.inspect(normal_image(4)[:, :, 0])
    assert grey.error is None and grey.anomaly_map.shape == (48, 48)


def test_head_maps_on_request(inspector):
    plain = inspector.inspect(defect_image(5))
    assert plain.head_maps == {}
    kept = inspector.inspect(defect_image(5), keep_head_maps=True)
    assert set(kept.head_maps) == {"patchcore", "feature_ae"}
    assert kept.head_maps["patchcore"].shape == (48, 48)
    # the raw patchcore map peaks at about the patch score maximum
    assert kept.head_maps["patchcore"].max() <= kept.scores["patchcore"] * 10


def _next_is_fine(inspector):
    result = inspector.inspect(defect_image(9))
    assert result.error is None and result.decision == "FAIL"
    assert inspector.inspect(normal_image(9)).decision == "PASS"


def test_unreadable_file_fails_and_inspector_stays_up(inspector, tmp_path):
    _assert_failed(inspector.inspect(tmp_path / "nope.png"), "cannot be read")
    _next_is_fine(inspector)


def test_truncated_file(inspector, tmp_path):
    ok, data = cv2.imencode(".png", defect_image(1))
    path = tmp_path / "cut.png"
    path.write_bytes(data.tobytes()[:200])
    _assert_failed(inspector.inspect(path), "truncated PNG")
    _next_is_fine(inspector)


def test_empty_file(inspector, tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_failed(inspector.inspect(path), "empty (0 bytes)")
    _next_is_fine(inspector)


def test_wrong_channel_count(inspector):
    ok, data = cv2.imencode(".png", np.zeros((20, 20, 4), np.uint8))
    _assert_failed(inspector.inspect(data.tobytes()), "4 channels")
    _assert_failed(inspector.inspect(np.zeros((20, 20, 2), np.uint8)), "2 channels")
    _assert_failed(inspector.inspect(np.zeros((20, 20, 3), np.float32)), "dtype float32")
    _next_is_fine(inspector)


def test_decompression_bomb(inspector, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    _assert_failed(inspector.inspect(path), "100.0 megapixels")
    _next_is_fine(inspector)


def test_nan_from_engine_fails_that_image_only(tmp_path):
    # map head = sqrt(mean + 0.2): NaN for dark images (about -0.42), finite for mid-grey (~0)
    bundle = write_tiny_bundle(tmp_path / "nan", offset=-0.2)
    with Inspector(bundle, threads=1) as inspector:
        dark = np.full((40, 40, 3), 20, np.uint8)
        _assert_failed(inspector.inspect(dark), "NaN/Inf")
        fine = inspector.inspect(normal_image(1))
        assert fine.error is None and np.isfinite(fine.probability)
        batch = inspector.inspect_batch([normal_image(2), dark, normal_image(3)])
        assert [r.error is None for r in batch] == [True, False, True]
        assert "feature_ae" in batch[1].error


def test_engine_exception_and_native_value_error(inspector, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    with monkeypatch.context() as patch:
        patch.setattr(inspector.engine, "infer", broken)
        _assert_failed(inspector.inspect(normal_image(1)), "RuntimeError: device lost")

    def rejects(*args, **kwargs):
        raise ValueError("bank_neighbours: index out of range")

    with monkeypatch.context() as patch:
        patch.setattr(native, "patchcore_score", rejects)
        _assert_failed(inspector.inspect(normal_image(1)), "bank_neighbours")
    _next_is_fine(inspector)


def test_batch_keeps_order_and_isolates_bad_images(inspector, tmp_path):
    images = [normal_image(1), tmp_path / "missing.png", defect_image(2), b""]
    results = inspector.inspect_batch(images)
    assert [r.decision for r in results] == ["PASS", "FAIL", "FAIL", "FAIL"]
    assert [r.error is None for r in results] == [True, False, True, False]
    single = inspector.inspect(defect_image(2))
    assert results[2].scores == pytest.approx(single.scores, rel=1e-5)
    assert inspector.inspect_batch([]) == []
    bad_argument = inspector.inspect_batch(None)  # type: ignore[arg-type]
    assert len(bad_argument) == 1 and bad_argument[0].decision == "FAIL"
    one_path = inspector.inspect_batch(str(tmp_path / "x.png"))  # type: ignore[arg-type]
    assert len(one_path) == 1 and "expected a sequence of images" in one_path[0].error


def test_shared_across_threads_gives_sequential_results(inspector):
    images = [normal_image(i) if i % 2 else defect_image(i) for i in range(12)]
    sequential = [inspector.inspect(image).probability for image in images]
    barrier = threading.Barrier(4)

    def run(image):
        barrier.wait(timeout=10)  # start the first four together so calls overlap
        return inspector.inspect(image).probability

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, images[:4]))
        concurrent += list(pool.map(lambda im: inspector.inspect(im).probability, images[4:]))
    assert concurrent == pytest.approx(sequential, rel=1e-6)


def test_closed_inspector_fails_safe(tiny_bundle):
    inspector = Inspector(tiny_bundle, threads=1)
    inspector.close()
    _assert_failed(inspector.inspect(normal_image(1)), "closed")


def test_tampered_bundle_is_refused(tiny_bundle):
    bank_path = tiny_bundle / "memory_bank.npy"
    data = bytearray(bank_path.read_bytes())
    data[-1] ^= 0x01
    bank_path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="memory_bank.npy: sha256 does not match"):
        Inspector(tiny_bundle)


def test_graph_missing_an_output_is_refused(tmp_path):
    from tinybundle import brute_neighbours, make_graph, manifest

    from autoweld.bundle import write_bundle

    bank = np.full((4, 3), 0.5, np.float32)
    bundle = write_bundle(
        tmp_path / "b",
        manifest(),
        {
            "model.onnx": make_graph(heads=("patchcore",)),
            "memory_bank.npy": bank,
            "bank_neighbours.npy": brute_neighbours(bank, 3),
        },
    )
    with pytest.raises(ValueError, match="lacks output"):
        Inspector(bundle)


def test_failed_result_to_json():
    result = failed_result("why", 0.4, {"decode": 1.0})
    payload = result.to_json()
    assert payload["decision"] == "FAIL" and payload["probability"] is None
    assert payload["threshold"] == 0.4 and payload["error"] == "why"
    json.dumps(payload, allow_nan=False)


def test_inspection_never_imports_torch(tiny_bundle):
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from autoweld.runtime.inspector import Inspector\n"
        f"inspector = Inspector({str(tiny_bundle)!r}, threads=1)\n"
        "image = np.full((40, 40, 3), 128, np.uint8)\n"
        "result = inspector.inspect(image)\n"
        "assert result.error is None, result.error\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "print(result.decision, len(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PASS", "0"]


@pytest.mark.parametrize(
    ("probability", "threshold"),
    [
        (float("nan"), 0.5),
        (0.1, float("nan")),
        (float("nan"), float("nan")),
        (0.1, float("inf")),
        (0.1, 1.5),
        (0.1, 0.0),
        (float("-inf"), 0.5),
    ],
)
def test_decide_never_passes_on_nan_or_impossible_threshold(probability, threshold):
    assert decide(probability, threshold) == "FAIL"


def test_decide_compares_fail_at_or_above_threshold():
    assert decide(0.49, 0.5) == "PASS"
    assert decide(0.5, 0.5) == "FAIL"
    assert decide(0.999, 1.0) == "PASS"


def test_inspector_with_nan_threshold_fails_a_good_part(tiny_bundle):
    """Defence in depth: even if a NaN threshold got past the bundle checks, no PASS."""
    with Inspector(tiny_bundle) as inspector:
        good = inspector.inspect(normal_image(1))
        assert good.decision == "PASS"  # the part itself is fine
        inspector.threshold = float("nan")
        assert inspector.inspect(normal_image(1)).decision == "FAIL"
        inspector.threshold = 1.5
        assert inspector.inspect(normal_image(1)).decision == "FAIL"


@pytest.mark.parametrize("name", ["memory_bank.npy", "model.onnx"])
def test_file_replaced_after_load_bundle_is_refused(tiny_bundle, name):
    """No window between the hash check and the use: the Inspector uses the bytes it checks."""
    bundle = load_bundle(tiny_bundle)
    path = tiny_bundle / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size, other content: a re-export racing with the station
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name.replace('.', '[.]')}: sha256"):
        Inspector(bundle)


def test_threads_reach_every_threaded_kernel(tiny_bundle, monkeypatch):
    """Inspector(threads=N) runs the kNN search on N threads too (autoweld-bench compares sides
    at one thread count; the search used to take every core)."""
    calls = []

    class Spy:
        def __init__(self, index):
            self.index = index

        def search(self, queries, k, threads=None):
            calls.append(threads)
            return self.index.search(queries, k, threads=threads)

    with Inspector(tiny_bundle, threads=1) as inspector:
        index, bank, neighbours = inspector._knn["patchcore"]
        monkeypatch.setitem(inspector._knn, "patchcore", (Spy(index), bank, neighbours))
        result = inspector.inspect(normal_image(1))
    assert result.error is None
    assert calls == [1]


def test_knn_basis_from_the_bundle_prunes_with_the_same_results(tiny_bundle, tmp_path):
    basis = native.principal_axes(tiny_bank()).axes[:1].copy()
    pruned_dir = write_tiny_bundle(tmp_path / "pruned", knn_basis=basis)
    images = [normal_image(5), defect_image(6)]
    with Inspector(tiny_bundle, threads=1) as plain, Inspector(pruned_dir, threads=1) as pruned:
        assert pruned._knn["patchcore"][0].prefix_dims == 1
        assert plain._knn["patchcore"][0].prefix_dims == 0  # no key, bank too small to prune
        for image in images:
            a, b = plain.inspect(image), pruned.inspect(image)
            assert a.decision == b.decision
            assert b.scores["patchcore"] == pytest.approx(a.scores["patchcore"], rel=1e-5)
            np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=1e-4, atol=1e-6)


def test_knn_basis_null_means_brute_force(tmp_path):
    bundle_dir = write_tiny_bundle(tmp_path / "b", knn_basis=None)
    with Inspector(bundle_dir, threads=1) as inspector:
        assert inspector._knn["patchcore"][0].prefix_dims == 0


@pytest.mark.parametrize(
    "basis,match",
    [
        (2.0 * np.eye(1, 3, dtype=np.float32), "knn_basis: basis must have orthonormal rows"),
        (np.eye(3, 3, dtype=np.float32), "knn_basis: basis must be"),
        (7, "knn_basis must be a file name or null"),
    ],
)
def test_bad_knn_basis_is_refused_with_the_bundle_named(tmp_path, basis, match):
    # a manifest entry of the wrong type is refused by the manifest check (on writing and on
    # loading); a basis file that is no basis, when the Inspector builds its index
    with pytest.raises(ValueError, match=match) as refused:
        Inspector(write_tiny_bundle(tmp_path / "b", knn_basis=basis), threads=1)
    assert str(tmp_path / "b") in str(refused.value)
