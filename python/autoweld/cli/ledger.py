"""``autoweld-ledger``: prove a quality ledger whole, print its head, export it for an auditor,
and forward a station's records to a central ledger (store and forward, docs/forwarding.md).

Exit codes: 0 ok; 1 the ledger failed verification (the first bad seq is printed), the central
copy differs from a station chain (``verify --against``), or forwarding met a conflict (the
central ledger holds other records for a station, or the local chain is broken; nothing is
overwritten); 2 a usage or configuration error (no key, bad URL, unreachable database, missing
station ledger); 3 not complete yet: ``verify --against`` found the central copy an intact prefix
with records still to forward, or ``forward --once`` could not reach a ledger (run it again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from autoweld.cli import _args
from autoweld.quality.keys import MissingKeyError, load_keyring
from autoweld.quality.ledger import (
    Head,
    Ledger,
    LedgerError,
    RecordPlaceError,
    VerifyReport,
    open_ledger,
    redact_url,
)

ENV_LEDGER = "AUTOWELD_LEDGER"
ENV_CENTRAL = "AUTOWELD_CENTRAL_LEDGER"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


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
    verify.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="STATION_LEDGER",
        help="a station's own ledger (repeatable): also prove that --ledger (the central copy) "
        "holds exactly that station's chains, byte for byte (exit 3: complete so far, records "
        "still to forward)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    head = sub.add_parser("head", help="print the latest seq and MAC of every station")
    ledger_arg(head)
    head.add_argument("--station", help="only this station")
    head.add_argument("--json", action="store_true", help="print JSON instead of lines")

    init = sub.add_parser(
        "init",
        help="create the ledger's tables and append-only guards (run once, as the database "
        "owner, before stations with least privilege use it); an existing ledger is left as is",
    )
    ledger_arg(init)

    export = sub.add_parser("export", help="write every record as CSV or JSON for an auditor")
    ledger_arg(export)
    export.add_argument("--out", required=True, help="output file (.csv or .json)")
    export.add_argument("--format", choices=("csv", "json"), help="default: from --out suffix")
    _forward_parser(sub, ledger_arg)
    return parser


def _forward_parser(sub: Any, ledger_arg: Any) -> None:
    forward = sub.add_parser(
        "forward",
        help="forward the station ledger's signed records to a central ledger, in order",
        description="Copy every station chain of --ledger to --central as signed, resuming "
        "from the central head; follows the ledger until stopped (SIGTERM/SIGINT) unless --once.",
    )
    ledger_arg(forward)
    forward.add_argument(
        "--central",
        default=os.environ.get(ENV_CENTRAL),
        required=ENV_CENTRAL not in os.environ,
        help=f"the central ledger, postgresql://... (default: ${ENV_CENTRAL})",
    )
    forward.add_argument("--once", action="store_true", help="one pass, then exit")
    forward.add_argument(
        "--poll", type=_args.positive_float, default=2.0, help="seconds between passes (2)"
    )
    forward.add_argument(
        "--batch-size", type=_args.positive_int, default=500, help="records per transaction"
    )
    forward.add_argument(
        "--max-backoff",
        type=_args.positive_float,
        default=30.0,
        help="longest wait between retries while a ledger is unreachable (30 s)",
    )
    forward.add_argument("-v", "--verbose", action="store_true", help="log every batch")


def _verify_line(report: VerifyReport) -> str:
    if report.ok:
        return f"OK: {report.checked} records in {report.stations} station(s) verified"
    return (
        f"FAILED: station {report.station_id!r} first bad seq {report.first_bad_seq}: "
        f"{report.reason} ({report.checked} records verified before it)"
    )


def _verify(ledger: Ledger, args: argparse.Namespace, expected: dict[str | None, Head]) -> int:
    if None in expected and len(expected) > 1:
        raise ValueError("mix of SEQ:MAC and STATION:SEQ:MAC in --expect-head")
    expect = expected.get(None) if None in expected else (expected or None)
    report = ledger.verify(expect_head=expect, progress=True)
    if args.against:
        return _verify_against(ledger, report, args)
    print(json.dumps(report.__dict__, sort_keys=True) if args.json else _verify_line(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _verify_against(central: Ledger, central_report: VerifyReport, args: argparse.Namespace) -> int:
    """The central ledger against each station ledger: both verify, and every station chain
    is there byte for byte. Central problems of stations not compared here are only noted."""
    from autoweld.quality.forward import compare_chains

    lines, chains, stations, bad = [], [], [], False
    compared: set[str] = set()
    for url in args.against:
        with open_ledger(url, read_only=True) as station_ledger:
            report = station_ledger.verify(progress=True)
            stations.append({"ledger": redact_url(url), "report": report.__dict__})
            lines.append(f"station ledger {redact_url(url)}: {_verify_line(report)}")
            bad |= not report.ok
            for station in station_ledger.heads():
                compared.add(station)
                chains.append(compare_chains(central, station_ledger, station))
    central_problems = [p for p in central_report.problems if p[0] in compared]
    bad |= bool(central_problems)
    lines.insert(0, "central: " + ("OK" if not central_problems else "FAILED: " + "; ".join(
        f"station {s!r} first bad seq {q}: {r}" for s, q, r in central_problems)))  # fmt: skip
    others = len(central_report.problems) - len(central_problems)
    if others:
        lines.insert(1, f"note: {others} other station(s) of the central ledger did not verify "
                     "(not compared here)")  # fmt: skip
    for chain in chains:
        lines.append(_chain_line(chain))
    bad |= any(chain.state == "differs" for chain in chains)
    behind = any(chain.state == "behind" for chain in chains)
    code = EXIT_FAILED if bad else (EXIT_INCOMPLETE if behind else EXIT_OK)
    if args.json:
        print(json.dumps({"central": central_report.__dict__, "stations": stations,
                          "chains": [c.to_json() for c in chains], "exit": code},
                         sort_keys=True))  # fmt: skip
    else:
        print("\n".join(lines))
    return code


def _chain_line(chain: Any) -> str:
    station, have, held = chain.station_id, chain.station_records, chain.central_records
    if chain.state == "equal":
        return (
            f"{station}: EQUAL: the central copy holds the station's {have} records, byte for byte"
        )
    if chain.state == "behind":
        return (f"{station}: BEHIND: the central copy holds {held} of the station's {have} records"
                f" ({have - held} not forwarded yet); those {held} are equal")  # fmt: skip
    return f"{station}: DIFFERS at seq {chain.first_bad_seq}: {chain.reason}"


def _forward(args: argparse.Namespace) -> int:
    from autoweld.quality.forward import Forwarder

    keys = load_keyring()
    with open_ledger(args.ledger, keys, read_only=True) as local:  # a missing file: exit 2
        local.count()
    stop = threading.Event()
    with Forwarder(args.ledger, args.central, keys, batch_size=args.batch_size,
                   poll_s=args.poll, max_backoff_s=args.max_backoff) as forwarder:  # fmt: skip
        try:
            if args.once:
                done = forwarder.run_once()
                print(f"forwarded {done.forwarded} records ({done.skipped} already there); "
                      f"backlog {done.backlog_total}")  # fmt: skip
                return EXIT_OK
            previous = {sig: signal.signal(sig, lambda *_: stop.set())
                        for sig in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
            try:
                forwarder.run(stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            return EXIT_OK
        except RecordPlaceError as error:
            print(f"autoweld-ledger: forwarding conflict: {redact_url(str(error))}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_FAILED
        except LedgerError as error:
            print(f"autoweld-ledger: not forwarded, run again: {redact_url(str(error))}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_INCOMPLETE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``autoweld-ledger``; returns the exit code."""
    args = _parser().parse_args(argv)
    forwarding = args.command == "forward"
    logging.basicConfig(
        level=logging.INFO if forwarding else logging.WARNING,
        format=("%(asctime)s " if forwarding else "") + "%(levelname)s %(name)s: %(message)s",
    )
    if forwarding and args.verbose:
        logging.getLogger("autoweld.quality.forward").setLevel(logging.DEBUG)
    try:
        if forwarding:
            return _forward(args)
        if args.command == "init":
            with open_ledger(args.ledger) as ledger:
                stations = ledger.heads()
                print(
                    f"ledger ready: {redact_url(args.ledger)} "
                    f"({ledger.count()} records, {len(stations)} stations)"
                )
            return EXIT_OK
        expected: dict[str | None, Head] = {}
        for text in getattr(args, "expect_head", []):
            station, head = parse_head(text)
            expected[station] = head
        with open_ledger(args.ledger, read_only=True) as ledger:
            if args.command == "verify":
                return _verify(ledger, args, expected)
            if args.command == "head":
                heads = ledger.heads()
                if args.station is not None:
                    heads = {args.station: ledger.head(args.station)}
                if args.json:
                    print(json.dumps({s: {"seq": q, "mac": m} for s, (q, m) in heads.items()}))
                else:
                    for station, (seq, mac) in heads.items():
                        print(f"{station}:{seq}:{mac}")
                return EXIT_OK
            count = ledger.export(args.out, args.format, progress=True)
            print(f"exported {count} records to {args.out}")
            return EXIT_OK
    except (MissingKeyError, ValueError, LedgerError, OSError) as error:
        print(f"autoweld-ledger: error: {redact_url(str(error))}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
