"""End to end: a tiny weld set -> bundle; a tiny folder in the MVTec AD layout -> CLI."""

import json
import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from autoweld import data, native
from autoweld.bundle import load_bundle

pytestmark = pytest.mark.skipif(
    not (hasattr(data, "load_category") and hasattr(native, "coreset")),
    reason="needs autoweld.data and the native kernels (other branches) merged",
)

SIZE = 64


@pytest.fixture(scope="module")
def tiny_weld(tmp_path_factory):
    from autoweld.data import WeldParams

    root = tmp_path_factory.mktemp("data")
    params = WeldParams(n_train=10, n_test_good=2, n_test_per_defect=1, image_size=64)
    data.load_category("weld", data_root=root, seed=0, weld_params=params)
    return root, params


@pytest.fixture(scope="module")
def built_manifests():
    """Every :class:`Manifest` that ``build_manifest`` returned during ``weld_export``."""
    return []


@pytest.fixture(scope="module")
def weld_export(tiny_weld, tmp_path_factory, built_manifests):
    from autoweld.export import pipeline
    from autoweld.export.pipeline import ExportOptions, export_category

    build_manifest = pipeline.build_manifest

    def recording_build_manifest(*args, **kwargs):
        content = build_manifest(*args, **kwargs)
        built_manifests.append(content.manifest)
        return content

    root, params = tiny_weld
    out = tmp_path_factory.mktemp("bundles")
    options = ExportOptions(
        category="weld",
        data_root=root,
        out_dir=out,
        image_size=SIZE,
        coreset_ratio=0.5,
        coreset_max=60,
        weld_params=params,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "build_manifest", recording_build_manifest)
        return export_category(options)


