"""Flags and argument checks that several command lines share, written once.

``add_*`` add one flag each (so every command keeps its own order in ``--help``); the
``argparse`` types (:func:`positive_int`, :func:`int_at_least`, :func:`positive_float`,
:func:`port`, :func:`ratio`) turn a bad value into argparse's usage error; the ``check_*``
functions raise ``ValueError`` with the message the command prints before exiting 2. This is the
only module of ``cli`` that imports the runtime's engine-request check.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Sequence

__all__ = [
    "add_ledger",
    "add_plc",
    "add_plc_timeout",
    "add_providers",
    "add_require_signed",
    "add_server",
    "add_station",
    "add_threads",
    "check_engine_flags",
    "check_server",
    "int_at_least",
    "port",
    "positive_float",
    "positive_int",
    "ratio",
    "require_signed",
]

#: ``--plc-timeout`` default, in seconds (the link's own default)
PLC_TIMEOUT_S = 0.05


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {number}")
        return number

    return parse


#: An argparse type: an integer of at least 1.
positive_int = int_at_least(1)


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def positive_float(value: str) -> float:
    """An argparse type: a number above 0."""
    number = _number(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def ratio(value: str) -> float:
    """An argparse type: a fraction in (0, 1]."""
    number = _number(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {number}")
    return number


def port(value: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {number}")
    return number


def add_providers(parser: argparse.ArgumentParser) -> None:
    """``--providers``: the engines to try, best first (checked by :func:`check_engine_flags`)."""
    parser.add_argument(
        "--providers",
        nargs="+",
        default=["cpu"],
        help="engines in order of preference: best, tensorrt, cuda, cpu or ORT provider names",
    )


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads``: CPU threads of the runtime (checked by :func:`check_engine_flags`)."""
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")


def add_server(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--server-timeout``: score through a Triton server (docs/serving.md)."""
    parser.add_argument(
        "--server",
        help="score through a Triton server, grpc://HOST:PORT[/MODEL] (docs/serving.md)",
    )
    parser.add_argument(
        "--server-timeout",
        type=positive_float,
        default=5.0,
        help="seconds to wait for the server before the inspection is a FAIL (default 5)",
    )


def check_server(server: str | None) -> None:
    """``ValueError`` for a ``--server`` that is not grpc://HOST:PORT[/MODEL]."""
    if server:
        from autoweld.serving.client import parse_server_url

        parse_server_url(server)


def add_station(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--station``: the station id, by default ``$AUTOWELD_STATION_ID`` or the host name."""
    parser.add_argument(
        "--station",
        default=os.environ.get("AUTOWELD_STATION_ID") or socket.gethostname(),
        help=help_text,
    )


def add_ledger(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--ledger``: the quality ledger URL."""
    parser.add_argument(
        "--ledger",
        required=required,
        help="quality ledger URL (sqlite:///path or postgresql://...)",
    )


def add_plc(parser: argparse.ArgumentParser) -> None:
    """``--plc``: the PLC URL."""
    parser.add_argument(
        "--plc",
        help="PLC URL: tcp://host:port, modbus://host:port?..., or for the plant opcua://, "
        "opcua+server://, mqtt:// (docs/plant.md)",
    )


def add_plc_timeout(
    parser: argparse.ArgumentParser,
    help_text: str,
    value_type: Callable[[str], float] = float,
) -> None:
    """``--plc-timeout`` in seconds, default :data:`PLC_TIMEOUT_S`."""
    parser.add_argument("--plc-timeout", type=value_type, default=PLC_TIMEOUT_S, help=help_text)


def add_require_signed(parser: argparse.ArgumentParser, default_text: str) -> None:
    """``--require-signed``: refuse a bundle without a valid signature (also
    ``AUTOWELD_REQUIRE_SIGNED=1``)."""
    parser.add_argument(
        "--require-signed",
        action="store_true",
        default=None,
        help="refuse a bundle without a valid signature (needs AUTOWELD_BUNDLE_KEY; also "
        f"AUTOWELD_REQUIRE_SIGNED=1); {default_text}",
    )


def require_signed(flag: bool | None) -> bool:
    """``--require-signed`` given, or ``AUTOWELD_REQUIRE_SIGNED`` set; a bad value of the
    variable is a ``ValueError`` (usage error)."""
    from autoweld.bundle import require_signed_from_env

    return bool(flag) or require_signed_from_env()


def check_engine_flags(providers: Sequence[str], threads: int | None) -> None:
    """``ValueError`` for an engine the runtime does not know or ``--threads`` below 1."""
    from autoweld.runtime.engines import check_engine_request

    check_engine_request(providers)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
