import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from autoweld.bundle import BundleError, load_bundle, manifest_identity, write_bundle
from autoweld.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, canonical_json, sha256_file
from autoweld.safe_files import MANIFEST_MAX_BYTES


def _manifest():
    return {
        "category": "unit",
        "preprocess": {
            "size": 32,
            "clahe": True,
            "clip_limit": 2.0,
            "tile_grid": [8, 8],
            "sigma": 0.0,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "color_order": "BGR",
        },
        "engine": {"onnx": "model.onnx", "input": "image", "opset": 17},
        "models": {
            "patchcore": {
                "kind": "knn",
                "output": "patchcore_embeddings",
                "feature_map": [4, 4],
                "calibration": {"a": -2.0, "b": 3.0},
                "memory_bank": "memory_bank.npy",
            }
        },
        "fusion": {"weights": {"patchcore": 1.0}, "threshold": 0.5},
    }


@pytest.fixture
def bundle_dir(tmp_path):
    bank = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_bundle(
        tmp_path / "b", _manifest(), {"model.onnx": b"not really onnx", "memory_bank.npy": bank}
    )
    return tmp_path / "b"


def test_roundtrip_lists_hashes_and_loads_arrays(bundle_dir):
    bundle = load_bundle(bundle_dir, key=None)
    assert bundle.format_version == 1
    assert set(bundle.manifest.files) == {"model.onnx", "memory_bank.npy"}
    np.testing.assert_array_equal(
        bundle.load_array("memory_bank.npy"), np.arange(12, dtype=np.float32).reshape(4, 3)
    )
    head = bundle.heads["patchcore"]
    assert (head.kind, head.feature_map, head.platt_a, head.platt_b) == ("knn", (4, 4), -2.0, 3.0)
    assert bundle.preprocess.size == 32 and bundle.preprocess.tile_grid == (8, 8)
    assert bundle.threshold == 0.5 and bundle.fusion_weights == {"patchcore": 1.0}
    assert len(bundle.sha256) == 64
    # no partial directories are left beside the bundle
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["b"]


def test_modified_file_is_refused_with_its_name(bundle_dir):
    path = bundle_dir / "memory_bank.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"memory_bank\.npy.*sha256"):
        load_bundle(bundle_dir, key=None)


def test_truncated_and_missing_files_are_refused(bundle_dir):
    path = bundle_dir / "model.onnx"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(BundleError, match=r"model\.onnx.*size"):
        load_bundle(bundle_dir, key=None)
    path.unlink()
    with pytest.raises(BundleError, match=r"model\.onnx.*missing"):
        load_bundle(bundle_dir, key=None)


def test_unknown_format_version_and_broken_manifest(bundle_dir):
    manifest_path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(bundle_dir, key=None)
    manifest_path.write_text("{ half written")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir, key=None)
    manifest_path.unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(bundle_dir, key=None)


def test_manifest_edit_changes_identity(bundle_dir):
    before = load_bundle(bundle_dir, key=None).sha256
    manifest_path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["fusion"]["threshold"] = 0.99
    manifest_path.write_text(json.dumps(manifest))
    assert load_bundle(bundle_dir, key=None).sha256 != before


def test_signature_required_and_checked_when_key_configured(tmp_path, monkeypatch):
    key = ("line-3", b"line-3-bundle-key-0123456789-ghijklmnop")
    write_bundle(tmp_path / "s", _manifest(), {"model.onnx": b"x"}, sign_with=key)
    assert load_bundle(tmp_path / "s", key=key).signed_by == "line-3"
    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY", "line-3-bundle-key-0123456789-ghijklmnop")
    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY_ID", "line-3")
    assert load_bundle(tmp_path / "s").signed_by == "line-3"
    with pytest.raises(BundleError, match="signed with key"):
        load_bundle(tmp_path / "s", key=("other", b"line-3-bundle-key-0123456789-ghijklmnop"))
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(tmp_path / "s", key=("line-3", b"wrong-bundle-key-0123456789-ghijklmnop"))
    # an edited manifest no longer matches its signature
    manifest_path = tmp_path / "s" / MANIFEST_NAME
    manifest_path.write_text(
        manifest_path.read_text().replace('"threshold": 0.5', '"threshold": 0.9')
    )
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(tmp_path / "s")
    # an unsigned bundle is refused while a key is configured
    write_bundle(tmp_path / "u", _manifest(), {"model.onnx": b"x"})
    assert not (tmp_path / "u" / SIGNATURE_NAME).exists()
    with pytest.raises(BundleError, match="only signed bundles"):
        load_bundle(tmp_path / "u")


