"""``autoweld-bench``: latency per stage against the plain PyTorch way, in one run.

    autoweld-bench --bundle DIR [--images DIR | --category weld] [-n 200] [--warmup 20]
        [--batch 8] [--threads 2] [--ledger URL] [--plc URL] [--json FILE] [--markdown FILE]
        [--plot PNG] [--no-reference] [--reference FILE] [--cold-repeats 3]

Prints the Markdown table on stdout (logs and progress bars go to stderr). Exit status 0 after a
complete run, 2 for a usage error, 1 when the run failed. The goals are reported, not enforced:
a missed goal does not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from autoweld.cli import _args, configure_logging

__all__ = ["build_parser", "main"]

log = logging.getLogger("autoweld.bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoweld-bench",
        description="Latency per stage (decode, preprocess, engine, kNN, scoring + fusion, "
        "signed record, PLC send), end to end, throughput, cold start and peak memory of the "
        "runtime, against the plain PyTorch way on the same bundle and images, in the same run.",
    )
    parser.add_argument("--bundle", required=True, help="bundle directory (autoweld-export)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", help="folder of images to inspect (PNG, JPEG, BMP, TIFF)")
    source.add_argument(
        "--category",
        default="weld",
        help="use this category's test images (default: weld, generated on first use)",
    )
    parser.add_argument("--data-root", help="data root for --category (default: $AUTOWELD_DATA)")
    parser.add_argument(
        "-n", type=_args.int_at_least(1), default=200, help="timed inspections per side"
    )
    parser.add_argument(
        "--warmup", type=_args.int_at_least(0), default=20, help="warm-up inspections"
    )
    parser.add_argument(
        "--batch", type=_args.int_at_least(1), default=8, help="batch for throughput"
    )
    parser.add_argument(
        "--threads", type=_args.int_at_least(1), default=2, help="threads for each side (default 2)"
    )
    parser.add_argument(
        "--ledger",
        help="ledger URL to write to, signed with AUTOWELD_SECRET_KEY (default: a temporary "
        "SQLite ledger with a test key generated for the run)",
    )
    parser.add_argument(
        "--plc", help="PLC URL (default: a loopback one-byte TCP PLC started by the bench)"
    )
    parser.add_argument("--json", help="write the JSON report here")
    parser.add_argument("--markdown", help="write the Markdown table here")
    parser.add_argument("--plot", help="write the per-stage latency plot here (PNG)")
    parser.add_argument(
        "--no-reference", action="store_true", help="measure the runtime only (no torch)"
    )
    parser.add_argument(
        "--reference",
        help="the torch reference file (default: CATEGORY.reference.pt beside the bundle; "
        "without one the model is rebuilt from the manifest)",
    )
    parser.add_argument(
        "--cold-repeats",
        type=_args.int_at_least(0),
        default=3,
        help="new processes per side for the cold start (median; default 3)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.plot and not args.plot.lower().endswith(".png"):
        parser.error(f"--plot {args.plot} must end in .png")
    if args.no_reference and args.reference:
        parser.error("--reference and --no-reference exclude each other")

    from autoweld.bench.report import markdown_report, plot_report
    from autoweld.bench.runner import BenchConfig, run_bench

    try:
        config = BenchConfig(
            bundle=Path(args.bundle),
            images=Path(args.images) if args.images else None,
            category=args.category,
            data_root=Path(args.data_root) if args.data_root else None,
            n=args.n,
            warmup=args.warmup,
            batch=args.batch,
            threads=args.threads,
            ledger=args.ledger,
            plc=args.plc,
            reference=not args.no_reference,
            reference_file=Path(args.reference) if args.reference else None,
            cold_repeats=args.cold_repeats,
            progress=not args.no_progress,
        )
    except ValueError as error:
        parser.error(str(error))
    shown = ["autoweld-bench", *(sys.argv[1:] if argv is None else argv)]
    try:
        result = run_bench(config, command=shlex.join(shown))
    except (ValueError, OSError, RuntimeError) as error:
        from autoweld.quality.ledger import redact_url

        print(f"autoweld-bench: error: {redact_url(str(error))}", file=sys.stderr)
        return 1
    table = markdown_report(result.report)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.report, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table, encoding="utf-8")
    if args.plot:
        plot_report(result.report, result.samples, args.plot)
    print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
