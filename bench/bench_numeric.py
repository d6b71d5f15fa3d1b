"""Benchmark of the numeric kernels against their peers, 2 threads each.

- exact kNN: ``autoweld.native.knn`` (and ``KnnIndex.search``) vs faiss-cpu ``IndexFlatL2``;
- coreset: ``autoweld.native.coreset`` vs the same greedy algorithm written in torch the way
  PatchCore implementations write it (projection, then a loop of ``torch.linalg.norm`` /
  ``torch.minimum`` / ``torch.argmax``).

Usage: ``python bench/bench_numeric.py [--repeats 5] [--quick]``. Writes
``bench/results/native_numeric_cpu.md`` and ``.json`` (``--quick`` writes ``*_quick.*``, small
shapes, for smoke tests). The torch coreset at 10 % is long; it runs a fixed number of
iterations (``--torch-steps``, default 100) and is extrapolated linearly (stated in the
table); the coreset rows use at most 3 repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from autoweld import __version__, native

log = logging.getLogger("bench_numeric")
THREADS = 2
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    kernel: str
    shape: str
    ours_ms: float
    peer_ms: float
    peer: str
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """ours / peer: below 1.0 means we are faster."""
        return self.ours_ms / self.peer_ms

    @property
    def speedup(self) -> float:
        return self.peer_ms / self.ours_ms


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall time and median process CPU time (both ms) of ``fn``.

    CPU time is reported too because on a shared machine wall time mostly measures the other
    tenants; CPU time (summed over our threads) still compares the work each contender does.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def interleaved_ms(
    fns: list[Callable[[], object]], rounds: int, block: int = 3
) -> list[tuple[float, float]]:
    """(wall ms, process CPU ms) per function, measured in rounds: each round runs every
    function `block` times in a row and keeps its fastest run; the result is the median over
    the rounds. A disturbance from the rest of the machine then hits every contender alike, and
    one contender's leftovers (faiss's OpenMP threads spin for a while after a search) fall on
    the first run of the next block, which the minimum drops."""
    for fn in fns:
        fn()  # warm-up
    best: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            runs = []
            for _ in range(block):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                runs.append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
            best[i].append(min(runs))
    return [(statistics.median(w for w, _ in b), statistics.median(c for _, c in b)) for b in best]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_knn(shapes, ks, repeats: int) -> list[Row]:
    import faiss

    faiss.omp_set_num_threads(THREADS)
    rows = []
    for q, m, d in shapes:
        rng = np.random.default_rng(q + m + d)
        queries = rng.standard_normal((q, d), dtype=np.float32)
        bank = rng.standard_normal((m, d), dtype=np.float32)
        index = faiss.IndexFlatL2(d)
        index.add(bank)
        # Brute force, as IndexFlatL2 (random data would not prune anyway; prune=False also
        # skips the PCA, whose BLAS threads would still be spinning when the timing starts).
        ours_index = native.KnnIndex(bank, threads=THREADS, prune=False)
        for k in ks:
            # Same answer first: the benchmark compares equal work.
            d_ours, i_ours = native.knn(queries, bank, k, threads=THREADS)
            d_faiss, i_faiss = index.search(queries, k)
            agree = float((i_ours == i_faiss).mean())
            (ours, ours_cpu), (ours_idx, _), (peer, peer_cpu) = interleaved_ms(
                [
                    partial(native.knn, queries, bank, k, threads=THREADS),
                    partial(ours_index.search, queries, k, threads=THREADS),
                    partial(index.search, queries, k),
                ],
                repeats,
            )
            flops = 2.0 * q * m * d
            row = Row(
                kernel=f"knn k={k}",
                shape=f"{q}x{m}x{d}",
                ours_ms=ours,
                peer_ms=peer,
                peer="faiss IndexFlatL2",
                note=f"indices equal to faiss: {agree:.4f}",
                extra={
                    "ours_index_search_ms": ours_idx,
                    "ours_cpu_ms": ours_cpu,
                    "peer_cpu_ms": peer_cpu,
                    "ours_gflops": flops / ours / 1e6,
                    "faiss_gflops": flops / peer / 1e6,
                },
            )
            log.info(
                "%s %s ours %.2f ms (index %.2f) faiss %.2f ms ratio %.2f",
                row.kernel,
                row.shape,
                ours,
                ours_idx,
                peer,
                row.ratio,
            )
            rows.append(row)
    return rows


def torch_greedy_coreset(features, n: int, projection_dim: int, seed: int, iterations: int):
    """The greedy k-center as PatchCore implementations write it in torch (anomalib style).

    Runs at most ``iterations`` selection steps; returns (indices, projection seconds,
    seconds per step)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    projection = torch.randn(features.shape[1], projection_dim, generator=generator)
    projected = features @ projection if features.shape[1] > projection_dim else features
    t_projection = time.perf_counter() - t0
    t0 = time.perf_counter()
    min_distances = None
    idx = int(torch.randint(high=projected.shape[0], size=(1,), generator=generator).item())
    selected = []
    steps = min(n, iterations)
    for _ in range(steps):
        distance = torch.linalg.norm(projected - projected[idx : idx + 1], dim=1, keepdim=True)
        min_distances = (
            distance if min_distances is None else torch.minimum(min_distances, distance)
        )
        idx = int(torch.argmax(min_distances).item())
        min_distances[idx] = 0
        selected.append(idx)
    per_step = (time.perf_counter() - t0) / steps
    return selected, t_projection, per_step


