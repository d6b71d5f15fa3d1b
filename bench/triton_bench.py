"""Triton serving benchmark (issue 17): many cameras against one Triton server on loopback,
beside the same inspections in process.

    python bench/triton_bench.py --bundle /tmp/bench-bundles/weld \
        [--cameras 1 4 16] [--requests 96] [--threads 2] [--instances 1] \
        [--max-batch-size 16] [--queue-delay-us 2000] [--out bench/results]

The server is ``tritonserver`` 2.51 from the ``nvidia-pytriton`` wheel (unpacked under
``--root``, default ``build/triton-server``; ``autoweld.serving.local``) serving the bundle's
pure-Python-backend model (ONNX Runtime inside it) on 127.0.0.1. For each number of cameras C,
C threads each with their own :class:`~autoweld.serving.RemoteInspector` (their own gRPC
channel) send ``--requests`` inspections in all, one image per request, back to back; the
in-process figure is C threads sharing one :class:`~autoweld.runtime.Inspector` on the same
images. Both start from the encoded image bytes and end with the result (decode and
preprocessing stay on the station in both). Reported per C: throughput (images/s over the
wall time), p50/p99 latency per inspection, and the batch sizes Triton's dynamic batcher
formed (the statistics extension's ``batch_stats``, counted over the timed requests and each
camera's two warm-up requests).

Writes ``triton_cpu.json`` and ``triton_cpu.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _percentiles(times_s: list[float]) -> dict[str, float]:
    ms = np.array(times_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def _run_cameras(inspectors: list[Any], images: list[bytes], requests: int) -> dict[str, Any]:
    """Each inspector a camera thread; ``requests`` inspections in all, round-robin images."""
    per_camera = max(1, requests // len(inspectors))
    barrier = threading.Barrier(len(inspectors) + 1)
    times: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def camera(index: int) -> None:
        inspector = inspectors[index]
        for j in range(2):  # warm-up, untimed: channels, first batches
            inspector.inspect(images[(index + j) % len(images)])
        barrier.wait()
        own = []
        for j in range(per_camera):
            start = time.perf_counter()
            result = inspector.inspect(images[(index * per_camera + j) % len(images)])
            own.append(time.perf_counter() - start)
            if result.error:
                with lock:
                    failures.append(result.error)
        with lock:
            times.extend(own)

    with ThreadPoolExecutor(len(inspectors)) as pool:
        futures = [pool.submit(camera, i) for i in range(len(inspectors))]
        barrier.wait()
        wall_start = time.perf_counter()
        for future in futures:
            future.result()
        wall = time.perf_counter() - wall_start
    return {
        "inspections": len(times),
        "throughput_ips": round(len(times) / wall, 2),
        **_percentiles(times),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
    }


def _batch_counts(client: Any, model: str) -> dict[Any, int]:
    """Executions per batch size, and the request totals of the queue and compute phases."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    counts: dict[Any, int] = {
        int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
        for b in stats.get("batch_stats", [])
    }
    for phase in ("queue", "compute_infer"):
        entry = stats.get("inference_stats", {}).get(phase, {})
        counts[f"{phase}_ns"] = int(entry.get("ns", 0))
        counts[f"{phase}_count"] = int(entry.get("count", 0))
    return counts


def _phase_ms(after: dict[Any, int], before: dict[Any, int]) -> dict[str, float]:
    """Mean per request of Triton's queue and compute phases over the timed run."""
    means = {}
    for phase in ("queue", "compute_infer"):
        count = after[f"{phase}_count"] - before[f"{phase}_count"]
        ns = after[f"{phase}_ns"] - before[f"{phase}_ns"]
        means[f"server_{phase}_ms_mean"] = round(ns / max(1, count) / 1e6, 3)
    return means


def _delta(after: dict[Any, int], before: dict[Any, int]) -> dict[str, int]:
    sizes = sorted(k for k in after if isinstance(k, int))
    return {
        str(size): after[size] - before.get(size, 0)
        for size in sizes
        if after[size] - before.get(size, 0) > 0
    }


def _images(bundle: Any, limit: int) -> list[bytes]:
    from autoweld.data import load_category

    category = load_category(bundle.category, None)
    samples = list(category.test)[:limit]
    return [Path(s.path).read_bytes() for s in samples]


