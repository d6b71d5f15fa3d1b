"""Tail latency of the pruned exact kNN on good vs defective parts (issue 19).

    python bench/knn_tail.py --bundle /tmp/knn-bundles/weld \
        [--native old=/tmp/knn-old/_native.so] [--images 16] [--repeats 5]

Defective parts are the slow tail of ``KnnIndex.search``: their anomalous patches are far from
every bank row, so the lower bound prunes fewer rows. This takes the bank and pruning basis of the
bundle's kNN head and the real patch embeddings of ``--images`` good and as many defective test
images (the engine's output, computed once and cached in ``--cache``), and times one search per
image (all its patches, k=1, ``--threads``), as ``KnnHeadScorer`` does. A bundle without a basis
(``knn_basis: null``) times the brute force, with its bf16 first pass where the CPU has AVX-512
BF16. ``--data-root`` points at the bundle's category in the MVTec layout when it is not built-in
(e.g. a dev-set surface: ``--data-root /tmp/devsets2/tune``).

Each extension under test (``--native LABEL=PATH`` to a built ``_native`` module, repeatable; the
working tree's own module is always ``this tree``) runs in a worker process of its own, and the
workers take turns image by image, so load from the rest of the machine hits every side alike.
Every worker also returns a digest of its distances and indices: the table says whether all sides
found the same neighbours and distances, to the bit. Writes ``bench/results/knn_tail.{md,json}``
(``--out`` to change the stem). Wall time on a loaded machine is noisy; the process CPU time of
each search is recorded too.

A baseline extension, e.g. of the commit before the change (run from the repository root):

    git archive 4289286 | (mkdir -p /tmp/knn-old/src && tar -x -C /tmp/knn-old/src)
    cmake -S /tmp/knn-old/src -B /tmp/knn-old/build -DAUTOWELD_BUILD_PYTHON=ON \
        -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" && cmake --build /tmp/knn-old/build -j2
    python bench/knn_tail.py --bundle /tmp/knn-bundles/weld \
        --native old=$(ls /tmp/knn-old/build/_native*.so)

Worker mode (used by the above; also a repeatable driver for ``valgrind --tool=callgrind``):
``python bench/knn_tail.py --worker PATH --cache FILE`` reads image numbers on stdin, one a line,
and answers ``wall_ns cpu_ns digest`` for each.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("good", "defective")


def embed_test_images(
    bundle_dir: Path, per_kind: int, cache: Path, data_root: Path | None = None
) -> None:
    """The kNN head's bank, basis and the patch embeddings of good and defective test images."""
    from autoweld import native
    from autoweld.bundle import load_bundle
    from autoweld.data import load_category
    from autoweld.runtime.decode import decode_image
    from autoweld.runtime.engines import open_engine

    bundle = load_bundle(bundle_dir)
    head = next(h for h in bundle.heads.values() if h.kind == "knn")
    samples = load_category(bundle.category, data_root).test
    chosen = [s for s in samples if s.label == 0][:per_kind]
    chosen += [s for s in samples if s.label == 1][:per_kind]
    spec = bundle.preprocess
    embeddings = []
    with open_engine(bundle, threads=2) as engine:
        for sample in chosen:
            image = decode_image(str(sample.path))
            batch = native.preprocess_batch([image], spec.size, **spec.as_kwargs())
            embeddings.append(engine.infer(batch, [head.output])[head.output][0])
    basis = bundle.load_array(head.knn_basis) if head.knn_basis is not None else None
    np.savez(
        cache,
        bank=bundle.load_array(head.memory_bank),
        basis=basis if basis is not None else np.zeros((0, 0), np.float32),
        queries=np.stack(embeddings).astype(np.float32),
        labels=np.array([s.label for s in chosen]),
        names=np.array([f"{s.defect_type}/{s.path.name}" for s in chosen]),
    )


