import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

import autoweld
from autoweld import native


def test_extension_loads_and_reports_version():
    assert native._native.__version__ == autoweld.__version__
    assert native.hardware_threads() >= 1
    assert isinstance(native.has_avx2_fma(), bool)


def test_threads_argument_is_checked():
    assert native._threads(None) == 0
    assert native._threads(3) == 3
    for bad in (0, -1, 1.5, True, "2"):
        try:
            native._threads(bad)
        except ValueError as error:
            assert "threads" in str(error)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_runtime_side_never_imports_torch():
    """runtime, bundle and quality must work on a station that has no torch; so must
    evaluation and its command line (autoweld-eval runs the station's runtime)."""
    code = (
        "import sys\n"
        "import autoweld.runtime, autoweld.bundle, autoweld.quality, autoweld.native\n"
        "import autoweld.cli.eval\n"
        "for name in ('autoweld.runtime', 'autoweld.bundle', 'autoweld.quality', "
        "'autoweld.evaluation'):\n"
        "    import pkgutil, importlib\n"
        "    pkg = importlib.import_module(name)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_subpackages_import():
    for name in (
        "data",
        "train",
        "export",
        "bundle",
        "runtime",
        "quality",
        "evaluation",
        "terminal",
        "bench",
        "cli",
    ):
        importlib.import_module(f"autoweld.{name}")


def test_version_is_the_one_in_pyproject_and_the_installed_metadata():
    """autoweld.__version__ is written by hand: it must follow pyproject.toml."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    declared = re.search(r'^version = "([^"]+)"$', project, re.MULTILINE)
    assert declared is not None, "no version in pyproject.toml's [project] table"
    assert autoweld.__version__ == declared.group(1)
    assert importlib.metadata.version("autoweld") == declared.group(1)


def test_a_cold_station_on_plain_pngs_loads_neither_opencv_nor_package_metadata(tmp_path):
    """What a station process imports is its cold start: a plain PNG at the engine's size is
    decoded and its maps kept without OpenCV, and ``import autoweld`` does not read package
    metadata. An image of another size still goes through OpenCV, with the same result."""
    sys.path.insert(0, str(Path(__file__).parent / "runtime"))
    try:
        from tinybundle import SIZE, normal_image, write_tiny_bundle
    finally:
        sys.path.pop(0)
    bundle = write_tiny_bundle(tmp_path / "bundle")
    same = tmp_path / "same.png"
    other = tmp_path / "other.png"
    cv2.imwrite(str(same), normal_image(3, size=SIZE))
    cv2.imwrite(str(other), normal_image(3, size=SIZE + 16))
    code = (
        "import sys, json\n"
        "import autoweld\n"
        "after_package = 'importlib.metadata' in sys.modules\n"
        "from autoweld.runtime import Inspector\n"
        f"ins = Inspector({str(bundle)!r}, threads=1)\n"
        f"result = ins.inspect({str(same)!r})\n"
        "plain = 'cv2' in sys.modules\n"
        f"other = ins.inspect({str(other)!r})\n"
        "print(json.dumps([after_package, plain, 'cv2' in sys.modules, result.error, "
        "other.error, result.anomaly_map.shape, other.anomaly_map.shape]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    after_package, plain, other_loaded, error, other_error, shape, other_shape = json.loads(
        out.stdout.strip().splitlines()[-1]
    )
    assert after_package is False
    assert plain is False and error is None and tuple(shape) == (SIZE, SIZE)
    assert other_loaded is True and other_error is None
    assert tuple(other_shape) == (SIZE + 16, SIZE + 16)


def test_maps_at_the_images_size_are_what_opencv_gives():
    """resize_map skips OpenCV for a map already at the image's size: bit for bit what
    cv2.resize returns (a copy), for float32 and float64, contiguous or not."""
    from autoweld.runtime.decode import as_bgr
    from autoweld.runtime.inspector import resize_map

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for side in (1, 7, 32):
            full = rng.normal(size=(side, side + 3)).astype(dtype)
            for m in (full[:, :side], np.ascontiguousarray(full[:, :side])):
                want = cv2.resize(
                    np.ascontiguousarray(m), (side, side), interpolation=cv2.INTER_LINEAR
                )
                got = resize_map(m, side, side)
                assert got.dtype == want.dtype and got.flags.c_contiguous
                assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
                assert not np.shares_memory(got, m)
            want = cv2.resize(full, (side + 5, 2 * side), interpolation=cv2.INTER_LINEAR)
            assert np.array_equal(resize_map(full, side + 5, 2 * side), want)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    assert np.array_equal(as_bgr(grey), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
