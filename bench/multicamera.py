"""Several cameras on one station: batched requests against threads on a plain Inspector.

    python bench/multicamera.py --bundle DIR [--cameras 1,2,4] [--frames 40] [--rounds 3]
        [--threads 2] [--max-batch 8] [--max-wait-ms 2] [--wait-sweep 0,1,2,5]
        [--images DIR | --category weld] [--out bench/results]

N camera threads inspect the test images (encoded bytes in memory, so decode is timed; nothing
is recorded or signalled), triggered two ways: ``back_to_back`` (each camera free-running) and
``together`` (all cameras fire at once for each part, the next part when all are done), and
inspected three ways on one Inspector:

* ``batched``: through :class:`autoweld.runtime.BatchingInspector` (one worker, batches of up
  to ``--max-batch`` closed ``--max-wait-ms`` after their first request);
* ``shared``: straight into the shared plain Inspector, calls running concurrently;
* ``alone``: one camera on the plain Inspector (the N = 1 ``shared`` run), the baseline.

Configurations are interleaved round by round (their order alternating) so that load changes
on a shared machine hit all alike; each run records the load average. Per configuration: images
per second (all cameras' images over the wall time), latency p50/p99 over all requests and the
worst camera's p99, and the batch sizes formed. ``--wait-sweep`` also runs ``batched`` at those
deadlines with the cameras triggered together (for choosing the default); ``batch_cost`` is
one ``inspect_batch`` per batch at sizes 1, 2, 4, 8 (wall and CPU ms per image). Before timing, every image is inspected alone and in
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
TRIGGERS = ("back_to_back", "together")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_cameras(
    inspect: Inspect, images: list[bytes], cameras: int, frames: int, trigger: str
) -> dict:
    """``cameras`` threads, each inspecting ``frames`` images (each camera starts at its own
    offset in the image list): ``back_to_back``, each camera free-running, or ``together``,
    every camera triggered at once for each frame (several views of one part; the next part
    comes when all are done). Latencies per camera in ms, wall and process CPU time."""
    latencies: list[list[float]] = [[] for _ in range(cameras)]
    failures = [0] * cameras
    barrier = threading.Barrier(cameras + 1)
    part_trigger = threading.Barrier(cameras)

    def camera(index: int) -> None:
        barrier.wait()
        for frame in range(frames):
            if trigger == "together":
                part_trigger.wait()
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

    decoded = [image_for_inspection(data) for data in images]
    n = -(-len(decoded) // max(sizes)) * max(sizes)  # whole batches of every size
    arrays = [decoded[i % len(decoded)] for i in range(n)]
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


Config = tuple[str, str, int, float | None]  # (trigger, way, cameras, max_wait_ms)


def configurations(args: argparse.Namespace) -> list[Config]:
    configs: list[Config] = []
    for trigger in TRIGGERS:
        for cameras in args.cameras:
            configs += [
                (trigger, "shared", cameras, None),
                (trigger, "batched", cameras, args.max_wait_ms),
            ]
    for wait in args.wait_sweep:  # the deadline matters where cameras fire together
        for cameras in sorted({1, max(args.cameras)}):
            if wait != args.max_wait_ms:
                configs.append(("together", "batched", cameras, wait))
    return configs


def measure(args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    """Every configuration, interleaved over ``args.rounds`` rounds."""
    configs = configurations(args)
    collected = {config: Collected() for config in configs}
    with Inspector(args.bundle, threads=args.threads) as inspector:
        found = agreement(inspector, images, args.max_batch)
        for data in images[: 2 * args.max_batch]:  # warm-up
            inspector.inspect(data)
        cost = batch_cost(inspector, images, sorted({1, 2, 4, 8, args.max_batch}), args.rounds)
        for round_index in range(args.rounds):
            for config in configs if round_index % 2 == 0 else configs[::-1]:
                trigger, way, cameras, wait = config
                print(f"round {round_index + 1}: {config}", file=sys.stderr)
                batch_sizes: dict[int, int] = {}
                if way == "shared":
                    run = run_cameras(inspector.inspect, images, cameras, args.frames, trigger)
                else:
                    with BatchingInspector(
                        inspector, max_batch=args.max_batch, max_wait_ms=wait
                    ) as batcher:
                        run = run_cameras(batcher.inspect, images, cameras, args.frames, trigger)
                        batch_sizes = batcher.stats().batch_sizes
                collected[config].add(run, load_average(), batch_sizes)
    return {"agreement": found, "collected": collected, "batch_cost": cost}


def compare(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Batched against shared at each camera count, and both against one camera alone."""
    alone = runs.get("1", {}).get("shared")
    alone_rate = alone["images_per_s"] if alone else None
    ratios = {}
    for cameras, pair in runs.items():
        shared, batched = pair["shared"], pair["batched"]
        ratios[cameras] = {
            "batched_vs_shared_images_per_s": _r(batched["images_per_s"], shared["images_per_s"]),
            "batched_vs_shared_cpu_per_image": _r(
                batched["cpu_ms_per_image"], shared["cpu_ms_per_image"]
            ),
            "batched_vs_shared_p99": _r(batched["latency"]["p99_ms"], shared["latency"]["p99_ms"]),
            "batched_vs_alone_images_per_s": _r(batched["images_per_s"], alone_rate),
            "shared_vs_alone_images_per_s": _r(shared["images_per_s"], alone_rate),
        }
    return ratios


