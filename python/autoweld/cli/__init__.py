"""Command-line entry points (autoweld-export, -eval, -inspect, -bench, -ledger)."""

import logging
import sys

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool, *, timestamps: bool = False) -> None:
    """Log to stderr: INFO with ``-v``, else WARNING; ``timestamps`` for long-running services."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=("%(asctime)s " if timestamps else "") + _LOG_FORMAT,
        stream=sys.stderr,
    )
