"""``autoweld-ledger``: prove a quality ledger whole, print its head, export it for an auditor.

Exit codes: 0 ok; 1 the ledger failed verification (the first bad seq is printed); 2 a usage or
configuration error (no key, bad URL, unreachable database).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from autoweld.quality.keys import MissingKeyError
from autoweld.quality.ledger import Head, LedgerError, open_ledger, redact_url

ENV_LEDGER = "AUTOWELD_LEDGER"


def parse_head(text: str) -> tuple[str | None, Head]:
    """``STATION:SEQ:MAC`` (as ``head`` prints it) or ``SEQ:MAC`` for a one-station ledger."""
    parts = text.strip().rsplit(":", 2)
    if len(parts) == 3:
        station, seq, mac = parts
    elif len(parts) == 2:
        station, (seq, mac) = None, parts
    else:
        raise ValueError(f"--expect-head {text!r} is not STATION:SEQ:MAC or SEQ:MAC")
    if not seq.isdigit() or not mac:
        raise ValueError(f"--expect-head {text!r}: SEQ must be a number and MAC non-empty")
    return station, (int(seq), mac)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoweld-ledger",
        description="Verify, inspect and export an AutoWeld quality ledger. The signing key "
        "comes from AUTOWELD_SECRET_KEY (older keys: AUTOWELD_VERIFY_KEYS / _FILE).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def ledger_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--ledger",
            default=os.environ.get(ENV_LEDGER),
            required=ENV_LEDGER not in os.environ,
            help=f"sqlite:///file.db, a file path or postgresql://... (default: ${ENV_LEDGER})",
        )

    verify = sub.add_parser("verify", help="prove the ledger is whole and untampered")
    ledger_arg(verify)
    verify.add_argument(
        "--expect-head",
        action="append",
        default=[],
        metavar="STATION:SEQ:MAC",
        help="a head printed earlier by `head` (repeat per station); detects a truncated tail",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    head = sub.add_parser("head", help="print the latest seq and MAC of every station")
    ledger_arg(head)
    head.add_argument("--station", help="only this station")
    head.add_argument("--json", action="store_true", help="print JSON instead of lines")

    export = sub.add_parser("export", help="write every record as CSV or JSON for an auditor")
    ledger_arg(export)
    export.add_argument("--out", required=True, help="output file (.csv or .json)")
    export.add_argument("--format", choices=("csv", "json"), help="default: from --out suffix")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``autoweld-ledger``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        expected: dict[str | None, Head] = {}
        for text in getattr(args, "expect_head", []):
            station, head = parse_head(text)
            expected[station] = head
        with open_ledger(args.ledger, read_only=True) as ledger:
            if args.command == "verify":
                if None in expected and len(expected) > 1:
                    raise ValueError("mix of SEQ:MAC and STATION:SEQ:MAC in --expect-head")
                expect = expected.get(None) if None in expected else (expected or None)
                report = ledger.verify(expect_head=expect, progress=True)
                if args.json:
                    print(json.dumps(report.__dict__, sort_keys=True))
                elif report.ok:
                    print(f"OK: {report.checked} records in {report.stations} station(s) verified")
                else:
                    print(
                        f"FAILED: station {report.station_id!r} first bad seq "
                        f"{report.first_bad_seq}: {report.reason} "
                        f"({report.checked} records verified before it)"
                    )
                return 0 if report.ok else 1
            if args.command == "head":
                heads = ledger.heads()
                if args.station is not None:
                    heads = {args.station: ledger.head(args.station)}
                if args.json:
                    print(json.dumps({s: {"seq": q, "mac": m} for s, (q, m) in heads.items()}))
                else:
                    for station, (seq, mac) in heads.items():
                        print(f"{station}:{seq}:{mac}")
                return 0
            count = ledger.export(args.out, args.format, progress=True)
            print(f"exported {count} records to {args.out}")
            return 0
    except (MissingKeyError, ValueError, LedgerError, OSError) as error:
        print(f"autoweld-ledger: error: {redact_url(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
