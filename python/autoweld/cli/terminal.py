"""``autoweld-terminal``: the operator terminal, a local web page the line runs from.

Starts the station (bundle, ledger, optional PLC link), watches the camera folder if given, and
serves the page on ``http://HOST:PORT/``. Exit status 2 for a usage error (missing signing key,
ledger or PLC URL that cannot be opened, watched folder that does not exist, terminal extra not
installed, a credentials file that is unsafe or malformed, a non-loopback ``--host`` without
``--credentials``, a bundle without a valid signature while signatures are required); any other
bundle that is refused does not stop the terminal: every part then FAILS, with the reason recorded
and shown on the page. Signatures are required with ``--require-signed``,
``AUTOWELD_REQUIRE_SIGNED=1``, and by default whenever ``AUTOWELD_BUNDLE_KEY`` is set.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from autoweld.cli import _args, configure_logging

if TYPE_CHECKING:  # the terminal extra may be missing: imported in main, after the check
    from autoweld.terminal.app import UploadLimits
    from autoweld.terminal.security import Credentials

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
    _args.add_require_signed(parser, "on by default when AUTOWELD_BUNDLE_KEY is set")
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
    parser.add_argument(
        "--central",
        help="also forward the ledger's records to this central ledger (postgresql://...); "
        "the page shows the backlog (docs/forwarding.md)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every inspection")
    _add_batch_flags(parser)
    _add_access_flags(parser)
    return parser


def _wait_ms(value: str) -> float:
    """An argparse type: milliseconds, a finite number >= 0."""
    number = _args._number(value)
    if not 0.0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return number


def _add_batch_flags(parser: argparse.ArgumentParser) -> None:
    """Several cameras on one station: queued images inspected together (docs/terminal.md)."""
    from autoweld.runtime.batcher import DEFAULT_MAX_WAIT_MS

    parser.add_argument(
        "--max-batch",
        type=_args.positive_int,
        default=1,
        help="inspect up to N queued images in one engine call (default 1: one at a time)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=_wait_ms,
        default=DEFAULT_MAX_WAIT_MS,
        help="with --max-batch > 1: how long to wait for more images once one is in hand "
        f"(default {DEFAULT_MAX_WAIT_MS:g})",
    )


def _add_access_flags(parser: argparse.ArgumentParser) -> None:
    """Who may use the page, from where, and how much an upload may hold (docs/terminal.md)."""
    parser.add_argument(
        "--credentials",
        help="file of 'ROLE NAME sha256:HEX' lines (mode 600): who may upload, view and verify; "
        "needed for uploads, and for any --host beyond loopback",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name or address the page is opened at (repeatable); other Host headers "
        "are refused",
    )
    limits = (
        ("--max-upload-mb", _args.positive_float, 64.0, "largest upload in MiB (64)"),
        ("--max-uploads", _args.positive_int, 4, "uploads received at once; more get 429 (4)"),
        ("--max-queue", _args.positive_int, 16, "inspections waiting; more uploads get 503 (16)"),
    )
    for flag, kind, default, text in limits:
        parser.add_argument(flag, type=kind, default=default, help=text)


def _access(args: argparse.Namespace) -> tuple[Credentials | None, frozenset[str], UploadLimits]:
    """``(credentials or None, served hosts, upload limits)`` from the flags; ValueError for a
    refused combination, before anything is opened."""
    from autoweld.terminal.app import UploadLimits
    from autoweld.terminal.security import Credentials, is_loopback, served_hosts

    credentials = Credentials.from_file(args.credentials) if args.credentials else None
    if credentials is None and not is_loopback(args.host):
        raise ValueError(
            f"--host {args.host} serves the page beyond this machine: give --credentials FILE "
            "(see docs/terminal.md, 'Credentials'), or serve on 127.0.0.1"
        )
    limits = UploadLimits(
        max_bytes=max(1, int(args.max_upload_mb * 1024 * 1024)),
        concurrent=args.max_uploads,
        queue=args.max_queue,
    )
    return credentials, served_hosts(args.host, args.port, args.allowed_host), limits


def _check_signature_first(bundle_dir: Path, flag: bool | None) -> bool:
    """Whether signed bundles are required (flag, environment, or a bundle key configured);
    if so, a bundle without a valid signature is a usage error now (its manifest only: the
    files are checked when the station loads it)."""
    from autoweld.bundle import BundleError, SignatureError, bundle_key_from_env, load_bundle

    required = _args.require_signed(flag) or bundle_key_from_env() is not None
    if required:
        try:
            load_bundle(bundle_dir, verify_files=False, require_signed=True)
        except SignatureError as error:
            raise ValueError(f"--bundle {bundle_dir}: {error}") from None
        except BundleError:  # any other refusal: the station runs and FAILS every part
            pass
    return required


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
        credentials, hosts, limits = _access(args)
        _args.check_server(args.server)
        if args.watch is not None and not Path(args.watch).is_dir():
            raise ValueError(f"--watch {args.watch!r} is not a directory")
        require_signed = _check_signature_first(Path(args.bundle), args.require_signed)
        config = StationConfig(
            bundle_dir=Path(args.bundle),
            ledger_url=args.ledger,
            station_id=args.station,
            plc_url=args.plc,
            plc_timeout_s=args.plc_timeout,
            heatmap_dir=Path(args.heatmap_dir) if args.heatmap_dir else None,
            providers=tuple(args.providers),
            threads=args.threads,
            require_signed=require_signed,
            server_url=args.server,
            server_timeout_s=args.server_timeout,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
        )
        station = Station(config)
    except Exception as error:  # noqa: BLE001 - missing key, bad URL, ... : say which
        from autoweld.quality.ledger import redact_url

        return usage(redact_url(str(error)))

    watcher = forwarder = None
    try:
        station.start()
        if args.central:
            from autoweld.quality.forward import Forwarder

            forwarder = Forwarder(args.ledger, args.central).start()
        if args.watch is not None:
            watcher = FolderWatcher(
                WatchConfig(Path(args.watch), poll_s=args.poll, settle_s=args.settle),
                station.submit,
            ).start()
        app = create_app(
            station,
            hosts=hosts,
            credentials=credentials,
            limits=limits,
            watch_folder=str(Path(args.watch).resolve()) if args.watch else None,
            forwarder=forwarder,
        )
        if credentials is None:
            log.warning("started without --credentials: uploads from the page are refused")
        print(f"autoweld-terminal: http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if watcher is not None:
            watcher.stop()
        if forwarder is not None:
            forwarder.close()
        station.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
