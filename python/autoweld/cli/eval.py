"""``autoweld-eval``: how well a bundle separates good from defective parts on the test split.

The command line of :func:`autoweld.evaluation.evaluate` (what is measured, and how, is said
there). Exit status 0 on success, 1 when images failed to inspect, 2 for usage — a bundle
refused under ``--require-signed`` / ``AUTOWELD_REQUIRE_SIGNED=1`` included.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from autoweld.cli import _args, configure_logging

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="autoweld-eval",
        description="Image AUROC, pixel AUROC and AUPRO of a bundle on its test split.",
    )
    parser.add_argument("--bundle", required=True, help="bundle directory")
    parser.add_argument("--data-root", help="data root (MVTec AD layout; weld is generated)")
    parser.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    parser.add_argument("--limit", type=int, help="evaluate at most N test images (spread evenly)")
    _args.add_require_signed(parser, "without it an unsigned bundle is evaluated with a warning")
    _args.add_providers(parser)
    _args.add_threads(parser)
    _args.add_server(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="images per engine call")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    from autoweld.evaluation import evaluate, format_table

    try:
        _args.check_server(args.server)
        report = evaluate(
            args.bundle,
            args.data_root,
            limit=args.limit,
            providers=args.providers,
            threads=args.threads,
            batch_size=args.batch_size,
            require_signed=_args.require_signed(args.require_signed),
            server=args.server,
            server_timeout_s=args.server_timeout,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"autoweld-eval: error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
