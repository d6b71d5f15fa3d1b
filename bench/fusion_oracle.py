"""How much could late fusion add? The best convex combination of two probabilities, chosen on
the test split itself (an oracle: an upper bound, never a way to pick weights).

    # two heads of one bundle (its Platt probabilities)
    python bench/fusion_oracle.py --data /tmp/devsets2/tune/grass --bundle /tmp/b/grass
    # two bundles (their fused probabilities), e.g. two PatchCore settings
    python bench/fusion_oracle.py --data /tmp/devsets2/tune/grass --bundle A/grass --bundle B/grass

Prints each side's image AUROC, the AUROC of w * a + (1 - w) * b for w = 0, 0.1, ..., 1, and
the best gain over the better side. Use it on tune data only (docs/data.md): it reads the test
split's labels to choose w.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from autoweld.data.mvtec import IMAGE_SUFFIXES
from autoweld.evaluation.metrics import auroc
from autoweld.runtime.inspector import Inspector


def _test_images(root: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(p for p in (root / "test").glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no test images under {root / 'test'}")
    return files, np.array([0 if p.parent.name == "good" else 1 for p in files])


def _probabilities(bundle: Path, files: list[Path], per_head: bool) -> dict[str, np.ndarray]:
    values: dict[str, list[float]] = {}
    with Inspector(bundle, threads=2) as inspector:
        for path in files:
            result = inspector.inspect(cv2.imread(str(path)))
            if result.error is not None:
                raise SystemExit(f"{path}: {result.error}")
            items = (
                result.probabilities.items() if per_head else [(bundle.name, result.probability)]
            )
            for name, value in items:
                values.setdefault(name, []).append(value)
    return {name: np.array(v) for name, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a category in the MVTec layout")
    parser.add_argument(
        "--bundle",
        required=True,
        type=Path,
        action="append",
        help="one bundle with two heads, or two bundles",
    )
    args = parser.parse_args()
    files, labels = _test_images(args.data)
    if len(args.bundle) == 1:
        sides = _probabilities(args.bundle[0], files, per_head=True)
    elif len(args.bundle) == 2:
        sides = {}
        for i, bundle in enumerate(args.bundle):
            sides[f"{i}:{bundle}"] = _probabilities(bundle, files, per_head=False)[bundle.name]
    else:
        raise SystemExit("give one bundle (two heads) or two bundles")
    if len(sides) != 2:
        raise SystemExit(f"need exactly two sides, got {sorted(sides)}")
    (name_a, a), (name_b, b) = sides.items()
    alone = {name: auroc(p, labels) for name, p in sides.items()}
    for name, value in alone.items():
        print(f"{name}: image AUROC {value:.4f}")
    best = max(alone.values())
    combined = {}
    for w in np.linspace(0.0, 1.0, 11):
        combined[w] = auroc(w * a + (1.0 - w) * b, labels)
        print(f"  {w:.1f} x {name_a} + {1 - w:.1f} x {name_b}: {combined[w]:.4f}")
    w_best = max(combined, key=combined.get)
    print(
        f"best combination (w = {w_best:.1f}): {combined[w_best]:.4f}, "
        f"{combined[w_best] - best:+.4f} over the better side ({len(files)} test images)"
    )


if __name__ == "__main__":
    main()
