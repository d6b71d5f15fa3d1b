"""Engine selection without a GPU: the decision function on manifests and environments, and the
fallback from a plan built for another GPU to the ONNX graph (a real bundle, a real ORT run)."""

import numpy as np
import pytest
from tinybundle import SIZE

from autoweld.bundle import load_bundle, sha256_file
from autoweld.export.tensorrt import PLAN_NAME, attach_plan
from autoweld.runtime.engines import (
    EngineEnvironment,
    GpuInfo,
    OnnxRunner,
    available_engines,
    check_plan,
    choose_engine,
    open_engine,
)

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
A100 = GpuInfo("NVIDIA A100-SXM4-40GB", "8.0")
CPU_ONLY = EngineEnvironment(ort_providers=("CPUExecutionProvider",))
FULL = EngineEnvironment(
    ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    gpu=H100,
    tensorrt_version="10.3.0",
)


def plan_entry(gpu: GpuInfo = H100, version: str = "10.3.0") -> dict:
    return {
        "plan": PLAN_NAME,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "tensorrt_version": version,
        "fp16": False,
    }


def manifest_with(plan: dict | None) -> dict:
    engine = {"onnx": "model.onnx"}
    if plan is not None:
        engine["tensorrt"] = plan
    return {"engine": engine}


def test_available_engines_follow_the_environment():
    assert available_engines(CPU_ONLY) == ["cpu"]
    assert available_engines(FULL) == ["tensorrt", "cuda", "cpu"]
    no_trt = EngineEnvironment(FULL.ort_providers, gpu=H100, tensorrt_version=None)
    assert available_engines(no_trt) == ["cuda", "cpu"]


def test_unknown_engine_lists_available_ones():
    with pytest.raises(ValueError, match=r"'warp-drive' is unknown; available: best, cpu$"):
        choose_engine(["warp-drive"], manifest_with(None), CPU_ONLY)
    with pytest.raises(ValueError, match="available: best, tensorrt, cuda, cpu"):
        choose_engine("nope", manifest_with(None), FULL)
    with pytest.raises(ValueError, match="at least one"):
        choose_engine([], manifest_with(None), FULL)


def test_best_picks_tensorrt_then_cuda_then_cpu():
    ok = choose_engine("best", manifest_with(plan_entry()), FULL)
    assert ok.engine == "tensorrt" and ok.plan == PLAN_NAME and not ok.warnings
    # no plan in the bundle: ORT with CUDA first, CPU as ORT's own fallback
    onnx = choose_engine("best", manifest_with(None), FULL)
    assert onnx.engine == "onnx"
    assert onnx.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    cpu = choose_engine(("best",), manifest_with(plan_entry()), CPU_ONLY)
    assert cpu.engine == "onnx" and cpu.providers == ("CPUExecutionProvider",)


def test_plan_for_another_gpu_falls_back_with_reason():
    choice = choose_engine(["tensorrt", "cuda"], manifest_with(plan_entry(A100)), FULL)
    assert choice.engine == "onnx"
    assert choice.providers == ("CUDAExecutionProvider",)
    assert len(choice.warnings) == 1
    assert "compute capability 8.0" in choice.warnings[0]
    assert "running the ONNX graph instead" in choice.warnings[0]
    # nothing after "tensorrt": the available ORT engines are used
    alone = choose_engine(["trt"], manifest_with(plan_entry(A100)), FULL)
    assert alone.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_check_plan_names_what_differs():
    assert check_plan(plan_entry(), FULL).usable
    assert "no TensorRT plan" in check_plan(None, FULL).reason
    other_version = check_plan(plan_entry(version="10.0.1"), FULL)
    assert not other_version.usable and "TensorRT 10.0.1" in other_version.reason
    same_sm = GpuInfo("NVIDIA H100 PCIe", "9.0")
    other_model = check_plan(plan_entry(same_sm), FULL)
    assert not other_model.usable and "NVIDIA H100 PCIe" in other_model.reason
    no_lib = EngineEnvironment(FULL.ort_providers, gpu=H100, tensorrt_version=None)
    assert "not installed" in check_plan(plan_entry(), no_lib).reason
    no_gpu = EngineEnvironment(FULL.ort_providers, gpu=None, tensorrt_version="10.3.0")
    assert "no CUDA GPU" in check_plan(plan_entry(), no_gpu).reason
    incomplete = plan_entry()
    del incomplete["compute_capability"]
    assert "lacks 'compute_capability'" in check_plan(incomplete, FULL).reason


def test_requested_cuda_that_is_missing_is_an_error():
    with pytest.raises(ValueError, match="'cuda' is not available in this onnxruntime"):
        choose_engine(["cuda"], manifest_with(None), CPU_ONLY)


def test_attach_plan_rewrites_bundle_with_hashes(tiny_bundle):
    before = load_bundle(tiny_bundle)
    onnx_name = before.manifest.engine.onnx
    onnx_hash = before.manifest.files[onnx_name].sha256
    bundle = attach_plan(tiny_bundle, b"plan bytes v1", plan_entry(A100))
    assert bundle.manifest.engine.tensorrt.gpu == A100.name
    assert bundle.manifest.files[PLAN_NAME].sha256 == sha256_file(tiny_bundle / PLAN_NAME)
    assert bundle.manifest.files[onnx_name].sha256 == onnx_hash
    assert bundle.sha256 != before.sha256
    again = attach_plan(tiny_bundle, b"plan bytes v2", plan_entry(H100))
    assert (tiny_bundle / PLAN_NAME).read_bytes() == b"plan bytes v2"
    assert again.manifest.engine.tensorrt.gpu == H100.name
    load_bundle(tiny_bundle)  # every hash still checks out
    with pytest.raises(ValueError, match="entry"):
        attach_plan(tiny_bundle, b"x", {**plan_entry(), "plan": "other.plan"})
    with pytest.raises(ValueError, match="empty"):
        attach_plan(tiny_bundle, b"", plan_entry())


def test_open_engine_refuses_foreign_plan_and_runs_onnx(tiny_bundle):
    attach_plan(tiny_bundle, b"a plan from an A100", plan_entry(A100))
    bundle = load_bundle(tiny_bundle)
    env = EngineEnvironment(("CPUExecutionProvider",), gpu=H100, tensorrt_version="10.3.0")
    with pytest.warns(RuntimeWarning, match="built for compute capability 8.0"):
        runner = open_engine(bundle, providers=["tensorrt", "cpu"], threads=1, environment=env)
    with runner:
        assert isinstance(runner, OnnxRunner)
        assert runner.active_providers == ["CPUExecutionProvider"]
        x = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
        assert "patchcore_embeddings" in runner.infer(x)


def test_open_engine_best_without_plan_is_quiet(tiny_bundle, recwarn):
    bundle = load_bundle(tiny_bundle)
    with open_engine(bundle, providers="best", threads=1, environment=CPU_ONLY) as runner:
        assert isinstance(runner, OnnxRunner)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