def test_bad_inputs_to_writer(tmp_path):
    with pytest.raises(BundleError, match="plain file name"):
        write_bundle(tmp_path / "x", _manifest(), {"../evil": b"x"})
    bad = _manifest()
    bad["models"]["patchcore"]["kind"] = "magic"
    with pytest.raises(BundleError, match="unknown kind"):
        write_bundle(tmp_path / "x", bad, {"model.onnx": b"x"})
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BundleError, match="no bundle directory"):
        load_bundle(tmp_path / "nothing")


def _set(manifest, path, value):
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


# (path into the manifest, bad value, text the error must contain: the field it names)
BAD_DECISION_FIELDS = [
    (("fusion", "threshold"), float("nan"), "threshold"),
    (("fusion", "threshold"), float("inf"), "threshold"),
    (("fusion", "threshold"), 1.5, "threshold"),
    (("fusion", "threshold"), 0.0, "threshold"),
    (("fusion", "threshold"), -0.2, "threshold"),
    (("fusion", "threshold"), "0.5", "threshold"),
    (("fusion", "weights", "patchcore"), float("nan"), "fusion weight 'patchcore'"),
    (("fusion", "weights", "patchcore"), -1.0, "fusion weight 'patchcore'"),
    (("fusion", "weights", "patchcore"), 0.7, "sum to"),
    (("fusion", "weights"), {}, "fusion weights"),
    (("models", "patchcore", "calibration", "a"), float("nan"), "calibration.a"),
    (("models", "patchcore", "calibration", "b"), float("-inf"), "calibration.b"),
    (("models", "patchcore", "calibration", "a"), None, "calibration.a"),
    (("models", "patchcore", "feature_map"), [4], "feature_map"),
    (("models", "patchcore", "feature_map"), [4, 0], "feature_map"),
    (("models", "patchcore", "feature_map"), [4, 2.5], "feature_map"),
    (("models", "patchcore", "feature_map"), [True, 4], "feature_map"),
]


@pytest.mark.parametrize(("path", "value", "names"), BAD_DECISION_FIELDS)
def test_writer_refuses_bad_decision_fields(tmp_path, path, value, names):
    manifest = _manifest()
    _set(manifest, path, value)
    with pytest.raises(BundleError, match=re.escape(names)):
        write_bundle(tmp_path / "b", manifest, {"model.onnx": b"x"})
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("path", "value", "names"), BAD_DECISION_FIELDS)
def test_loader_refuses_bad_decision_fields(bundle_dir, path, value, names):
    """A manifest edited on disk (json.dumps writes NaN/Infinity) is refused on load too."""
    manifest_path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    _set(manifest, path, value)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=re.escape(names)):
        load_bundle(bundle_dir, key=None)


def test_good_edge_values_are_accepted(tmp_path):
    manifest = _manifest()
    manifest["fusion"]["threshold"] = 1.0
    manifest["fusion"]["weights"] = {"patchcore": 1.0 - 5e-7}
    bundle = write_bundle(tmp_path / "b", manifest, {"model.onnx": b"x"})
    assert bundle.threshold == 1.0


def test_canonical_json_refuses_nan():
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    manifest = _manifest()
    manifest["trained_on"] = {"f1": float("nan")}  # NaN outside the checked fields
    with pytest.raises(BundleError, match="not serialisable"):
        write_bundle(Path(tempfile.mkdtemp()) / "b", manifest, {"model.onnx": b"x"})


