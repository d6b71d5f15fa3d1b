"""The whole Inspector, side by side: two or more builds or settings, in one run.

    python bench/ab_inspector.py --bundle /tmp/bench-bundles/weld \
        --side old=/tmp/old/python --side new [--side spin0:AUTOWELD_POOL_SPIN_US=0] \
        [--blocks 8] [--threads 2] [--images DIR]

A side is ``NAME``, ``NAME=PYTHON_DIR`` (a source tree's ``python/`` folder with its own built
``autoweld/_native*.so``: that tree's Python code and extension instead of the installed ones),
then optionally ``@BUNDLE`` (a bundle of its own instead of ``--bundle``, e.g. an INT8 export)
and, after a colon, environment variables for that side (``NAME:VAR=VALUE,VAR2=VALUE``). Each
side runs in a worker process of its own, warmed up, and the sides take turns by blocks (every
image once per block, the order of sides reversed every other block) while the others sleep, so
the machine's drift hits every side alike. Reported per side: end-to-end p50 / p90 / p99 of
``Inspector.inspect`` on encoded bytes (decode to decision, no record) and the per-stage medians
of its ``timings_ms``; sides on the same bundle must decide alike, or the run fails.

A baseline tree, e.g. the commit before a change (from the repository root):

    git worktree add /tmp/old HEAD~1
    cmake -S /tmp/old -B /tmp/old/build -DAUTOWELD_BUILD_PYTHON=ON -DCMAKE_BUILD_TYPE=Release \
        -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" && cmake --build /tmp/old/build -j2
    cp /tmp/old/build/_native*.so /tmp/old/python/autoweld/
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np


def parse_side(text: str) -> tuple[str, str | None, dict[str, str], str | None]:
    head, _, env_text = text.partition(":")
    head, _, bundle = head.partition("@")
    name, _, path = head.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"side {text!r} has no name")
    env = {}
    for item in filter(None, env_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"side {text!r}: {item!r} is not VAR=VALUE")
        env[key] = value
    return name, path or None, env, bundle or None


def worker(side, bundle: str, images: list[bytes], threads: int, conn) -> None:
    name, path, env, own_bundle = side
    bundle = own_bundle or bundle
    os.environ.update(env)
    if path is not None:  # that tree's code, not the installed (or editable) package
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
        sys.path.insert(0, path)
    import autoweld._native
    from autoweld.runtime import Inspector

    inspector = Inspector(bundle, threads=threads)
    for data in images[:10]:
        inspector.inspect(data)
    conn.send(autoweld._native.__file__)
    e2e: list[float] = []
    stages: dict[str, list[float]] = {}
    decisions: list[str] = []
    while conn.recv() == "block":
        time.sleep(0.2)  # the previous side's threads settle
        for data in images:
            start = time.perf_counter()
            result = inspector.inspect(data)
            e2e.append((time.perf_counter() - start) * 1e3)
            decisions.append(result.decision)
            for stage, ms in result.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
        conn.send("done")
    conn.send({"e2e": e2e, "stages": stages, "decisions": decisions})


def disagreeing(runs: dict[str, dict], bundles: dict[str, str]) -> list[str]:
    """The sides whose decisions, image by image, differ from those of the first side on the
    same bundle (``bundles``: side name -> bundle); sides on other bundles may differ."""
    first: dict[str, list[str]] = {}
    differ = []
    for name, run in runs.items():
        reference = first.setdefault(bundles[name], run["decisions"])
        if run["decisions"] != reference:
            differ.append(name)
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--side", type=parse_side, action="append", required=True)
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of images (default: the bundle's built-in category's test split, e.g. weld)",
    )
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if len(args.side) < 2:
        parser.error("give at least two --side")
    from autoweld.bench.runner import BenchConfig, load_images
    from autoweld.bundle import load_bundle

    category = load_bundle(args.bundle).category
    config = BenchConfig(bundle=Path(args.bundle), images=args.images, category=category)
    images = [data for _, data in load_images(config)]
    context = mp.get_context("spawn")
    pipes = {}
    for side in args.side:
        mine, theirs = context.Pipe()
        process = context.Process(
            target=worker, args=(side, args.bundle, images, args.threads, theirs)
        )
        process.start()
        pipes[side[0]] = (process, mine)
        print(f"{side[0]}: {mine.recv()}", flush=True)
    names = list(pipes)
    for block in range(args.blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            pipes[name][1].send("block")
            pipes[name][1].recv()
    runs = {}
    for name, (process, conn) in pipes.items():
        conn.send("stop")
        runs[name] = conn.recv()
        process.join()
    print(f"\n{len(images)} images x {args.blocks} blocks per side, {args.threads} threads, ms")
    stages = list(runs[names[0]]["stages"])
    print("| side | p50 | p90 | p99 | " + " | ".join(stages) + " |")
    print("|---|" + "---:|" * (3 + len(stages)))
    for name, run in runs.items():
        p50, p90, p99 = np.percentile(run["e2e"], [50, 90, 99])
        medians = [np.median(run["stages"].get(s, [np.nan])) for s in stages]
        cells = " | ".join(f"{v:.2f}" for v in (p50, p90, p99, *medians))
        print(f"| {name} | {cells} |")
    differ = disagreeing(runs, {side[0]: side[3] or args.bundle for side in args.side})
    if differ:
        print(f"decisions differ from the first side's on the same bundle: {differ}")
        return 1
    print("same decisions on every side that shares a bundle")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
