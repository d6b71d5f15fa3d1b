"""``autoweld-terminal``: the operator terminal, a local web page the line runs from.

Starts the station (bundle, ledger, optional PLC link), watches the camera folder if given, and
serves the page on ``http://HOST:PORT/``. Exit status 2 for a usage error (missing signing key,
ledger or PLC URL that cannot be opened, watched folder that does not exist, terminal extra not
installed); a bundle that is refused does not stop the terminal: every part then FAILS, with the
reason recorded and shown on the page.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from autoweld.cli import _args, configure_logging

__all__ = ["main"]

log = logging.getLogger("autoweld.terminal")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoweld-terminal",
        description="Operator terminal: inspect images from a camera folder or uploads, signal "
        "the PLC, write the signed ledger, and show it all on a local web page.",
    )
    parser.add_argument("--bundle", required=True, help="bundle directory")
    _args.add_ledger(parser, required=True)
    _args.add_plc(parser)
    parser.add_argument("--watch", help="camera folder: new images in it are inspected")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    parser.add_argument("--port", type=_args.port, default=8080, help="port to serve on (8080)")
    _args.add_station(
        parser, "station id for the records (default: $AUTOWELD_STATION_ID or the host name)"
    )
    _args.add_plc_timeout(
        parser, "seconds the PLC may take to confirm a signal (0.05)", _args.positive_float
    )
    parser.add_argument("--heatmap-dir", help="also save every heat-map picture here (recorded)")
    _args.add_providers(parser)
    _args.add_threads(parser)
    _args.add_server(parser)
    parser.add_argument(
        "--settle",
        type=_args.positive_float,
        default=0.5,
        help="seconds a file's size must hold still",
    )
    parser.add_argument(
        "--poll", type=_args.positive_float, default=0.2, help="seconds between looks at --watch"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every inspection")
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: serve until interrupted; 2 for a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, timestamps=True)

    def usage(message: str) -> int:
        parser.print_usage(sys.stderr)
        print(f"autoweld-terminal: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    try:
        import uvicorn

        from autoweld.terminal.app import create_app
    except ImportError as error:
        return usage(f"the terminal needs its extra: pip install 'autoweld[terminal]' ({error})")
    from autoweld.quality.record import check_station_id
    from autoweld.terminal.service import Station, StationConfig
    from autoweld.terminal.watcher import FolderWatcher, WatchConfig

    try:
        args.station = check_station_id(args.station)  # printable, non-empty, <= 200
        _args.check_engine_flags(args.providers, args.threads)
        _args.check_server(args.server)
        if args.watch is not None and not Path(args.watch).is_dir():
            raise ValueError(f"--watch {args.watch!r} is not a directory")
        config = StationConfig(
            bundle_dir=Path(args.bundle),
            ledger_url=args.ledger,
            station_id=args.station,
            plc_url=args.plc,
            plc_timeout_s=args.plc_timeout,
            heatmap_dir=Path(args.heatmap_dir) if args.heatmap_dir else None,
            providers=tuple(args.providers),
            threads=args.threads,
            server_url=args.server,
            server_timeout_s=args.server_timeout,
        )
        station = Station(config)
    except Exception as error:  # noqa: BLE001 - missing key, bad URL, ... : say which
        from autoweld.quality.ledger import redact_url

        return usage(redact_url(str(error)))

    watcher = None
    try:
        station.start()
        if args.watch is not None:
            watcher = FolderWatcher(
                WatchConfig(Path(args.watch), poll_s=args.poll, settle_s=args.settle),
                station.submit,
            ).start()
        app = create_app(
            station, watch_folder=str(Path(args.watch).resolve()) if args.watch else None
        )
        if not _is_loopback(args.host):
            log.warning(
                "serving on %s: the page has no login; anyone who can reach it can see the "
                "ledger and upload images for inspection",
                args.host,
            )
        print(f"autoweld-terminal: http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if watcher is not None:
            watcher.stop()
        station.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
