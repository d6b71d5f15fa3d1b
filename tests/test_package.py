import importlib
import subprocess
import sys

import autoweld
from autoweld import native


def test_extension_loads_and_reports_version():
    assert autoweld.__version__ != "0.0.0+unknown"
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