def _agreement(bundle_dir: Path, url: str, images: list[bytes], threads: int) -> dict[str, Any]:
    from autoweld.runtime import Inspector
    from autoweld.serving import RemoteInspector

    with (
        Inspector(bundle_dir, threads=threads) as local,
        RemoteInspector(bundle_dir, url) as remote,
    ):
        pairs = [(local.inspect(i), remote.inspect(i)) for i in images]
    return {
        "images": len(pairs),
        "decisions_equal": sum(a.decision == b.decision for a, b in pairs),
        "max_abs_probability_diff": float(
            max(abs(a.probability - b.probability) for a, b in pairs)
        ),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=96, help="timed inspections per level")
    parser.add_argument("--images", type=int, default=24, help="test-split images cycled")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, server and local")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--root", default=str(REPO / "build" / "triton-server"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    return parser.parse_args()


def main() -> int:
    import onnxruntime
    import tritonclient.grpc as grpcclient

    from autoweld.bundle import load_bundle
    from autoweld.runtime import Inspector
    from autoweld.serving import RemoteInspector, RepositoryOptions, write_triton_repository
    from autoweld.serving.local import PYTRITON_REQUIREMENT, LocalTritonServer, prepare_server

    args = _parse()
    bundle = load_bundle(args.bundle)
    images = _images(bundle, args.images)
    options = RepositoryOptions(
        max_batch_size=args.max_batch_size,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        threads=args.threads,
    )
    work = Path(tempfile.mkdtemp(prefix="triton-bench-"))
    repository = write_triton_repository({"bench": args.bundle}, work / "repo", options)
    dist = prepare_server(args.root)
    levels = []
    with LocalTritonServer(dist, repository, work / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.url.removeprefix("grpc://"))
        url = f"{server.url}/autoweld_bench"
        agreement = _agreement(Path(args.bundle), url, images[:8], args.threads)
        for cameras in args.cameras:
            remotes = [RemoteInspector(bundle, url, timeout_s=60) for _ in range(cameras)]
            _run_cameras(remotes[:1], images, 2)  # settle
            before = _batch_counts(client, "autoweld_bench")
            triton = _run_cameras(remotes, images, args.requests)
            after = _batch_counts(client, "autoweld_bench")
            batches = _delta(after, before)
            triton.update(_phase_ms(after, before))
            executions = sum(batches.values())
            triton["batch_sizes"] = batches
            triton["mean_batch"] = round(
                sum(int(k) * v for k, v in batches.items()) / max(1, executions), 2
            )
            for remote in remotes:
                remote.close()
            with Inspector(bundle, threads=args.threads) as local:
                in_process = _run_cameras([local] * cameras, images, args.requests)
            levels.append({"cameras": cameras, "triton": triton, "in_process": in_process})
            print(json.dumps(levels[-1]), file=sys.stderr)
        client.close()
    report = {
        "schema": "autoweld-triton-bench/1",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "server": {
            "tritonserver": "2.51 (" + PYTRITON_REQUIREMENT + ", Python backend only)",
            "variant": "python (ONNX Runtime inside the Python-backend model)",
            "transport": "gRPC on 127.0.0.1",
            "instances": args.instances,
            "max_batch_size": args.max_batch_size,
            "queue_delay_us": args.queue_delay_us,
            "threads_per_instance": args.threads,
        },
        "bundle": {
            "path": str(args.bundle),
            "sha256": bundle.sha256,
            "category": bundle.category,
            "backbone": bundle.manifest.backbone.name,
            "image_size": bundle.preprocess.size,
            "heads": list(bundle.heads),
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "agreement": agreement,
        "levels": levels,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "triton_cpu"  # ONNX Runtime on CPU on both sides
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _markdown(report: dict[str, Any]) -> str:
    rows = [
        "| cameras | Triton img/s | Triton p50 ms | Triton p99 ms | batches Triton formed "
        "(size: count) | Triton queue / compute ms per request | in-process img/s | "
        "in-process p50 ms | in-process p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in report["levels"]:
        t, i = level["triton"], level["in_process"]
        batches = ", ".join(f"{k}: {v}" for k, v in t["batch_sizes"].items())
        rows.append(
            f"| {level['cameras']} | {t['throughput_ips']} | {t['p50_ms']} | {t['p99_ms']} | "
            f"{batches} (mean {t['mean_batch']}) | {t['server_queue_ms_mean']} / "
            f"{t['server_compute_infer_ms_mean']} | {i['throughput_ips']} | {i['p50_ms']} | "
            f"{i['p99_ms']} |"
        )
    machine = report["machine"]
    return (
        f"# Triton serving benchmark\n\n`{report['command']}`\n\n"
        f"Bundle {report['bundle']['sha256'][:12]} ({report['bundle']['backbone']}, "
        f"{report['bundle']['image_size']} px, heads {', '.join(report['bundle']['heads'])}); "
        f"server {report['server']['tritonserver']}, {report['server']['variant']}; "
        f"{machine['logical_cores']} cores, load average {machine['load_average_1_5_15']}.\n\n"
        + "\n".join(rows)
        + f"\n\nAgreement: {report['agreement']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
