"""The typed manifest: JSON -> Manifest -> JSON gives back what export writes; bad fields are
refused once, on load, naming the field."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from autoweld.bundle import (
    BundleError,
    KnnHeadSpec,
    Manifest,
    MapHeadSpec,
    TensorRTSpec,
    load_bundle,
    write_bundle,
)
from autoweld.bundle.manifest import MANIFEST_NAME

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _exported_manifest(case: str) -> dict:
    """A manifest as autoweld-export writes it (the golden files hold all but the file table)."""
    manifest = json.loads((GOLDEN / f"weld_{case}.json").read_text())["manifest"]
    manifest["created_utc"] = "2026-12-03T10:00:00Z"
    manifest["autoweld_version"] = "0.1.0"
    manifest["packages"] = {"numpy": "2.4.6", "torch": "2.13.0+cpu"}
    manifest["files"] = {"model.onnx": {"sha256": "ab" * 32, "bytes": 10}}
    return manifest


@pytest.mark.parametrize("case", ["default", "all_heads"])
def test_round_trip_is_exact_for_exported_manifests(case):
    manifest = _exported_manifest(case)
    typed = Manifest.from_json(copy.deepcopy(manifest))
    assert typed.to_json() == manifest
    assert Manifest.from_json(typed.to_json()) == typed


def test_typed_fields_of_an_exported_manifest():
    typed = Manifest.from_json(_exported_manifest("all_heads"))
    assert typed.category == "weld" and typed.format_version == 1
    assert typed.preprocess.size == 64 and typed.preprocess.tile_grid == (8, 8)
    assert typed.backbone is not None and typed.backbone.layers == ("blocks.4", "blocks.10")
    assert typed.engine.onnx == "model.onnx" and typed.engine.tensorrt is None
    patchcore = typed.heads["patchcore"]
    assert isinstance(patchcore, KnnHeadSpec)
    assert (patchcore.memory_bank, patchcore.bank_neighbours) == (
        "memory_bank.npy",
        "bank_neighbours.npy",
    )
    assert patchcore.knn_basis is None and not patchcore.choose_pruning
    assert patchcore.embedding_dim == 152 and patchcore.reweight_neighbours == 9
    assert patchcore.extras["bank_size"] == 102  # provenance stays beside the typed fields
    feature_ae = typed.heads["feature_ae"]
    assert isinstance(feature_ae, MapHeadSpec) and feature_ae.feature_map == (8, 8)
    assert list(typed.heads) == ["feature_ae", "global_reference", "patchcore", "student_teacher"]
    assert typed.provenance.calibration_data["source"] == "synthesised"
    assert typed.files["model.onnx"].bytes == 10


def test_typed_manifest_is_read_only():
    typed = Manifest.from_json(_exported_manifest("default"))
    with pytest.raises(TypeError):
        typed.heads["patchcore"].extras["bank_size"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        typed.provenance.recipe["calibration"]["val_fraction"] = 0.9  # type: ignore[index]
    with pytest.raises(AttributeError):
        typed.fusion.threshold = 0.9  # type: ignore[misc]


def test_absent_knn_basis_means_choose_at_load_and_stays_absent():
    manifest = _exported_manifest("default")
    del manifest["models"]["patchcore"]["knn_basis"]
    typed = Manifest.from_json(manifest)
    assert typed.heads["patchcore"].choose_pruning
    assert "knn_basis" not in typed.to_json()["models"]["patchcore"]


def test_tensorrt_entry_round_trips_with_its_extras():
    manifest = _exported_manifest("default")
    manifest["engine"]["tensorrt"] = {
        "plan": "model.plan",
        "gpu": "NVIDIA H200",
        "compute_capability": "9.0",
        "tensorrt_version": "10.9.0",
        "fp16": True,
        "batch": {"min": 1, "opt": 4, "max": 8},
    }
    typed = Manifest.from_json(copy.deepcopy(manifest))
    assert typed.engine.tensorrt == TensorRTSpec(
        plan="model.plan",
        gpu="NVIDIA H200",
        compute_capability="9.0",
        tensorrt_version="10.9.0",
        extras=typed.engine.tensorrt.extras,
    )
    assert typed.engine.tensorrt.extras["batch"]["max"] == 8
    assert typed.to_json() == manifest


@pytest.mark.parametrize(
    ("path", "value", "names"),
    [
        (("preprocess", "size"), 0, "preprocess.size"),
        (("preprocess", "mean"), [0.5, 0.5], "preprocess.mean"),
        (("preprocess", "clahe"), "yes", "preprocess.clahe"),
        (("preprocess", "color_order"), "RGB", "preprocess.color_order"),
        (("engine", "onnx"), "", "engine.onnx"),
        (("engine", "opset"), "18", "engine.opset"),
        (("models", "patchcore", "memory_bank"), 5, "memory_bank"),
        (("models", "patchcore", "embedding_dim"), -1, "embedding_dim"),
        (("models", "patchcore", "knn_basis"), 7, "knn_basis must be a file name or null"),
        (("models", "patchcore", "output"), None, "output"),
        (("backbone", "layers"), "blocks.4", "backbone.layers"),
        (("scoring", "map_sigma"), -1.0, "scoring.map_sigma"),
        (("files", "model.onnx"), {"sha256": "ab"}, "files['model.onnx']"),
        (("files", "../model.onnx"), {"sha256": "ab", "bytes": 1}, "leaves the bundle"),
        (("format_version",), True, "format_version"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(path, value, names):
    manifest = _exported_manifest("default")
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(BundleError, match=names.replace("[", r"\[").replace(".", r"\.")):
        Manifest.from_json(manifest, "here/manifest.json")


def test_written_bundle_loads_the_same_manifest(tmp_path):
    manifest = _exported_manifest("default")
    manifest["models"]["patchcore"]["knn_basis"] = None
    del manifest["files"]
    typed = Manifest.from_json({**manifest, "files": {}})
    bundle = write_bundle(tmp_path / "b", typed, {"model.onnx": b"onnx bytes"})
    assert bundle.manifest.with_files({}) == typed
    on_disk = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    assert on_disk == bundle.manifest.to_json()
    assert load_bundle(tmp_path / "b", key=None).manifest == bundle.manifest


def test_a_manifest_built_in_code_is_checked_before_anything_is_written(tmp_path):
    typed = Manifest.from_json({**_exported_manifest("default"), "files": {}})
    bad = dataclasses.replace(typed, fusion=dataclasses.replace(typed.fusion, threshold=1.5))
    with pytest.raises(BundleError, match=r"fusion threshold 1\.5 is outside"):
        write_bundle(tmp_path / "b", bad, {"model.onnx": b"x"})
    assert list(tmp_path.iterdir()) == []
