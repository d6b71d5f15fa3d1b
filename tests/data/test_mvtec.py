"""The MVTec AD reader: layout, file formats, errors, and the train split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from autoweld.data import Sample, load_category, read_mvtec, split_train


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix.lower(), image)
    assert ok
    path.write_bytes(data.tobytes())


def _colour(h: int = 40, w: int = 48, value: int = 100) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h: int = 40, w: int = 48) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[10:20, 5:15] = 255
    return mask


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small category in the MVTec AD layout with assorted formats and some clutter."""
    root = tmp_path / "widget"
    _write(root / "train/good/002.png", _colour(value=2))
    _write(root / "train/good/000.PNG", _colour(value=0))
    _write(root / "train/good/001.jpg", _colour(value=1))
    gray = np.full((40, 48), 77, np.uint8)
    _write(root / "train/good/003.bmp", gray)  # single-channel file
    _write(root / "train/good/004.TIFF", _colour(value=4))
    (root / "train/good/notes.txt").write_text("not an image")
    (root / "train/good/.DS_Store").write_bytes(b"\0\1")
    _write(root / "test/good/000.jpeg", _colour(value=5))
    _write(root / "test/good/001.png", np.full((40, 48), 0x1234, np.uint16))  # 16-bit gray
    rgba = np.dstack([_colour(value=9), np.full((40, 48), 128, np.uint8)])
    _write(root / "test/good/002.png", rgba)
    _write(root / "test/scratch/000.png", _colour(value=6))
    _write(root / "test/scratch/001.JPG", _colour(value=7))
    _write(root / "ground_truth/scratch/000_mask.png", _mask())
    _write(root / "ground_truth/scratch/001_mask.png", _mask())
    _write(root / "test/dent/000.png", _colour(value=8))
    _write(root / "ground_truth/dent/000_mask.png", _mask())
    return root


def test_reads_layout_formats_and_order(tree: Path) -> None:
    category = load_category("widget", tree.parent)
    assert category.name == "widget" and category.root == tree
    assert [s.path.name for s in category.train] == [
        "000.PNG",
        "001.jpg",
        "002.png",
        "003.bmp",
        "004.TIFF",
    ]
    assert all(
        s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in category.train
    )
    assert [(s.defect_type, s.path.name, s.label) for s in category.test] == [
        ("good", "000.jpeg", 0),
        ("good", "001.png", 0),
        ("good", "002.png", 0),
        ("dent", "000.png", 1),
        ("scratch", "000.png", 1),
        ("scratch", "001.JPG", 1),
    ]
    assert category.defect_types == ["dent", "scratch"]
    for sample in category.train + category.test:
        image = sample.load_image()
        assert image.dtype == np.uint8 and image.shape == (40, 48, 3)
        mask = sample.load_mask()
        assert mask.dtype == bool and mask.shape == (40, 48)
        assert mask.any() == (sample.label == 1)
    # The gray file comes back as three equal channels with its value.
    gray = category.train[3].load_image()
    assert (gray == 77).all()
    # PNG round trip is exact, so the reader returns the pixels that were written.
    np.testing.assert_array_equal(category.train[2].load_image(), _colour(value=2))
    # 16-bit files are scaled to 8 bits; the alpha channel is dropped.
    assert (category.test[1].load_image() == 0x12).all()
    np.testing.assert_array_equal(category.test[2].load_image(), _colour(value=9))
    scratch = category.test[4].load_mask()
    assert scratch.sum() == 100 and scratch[10:20, 5:15].all()


def test_mask_named_like_its_image_is_accepted(tree: Path) -> None:
    (tree / "ground_truth/dent/000_mask.png").rename(tree / "ground_truth/dent/000.png")
    category = read_mvtec(tree)
    dent = [s for s in category.test if s.defect_type == "dent"][0]
    assert dent.mask_path == tree / "ground_truth/dent/000.png"


def test_missing_category_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        load_category("nothing", tmp_path)


def test_missing_train_good(tree: Path) -> None:
    for p in (tree / "train/good").iterdir():
        p.unlink()
    (tree / "train/good").rmdir()
    with pytest.raises(FileNotFoundError, match="train/good"):
        read_mvtec(tree)


