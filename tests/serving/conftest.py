"""A real Triton Inference Server on 127.0.0.1 for the serving tests.

The server is the ``tritonserver`` of the ``nvidia-pytriton`` wheel (Python backend only),
unpacked with its backend environment under ``build/triton-server`` once and kept
(:func:`autoweld.serving.local.prepare_server`; ``AUTOWELD_TRITON_ROOT`` moves it). One server
per session serves the tiny bundles; another the small weld bundle.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from tinybundle import write_tiny_bundle  # noqa: E402

from autoweld.serving import RepositoryOptions, write_triton_repository  # noqa: E402

pytest.importorskip("tritonclient.grpc", reason="the serving tests need tritonclient[grpc]")

REPO_ROOT = Path(__file__).resolve().parents[2]
WELD_CATEGORY = "weldserve"


@pytest.fixture(scope="session")
def triton_dist():
    from autoweld.serving.local import prepare_server

    root = os.environ.get("AUTOWELD_TRITON_ROOT") or REPO_ROOT / "build" / "triton-server"
    return prepare_server(root)


@dataclass
class Served:
    url: str
    server: object
    bundles: dict[str, Path]  # camera -> bundle directory


def _serve(dist, tmp: Path, cameras: dict[str, Path], extra: Path | None = None):
    from autoweld.serving.local import LocalTritonServer

    repository = write_triton_repository(
        cameras, tmp / "repository", RepositoryOptions(threads=1, max_batch_size=8)
    )
    if extra is not None:  # models of another variant, served beside these
        for model in extra.iterdir():
            shutil.move(str(model), str(repository / model.name))
    return LocalTritonServer(dist, repository, tmp / "tritonserver.log")


@pytest.fixture(scope="session")
def tiny_served(triton_dist, tmp_path_factory):
    """cam1: the tiny bundle; cam2: one whose graph gives NaN for dark images; ens: cam1's
    bundle as an ensemble (graph in a Python-backend model: the onnxruntime backend is not in
    nvidia-pytriton's server)."""
    tmp = tmp_path_factory.mktemp("triton-tiny")
    bundles = {
        "cam1": write_tiny_bundle(tmp / "b1"),
        "cam2": write_tiny_bundle(tmp / "b2", offset=-0.05),
    }
    ensemble = write_triton_repository(
        {"ens": bundles["cam1"]},
        tmp / "ensemble",
        RepositoryOptions(variant="ensemble", graph_backend="python", threads=1, max_batch_size=8),
    )
    server = _serve(triton_dist, tmp, bundles, extra=ensemble)
    with server:
        yield Served(server.url, server, {**bundles, "ens": bundles["cam1"]})


@dataclass
class WeldSplit:
    bundle_dir: Path
    data_root: Path
    images: list[Path]


@pytest.fixture(scope="session")
def weld_split(tmp_path_factory) -> WeldSplit:
    """A small real weld bundle (Lite0 at 128 px), exported from a small generated weld
    category, and that category's test split (never used for fitting or calibration)."""
    from weldexport import export_small_weld

    from autoweld.data import read_mvtec

    bundle_dir, data_root = export_small_weld(
        tmp_path_factory.mktemp("weld-serve"), WELD_CATEGORY, seed=5
    )
    category = read_mvtec(data_root / WELD_CATEGORY, WELD_CATEGORY)
    return WeldSplit(bundle_dir, data_root, sorted(s.path for s in category.test))


@pytest.fixture(scope="session")
def weld_served(triton_dist, weld_split, tmp_path_factory):
    """The weld bundle served as four cameras (one model, and bank, each)."""
    tmp = tmp_path_factory.mktemp("triton-weld")
    cameras = {f"line{i}": weld_split.bundle_dir for i in range(1, 5)}
    server = _serve(triton_dist, tmp, cameras)
    with server:
        yield Served(server.url, server, cameras)


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")
