import json

import cv2
import numpy as np
from tinybundle import normal_image

from autoweld.cli.eval import _spread, evaluate, format_table, main


def write_dataset(root, n_good=6, per_defect=4):
    """A tiny MVTec-layout category 'unit' (the tiny bundle's category) with two defect types:
    'square' (a red square, found by both heads) and 'dot' (a small dark dot)."""
    base = root / "unit"
    for i in range(3):
        (base / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(base / "train" / "good" / f"{i:03d}.png"), normal_image(100 + i))
    (base / "test" / "good").mkdir(parents=True)
    for i in range(n_good):
        cv2.imwrite(str(base / "test" / "good" / f"{i:03d}.png"), normal_image(200 + i))
    rng = np.random.default_rng(0)
    for defect in ("square", "dot"):
        (base / "test" / defect).mkdir(parents=True)
        (base / "ground_truth" / defect).mkdir(parents=True)
        for i in range(per_defect):
            image = normal_image(300 + i)
            mask = np.zeros(image.shape[:2], np.uint8)
            y, x = (int(v) for v in rng.integers(4, 30, 2))
            if defect == "square":
                image[y : y + 12, x : x + 12] = (250, 40, 40)
                mask[y : y + 12, x : x + 12] = 255
            else:
                cv2.circle(image, (x + 6, y + 6), 3, (20, 20, 20), -1)
                cv2.circle(mask, (x + 6, y + 6), 3, 255, -1)
            cv2.imwrite(str(base / "test" / defect / f"{i:03d}.png"), image)
            cv2.imwrite(str(base / "ground_truth" / defect / f"{i:03d}_mask.png"), mask)
    return root


def test_evaluate_reports_every_metric(tiny_bundle, tmp_path):
    data_root = write_dataset(tmp_path / "data")
    report = evaluate(tiny_bundle, data_root, threads=1, batch_size=5, progress=False)
    assert report["n_images"] == 14 and report["failed"] == []
    assert set(report["models"]) == {"patchcore", "feature_ae"}
    assert set(report["per_defect"]) == {"square", "dot"}
    for metrics in [report["fused"], *report["models"].values(), *report["per_defect"].values()]:
        assert set(metrics) == {"image_auroc", "pixel_auroc", "aupro", "n_images"}
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= metrics[key] <= 1.0
    # a saturated red square is unmistakable for the patch-distance head
    square = report["per_defect"]["square"]
    assert square["image_auroc"] == 1.0 and square["pixel_auroc"] > 0.9
    assert square["n_images"] == 6 + 4
    assert report["models"]["patchcore"]["image_auroc"] > 0.9
    table = format_table(report)
    assert "per defect type" in table and "square" in table and "patchcore" in table


def test_cli_writes_json_and_limit_spreads_over_types(tiny_bundle, tmp_path, capsys):
    data_root = write_dataset(tmp_path / "data")
    out = tmp_path / "eval.json"
    status = main(
        [
            "--bundle",
            str(tiny_bundle),
            "--data-root",
            str(data_root),
            "--json",
            str(out),
            "--limit",
            "6",
            "--threads",
            "1",
        ]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"fused", "models", "per_defect"}
    assert report["n_images"] == 6
    # 6 images round-robin over good, dot, square -> 2 each, so every metric stays defined
    assert report["per_defect"]["dot"]["n_images"] == 4
    assert "image AUROC" in capsys.readouterr().out


def test_usage_errors(tiny_bundle, tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "none")]) == 2
    assert "no bundle directory" in capsys.readouterr().err
    assert main(["--bundle", str(tiny_bundle), "--limit", "1"]) == 2


def test_spread_keeps_every_type():
    class S:
        def __init__(self, defect):
            self.defect_type = defect

    samples = [S("good")] * 5 + [S("a")] * 3 + [S("b")] * 1
    samples = [S(s.defect_type) for s in samples]
    picked = _spread(samples, 5)
    assert sorted(s.defect_type for s in picked) == ["a", "a", "b", "good", "good"]
    assert _spread(samples, 100) == samples