def report(args: argparse.Namespace, measured: dict[str, Any], start_load: Any) -> dict:
    collected = measured["collected"]
    runs = {
        trigger: {
            str(cameras): {
                "shared": collected[(trigger, "shared", cameras, None)].to_json(),
                "batched": collected[(trigger, "batched", cameras, args.max_wait_ms)].to_json(),
            }
            for cameras in args.cameras
        }
        for trigger in TRIGGERS
    }
    sweep = {
        f"{cameras}@{wait:g}": run.to_json()
        for (trigger, way, cameras, wait), run in collected.items()
        if trigger == "together" and way == "batched" and cameras in (1, max(args.cameras))
    }
    return {
        "runs": runs,
        "ratios": {trigger: compare(by_cameras) for trigger, by_cameras in runs.items()},
        "wait_sweep_together": sweep,
        "batch_cost": measured["batch_cost"],
        "agreement": measured["agreement"],
        "config": {
            "bundle": str(args.bundle),
            "cameras": args.cameras,
            "triggers": list(TRIGGERS),
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
    ]
    for trigger, title in (
        ("back_to_back", "Cameras free-running, each inspecting back to back"),
        ("together", "Cameras triggered together, one part after another"),
    ):
        lines += ["", f"### {title} (`{trigger}`)", ""]
        lines += _run_table(result["runs"][trigger], result["ratios"][trigger])
    lines += ["", "### Deadline sweep (batched, `together`)", "", "| cameras @ max_wait_ms | images/s | p50 ms | "
              "p99 ms | mean batch |", "|---|---|---|---|---|"]  # fmt: skip
    for key, run in sorted(result["wait_sweep_together"].items(), key=lambda kv: _sweep_key(kv[0])):
        lines.append(
            f"| {key} | {run['images_per_s']:.1f} | {run['latency']['p50_ms']:.1f} | "
            f"{run['latency']['p99_ms']:.1f} | {run.get('batches', {}).get('mean_size', '')} |"
        )
    lines += ["", "### One `inspect_batch` call per batch (decoded images), per image", "",
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


def _run_table(runs: dict[str, Any], ratios: dict[str, Any]) -> list[str]:
    lines = [
        "| cameras | way | images/s | CPU ms/image | p50 ms | p99 ms | worst camera p99 ms | "
        "mean batch | images/s ÷ shared | p99 ÷ shared | images/s ÷ one camera alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cameras, pair in runs.items():
        r = ratios[cameras]
        for way in ("shared", "batched"):
            run = pair[way]
            mean_batch = run.get("batches", {}).get("mean_size", "")
            vs_shared = (
                f"{r['batched_vs_shared_images_per_s']} | {r['batched_vs_shared_p99']}"
                if way == "batched"
                else " | "
            )
            vs_alone = r[f"{way}_vs_alone_images_per_s"]
            lines.append(
                f"| {cameras} | {way} | {run['images_per_s']:.1f} | {run['cpu_ms_per_image']:.1f} | "
                f"{run['latency']['p50_ms']:.1f} | {run['latency']['p99_ms']:.1f} | "
                f"{run['worst_camera_p99_ms']:.1f} | {mean_batch} | {vs_shared} | {vs_alone} |"
            )
    return lines


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
