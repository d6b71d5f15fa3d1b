"""The fault-injection bench's tools (bench/fault_injection.py), loaded for the tests: the
timestamping TCP PLC, a passing result, and process helpers for a PostgreSQL server."""

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "bench" / "fault_injection.py"


def load():
    """bench/fault_injection.py as a module (``bench`` is not a package)."""
    name = "autoweld_bench_fault_injection"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


BENCH_SCRIPT = _PATH
