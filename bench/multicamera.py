"""Several cameras on one station: batched requests against threads on a plain Inspector.

    python bench/multicamera.py --bundle DIR [--cameras 1,2,4] [--frames 40] [--rounds 3]
        [--threads 2] [--max-batch 8] [--max-wait-ms 2] [--wait-sweep 0,1,2,5]
        [--images DIR | --category weld] [--out bench/results]

N camera threads each inspect the test images back to back (encoded bytes in memory, so decode
is timed; nothing is recorded or signalled), in three ways on one Inspector:

* ``batched``: through :class:`autoweld.runtime.BatchingInspector` (one worker, batches of up
  to ``--max-batch`` closed ``--max-wait-ms`` after their first request);
* ``shared``: straight into the shared plain Inspector, calls running concurrently;
* ``alone``: one camera on the plain Inspector (the N = 1 ``shared`` run), the baseline.

Configurations are interleaved round by round (their order alternating) so that load changes
on a shared machine hit all alike; each run records the load average. Per configuration: images
per second (all cameras' images over the wall time), latency p50/p99 over all requests and the
worst camera's p99, and the batch sizes formed. ``--wait-sweep`` also runs ``batched`` at those
deadlines (for choosing the default). Before timing, every image is inspected alone and in
batches of ``--max-batch`` and the results compared (``agreement``).

Writes ``multicamera.json`` and ``multicamera.md`` into ``--out``; prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoweld.bench.runner import BenchConfig, load_images, machine_info, versions
from autoweld.bench.stats import ratio, summarize
from autoweld.runtime import BatchingInspector, Inspector

Inspect = Callable[[bytes], Any]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_cameras(inspect: Inspect, images: list[bytes], cameras: int, frames: int) -> dict:
    """``cameras`` threads, each inspecting ``frames`` images back to back (each camera starts
    at its own offset in the image list); latencies per camera in ms and the wall time."""
    latencies: list[list[float]] = [[] for _ in range(cameras)]
    failures = [0] * cameras
    barrier = threading.Barrier(cameras + 1)

    def camera(index: int) -> None:
        barrier.wait()
        for frame in range(frames):
            data = images[(index * 7 + frame) % len(images)]
            start = time.perf_counter()
            result = inspect(data)
            latencies[index].append((time.perf_counter() - start) * 1e3)
            failures[index] += result.error is not None

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(cameras)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "latencies": latencies,
        "failures": sum(failures),
    }


class Collected:
    """One configuration's runs, pooled over rounds."""

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.latencies: list[list[float]] = []
        self.failures = 0
        self.loads: list[list[float] | None] = []
        self.batch_sizes: dict[int, int] = {}

    def add(self, run: dict, load: list[float] | None, batch_sizes: dict[int, int]) -> None:
        self.wall_s += run["wall_s"]
        self.cpu_s += run["cpu_s"]
        if not self.latencies:
            self.latencies = [[] for _ in run["latencies"]]
        for pooled, own in zip(self.latencies, run["latencies"], strict=True):
            pooled += own
        self.failures += run["failures"]
        self.loads.append(load)
        for size, count in batch_sizes.items():
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + count

    def to_json(self) -> dict[str, Any]:
        every = [ms for camera in self.latencies for ms in camera]
        out: dict[str, Any] = {
            "images": len(every),
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(len(every) / self.wall_s, 2),
            "cpu_ms_per_image": round(self.cpu_s / len(every) * 1e3, 3),
            "latency": summarize(every).to_json(),
            "worst_camera_p99_ms": round(
                max(float(np.percentile(c, 99)) for c in self.latencies), 3
            ),
            "failed": self.failures,
            "load_average_per_round": self.loads,
        }
        if self.batch_sizes:
            batches = sum(self.batch_sizes.values())
            out["batches"] = {
                "count": batches,
                "mean_size": round(len(every) / batches, 3),
                "sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            }
        return out


def agreement(inspector: Inspector, images: list[bytes], max_batch: int) -> dict[str, Any]:
    """Every image alone against the same image in a batch of ``max_batch``."""
    alone = [inspector.inspect(data) for data in images]
    batched = []
    for start in range(0, len(images), max_batch):
        batched += inspector.inspect_batch(images[start : start + max_batch])
    prob_diff, score_diff, map_diff, exact, same = 0.0, 0.0, 0.0, 0, 0
    for a, b in zip(alone, batched, strict=True):
        same += a.decision == b.decision
        if a.error is not None or b.error is not None:
            exact += a.error == b.error
            continue
        deltas = [abs(a.scores[k] - b.scores[k]) for k in a.scores]
        prob_diff = max(prob_diff, abs(a.probability - b.probability))
        score_diff = max(score_diff, *deltas)
        map_diff = max(map_diff, float(np.abs(a.anomaly_map - b.anomaly_map).max()))
        exact += (
            a.scores == b.scores
            and a.probability == b.probability
            and np.array_equal(a.anomaly_map, b.anomaly_map)
        )
    return {
        "images": len(images),
        "batch": max_batch,
        "bit_exact": exact,
        "same_decision": same,
        "max_abs_diff_probability": prob_diff,
        "max_abs_diff_score": score_diff,
        "max_abs_diff_anomaly_map": map_diff,
    }


def batch_cost(inspector: Inspector, images: list[bytes], sizes: list[int], rounds: int) -> dict:
    """Wall and process CPU ms per image of ``inspect_batch`` at each batch size, on decoded
    images (what the batcher's worker runs), sizes interleaved round by round."""
    from autoweld.runtime.decode import image_for_inspection

    arrays = [image_for_inspection(data) for data in images]
    n = len(arrays) - len(arrays) % max(sizes)
    wall = {size: 0.0 for size in sizes}
    cpu = {size: 0.0 for size in sizes}
    for round_index in range(rounds):
        for size in sizes if round_index % 2 == 0 else sizes[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            for first in range(0, n, size):
                inspector.inspect_batch(arrays[first : first + size])
            wall[size] += time.perf_counter() - start
            cpu[size] += time.process_time() - cpu_start
    images_timed = n * rounds
    return {
        str(size): {
            "wall_ms_per_image": round(wall[size] / images_timed * 1e3, 3),
            "cpu_ms_per_image": round(cpu[size] / images_timed * 1e3, 3),
        }
        for size in sizes
    }


def measure(args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    """Every configuration, interleaved over ``args.rounds`` rounds."""
    configs: list[tuple[str, int, float | None]] = []  # (mode, cameras, max_wait_ms)
    for cameras in args.cameras:
        configs += [("shared", cameras, None), ("batched", cameras, args.max_wait_ms)]
    for wait in args.wait_sweep:
        for cameras in (1, max(args.cameras)):
            if wait != args.max_wait_ms:
                configs.append(("batched", cameras, wait))
    collected = {config: Collected() for config in configs}
    with Inspector(args.bundle, threads=args.threads) as inspector:
        found = agreement(inspector, images, args.max_batch)
        for data in images[: 2 * args.max_batch]:  # warm-up
            inspector.inspect(data)
        sizes = sorted({1, 2, 4, 8, args.max_batch})
        cost = batch_cost(inspector, images, sizes, args.rounds)
        for round_index in range(args.rounds):
            order = configs if round_index % 2 == 0 else configs[::-1]
            for mode, cameras, wait in order:
                print(f"round {round_index + 1}: {mode} x{cameras} wait={wait}", file=sys.stderr)
                if mode == "shared":
                    run = run_cameras(inspector.inspect, images, cameras, args.frames)
                    sizes: dict[int, int] = {}
                else:
                    with BatchingInspector(
                        inspector, max_batch=args.max_batch, max_wait_ms=wait
                    ) as batcher:
                        run = run_cameras(batcher.inspect, images, cameras, args.frames)
                        sizes = batcher.stats().batch_sizes
                collected[(mode, cameras, wait)].add(run, load_average(), sizes)
    return {"agreement": found, "collected": collected, "batch_cost": cost}


def report(args: argparse.Namespace, measured: dict[str, Any], start_load: Any) -> dict:
    collected = measured["collected"]
    runs: dict[str, dict[str, Any]] = {}
    for cameras in args.cameras:
        runs[str(cameras)] = {
            "shared": collected[("shared", cameras, None)].to_json(),
            "batched": collected[("batched", cameras, args.max_wait_ms)].to_json(),
        }
    alone = runs[str(min(args.cameras))]["shared"] if 1 in args.cameras else None
    ratios = {}
    for cameras, pair in runs.items():
        shared, batched = pair["shared"], pair["batched"]
        ratios[cameras] = {
            "batched_vs_shared_images_per_s": _r(batched["images_per_s"], shared["images_per_s"]),
            "batched_vs_shared_p99": _r(batched["latency"]["p99_ms"], shared["latency"]["p99_ms"]),
            "batched_vs_alone_images_per_s": _r(
                batched["images_per_s"], alone["images_per_s"] if alone else None
            ),
            "shared_vs_alone_images_per_s": _r(
                shared["images_per_s"], alone["images_per_s"] if alone else None
            ),
        }
    sweep = {
        f"{cameras}@{wait:g}": collected[("batched", cameras, wait)].to_json()
        for (mode, cameras, wait) in collected
        if mode == "batched" and (wait in args.wait_sweep or wait == args.max_wait_ms)
        and cameras in (1, max(args.cameras))
    }  # fmt: skip
    return {
        "runs": runs,
        "ratios": ratios,
        "wait_sweep": sweep,
        "batch_cost": measured["batch_cost"],
        "agreement": measured["agreement"],
        "config": {
            "bundle": str(args.bundle),
            "cameras": args.cameras,
            "frames_per_camera_per_round": args.frames,
            "rounds": args.rounds,
            "threads": args.threads,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "wait_sweep": args.wait_sweep,
        },
        "load_average_start": start_load,
        "load_average_end": load_average(),
        "machine": machine_info(args.threads),
        "versions": versions(),
    }


def _r(a: float | None, b: float | None) -> float | None:
    value = ratio(a, b)
    return round(value, 3) if value is not None else None


def markdown(result: dict[str, Any]) -> str:
    config, machine = result["config"], result["machine"]
    lines = [
        "# Several cameras on one station (issue 19)",
        "",
        f"Bundle `{config['bundle']}`, {config['threads']} threads, batches of up to "
        f"{config['max_batch']} closed {config['max_wait_ms']:g} ms after their first request; "
        f"{config['frames_per_camera_per_round']} frames per camera per round, "
        f"{config['rounds']} rounds interleaved. {machine['cpu']}, {machine['usable_cores']} "
        f"usable cores, load average {result['load_average_start']} at start, "
        f"{result['load_average_end']} at end.",
        "",
        "| cameras | way | images/s | CPU ms/image | p50 ms | p99 ms | worst camera p99 ms | "
        "mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cameras, pair in result["runs"].items():
        for way in ("shared", "batched"):
            run = pair[way]
            mean_batch = run.get("batches", {}).get("mean_size", "")
            lines.append(
                f"| {cameras} | {way} | {run['images_per_s']:.1f} | {run['cpu_ms_per_image']:.1f} | "
                f"{run['latency']['p50_ms']:.1f} | {run['latency']['p99_ms']:.1f} | "
                f"{run['worst_camera_p99_ms']:.1f} | {mean_batch} |"
            )
    lines += ["", "| cameras | batched ÷ shared images/s | batched ÷ shared p99 | "
              "batched ÷ one camera alone images/s |", "|---|---|---|---|"]  # fmt: skip
    for cameras, r in result["ratios"].items():
        lines.append(
            f"| {cameras} | {r['batched_vs_shared_images_per_s']} | "
            f"{r['batched_vs_shared_p99']} | {r['batched_vs_alone_images_per_s']} |"
        )
    lines += ["", "Deadline sweep (batched):", "", "| cameras @ max_wait_ms | images/s | p50 ms | "
              "p99 ms | mean batch |", "|---|---|---|---|---|"]  # fmt: skip
    for key, run in sorted(result["wait_sweep"].items(), key=lambda kv: _sweep_key(kv[0])):
        lines.append(
            f"| {key} | {run['images_per_s']:.1f} | {run['latency']['p50_ms']:.1f} | "
            f"{run['latency']['p99_ms']:.1f} | {run.get('batches', {}).get('mean_size', '')} |"
        )
    lines += ["", "One `inspect_batch` call per batch, decoded images, per image:", "",
              "| batch | wall ms | CPU ms |", "|---|---|---|"]  # fmt: skip
    for size, cost in result["batch_cost"].items():
        lines.append(
            f"| {size} | {cost['wall_ms_per_image']:.1f} | {cost['cpu_ms_per_image']:.1f} |"
        )
    found = result["agreement"]
    lines += [
        "",
        f"Agreement, every image alone vs in batches of {found['batch']}: {found['bit_exact']} of "
        f"{found['images']} bit for bit, {found['same_decision']} same decision; largest "
        f"differences: probability {found['max_abs_diff_probability']:.3g}, score "
        f"{found['max_abs_diff_score']:.3g}, anomaly map {found['max_abs_diff_anomaly_map']:.3g}.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def _sweep_key(key: str) -> tuple[int, float]:
    cameras, wait = key.split("@")
    return int(cameras), float(wait)


def _numbers(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from None
        if not values or any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"need values >= 0, got {text!r}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, help="folder of images (default: test split)")
    source.add_argument("--category", default="weld")
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--cameras", type=_numbers(int), default=[1, 2, 4])
    parser.add_argument("--frames", type=int, default=40, help="per camera per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--wait-sweep", type=_numbers(float), default=[0.0, 1.0, 2.0, 5.0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.cameras) < 1:
        raise SystemExit("--cameras: every count must be >= 1")
    start_load = load_average()
    config = BenchConfig(
        bundle=args.bundle, images=args.images, category=args.category, data_root=args.data_root
    )
    images = [data for _, data in load_images(config)]
    measured = measure(args, images)
    result = report(args, measured, start_load)
    result["config"]["images"] = len(images)
    shown = ["python", "bench/multicamera.py", *(sys.argv[1:] if argv is None else argv)]
    result["command"] = shlex.join(shown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multicamera.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "multicamera.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
