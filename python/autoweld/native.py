"""Public face of the C++ core (``autoweld._native``).

Every function here checks its arguments once (dtype, shape, contiguity, emptiness, NaN/Inf
where they matter) and raises ``ValueError`` naming the argument, then calls the core with the
GIL released. ``threads=None`` means all hardware threads; the count is always per call, never a
process-wide setting.
"""

from __future__ import annotations

from autoweld import _native

__all__ = ["has_avx2_fma", "hardware_threads"]


def has_avx2_fma() -> bool:
    """True when the kernels run their AVX2+FMA paths on this CPU."""
    return bool(_native.has_avx2_fma())


def hardware_threads() -> int:
    """Number of hardware threads the core uses when ``threads=None``."""
    return int(_native.hardware_threads())


def _threads(threads: int | None) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return threads


# ---- image kernels: clahe, preprocess, anomaly map ------------------------------------


# ---- numeric kernels: knn, coreset, scoring -------------------------------------------
