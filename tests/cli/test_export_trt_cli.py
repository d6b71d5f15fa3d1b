"""autoweld-export --trt: argument rules, and the clear error where TensorRT is not installed."""

import importlib.util
import sys
from pathlib import Path

import pytest

from autoweld.cli.export import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from tinybundle import write_tiny_bundle  # noqa: E402


def test_bundle_needs_trt_and_excludes_category(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--bundle", str(tmp_path)])
    assert stop.value.code == 2
    assert "--bundle is only used with --trt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--trt", "--bundle", str(tmp_path), "--category", "weld"])
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--fp16", "--category", "weld"])
    assert "--fp16 is only used with --trt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    assert "--category is required" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_trt_without_tensorrt_says_what_is_needed(tmp_path, capsys):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    before = (bundle / "manifest.json").read_bytes()
    assert main(["--trt", "--fp16", "--bundle", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "needs the tensorrt package and an NVIDIA GPU" in err
    assert "pip install '.[gpu]'" in err
    assert (bundle / "manifest.json").read_bytes() == before  # bundle untouched
