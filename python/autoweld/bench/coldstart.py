"""Cold start child: a NEW process that loads one side and inspects one image, then reports.

    python -m autoweld.bench.coldstart --side ours|reference --bundle DIR --image FILE
        [--threads N] [--reference FILE]

Prints one JSON line on stdout: ``first_result_monotonic`` (``time.monotonic()`` when the first
result was ready; the parent subtracts its own reading taken just before it started this
process — CLOCK_MONOTONIC is system-wide on Linux), ``import_ms``, ``load_ms``, ``first_ms``
(since this module started), ``peak_rss_kb`` (this process's peak resident set: ``VmHWM`` of
``/proc/self/status``; elsewhere ``getrusage``), ``decision`` and ``probability``, and
``torch_loaded`` (whether torch ended up in ``sys.modules``).

Why not ``getrusage`` on Linux: ``ru_maxrss`` survives ``fork`` + ``exec``, so a child started by
a parent that already holds 700 MB reports at least 700 MB. ``VmHWM`` belongs to the address
space that ``exec`` created, so it is this program's own peak.

Only the standard library is imported before the side's own imports, so ``import_ms`` is what
the side costs. The ``ours`` side never imports torch.
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()

import argparse  # noqa: E402 - after the clock on purpose
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402


def peak_rss_kb() -> int:
    """Peak resident set size of this process in KiB (see the module docstring)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


def run(argv: Sequence[str] | None = None) -> dict:
    """Do the cold start in this process; returns the report (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m autoweld.bench.coldstart")
    parser.add_argument("--side", choices=("ours", "reference"), required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reference", default=None, help="torch reference file")
    args = parser.parse_args(argv)

    start = time.monotonic()
    if args.side == "ours":
        from autoweld.runtime.inspector import Inspector

        imported = time.monotonic()
        inspector = Inspector(args.bundle, threads=args.threads)
        loaded = time.monotonic()
        result = inspector.inspect(args.image)
    else:
        from autoweld.bench.torch_way import TorchWay

        imported = time.monotonic()
        way = TorchWay(args.bundle, reference_file=args.reference, threads=args.threads)
        loaded = time.monotonic()
        with open(args.image, "rb") as handle:
            result = way.inspect(handle.read())
    done = time.monotonic()
    return {
        "side": args.side,
        "first_result_monotonic": done,
        "import_ms": (imported - start) * 1e3,
        "load_ms": (loaded - imported) * 1e3,
        "first_ms": (done - loaded) * 1e3,
        "since_module_ms": (done - _STARTED) * 1e3,
        "peak_rss_kb": peak_rss_kb(),
        "decision": result.decision,
        "probability": result.probability if result.error is None else None,
        "error": result.error,
        "torch_loaded": "torch" in sys.modules,
    }


def main(argv: Sequence[str] | None = None) -> int:
    report = run(argv)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
