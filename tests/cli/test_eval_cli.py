import json

from evaldata import write_dataset

from autoweld.cli.eval import main


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
