"""TensorRT: build a plan for the tiny bundle on this GPU and run it against ONNX Runtime.
Needs the real tensorrt package (no mocks): skipped with the reason where it is absent."""

import numpy as np
import pytest
from tinybundle import SIZE, write_tiny_bundle

from autoweld.bundle import load_bundle
from autoweld.export.tensorrt import TrtBuildOptions, build_tensorrt_plan
from autoweld.runtime.engines import OnnxRunner, TensorRTRunner, open_engine

pytestmark = pytest.mark.gpu


@pytest.mark.slow
def test_build_plan_and_run_it(tensorrt, cupy, tmp_path):
    bundle_dir = write_tiny_bundle(tmp_path / "bundle")
    result = build_tensorrt_plan(bundle_dir, TrtBuildOptions(max_batch=4))
    entry = result.entry
    assert entry["tensorrt_version"] == tensorrt.__version__
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.engine.tensorrt.plan == "model.plan"
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    with open_engine(bundle, providers=["tensorrt"]) as runner:
        assert isinstance(runner, TensorRTRunner)
        got = runner.infer(x)
    with OnnxRunner(bundle.onnx_path) as onnx:
        want = onnx.infer(x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-4)
