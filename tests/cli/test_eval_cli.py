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


def test_require_signed_refuses_an_unsigned_bundle(tiny_bundle, tmp_path, capsys, monkeypatch):
    """issue 15: --require-signed (or AUTOWELD_REQUIRE_SIGNED=1) refuses a bundle without a
    valid signature: exit 2, saying why, before any image is inspected."""
    monkeypatch.delenv("AUTOWELD_BUNDLE_KEY", raising=False)
    monkeypatch.delenv("AUTOWELD_REQUIRE_SIGNED", raising=False)
    data_root = write_dataset(tmp_path / "data")
    base = ["--bundle", str(tiny_bundle), "--data-root", str(data_root), "--limit", "2"]
    assert main([*base, "--require-signed"]) == 2
    err = capsys.readouterr().err
    assert "signed bundles are required" in err and "AUTOWELD_BUNDLE_KEY" in err
    monkeypatch.setenv("AUTOWELD_REQUIRE_SIGNED", "1")
    assert main(base) == 2
    monkeypatch.setenv("AUTOWELD_REQUIRE_SIGNED", "0")
    assert main(base) == 0
