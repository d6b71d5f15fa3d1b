"""The built-in weld category: layout, determinism, stamp handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from autoweld.data import WELD_DEFECT_TYPES, WeldParams, generate_weld, load_category
from autoweld.data.weld import STAMP_NAME

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_per_defect": 2, "image_size": 128}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STAMP_NAME
    }


def test_layout_masks_and_stamp(tmp_path: Path) -> None:
    params = WeldParams(**SMALL)
    category = load_category("weld", tmp_path, seed=5, weld_params=params)
    assert category.root == tmp_path / "weld"
    assert len(category.train) == 3
    assert category.defect_types == sorted(WELD_DEFECT_TYPES)
    assert sum(s.label == 0 for s in category.test) == 2
    for kind in WELD_DEFECT_TYPES:
        samples = [s for s in category.test if s.defect_type == kind]
        assert len(samples) == 2
        for sample in samples:
            assert sample.mask_path == tmp_path / "weld/ground_truth" / kind / (
                sample.path.stem + "_mask.png"
            )
            image, mask = sample.load_image(), sample.load_mask()
            assert image.shape == (128, 128, 3) and mask.shape == (128, 128)
            assert 4 <= mask.sum() < 0.25 * mask.size, (kind, int(mask.sum()))
    for sample in category.train:
        assert sample.load_image().shape == (128, 128, 3)
    stamp = json.loads((tmp_path / "weld" / STAMP_NAME).read_text())
    assert stamp["seed"] == 5 and stamp["params"] == SMALL
    assert stamp["defect_types"] == list(WELD_DEFECT_TYPES)
    # No temporary folders are left beside the category.
    assert [p.name for p in tmp_path.iterdir()] == ["weld"]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = _files(generate_weld(tmp_path / "a", seed=0, progress=False, **SMALL))
    b = _files(generate_weld(tmp_path / "b", seed=0, progress=False, **SMALL))
    c = _files(generate_weld(tmp_path / "c", seed=1, progress=False, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if "/good/" in k or k.startswith("test/"))


def test_an_image_does_not_depend_on_the_others(tmp_path: Path) -> None:
    """Each image has its own random stream: asking for more images leaves the first alone."""
    small = _files(generate_weld(tmp_path / "a", seed=2, progress=False, **SMALL))
    more = dict(SMALL, n_train=5, n_test_good=3, n_test_per_defect=3)
    large = _files(generate_weld(tmp_path / "b", seed=2, progress=False, **more))
    assert small.keys() < large.keys()
    assert all(large[k] == v for k, v in small.items())


def test_images_vary_in_pose_and_lighting(tmp_path: Path) -> None:
    category = load_category("weld", tmp_path, weld_params=WeldParams(**SMALL))
    images = np.stack([s.load_image().astype(np.float32) for s in category.train])
    means = images.mean(axis=(1, 2, 3))
    assert means.std() > 0.5  # lighting differs
    assert np.abs(images[0] - images[1]).mean() > 10  # not the same picture twice
    # Heat tint: the image is colourful, not gray (channels differ somewhere noticeably).
    assert np.abs(images[..., 0] - images[..., 2]).mean() > 5


def test_regenerates_on_other_seed_or_stale_stamp(tmp_path: Path) -> None:
    params = WeldParams(**SMALL)
    first = _files(load_category("weld", tmp_path, seed=0, weld_params=params).root)
    other = _files(load_category("weld", tmp_path, seed=1, weld_params=params).root)
    assert first != other
    again = _files(load_category("weld", tmp_path, seed=0, weld_params=params).root)
    assert again == first
    # An older generator version in the stamp forces a rebuild (detected by a marker file).
    stamp_path = tmp_path / "weld" / STAMP_NAME
    stamp = json.loads(stamp_path.read_text())
    stamp["version"] -= 1
    stamp_path.write_text(json.dumps(stamp))
    (tmp_path / "weld" / "marker").write_text("x")
    load_category("weld", tmp_path, seed=0, weld_params=params)
    assert not (tmp_path / "weld" / "marker").exists()
    # A matching stamp is reused as it is.
    (tmp_path / "weld" / "marker").write_text("x")
    load_category("weld", tmp_path, seed=0, weld_params=params)
    assert (tmp_path / "weld" / "marker").exists()


def test_regenerates_when_files_went_missing(tmp_path: Path) -> None:
    params = WeldParams(**SMALL)
    category = load_category("weld", tmp_path, weld_params=params)
    category.train[0].path.unlink()
    assert len(load_category("weld", tmp_path, weld_params=params).train) == 3


def test_refuses_to_overwrite_a_foreign_weld_folder(tmp_path: Path) -> None:
    (tmp_path / "weld").mkdir()
    (tmp_path / "weld" / "precious.png").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not written by the weld generator"):
        load_category("weld", tmp_path, weld_params=WeldParams(**SMALL))
    assert (tmp_path / "weld" / "precious.png").read_bytes() == b"user data"


def test_default_root_comes_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOWELD_DATA", str(tmp_path / "cache"))
    category = load_category("weld", weld_params=WeldParams(**SMALL))
    assert category.root == tmp_path / "cache" / "weld"


@pytest.mark.parametrize(
    "field, value",
    [("n_train", 0), ("n_test_good", -1), ("image_size", 32), ("image_size", 128.0)],
)
def test_bad_parameters(tmp_path: Path, field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        generate_weld(tmp_path, **dict(SMALL, **{field: value}))


def test_bad_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_weld(tmp_path, seed=-3, **SMALL)


def test_two_processes_generating_at_once_both_succeed(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from autoweld.data import WeldParams, load_category\n"
        f"c = load_category('weld', sys.argv[1], weld_params=WeldParams(**{SMALL!r}))\n"
        "print(len(c.train), len(c.test))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["3 14", "3 14"]
    assert [p.name for p in tmp_path.iterdir()] == ["weld"]
