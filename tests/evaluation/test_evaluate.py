import pytest
from evaldata import write_dataset

from autoweld.evaluation import evaluate, format_table, spread_samples


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


def test_spread_keeps_every_type():
    class S:
        def __init__(self, defect):
            self.defect_type = defect

    samples = [S("good")] * 5 + [S("a")] * 3 + [S("b")] * 1
    samples = [S(s.defect_type) for s in samples]
    picked = spread_samples(samples, 5)
    assert sorted(s.defect_type for s in picked) == ["a", "a", "b", "good", "good"]
    assert spread_samples(samples, 100) == samples


def test_report_says_which_head_the_fusion_relies_on(tiny_bundle, tmp_path):
    from autoweld.bundle import load_bundle

    data_root = write_dataset(tmp_path / "data")
    report = evaluate(tiny_bundle, data_root, threads=1, batch_size=5, progress=False)
    weights = load_bundle(tiny_bundle).fusion_weights
    fusion = report["fusion"]
    assert fusion["weights"] == pytest.approx(weights)
    assert fusion["relies_on"] == max(weights, key=weights.get)
    aurocs = {n: m["image_auroc"] for n, m in report["models"].items()}
    assert fusion["best_single_head"] == max(aurocs, key=aurocs.get)
    best = aurocs[fusion["best_single_head"]]
    gain = fusion["fused_minus_best_head_image_auroc"]
    assert gain == pytest.approx(report["fused"]["image_auroc"] - best)
    assert f"relies on {fusion['relies_on']}" in format_table(report)
