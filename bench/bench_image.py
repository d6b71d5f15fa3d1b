"""Benchmark of the native image kernels against OpenCV (+ numpy), 2 threads each.

    python bench/bench_image.py [--repeats N] [--out bench/results] [--cpu-time]

Writes ``native_image_cpu.md`` (a table of median times and ratios ours / theirs) and
``native_image_cpu.json`` into the output directory. Ratios < 1 mean we are faster. The goals
(issue 2): CLAHE ratio <= 1.0, fused preprocessing >= 3x faster (ratio <= 0.33).

``--cpu-time`` measures instead the CPU time of one thread each (``time.thread_time``, OpenCV
set to one thread, ours ``threads=1``) and writes ``native_image_cpu_time.{md,json}``: on a
shared, busy machine that is the comparison load does not distort.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from autoweld import native

THREADS = 2
CLOCK: Callable[[], float] = time.perf_counter
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def compare_ms(
    ours: Callable[[], object], theirs: Callable[[], object], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median and minimum milliseconds of both, timed alternately so that load changes hit
    both alike (the minimum is the better estimate on a busy machine)."""
    ours()  # warm-up (allocations, lazy tables)
    theirs()
    ours_times, their_times = [], []
    for _ in range(repeats):
        start = CLOCK()
        ours()
        ours_times.append(CLOCK() - start)
        start = CLOCK()
        theirs()
        their_times.append(CLOCK() - start)

    def summary(times: list[float]) -> dict[str, float]:
        return {"median": statistics.median(times) * 1e3, "min": min(times) * 1e3}

    return summary(ours_times), summary(their_times)


def opencv_chain(image: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """The chain as one would write it with OpenCV + numpy."""
    clahe = cv2.createCLAHE(2.0, (8, 8))
    if image.ndim == 2:
        x = clahe.apply(image)
    else:
        lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
        lab[..., 0] = clahe.apply(lab[..., 0])
        x = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    x = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    x = (x[..., ::-1].astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def test_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur((rng.random(shape) * 255).astype(np.uint8), (0, 0), 1.5)
    return np.clip(image.astype(np.int16) * 3 - 180, 0, 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--cpu-time", action="store_true", help="single-thread CPU time instead of wall clock"
    )
    args = parser.parse_args()
    global THREADS, CLOCK
    if args.cpu_time:
        THREADS, CLOCK = 1, time.thread_time
    stem = "native_image_cpu_time" if args.cpu_time else "native_image_cpu"
    cv2.setNumThreads(THREADS)
    rows = []

    for n in (256, 1024, 2048):
        image = test_image((n, n))
        clahe = cv2.createCLAHE(2.0, (8, 8))
        assert np.array_equal(native._native.clahe(image, 2.0, 8, 8, THREADS), clahe.apply(image))
        ours, theirs = compare_ms(
            lambda im=image: native._native.clahe(im, 2.0, 8, 8, THREADS),
            lambda im=image, c=clahe: c.apply(im),
            args.repeats,
        )
        rows.append(
            {"case": f"CLAHE gray {n}x{n}", "ours_ms": ours, "theirs_ms": theirs, "goal": "<= 1.0"}
        )

    colour = test_image((1024, 1024, 3))

    def opencv_colour_clahe(image: np.ndarray) -> np.ndarray:
        lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
        lab[..., 0] = cv2.createCLAHE(2.0, (8, 8)).apply(lab[..., 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)

    assert np.array_equal(native.clahe(colour), opencv_colour_clahe(colour))
    ours, theirs = compare_ms(
        lambda: native._native.clahe(colour, 2.0, 8, 8, THREADS),
        lambda: opencv_colour_clahe(colour),
        args.repeats,
    )
    rows.append(
        {"case": "CLAHE BGR 1024x1024 (Lab L)", "ours_ms": ours, "theirs_ms": theirs, "goal": "-"}
    )

    for shape, size, sigma in [
        ((1024, 1024, 3), 224, 0.0),
        ((1024, 1024, 3), 224, 2.0),
        ((2048, 2048, 3), 256, 0.0),
        ((2048, 2048), 256, 0.0),
    ]:
        image = test_image(shape, seed=1)
        ours, theirs = compare_ms(
            lambda im=image, s=size, g=sigma: native.preprocess(im, s, sigma=g, threads=THREADS),
            lambda im=image, s=size, g=sigma: opencv_chain(im, s, g),
            args.repeats,
        )
        kind = "BGR" if len(shape) == 3 else "gray"
        rows.append(
            {
                "case": f"preprocess {kind} {shape[0]}x{shape[1]} -> {size}, sigma {sigma:g}",
                "ours_ms": ours,
                "theirs_ms": theirs,
                "goal": "<= 0.33",
            }
        )

    for row in rows:
        row["ratio"] = row["ours_ms"]["median"] / row["theirs_ms"]["median"]
        row["ratio_of_minima"] = row["ours_ms"]["min"] / row["theirs_ms"]["min"]
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "avx2_fma": native.has_avx2_fma(),
        "hardware_threads": native.hardware_threads(),
        "threads_each": THREADS,
        "clock": "thread CPU time" if args.cpu_time else "wall clock",
        "repeats": args.repeats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(
        json.dumps({"machine": machine, "results": rows}, indent=2) + "\n"
    )
    lines = [
        "# Native image kernels vs OpenCV "
        + (
            "(CPU time of one thread each)"
            if args.cpu_time
            else "(CPU, wall clock, 2 threads each)"
        ),
        "",
        f"Command: `python bench/bench_image.py{' --cpu-time' if args.cpu_time else ''}`. "
        "Median of "
        f"{args.repeats} runs (minimum in brackets), ours and OpenCV timed alternately; "
        "ratio = ours / OpenCV (+ numpy); below 1 we are faster.",
        "",
        "| case | ours median (min) ms | OpenCV median (min) ms | ratio of medians | "
        "ratio of minima | goal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['ours_ms']['median']:.2f} ({row['ours_ms']['min']:.2f}) | "
            f"{row['theirs_ms']['median']:.2f} ({row['theirs_ms']['min']:.2f}) | "
            f"{row['ratio']:.2f} | {row['ratio_of_minima']:.2f} | {row['goal']} |"
        )
    lines += ["", "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), ""]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
