"""``python -m autoweld.native_check``: reports what the C++ core found on this machine."""

from __future__ import annotations

from autoweld import __version__, native


def main() -> int:
    print(f"autoweld {__version__}")
    print(f"  C++ core loaded from: {native._native.__file__}")
    print(f"  AVX2+FMA kernels:     {'yes' if native.has_avx2_fma() else 'no (portable path)'}")
    print(f"  hardware threads:     {native.hardware_threads()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