def bench_coreset(rows_count: int, dim: int, fractions, repeats: int, torch_steps: int):
    import torch

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((rows_count, dim), dtype=np.float32)
    features_t = torch.from_numpy(features)
    results = []
    for fraction in fractions:
        n = max(1, int(rows_count * fraction))
        ours, ours_cpu = median_ms(
            partial(native.coreset, features, n, projection_dim=128, seed=0, threads=THREADS),
            repeats,
            warmup=0,
        )
        samples, cpu_samples = [], []
        for _ in range(max(1, repeats)):
            c0 = time.process_time()
            _, t_proj, per_step = torch_greedy_coreset(features_t, n, 128, 0, torch_steps)
            steps = min(n, torch_steps)
            samples.append((t_proj + per_step * n) * 1e3)
            cpu_samples.append((time.process_time() - c0) * 1e3 * n / steps)
        peer = statistics.median(samples)
        peer_cpu = statistics.median(cpu_samples)
        note = (
            "torch measured fully"
            if n <= torch_steps
            else (f"torch: {torch_steps} steps timed, extrapolated linearly to {n}")
        )
        row = Row(
            kernel=f"coreset {fraction:.0%}",
            shape=f"{rows_count}x{dim} -> {n}",
            ours_ms=ours,
            peer_ms=peer,
            peer="torch greedy (linalg.norm/minimum)",
            note=note,
            extra={"ours_cpu_ms": ours_cpu, "peer_cpu_ms": peer_cpu},
        )
        log.info(
            "%s %s ours %.1f ms torch %.1f ms speedup %.1fx",
            row.kernel,
            row.shape,
            ours,
            peer,
            row.speedup,
        )
        results.append(row)
    return results


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def write_report(rows: list[Row], path_stem: Path, repeats: int, load_before: str) -> None:
    import faiss
    import torch

    machine = {
        "cpu": cpu_model(),
        "hardware_threads": native.hardware_threads(),
        "threads_used": THREADS,
        "avx2_fma": native.has_avx2_fma(),
        "autoweld": __version__,
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    data = {
        "machine": machine,
        "rows": [asdict(r) | {"ratio": r.ratio, "speedup": r.speedup} for r in rows],
    }
    path_stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Native numeric kernels vs peers (CPU)",
        "",
        f"Machine: {machine['cpu']}, {machine['hardware_threads']} hardware threads; "
        f"{THREADS} threads for every contender (faiss.omp_set_num_threads, "
        f"torch.set_num_threads, threads=). AVX2+FMA path: {machine['avx2_fma']}. "
        f"faiss {machine['faiss']}, torch {machine['torch']}, numpy {machine['numpy']}. "
        f"kNN: median over {repeats} rounds of the fastest of 3 runs, the contenders taking "
        f"turns each round; coreset: median of at most 3 runs. {machine['date_utc']} UTC. "
        f"Load average (1/5/15 min) "
        f"before: {machine['load_average_before']}, after: {machine['load_average_after']}.",
        "",
        "`python bench/bench_numeric.py` — ratio = ours / peer (goal for kNN <= 1.0); speedup "
        "= peer / ours (goal for coreset >= 5).",
        "",
        "CPU-time columns: process CPU time summed over threads (ours / peer); on a busy shared "
        "machine they compare the work done better than wall time does.",
        "",
        "kNN: `ours` is the function `native.knn(queries, bank, k)`, which packs the bank and "
        "computes its norms on every call; `KnnIndex.search` (in the note) is the brute-force "
        "index the runtime uses, built once like faiss's index (neither side's build is timed).",
        "",
        "| kernel | shape | ours ms | peer ms | peer | ratio | speedup | CPU ratio | note |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        note = r.note
        cpu_ratio = r.extra["ours_cpu_ms"] / r.extra["peer_cpu_ms"]
        if "ours_index_search_ms" in r.extra:
            note += (
                f"; KnnIndex.search {r.extra['ours_index_search_ms']:.2f} ms "
                f"(ratio {r.extra['ours_index_search_ms'] / r.peer_ms:.2f}); "
                f"GFLOP/s ours {r.extra['ours_gflops']:.0f} / faiss {r.extra['faiss_gflops']:.0f}"
            )
        lines.append(
            f"| {r.kernel} | {r.shape} | {r.ours_ms:.2f} | {r.peer_ms:.2f} | {r.peer} | "
            f"{r.ratio:.2f} | {r.speedup:.2f} | {cpu_ratio:.2f} | {note} |"
        )
    path_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s.{md,json}", path_stem)


def main() -> int:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    parser.add_argument("--skip-coreset", action="store_true")
    parser.add_argument("--skip-knn", action="store_true")
    parser.add_argument("--torch-steps", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="threads per contender (the goal: 2)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    THREADS = args.threads
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.quick:
        knn_shapes = [(64, 500, 152), (50, 600, 1536)]
        coreset_args = (5000, 152, (0.01, 0.1), args.repeats, 100)
        stem = RESULTS / "native_numeric_cpu_quick"
    else:
        knn_shapes = [
            (1024, 1500, 152),
            (1024, 16384, 152),
            (784, 1500, 1536),
            (784, 16384, 1536),
        ]
        coreset_args = (100_000, 152, (0.01, 0.1), min(args.repeats, 3), args.torch_steps)
        stem = RESULTS / "native_numeric_cpu"
    if THREADS != 2:
        stem = stem.with_name(f"{stem.name}_{THREADS}threads")
    load_before = load_average()
    rows: list[Row] = []
    if not args.skip_knn:
        rows += bench_knn(knn_shapes, (1, 9), args.repeats)
    if not args.skip_coreset:
        rows += bench_coreset(*coreset_args)
    write_report(rows, stem, args.repeats, load_before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
