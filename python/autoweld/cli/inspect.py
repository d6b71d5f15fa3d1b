"""``autoweld-inspect``: one audited inspection of one image against one bundle.

Exit status: **0** the part passed, **1** the part failed — including every inspection that
could not be completed (unreadable image, bad bundle, engine failure, ledger write failure: a
FAIL, never a pass) — and **2** for a usage error (bad or missing arguments, an unknown execution
provider, a ledger/PLC URL that cannot be opened), where no inspection took place — and for a
bundle refused under ``--require-signed`` (or ``AUTOWELD_REQUIRE_SIGNED=1``) for want of a valid
signature: that part is still a FAIL, signalled and recorded, but the station is misconfigured.

A bundle used without a checked signature (no ``AUTOWELD_BUNDLE_KEY``) is logged loudly and its
record says ``bundle_signed: false`` (docs/bundle.md, "Signing").

Order of work: inspect -> heat-map (if asked) -> PLC signal (if ``--plc``) -> ledger record (if
``--ledger``). The PLC is told first so it never waits on the database; the record then holds
whether the PLC got the signal. If the record cannot be written the result becomes a FAIL with
the reason (an inspection without its record does not count as a pass) and a PASS already told
to the PLC is corrected with a FAIL; a record that is refused is replaced by a minimal FAIL record
carrying the reason (see ``autoweld.quality.record_inspection`` and docs/ledger.md). The part and
station ids are checked before anything is inspected (exit 2).

``--json`` prints exactly one JSON object on stdout with the keys ``decision``, ``probability``,
``scores``, ``probabilities``, ``threshold``, ``timings_ms``, ``record_seq``, ``plc_delivered`` and
``error`` (see ARCHITECTURE.md); logs go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoweld import __version__
from autoweld.cli import _args, configure_logging

__all__ = ["main"]

log = logging.getLogger("autoweld.inspect")

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoweld-inspect",
        description="Inspect one image against a model bundle; exit 0 PASS, 1 FAIL, 2 usage error.",
    )
    parser.add_argument("--bundle", required=True, help="bundle directory")
    parser.add_argument("--image", required=True, help="image file (PNG, JPEG, BMP, TIFF)")
    parser.add_argument("--part-id", required=True, help="part identifier for the quality record")
    _args.add_ledger(parser)
    _args.add_plc(parser)
    _args.add_plc_timeout(
        parser, "seconds to wait for the PLC before recording 'not delivered' (default 0.05)"
    )
    parser.add_argument("--heatmap", help="write the image with its anomaly map here (PNG)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _args.add_station(
        parser, "station id for the record (default: $AUTOWELD_STATION_ID or the host name)"
    )
    _args.add_require_signed(parser, "without it an unsigned bundle is used and recorded as such")
    _args.add_providers(parser)
    _args.add_threads(parser)
    _args.add_server(parser)
    parser.add_argument("--max-megapixels", type=float, default=64.0, help="decode limit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


def _open_quality(args: argparse.Namespace) -> tuple[Any, Any]:
    """Open the ledger and PLC link; raises ValueError with a message for the user."""
    from autoweld.quality import open_ledger, open_plc
    from autoweld.quality.ledger import redact_url

    ledger = link = None
    try:
        if args.ledger:
            try:
                ledger = open_ledger(args.ledger)
            except Exception as error:  # noqa: BLE001 - reported as a usage error
                raise ValueError(redact_url(f"--ledger {args.ledger}: {error}")) from None
        if args.plc:
            try:
                link = open_plc(args.plc, timeout=args.plc_timeout)
            except Exception as error:  # noqa: BLE001
                raise ValueError(f"--plc {args.plc}: {error}") from None
    except ValueError:
        if ledger is not None:
            ledger.close()
        raise
    return ledger, link


def _write_heatmap(path: str, image_path: str, result: Any, limits: Any) -> str:
    """Render and save the heat-map; returns its sha256."""
    from autoweld.runtime.decode import decode_image
    from autoweld.runtime.heatmap import render_heatmap, save_heatmap

    image = decode_image(image_path, limits)
    picture = render_heatmap(
        image,
        result.anomaly_map,
        result.decision,
        result.probability,
        result.threshold,
        error=result.error,
    )
    written = save_heatmap(path, picture)
    return hashlib.sha256(written.read_bytes()).hexdigest()


def _record_and_signal(
    args: argparse.Namespace,
    result: Any,
    bundle_sha256: str,
    heatmap_sha256: str | None,
    ledger: Any,
    link: Any,
    bundle_signed: bool | None,
) -> Any:
    """PLC and ledger through :func:`autoweld.quality.record_inspection`; returns its
    :class:`~autoweld.quality.RecordedInspection`, whose ``result`` is the final one: a record
    that could not be written, or was refused (then a minimal FAIL record stands for it), makes
    the inspection a FAIL."""
    from autoweld.quality import record_inspection

    return record_inspection(
        result,
        part_id=args.part_id,
        station_id=args.station,
        bundle_sha256=bundle_sha256,
        package_version=__version__,
        ledger=ledger,
        link=link,
        heatmap_sha256=heatmap_sha256,
        heatmap_path=str(Path(args.heatmap).resolve()) if heatmap_sha256 else None,
        bundle_signed=bundle_signed,
    )


#: how the error of a bundle refused for its signature under --require-signed begins
_SIGNATURE_REFUSED = "bundle refused for its signature: "


def _load_inspector(
    args: argparse.Namespace, bundle_dir: Path, limits: Any, require_signed: bool
) -> tuple[Any, Any]:
    """(the Inspector, None), or (None, a FAIL result saying why the bundle was refused)."""
    from autoweld.bundle import BundleError, SignatureError
    from autoweld.runtime.inspector import failed_result
    from autoweld.serving.client import open_inspector

    try:
        inspector = open_inspector(
            bundle_dir,
            server=args.server,
            server_timeout_s=args.server_timeout,
            providers=args.providers,
            threads=args.threads,
            decode_limits=limits,
            require_signed=require_signed,
        )
    except (BundleError, ValueError, OSError, RuntimeError) as error:
        signature = require_signed and isinstance(error, SignatureError)
        return None, failed_result(
            f"{_SIGNATURE_REFUSED if signature else 'bundle refused: '}{error}"
        )
    except Exception as error:  # noqa: BLE001 - fail safe: anything else is a FAIL too
        return None, failed_result(f"bundle could not be loaded: {type(error).__name__}: {error}")
    return inspector, None


def run(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Do one inspection; returns (exit status, the JSON object)."""
    from autoweld.bundle import manifest_identity
    from autoweld.quality.record import check_part_id, check_station_id
    from autoweld.runtime.decode import DecodeLimits

    # Usage errors first: nothing is inspected or recorded for them.
    _args.check_engine_flags(args.providers, args.threads)
    _args.check_server(args.server)
    try:
        args.part_id = check_part_id(args.part_id)
    except ValueError as error:
        raise ValueError(f"--part-id: {error}") from None
    try:
        args.station = check_station_id(args.station)
    except ValueError as error:
        raise ValueError(f"--station: {error}") from None
    if not args.max_megapixels > 0:
        raise ValueError(f"--max-megapixels must be > 0, got {args.max_megapixels}")
    if args.heatmap and not args.heatmap.lower().endswith(".png"):
        raise ValueError(f"--heatmap {args.heatmap} must end in .png")
    limits = DecodeLimits(max_pixels=int(args.max_megapixels * 1e6))
    require_signed = _args.require_signed(args.require_signed)
    ledger, link = _open_quality(args)

    try:
        bundle_dir = Path(args.bundle)
        bundle_sha256 = manifest_identity(bundle_dir)
        start = time.perf_counter()
        inspector, result = _load_inspector(args, bundle_dir, limits, require_signed)
        unsigned_refused = inspector is None and result.error.startswith(_SIGNATURE_REFUSED)
        load_ms = (time.perf_counter() - start) * 1e3
        if inspector is not None:
            bundle_sha256 = inspector.bundle.sha256
            with inspector:
                result = inspector.inspect(args.image)
        result.timings_ms = {"load_bundle": load_ms, **result.timings_ms}

        heatmap_sha256 = None
        if args.heatmap:
            try:
                heatmap_sha256 = _write_heatmap(args.heatmap, args.image, result, limits)
            except Exception as error:  # noqa: BLE001 - a missing picture must not hide a result
                log.warning("heat-map not written: %s", error)

        signed = inspector.bundle_signed if inspector is not None else None
        recorded = _record_and_signal(
            args, result, bundle_sha256, heatmap_sha256, ledger, link, signed
        )
        result = recorded.result
    finally:
        if link is not None:
            link.close()
        if ledger is not None:
            ledger.close()

    payload = result.to_json()
    payload["record_seq"] = recorded.record_seq
    payload["plc_delivered"] = recorded.plc_delivered
    ordered = {
        key: payload[key]
        for key in (
            "decision",
            "probability",
            "scores",
            "probabilities",
            "threshold",
            "timings_ms",
            "record_seq",
            "plc_delivered",
            "error",
        )
    }
    if unsigned_refused:
        log.error("%s", result.error)
        return EXIT_USAGE, ordered
    return (EXIT_PASS if result.decision == "PASS" else EXIT_FAIL), ordered


def _print_human(payload: dict[str, Any]) -> None:
    probability = payload["probability"]
    shown = f"{probability:.4f}" if probability is not None else "n/a"
    threshold = payload["threshold"]
    print(f"{payload['decision']}  probability {shown}  threshold {threshold}")
    for name, score in payload["scores"].items():
        print(f"  {name:<18} score {score:.5g}  probability {payload['probabilities'][name]:.4f}")
    timings = "  ".join(f"{k} {v:.1f}" for k, v in payload["timings_ms"].items())
    print(f"  timings ms: {timings}")
    if payload["record_seq"] is not None:
        print(f"  ledger record #{payload['record_seq']}")
    if payload["plc_delivered"] is not None:
        print(f"  PLC signal {'delivered' if payload['plc_delivered'] else 'NOT delivered'}")
    if payload["error"]:
        print(f"  error: {payload['error']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 PASS, 1 FAIL, 2 usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        status, payload = run(args)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"autoweld-inspect: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(payload))
    else:
        _print_human(payload)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
