"""The CUDA sources compile with nvcc (no GPU needed): every csrc/cuda/*.cu and the GPU C++ test
are compiled to objects for sm_80, as the CUDA build would."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + [
    ROOT / "csrc" / "cuda" / "tests" / "test_gpu.cu"
]
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
)


def test_cuda_sources_are_listed():
    names = {p.name for p in SOURCES}
    assert {"knn.cu", "scoring.cu", "index.cu", "test_gpu.cu"} <= names


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not installed")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source: Path, tmp_path: Path):
    cmd = [
        NVCC,
        "-c",
        "-std=c++17",
        "-O1",
        "-arch=sm_80",
        "-I",
        str(ROOT / "csrc"),
        "-Xcompiler",
        "-Wall",
        "-Werror",
        "all-warnings",
        str(source),
        "-o",
        str(tmp_path / (source.stem + ".o")),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / (source.stem + ".o")).stat().st_size > 0
