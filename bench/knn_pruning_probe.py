"""How much of the memory bank an exact kNN has to look at: the measurement behind the pruned
search of ``autoweld.native.KnnIndex`` (issue 7).

    python bench/knn_pruning_probe.py --bundle bundles/weld [--images 12] [--dims 16 32 48]

Rotating bank and queries onto the bank's principal axes keeps every distance (the rotation is
orthogonal); the squared distance over the first m axes is then a lower bound of the full one.
For each query: take the bank row with the smallest bound, compute its full distance (an upper
bound of the nearest), and only rows whose bound is below it can be nearer. This prints, per m,
the share of the bank that still needs the full distance. KnnIndex does exactly this with the
m that holds 80 % of the variance (a multiple of 8): 16 of 152 axes on the weld bundle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from autoweld import native
from autoweld.bundle import load_bundle
from autoweld.data import load_category
from autoweld.runtime.decode import decode_image
from autoweld.runtime.engines import open_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--images", type=int, default=12, help="test images to probe")
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 32, 48])
    args = parser.parse_args()
    bundle = load_bundle(Path(args.bundle))
    head = next(h for h in bundle.heads.values() if h.kind == "knn")
    bank = bundle.load_array(head.memory_bank).astype(np.float64)
    mean = bank.mean(axis=0)
    eigenvalues, vectors = np.linalg.eigh(np.cov((bank - mean).T))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    rotated_bank = (bank - mean) @ vectors
    samples = load_category(bundle.category).test
    step = max(1, len(samples) // args.images)
    spec = bundle.preprocess
    queries = []
    with open_engine(bundle, threads=2) as engine:
        for sample in samples[::step][: args.images]:
            batch = native.preprocess_batch(
                [decode_image(str(sample.path))], spec.size, **spec.as_kwargs()
            )
            out = engine.infer(batch, [head.output])[head.output][0]
            queries.append((out.astype(np.float64) - mean) @ vectors)
    print(f"bank {bank.shape}, {len(queries)} images x {queries[0].shape[0]} patches")
    for m in args.dims:
        share = eigenvalues[:m].sum() / eigenvalues.sum()
        fractions = []
        for rotated in queries:
            bound = ((rotated[:, None, :m] - rotated_bank[None, :, :m]) ** 2).sum(-1)
            first = bound.argmin(axis=1)
            upper = ((rotated - rotated_bank[first]) ** 2).sum(-1)
            fractions.append(float((bound < upper[:, None]).mean()))
        print(
            f"m={m:3d}: {share:.1%} of the bank's variance; full distance needed for "
            f"{np.mean(fractions):.2%} of the bank (worst image {np.max(fractions):.2%})"
        )


if __name__ == "__main__":
    main()
