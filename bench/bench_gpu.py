"""GPU benchmark (issue 8): our CUDA kNN + scoring against torch on the same GPU, and the
end-to-end pipeline at batch 1. Needs an NVIDIA GPU, torch with CUDA, and autoweld built with
``AUTOWELD_CUDA=ON``; it refuses to run otherwise (it never reports CPU numbers as GPU ones).

    python bench/bench_gpu.py --bundle bundles/weld [--reference bundles/weld.reference.pt]
        [--iters 300] [--warmup 30] [--out bench/results]

Writes ``gpu_<engine>_<gpu>.json`` (and a short ``.md``) under ``--out``:
- ``knn_scoring``: engine outputs already on the device -> image scores, probabilities, fused
  probability and fused anomaly map. ``ours`` = ``native.GpuScorer``; ``torch`` = the torch
  reference's functions (``cdist`` + ``topk``, re-weighting, ``interpolate`` + Gaussian, sigmoid)
  on CUDA tensors; ``faiss_gpu`` = faiss ``GpuIndexFlatL2`` k=1 search only, where faiss has GPU
  support. ``speedup_vs_torch`` = torch median / ours median (goal >= 3).
- ``end_to_end`` (batch 1, decoded uint8 image in memory -> decision + fused map on the device):
  ``native.preprocess`` -> engine -> ``GpuScorer``. The engine is the bundle's TensorRT plan if it
  runs here, else ONNX Runtime CUDA, else the bundle's torch graph on CUDA, which is labelled a
  stand-in in ``engine``. ``reference`` = the same image the torch way on the same GPU. Goal:
  ``end_to_end.p99_ms`` <= 5 ms with WideResNet-50-2 at 256 px.

Timings are wall-clock per call with the device synchronised at the end of each call (a station
waits for its decision), after ``--warmup`` calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autoweld import native
from autoweld.bundle import load_bundle


def percentiles(times_s: list[float]) -> dict[str, float]:
    ms = np.array(times_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
    }


def timed(fn: Callable[[], object], sync: Callable[[], None], iters: int, warmup: int) -> list:
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def gpu_specs(bundle: Any, torch: Any) -> list[native.GpuHeadSpec]:
    specs = []
    weights = bundle.fusion_weights
    for name, head in bundle.heads.items():
        bank = neighbours = None
        if head.kind == "knn":
            bank = np.ascontiguousarray(bundle.load_array(head.memory_bank), np.float32)
            neighbours = np.ascontiguousarray(bundle.load_array(head.bank_neighbours), np.int64)
        specs.append(
            native.GpuHeadSpec(
                name,
                head.kind,
                head.feature_map,
                head.platt_a,
                head.platt_b,
                float(weights.get(name, 0.0)),
                bank,
                neighbours,
            )
        )
    return specs


def torch_scoring(specs: list[native.GpuHeadSpec], size: int, sigma: float, torch: Any):
    """The torch way on CUDA, with the reference's own functions."""
    from autoweld.train.reference import anomaly_maps, patchcore_scores

    banks = {
        s.name: (torch.from_numpy(s.bank).cuda(), torch.from_numpy(s.bank_neighbours).cuda())
        for s in specs
        if s.kind == "knn"
    }

    def run(outputs: dict[str, Any]) -> tuple[Any, Any]:
        n = next(iter(outputs.values())).shape[0]
        fused = torch.zeros(n, dtype=torch.float64, device="cuda")
        fused_map = torch.zeros((n, size, size), dtype=torch.float64, device="cuda")
        for s in specs:
            out = outputs[s.name]
            h, w = s.feature_map
            if s.kind == "knn":
                bank, nbrs = banks[s.name]
                per_image = [patchcore_scores(e, bank, nbrs) for e in out]
                maps = torch.stack([p for p, _ in per_image]).view(-1, h, w)
                scores = torch.stack([v for _, v in per_image])
            else:
                maps, scores = out, out.flatten(1).amax(dim=1)
            full = anomaly_maps(maps, size, sigma)
            fused += s.weight * torch.sigmoid(-(s.platt_a * scores.double() + s.platt_b))
            fused_map += s.weight * torch.sigmoid(-(s.platt_a * full.double() + s.platt_b))
        return fused.cpu(), fused_map

    return run