def test_weld_bundle_follows_the_contract(weld_export, tiny_weld):
    result = weld_export
    bundle = load_bundle(result.bundle_dir)  # hashes and sizes of every file check out
    m = bundle.manifest.to_json()
    assert m["format_version"] == 1 and m["category"] == "weld"
    assert set(m["files"]) == {"model.onnx", "memory_bank.npy", "bank_neighbours.npy"}
    assert m["preprocess"]["size"] == SIZE and m["preprocess"]["color_order"] == "BGR"
    assert m["preprocess"]["clahe"] is False and m["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert m["backbone"]["name"] == "efficientnet_lite0"
    assert m["backbone"]["layers"] == ["blocks.4", "blocks.10"]
    assert len(m["backbone"]["weights_sha256"]) == 64
    assert m["engine"] == {"onnx": "model.onnx", "input": "image", "opset": m["engine"]["opset"]}
    assert m["engine"]["opset"] >= 17
    head = m["models"]["patchcore"]
    assert head["kind"] == "knn" and head["output"] == "patchcore_embeddings"
    assert head["feature_map"] == [SIZE // 8, SIZE // 8]
    assert head["bank_size"] == 60 and head["embedding_dim"] == 152
    assert head["reweight_neighbours"] == 9
    assert head["knn_basis"] is None  # 60 rows: too few for the pruned search to pay
    assert head["calibration"]["a"] < 0  # higher score, higher probability of a defect
    assert m["fusion"]["weights"] == {"patchcore": 1.0}
    assert m["fusion"]["threshold_method"] == "best_f1"
    assert 0.0 < m["fusion"]["threshold"] < 1.0
    cal = m["calibration_data"]
    assert cal["source"] == "synthesised" and cal["val_root"] is None
    assert cal["n_normal"] == 2 and cal["n_anomalous"] == 4  # 20 % of 10, 2 defects each
    assert set(cal["anomaly_kinds"]) <= set(data.WELD_DEFECT_TYPES)
    assert m["training_data"]["n_fit"] == 8 and m["training_data"]["category"] == "weld"
    assert m["packages"]["torch"].startswith("2.") and "onnxruntime" in m["packages"]
    bank = bundle.load_array("memory_bank.npy")
    neighbours = bundle.load_array("bank_neighbours.npy")
    assert bank.dtype == np.float32 and bank.shape == (60, 152)
    assert neighbours.dtype == np.int64 and neighbours.shape == (60, 9)
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(60))


def test_the_built_manifest_is_the_one_written(weld_export, built_manifests):
    """Export builds a typed Manifest that is already what a loader reads back: the bytes of
    manifest.json are its JSON plus the file table, with nothing coerced by the check."""
    from autoweld.bundle import FORMAT_VERSION, Manifest, canonical_json

    (built,) = built_manifests
    assert isinstance(built, Manifest) and built.format_version == FORMAT_VERSION
    written = (weld_export.bundle_dir / "manifest.json").read_bytes()
    files = weld_export.bundle.manifest.files
    assert canonical_json(built.with_files(files).to_json()) == written
    assert weld_export.bank_sizes == {"patchcore": 60}


def test_onnx_in_the_bundle_equals_the_torch_graph(weld_export):
    result = weld_export
    session = ort.InferenceSession(
        str(result.bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    (got,) = session.run(["patchcore_embeddings"], {"image": x})
    with torch.no_grad():
        (want,) = result.graph(torch.from_numpy(x))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_reference_file_rebuilds_the_same_scores(weld_export, tiny_weld):
    from autoweld.train.reference import TorchReference, load_reference

    result = weld_export
    root, params = tiny_weld
    category = data.load_category("weld", data_root=root, seed=0, weld_params=params)
    spec = result.bundle.preprocess
    batch = np.stack(
        [native.preprocess(s.load_image(), spec.size, **spec.as_kwargs()) for s in category.test]
    )
    rebuilt = load_reference(result.reference_path, result.bundle_dir).score(batch)
    direct = TorchReference.from_bundle(result.bundle_dir, result.graph).score(batch)
    np.testing.assert_allclose(rebuilt.scores["patchcore"], direct.scores["patchcore"], rtol=1e-6)
    np.testing.assert_allclose(rebuilt.fused, direct.fused, rtol=1e-6)
    assert rebuilt.fused_map.shape == (len(category.test), SIZE, SIZE)
    # the runtime's way (native kNN + native score) agrees with the torch reference
    session = ort.InferenceSession(str(result.bundle_dir / "model.onnx"))
    (emb,) = session.run(None, {"image": batch})
    bank = result.bundle.load_array("memory_bank.npy")
    neighbours = result.bundle.load_array("bank_neighbours.npy")
    for n in range(len(batch)):
        d, i = native.knn(emb[n], bank, 1)
        s = native.patchcore_score(emb[n], d, i, bank, neighbours)
        assert s == pytest.approx(float(direct.scores["patchcore"][n]), abs=1e-4)


def _mvtec_folder(tiny_weld, tmp_path):
    """A tiny folder in the MVTec AD layout, built from the weld images."""
    root, _ = tiny_weld
    parts = tmp_path / "parts"
    shutil.copytree(root / "weld" / "train", parts / "train")
    shutil.copytree(root / "weld" / "test", parts / "test")
    shutil.copytree(root / "weld" / "ground_truth", parts / "ground_truth")
    return tmp_path


def test_cli_exports_a_folder_category_and_prints_a_summary(tiny_weld, tmp_path, capsys):
    from autoweld.cli.export import main

    data_root = _mvtec_folder(tiny_weld, tmp_path)
    val_root = tmp_path / "val"
    (val_root / "good").mkdir(parents=True)
    (val_root / "scratch").mkdir()
    images = sorted((data_root / "parts" / "train" / "good").glob("*.png"))
    for i, path in enumerate(images[:3]):
        image = cv2.imread(str(path))
        cv2.imwrite(str(val_root / "good" / f"{i}.png"), image)
        cv2.line(image, (5, 5 + 9 * i), (60, 40), (0, 0, 0), 3)
        cv2.imwrite(str(val_root / "scratch" / f"{i}.png"), image)
    out = tmp_path / "bundles"
    code = main(
        [
            "--category", "parts", "--data-root", str(data_root), "--out", str(out),
            "--image-size", str(SIZE), "--coreset-ratio", "0.5", "--coreset-max", "40",
            "--val-root", str(val_root), "--seed", "3",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert f"bundle      {out / 'parts'}" in printed
    assert "memory bank 40 x 152" in printed and "time" in printed
    manifest = json.loads((out / "parts" / "manifest.json").read_text())
    assert manifest["calibration_data"]["source"] == "val_root"
    assert manifest["calibration_data"]["n_normal"] == 3
    assert manifest["calibration_data"]["n_anomalous"] == 3
    assert manifest["training_data"]["n_fit"] == 10  # all of train: val_root calibrates
    assert manifest["preprocess"]["clahe"] is False  # default.toml
    assert manifest["training_data"]["seed"] == 3
    assert (out / "parts.reference.pt").is_file()


def test_cli_reports_bad_requests_clearly(tiny_weld, tmp_path, capsys):
    from autoweld.cli.export import main

    data_root = _mvtec_folder(tiny_weld, tmp_path)
    out = tmp_path / "bundles"
    common = ["--category", "parts", "--data-root", str(data_root), "--out", str(out)]
    assert main([*common, "--models", "patchcore,no_such_head"]) == 2
    assert "no_such_head not implemented" in capsys.readouterr().err
    assert main([*common, "--backbone", "wide_resnet50_2"]) == 2
    assert "needs weights" in capsys.readouterr().err
    assert main([*common, "--val-root", str(tmp_path / "nowhere")]) == 2
    assert "val_root" in capsys.readouterr().err
    # calibrating on the test split (or a folder holding it) is refused before any work
    for leaky in (data_root / "parts" / "test", data_root / "parts"):
        assert main([*common, "--val-root", str(leaky)]) == 2
        assert "overlaps the test split" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