def test_empty_train_good(tree: Path) -> None:
    for p in (tree / "train/good").iterdir():
        if p.suffix.lower() != ".txt":
            p.unlink()
    with pytest.raises(ValueError, match="holds no images"):
        read_mvtec(tree)


def test_missing_test_folder(tree: Path) -> None:
    import shutil

    shutil.rmtree(tree / "test")
    with pytest.raises(FileNotFoundError, match="test"):
        read_mvtec(tree)


def test_defect_image_without_mask(tree: Path) -> None:
    (tree / "ground_truth/scratch/001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="001_mask.png"):
        read_mvtec(tree)


def test_corrupt_image_is_a_clear_error(tree: Path) -> None:
    (tree / "train/good/000.PNG").write_bytes(b"garbage, not a png")
    category = read_mvtec(tree)
    with pytest.raises(ValueError, match="000.PNG"):
        category.train[0].load_image()


def test_mask_of_wrong_size_is_a_clear_error(tree: Path) -> None:
    _write(tree / "ground_truth/dent/000_mask.png", np.zeros((10, 10), np.uint8))
    dent = [s for s in read_mvtec(tree).test if s.defect_type == "dent"][0]
    with pytest.raises(ValueError, match="10x10"):
        dent.load_mask()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc", 3])
def test_bad_category_names(tmp_path: Path, name) -> None:
    with pytest.raises(ValueError, match="name"):
        load_category(name, tmp_path)


def test_sample_label_must_fit_defect_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label"):
        Sample(tmp_path / "a.png", 1, "good", None)
    with pytest.raises(ValueError, match="label"):
        Sample(tmp_path / "a.png", 2, "crack", None)


def _goods(tmp_path: Path, n: int) -> list[Sample]:
    return [Sample(tmp_path / f"{i:03d}.png", 0, "good", None) for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    samples = _goods(tmp_path, 30)
    fit, val = split_train(samples, 0.2, seed=3)
    assert len(val) == 6 and len(fit) == 24
    assert {s.path for s in fit}.isdisjoint({s.path for s in val})
    assert {s.path for s in fit} | {s.path for s in val} == {s.path for s in samples}
    # Same seed, shuffled input: same split.
    shuffled = list(reversed(samples))
    assert split_train(shuffled, 0.2, seed=3) == (fit, val)
    # Another seed picks another validation set.
    assert split_train(samples, 0.2, seed=4)[1] != val
    assert split_train(samples, 0.0, seed=3) == (samples, [])


def test_split_keeps_both_parts_non_empty(tmp_path: Path) -> None:
    fit, val = split_train(_goods(tmp_path, 2), 0.01, seed=0)
    assert len(fit) == 1 and len(val) == 1
    fit, val = split_train(_goods(tmp_path, 3), 0.99, seed=0)
    assert len(fit) == 1 and len(val) == 2


def test_split_rejects_bad_arguments(tmp_path: Path) -> None:
    goods = _goods(tmp_path, 5)
    for bad in (-0.1, 1.0, 1.5, float("nan"), "0.2", True):
        with pytest.raises(ValueError, match="val_fraction"):
            split_train(goods, bad, seed=0)
    with pytest.raises(ValueError, match="seed"):
        split_train(goods, 0.2, seed=-1)
    with pytest.raises(ValueError, match="defective"):
        split_train(goods + [Sample(tmp_path / "x.png", 1, "crack", tmp_path / "m.png")], 0.2)
    with pytest.raises(ValueError, match="more than once"):
        split_train(goods + goods[:1], 0.2)
    with pytest.raises(ValueError, match="at least 2"):
        split_train(goods[:1], 0.2)


def test_data_package_never_imports_torch() -> None:
    """autoweld-eval reads datasets on stations that have no torch."""
    code = (
        "import sys, pkgutil, importlib\n"
        "import autoweld.data as pkg\n"
        "for info in pkgutil.walk_packages(pkg.__path__, 'autoweld.data.'):\n"
        "    importlib.import_module(info.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'scipy', 'skimage')]\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
