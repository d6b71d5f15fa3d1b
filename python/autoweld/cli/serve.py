"""``autoweld-serve``: serving bundles from NVIDIA Triton Inference Server (docs/serving.md).

- ``autoweld-serve triton-repo --bundle [CAMERA=]DIR ... --out REPO``: write a Triton model
  repository, one model ``autoweld_<camera>`` per bundle (``--variant python``: one
  Python-backend model; ``--variant ensemble``: graph + scoring + ensemble);
- ``autoweld-serve local --repository REPO``: run that repository on this machine with the
  ``tritonserver`` of the ``nvidia-pytriton`` wheel (Python backend only), until interrupted.

Exit status 0 on success, 2 for a usage error or a refused bundle, 1 when the server failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from autoweld.cli import _args, configure_logging

__all__ = ["main"]

log = logging.getLogger("autoweld.serve")


def _camera_bundle(value: str) -> tuple[str | None, str]:
    camera, sep, path = value.partition("=")
    return (camera, path) if sep else (None, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoweld-serve", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    repo = commands.add_parser("triton-repo", help="write a Triton model repository")
    repo.add_argument(
        "--bundle",
        action="append",
        required=True,
        type=_camera_bundle,
        metavar="[CAMERA=]DIR",
        help="a bundle, served as model autoweld_CAMERA (default CAMERA: the bundle's category); "
        "repeat for one bank per camera",
    )
    repo.add_argument("--out", required=True, help="repository directory (replaced if ours)")
    repo.add_argument("--variant", choices=("python", "ensemble"), default="python")
    repo.add_argument(
        "--graph-backend",
        choices=("auto", "onnxruntime", "tensorrt", "python"),
        default="auto",
        help="ensemble only: how the graph runs (auto: tensorrt_plan with a plan, else onnxruntime)",
    )
    repo.add_argument("--max-batch-size", type=_args.positive_int, default=16)
    repo.add_argument("--queue-delay-us", type=_args.int_at_least(0), default=2000)
    repo.add_argument("--instances", type=_args.positive_int, default=1, help="per model")
    repo.add_argument("--kind", choices=("cpu", "gpu"), default="cpu", help="graph instances")
    repo.add_argument("--threads", type=_args.int_at_least(0), default=0, help="0: all cores")
    repo.add_argument(
        "--providers", nargs="+", default=["cpu"], help="ORT providers of a Python-backend graph"
    )
    local = commands.add_parser("local", help="serve a repository with nvidia-pytriton's server")
    local.add_argument("--repository", required=True)
    local.add_argument("--root", default="build/triton-server", help="where the server is unpacked")
    local.add_argument("--log", default="tritonserver.log", help="the server's log file")
    local.add_argument("--grpc-port", type=_args.port, default=8001)
    local.add_argument("--http-port", type=_args.port, default=8000)
    local.add_argument("--metrics-port", type=_args.port, default=8002)
    for sub in (repo, local):
        sub.add_argument("-v", "--verbose", action="store_true")
    return parser


def _triton_repo(args: argparse.Namespace) -> int:
    from autoweld.bundle import BundleError, load_bundle
    from autoweld.serving import RepositoryOptions, write_triton_repository

    bundles: dict[str, str] = {}
    for camera, path in args.bundle:
        try:
            name = camera or load_bundle(Path(path), verify_files=False).category
        except BundleError as error:
            raise ValueError(f"bundle refused: {error}") from None
        if name in bundles:
            raise ValueError(f"--bundle: camera {name!r} given twice (name them CAMERA=DIR)")
        bundles[name] = path
    options = RepositoryOptions(
        variant=args.variant,
        graph_backend=args.graph_backend,
        max_batch_size=args.max_batch_size,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        kind=args.kind,
        threads=args.threads,
        providers=tuple(args.providers),
    )
    try:
        out = write_triton_repository(bundles, args.out, options)
    except BundleError as error:
        raise ValueError(f"bundle refused: {error}") from None
    for model in sorted(p.name for p in out.iterdir()):
        print(f"{out / model}")
    return 0


def _local(args: argparse.Namespace) -> int:
    import signal
    import time

    from autoweld.serving.local import LocalTritonServer, prepare_server

    if not Path(args.repository).is_dir():
        raise ValueError(f"--repository {args.repository}: no such directory")
    dist = prepare_server(args.root)
    ports = (args.grpc_port, args.http_port, args.metrics_port)
    server = LocalTritonServer(dist, args.repository, args.log, ports=ports)

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # a service manager stops us as Ctrl-C does

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        server.start()
    except RuntimeError as error:
        print(f"autoweld-serve: {error}", file=sys.stderr)
        return 1
    print(f"serving {args.repository} at {server.url} (metrics {server.metrics_url}); Ctrl-C stops")
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return _triton_repo(args) if args.command == "triton-repo" else _local(args)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"autoweld-serve: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