def _swap(path: Path, kind: str, tmp_path: Path) -> None:
    """Replace ``path`` with a FIFO, a link to /dev/zero, a directory or a huge sparse file."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:  # a sparse file past the manifest's 16 MiB limit: nothing is read into memory
        with open(path, "wb") as handle:
            handle.truncate(MANIFEST_MAX_BYTES + 1)


KINDS = {
    "fifo": "FIFO",
    "dev-zero": "character device",
    "directory": "directory",
    "huge": "exceeds the limit",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_manifest_that_is_not_a_small_regular_file_is_refused(bundle_dir, tmp_path, kind, deadline):
    """Issue 15: manifest.json as a FIFO hung the loader; as a link to /dev/zero it was read
    without a limit (MemoryError). Each is now a BundleError naming the file, at once."""
    manifest_path = bundle_dir / MANIFEST_NAME
    _swap(manifest_path, kind, tmp_path)
    with pytest.raises(BundleError, match=rf"manifest\.json: .*{KINDS[kind]}"):
        deadline(5, load_bundle, bundle_dir, key=None, fifos=[manifest_path])
    # the identity a refused bundle's record names: the sha256 of no bytes, never a hang
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert deadline(5, manifest_identity, bundle_dir, fifos=[manifest_path]) == empty


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_listed_file_that_is_not_a_regular_file_is_refused(bundle_dir, tmp_path, kind, deadline):
    path = bundle_dir / "memory_bank.npy"
    _swap(path, kind, tmp_path)
    with pytest.raises(BundleError, match=rf"memory_bank\.npy: .*{KINDS[kind]}"):
        deadline(5, load_bundle, bundle_dir, key=None, fifos=[path])


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_file_swapped_after_loading_is_refused_by_read_verified(
    bundle_dir, tmp_path, kind, deadline
):
    bundle = load_bundle(bundle_dir, key=None)
    path = bundle_dir / "memory_bank.npy"
    _swap(path, kind, tmp_path)
    with pytest.raises(BundleError, match=rf"memory_bank\.npy: .*{KINDS[kind]}"):
        deadline(5, bundle.read_verified, "memory_bank.npy", fifos=[path])
    with pytest.raises(BundleError, match=rf"memory_bank\.npy: .*{KINDS[kind]}"):
        deadline(5, sha256_file, path, fifos=[path])


def test_signature_that_is_a_fifo_is_refused(tmp_path, deadline):
    key = ("k1", b"k-" * 16)
    write_bundle(tmp_path / "s", _manifest(), {"model.onnx": b"x"}, sign_with=key)
    signature = tmp_path / "s" / SIGNATURE_NAME
    _swap(signature, "fifo", tmp_path)
    with pytest.raises(BundleError, match=r"manifest\.sig\.json: .*FIFO"):
        deadline(5, load_bundle, tmp_path / "s", key=key, fifos=[signature])


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        ("k", "1 bytes of key material"),  # issue 15: a 1-byte bundle key was accepted
        (" " * 40, "whitespace"),
        ("ab" * 20, "20 bytes of key material"),  # 40 hex digits hold 20 bytes
    ],
)
def test_weak_bundle_keys_are_refused(tmp_path, monkeypatch, key, needle):
    good = ("line-3", b"line-3-bundle-key-0123456789-ghijklmnop")
    write_bundle(tmp_path / "s", _manifest(), {"model.onnx": b"x"}, sign_with=good)
    with pytest.raises(BundleError, match=rf"bundle key .*{needle}"):
        write_bundle(
            tmp_path / "w", _manifest(), {"model.onnx": b"x"}, sign_with=("k", key.encode())
        )
    with pytest.raises(BundleError, match=needle):
        load_bundle(tmp_path / "s", key=("line-3", key.encode()))
    monkeypatch.setenv("AUTOWELD_BUNDLE_KEY", key)
    with pytest.raises(BundleError, match=rf"AUTOWELD_BUNDLE_KEY .*{needle}"):
        load_bundle(tmp_path / "s")