def load_extension(path: str):
    """An ``_native`` extension module from a file, imported under its own name (no autoweld
    package: a baseline build need not match this tree's Python code)."""
    loader = importlib.machinery.ExtensionFileLoader("_native", path)
    spec = importlib.util.spec_from_file_location("_native", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def worker(path: str, cache: Path, threads: int, isa: str) -> None:
    """Answers image numbers on stdin with the wall / CPU time of one search and its digest."""
    native = load_extension(path)
    data = np.load(cache)
    bank, basis, queries = data["bank"], data["basis"], data["queries"]
    if basis.size:
        index = native.KnnIndex(bank, basis, threads)
    else:
        index = native.KnnIndex(bank, threads)
    print("ready", flush=True)
    for line in sys.stdin:
        image = np.ascontiguousarray(queries[int(line)])
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        distances, indices = index.search(image, 1, threads, isa)
        wall, cpu = time.perf_counter_ns() - t0, time.process_time_ns() - c0
        digest = hashlib.sha256(distances.tobytes() + indices.tobytes()).hexdigest()[:16]
        print(wall, cpu, digest, flush=True)


class Side:
    """One extension under test, in its worker process."""

    def __init__(self, label: str, path: str, cache: Path, threads: int, isa: str) -> None:
        self.label = label
        self.path = path
        command = [sys.executable, __file__, "--worker", path, "--cache", str(cache)]
        command += ["--threads", str(threads), "--isa", isa]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"worker for {path} did not start")
        self.wall_ms: dict[int, list[float]] = {}
        self.cpu_ms: dict[int, list[float]] = {}
        self.digests: dict[int, str] = {}

    def search(self, image: int) -> None:
        self.process.stdin.write(f"{image}\n")
        self.process.stdin.flush()
        wall, cpu, digest = self.process.stdout.readline().split()
        self.wall_ms.setdefault(image, []).append(int(wall) / 1e6)
        self.cpu_ms.setdefault(image, []).append(int(cpu) / 1e6)
        self.digests[image] = digest

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(np.max(values)),
    }


def measure(sides: list[Side], labels: np.ndarray, repeats: int, warmup: int) -> None:
    """Every image `repeats` times on every side, the sides taking turns (order alternating)."""
    images = list(range(len(labels)))
    rng = random.Random(0)
    for side in sides:
        for image in images[:warmup]:
            side.search(image)
        side.wall_ms.clear()
        side.cpu_ms.clear()
    for round_ in range(repeats):
        rng.shuffle(images)
        for image in images:
            order = sides if (image + round_) % 2 == 0 else sides[::-1]
            for side in order:
                side.search(image)


def report(sides: list[Side], labels: np.ndarray, args: argparse.Namespace) -> dict:
    kinds = {kind: np.flatnonzero(labels == i) for i, kind in enumerate(KINDS)}
    rows = {}
    for side in sides:
        rows[side.label] = {"path": side.path}
        for kind, images in kinds.items():
            rows[side.label][kind] = {
                "wall": summary([t for i in images for t in side.wall_ms[int(i)]]),
                "cpu": summary([t for i in images for t in side.cpu_ms[int(i)]]),
            }
    same = all(side.digests == sides[0].digests for side in sides)
    return {
        "command": " ".join(sys.argv),
        "images": {kind: int(len(images)) for kind, images in kinds.items()},
        "repeats": args.repeats,
        "threads": args.threads,
        "isa": args.isa,
        "identical_results": same,
        "sides": rows,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
            "python": platform.python_version(),
        },
    }


def markdown(result: dict) -> str:
    lines = [
        "# kNN tail latency: good vs defective parts (bench/knn_tail.py)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"One `KnnIndex.search` per image (all its patches, k=1, {result['threads']} threads, "
        f"ISA {result['isa']}); {result['images']['good']} good and "
        f"{result['images']['defective']} defective test images, {result['repeats']} rounds, "
        "the sides taking turns image by image. Times in ms (wall; CPU = process CPU time, "
        "summed over threads).",
        "",
        "| side | kind | wall p50 | wall p99 | wall max | CPU p50 | CPU p99 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in result["sides"].items():
        for kind in KINDS:
            w, c = row[kind]["wall"], row[kind]["cpu"]
            lines.append(
                f"| {label} | {kind} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | "
                f"{w['max_ms']:.2f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} |"
            )
    same = "yes" if result["identical_results"] else "**NO**"
    machine = result["machine"]
    lines += [
        "",
        f"Same neighbours and distances, to the bit, on every side: {same}.",
        "",
        f"Machine: {machine['processor']}, load average {machine['load_average']} at the end, "
        f"Python {machine['python']}.",
        "",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle with a kNN head")
    parser.add_argument("--native", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--images", type=int, default=16, help="test images per kind")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", default="best", help="portable, avx2, avx512 or best")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="folder holding the bundle's category in the MVTec layout (default: built-in data)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/knn_tail_embeddings.npz"),
        help="embeddings computed once and reused while the file exists: one per bundle",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "knn_tail")
    parser.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args.worker, args.cache, args.threads, args.isa)
        return
    if args.bundle is None:
        raise SystemExit("--bundle is required")
    if not args.cache.exists():
        embed_test_images(args.bundle, args.images, args.cache, args.data_root)
    from autoweld import _native

    paths = [item.split("=", 1) for item in args.native]
    paths.append(["this tree", _native.__file__])
    sides = [Side(label, path, args.cache, args.threads, args.isa) for label, path in paths]
    labels = np.load(args.cache)["labels"]
    try:
        measure(sides, labels, args.repeats, args.warmup)
    finally:
        for side in sides:
            side.close()
    result = report(sides, labels, args)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
