"""FP32 vs INT8 bundles of one category, side by side (issue 19; not run in CI).

``timing``: both bundles' Inspectors on the same test images, interleaved (the order alternates
image by image, so load on a shared machine hits both alike), decode -> decision from PNG bytes,
batch 1; prints engine-stage and end-to-end p50/p99 per bundle and the INT8/FP32 ratios, and
cold start (a new process loads the bundle and inspects one image: ``autoweld.bench.coldstart``)
and its peak RSS, interleaved too, median of ``--cold-repeats``.

``probe``: how each quantisation choice distorts the graph, measured on held-out *validation*
normals (never the test split): the FP32 bundle's graph is quantised with each calibration
method and FP32-kept node group (ranges from the fit images, as export does) and the patch
embeddings compared with FP32's (relative L2 error, median and p99 over patches).

    python bench/int8_compare.py timing --fp32 /tmp/int8-bundles/fp32/weld \\
        --int8 /tmp/int8-bundles/int8/weld --category weld --rounds 200
    python bench/int8_compare.py probe --fp32 /tmp/int8-bundles/fp32/weld --category weld
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from autoweld import data, native
from autoweld.bundle import load_bundle
from autoweld.export.quantize import (
    QuantizationSettings,
    engine_outputs,
    quantize_onnx,
)
from autoweld.export.recipes import resolve_recipe
from autoweld.runtime.inspector import Inspector


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        "p50_ms": float(np.percentile(array, 50)),
        "p99_ms": float(np.percentile(array, 99)),
    }


def timing(args: argparse.Namespace) -> dict:
    category = data.load_category(args.category, data_root=args.data_root)
    encoded = [
        cv2.imencode(".png", s.load_image())[1].tobytes() for s in category.test[: args.images]
    ]
    names = ("fp32", "int8")
    inspectors = {
        "fp32": Inspector(args.fp32, threads=args.threads),
        "int8": Inspector(args.int8, threads=args.threads),
    }
    samples: dict[str, dict[str, list[float]]] = {n: {"engine": [], "e2e": []} for n in names}
    for inspector in inspectors.values():
        for image in encoded[:10]:
            inspector.inspect(image)  # warm-up
    for i in range(args.rounds):
        image = encoded[i % len(encoded)]
        for name in names if i % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            result = inspectors[name].inspect(image)
            samples[name]["e2e"].append((time.perf_counter() - started) * 1e3)
            samples[name]["engine"].append(result.timings_ms["engine"])
    for inspector in inspectors.values():
        inspector.close()
    report = {n: {k: _percentiles(v) for k, v in samples[n].items()} for n in names}
    report["ratio_int8_over_fp32"] = {
        stage: {
            key: report["int8"][stage][key] / report["fp32"][stage][key]
            for key in ("p50_ms", "p99_ms")
        }
        for stage in ("engine", "e2e")
    }
    report["rounds"] = args.rounds
    report["cold_start"] = _cold_starts(args, encoded[0])
    return report


def _cold_starts(args: argparse.Namespace, image: bytes) -> dict:
    samples: dict[str, list[dict]] = {"fp32": [], "int8": []}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "part.png"
        path.write_bytes(image)
        for i in range(args.cold_repeats):
            for name in ("fp32", "int8") if i % 2 == 0 else ("int8", "fp32"):
                command = [sys.executable, "-m", "autoweld.bench.coldstart", "--side", "ours"]
                command += ["--bundle", getattr(args, name), "--image", str(path)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                samples[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        name: {
            **{
                key: float(np.median([r[key] for r in runs]))
                for key in ("import_ms", "load_ms", "first_ms")
            },
            "import_load_first_ms": float(
                np.median([r["import_ms"] + r["load_ms"] + r["first_ms"] for r in runs])
            ),
            "peak_rss_mb": float(np.median([r["peak_rss_kb"] for r in runs])) / 1024,
        }
        for name, runs in samples.items()
    }


def _preprocessed(images: list[np.ndarray], bundle) -> np.ndarray:
    spec = bundle.preprocess
    return np.stack([native.preprocess(im, spec.size, **spec.as_kwargs()) for im in images])


def probe(args: argparse.Namespace) -> dict:
    bundle = load_bundle(args.fp32)
    recipe = resolve_recipe(args.category)
    category = data.load_category(args.category, data_root=args.data_root, seed=recipe.seed)
    fit, val = data.split_train(category.train, recipe.calibration["val_fraction"], recipe.seed)
    fit_images = _preprocessed([s.load_image() for s in fit], bundle)
    val_images = _preprocessed([s.load_image() for s in val], bundle)
    output = next(iter(bundle.heads.values())).output
    want = engine_outputs(bundle.onnx_path, val_images, [output])[output]
    want = want.reshape(-1, want.shape[-1])
    variants = [  # (calibration method, leading convolutions kept FP32, FP32 node groups)
        ("minmax", 0, ()),
        ("minmax", 1, ()),
        ("minmax", 3, ()),
        ("minmax", 6, ()),
        ("minmax", 0, ("embedding",)),
        ("minmax", 3, ("embedding",)),
        ("percentile", 3, ()),
        ("entropy", 3, ()),
    ]
    report = {}
    for method, leading, keep in variants:
        settings = QuantizationSettings(method, args.calibration_images, leading, keep)
        with tempfile.TemporaryDirectory() as scratch:
            quantized = quantize_onnx(
                bundle.onnx_path, Path(scratch) / "q.onnx", fit_images, settings
            )
            got = engine_outputs(quantized.path, val_images, [output])[output]
        got = got.reshape(-1, got.shape[-1])
        error = np.linalg.norm(got - want, axis=1) / np.maximum(np.linalg.norm(want, axis=1), 1e-6)
        key = f"{method}+fp32_leading_convs={leading}+{'+'.join(keep) or '-'}"
        report[key] = {
            "rel_error_median": float(np.median(error)),
            "rel_error_p99": float(np.percentile(error, 99)),
            "seconds": quantized.seconds,
        }
        print(key, json.dumps(report[key]), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("timing", "probe"))
    parser.add_argument("--fp32", required=True, help="the FP32 bundle directory")
    parser.add_argument("--int8", help="the INT8 bundle directory (timing)")
    parser.add_argument("--category", default="weld")
    parser.add_argument("--data-root")
    parser.add_argument("--rounds", type=int, default=200, help="inspections per bundle")
    parser.add_argument("--images", type=int, default=60, help="test images cycled (timing)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cold-repeats", type=int, default=6, help="cold starts per bundle")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.mode == "timing" and not args.int8:
        parser.error("timing needs --int8")
    report = timing(args) if args.mode == "timing" else probe(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
