"""``autoweld-plant``: what a station needs to talk to the plant (docs/plant.md).

``autoweld-plant certs --out DIR --name NAME`` makes a self-signed OPC UA application certificate
(``DIR/NAME.der``) and its private key (``DIR/NAME.key.pem``, owner-only), for an
``opcua+server://`` station, an ``opcua://`` client station, or a client that reads a station.

Exit codes: 0 ok; 2 a usage error or a file that exists (``--force`` replaces it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from autoweld.cli._args import positive_int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoweld-plant", description="Plant integration tools for AutoWeld stations."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser(
        "certs", help="make an OPC UA application certificate and private key (Basic256Sha256)"
    )
    certs.add_argument("--out", required=True, type=Path, help="folder to write into")
    certs.add_argument(
        "--name", required=True, help="application name: NAME.der and NAME.key.pem, CN=NAME"
    )
    certs.add_argument("--uri", help="application URI (default: urn:autoweld:NAME)")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="host name or IP address the application is reached at (repeat; default: this "
        "machine's host name, localhost, 127.0.0.1)",
    )
    certs.add_argument("--days", type=positive_int, default=3650, help="valid for (default 3650)")
    certs.add_argument(
        "--key-size", type=int, choices=(2048, 3072, 4096), default=2048, help="RSA key bits"
    )
    certs.add_argument("--force", action="store_true", help="replace existing files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``autoweld-plant``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from autoweld.quality.opcua import application_uri, write_application_certificate

    if not args.name.strip() or any(c in args.name for c in "/\\\0"):
        print(f"autoweld-plant: error: --name {args.name!r} is not a file name", file=sys.stderr)
        return 2
    try:
        cert, key = write_application_certificate(
            args.out, args.name, uri=args.uri, hostnames=args.host, days=args.days,
            key_size=args.key_size, overwrite=args.force,
        )  # fmt: skip
    except (OSError, ValueError) as error:
        print(f"autoweld-plant: error: {error}", file=sys.stderr)
        return 2
    print(f"certificate {cert} (application URI {application_uri(cert)})")
    print(f"private key {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
