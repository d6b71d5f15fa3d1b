"""Build the development sets (real texture photographs, MVTec AD layout) for detection work.

    python bench/build_devsets.py --out /tmp/devsets --seed 0

writes ``OUT/tune/{brick,grass,gravel}`` (top halves of the photographs; defects from
``synthesize_anomaly`` and ``synthesize_perlin_anomaly``) and ``OUT/heldout/...`` (bottom halves;
held-out-only drawn defects). See docs/data.md, "Development sets".
"""

from __future__ import annotations

import argparse
import logging

from autoweld.data.devsets import DEVSET_SPLITS, DevsetSpec, build_devset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=DEVSET_SPLITS, action="append", help="default: both")
    parser.add_argument("--n-train", type=int, default=DevsetSpec.n_train)
    parser.add_argument("--n-test-good", type=int, default=DevsetSpec.n_test_good)
    parser.add_argument("--n-per-defect", type=int, default=DevsetSpec.n_per_defect)
    parser.add_argument("--size", type=int, default=DevsetSpec.size)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = DevsetSpec(args.n_train, args.n_test_good, args.n_per_defect, args.size)
    for split in args.split or DEVSET_SPLITS:
        names = build_devset(args.out, split, args.seed, spec)
        print(f"{args.out}/{split}: {', '.join(names)}")


if __name__ == "__main__":
    main()