def faiss_gpu_search(specs, outputs, torch, iters, warmup):
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss is not installed"}
    if not hasattr(faiss, "StandardGpuResources"):
        return {"skipped": "faiss has no GPU support here (faiss-cpu)"}
    knn = [s for s in specs if s.kind == "knn"]
    if not knn:
        return {"skipped": "no knn head"}
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatL2(res, knn[0].bank.shape[1])
    index.add(knn[0].bank)
    queries = outputs[knn[0].name][0].cpu().numpy()
    times = timed(lambda: index.search(queries, 1), lambda: None, iters, warmup)
    return {"what": "GpuIndexFlatL2 k=1, host queries (kNN only)", **percentiles(times)}


def to_torch(value: Any, torch: Any) -> Any:
    """A CUDA torch tensor of an engine output (zero-copy where the protocol allows)."""
    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "__cuda_array_interface__"):  # CuPy (TensorRT runner)
        return torch.as_tensor(value, device="cuda")
    return torch.from_numpy(value.numpy()).cuda()  # OrtValue: one copy, outside the timing


def make_engine(
    bundle: Any, reference: Any, torch: Any
) -> tuple[str, Callable[[np.ndarray], dict]]:
    """(label, run(batch float32 host) -> {head name: device array}) for the best engine here."""
    from autoweld.runtime.engines import (
        TensorRTRunner,
        check_plan,
        current_environment,
    )

    env = current_environment()
    heads = bundle.heads
    plan = bundle.manifest.engine.tensorrt
    if plan is not None and check_plan(plan.to_json(), env).usable:
        runner = TensorRTRunner(bundle.path(plan.plan))
        import cupy

        def run_trt(batch: np.ndarray) -> dict:
            out = runner.infer_device({runner.input_names[0]: cupy.asarray(batch)})
            runner.stream.synchronize()
            return {name: out[h.output] for name, h in heads.items()}

        return f"tensorrt {env.tensorrt_version} (plan fp16={plan.get('fp16')})", run_trt
    if "CUDAExecutionProvider" in env.ort_providers:
        import onnxruntime as ort

        session = ort.InferenceSession(str(bundle.onnx_path), providers=["CUDAExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run_ort(batch: np.ndarray) -> dict:
            binding = session.io_binding()
            binding.bind_cpu_input(input_name, batch)
            for h in heads.values():
                binding.bind_output(h.output, "cuda")
            session.run_with_iobinding(binding)
            values = dict(
                zip([h.output for h in heads.values()], binding.get_outputs(), strict=True)
            )
            return {name: values[h.output] for name, h in heads.items()}

        return f"onnxruntime-gpu {ort.__version__} CUDAExecutionProvider", run_ort
    if reference is None:
        raise SystemExit("no GPU engine: no usable plan, no onnxruntime-gpu and no --reference")
    graph = reference.graph.cuda().eval()
    torch.backends.cudnn.benchmark = True

    def run_torch(batch: np.ndarray) -> dict:
        with torch.inference_mode():
            out = graph.run(torch.from_numpy(batch).cuda(non_blocking=True))
        return {name: out[name].float().contiguous() for name in heads}

    return (
        f"STAND-IN: torch {torch.__version__} eager CUDA graph (no TensorRT / onnxruntime-gpu "
        "usable on this machine)",
        run_torch,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--reference", help="the *.reference.pt export wrote beside the bundle")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    import torch  # the bench compares against torch; the runtime never imports it

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: torch sees no CUDA GPU; this benchmark only runs on one")
    if not native.cuda_available():
        raise SystemExit(
            "bench_gpu: autoweld was built without CUDA (AUTOWELD_CUDA=ON pip install)"
        )
    bundle = load_bundle(args.bundle)
    size = bundle.preprocess.size
    sigma = bundle.map_sigma
    reference = None
    ref_path = Path(args.reference) if args.reference else Path(f"{bundle.root}.reference.pt")
    if ref_path.is_file():
        from autoweld.train.reference import load_reference

        reference = load_reference(ref_path, bundle.root)

    specs = gpu_specs(bundle, torch)
    scorer = native.GpuScorer(specs, out_size=size, sigma=sigma)
    torch_way = torch_scoring(specs, size, sigma, torch)
    sync = torch.cuda.synchronize

    # Engine outputs for one image, on the device (from the real graph when we have it).
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    batch = native.preprocess(image, size, **bundle.preprocess.as_kwargs())[None]
    label, engine = make_engine(bundle, reference, torch)
    device_out = engine(batch)
    outputs = {k: to_torch(v, torch) for k, v in device_out.items()}
    fused_map = torch.empty((1, size, size), dtype=torch.float32, device="cuda")

    ours_t = timed(
        lambda: scorer.score(outputs, 1, fused_map=fused_map), sync, args.iters, args.warmup
    )
    torch_t = timed(lambda: torch_way(outputs), sync, args.iters, args.warmup)
    knn = {
        "ours": percentiles(ours_t),
        "torch": percentiles(torch_t),
        "faiss_gpu": faiss_gpu_search(specs, outputs, torch, args.iters, args.warmup),
    }
    knn["speedup_vs_torch"] = knn["torch"]["p50_ms"] / knn["ours"]["p50_ms"]
    # both ways agree (else the comparison means nothing)
    ours_fused = scorer.score(outputs, 1).fused
    theirs_fused, _ = torch_way(outputs)
    knn["max_abs_diff_fused"] = float(np.abs(ours_fused - theirs_fused.numpy()).max())

    stage: dict[str, list[float]] = {"preprocess": [], "engine": [], "scoring": []}
    end_to_end: list[float] = []

    def pipeline() -> None:
        t0 = time.perf_counter()
        x = native.preprocess(image, size, **bundle.preprocess.as_kwargs())[None]
        t1 = time.perf_counter()
        out = engine(x)
        sync()
        t2 = time.perf_counter()
        result = scorer.score(out, 1, fused_map=fused_map)
        sync()
        t3 = time.perf_counter()
        _ = result.fused[0] >= bundle.threshold
        stage["preprocess"].append(t1 - t0)
        stage["engine"].append(t2 - t1)
        stage["scoring"].append(t3 - t2)
        end_to_end.append(t3 - t0)

    for _ in range(args.warmup):
        pipeline()
    for v in stage.values():
        v.clear()
    end_to_end.clear()
    for _ in range(args.iters):
        pipeline()

    report: dict[str, Any] = {
        "machine": {
            "gpu": torch.cuda.get_device_name(0),
            "autoweld_gpu": native.cuda_device_name(0),
            "cuda_torch": torch.version.cuda,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "engine": label,
        "bundle": {
            "root": str(bundle.root),
            "sha256": bundle.sha256,
            "size": size,
            "heads": {s.name: s.kind for s in specs},
            "backbone": bundle.manifest.backbone.to_json() if bundle.manifest.backbone else None,
        },
        "knn_scoring": knn,
        "stages": {k: percentiles(v) for k, v in stage.items()},
        "end_to_end": percentiles(end_to_end),
    }
    if reference is not None:
        graph = reference.graph.cuda().eval()

        def torch_pipeline() -> None:
            x = native.preprocess(image, size, **bundle.preprocess.as_kwargs())[None]
            with torch.inference_mode():
                out = graph.run(torch.from_numpy(x).cuda())
                torch_way({name: out[name].float() for name in bundle.heads})

        ref_t = timed(torch_pipeline, sync, args.iters, args.warmup)
        report["reference"] = {
            "what": "torch eager graph + torch scoring on the same GPU",
            "end_to_end": percentiles(ref_t),
        }
        report["speedup_median"] = (
            report["reference"]["end_to_end"]["p50_ms"] / report["end_to_end"]["p50_ms"]
        )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_tag = label.split()[0].lower().replace(":", "")
    gpu_tag = "".join(c if c.isalnum() else "_" for c in torch.cuda.get_device_name(0)).lower()
    path = out_dir / f"gpu_{engine_tag}_{gpu_tag}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    md = [
        f"# GPU bench on {report['machine']['gpu']} ({label})",
        "",
        f"- kNN + scoring: ours p50 {knn['ours']['p50_ms']:.3f} ms, torch p50 "
        f"{knn['torch']['p50_ms']:.3f} ms -> {knn['speedup_vs_torch']:.2f}x (goal >= 3x)",
        f"- end to end batch 1: p50 {report['end_to_end']['p50_ms']:.3f} ms, p99 "
        f"{report['end_to_end']['p99_ms']:.3f} ms (goal p99 <= 5 ms)",
    ]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
