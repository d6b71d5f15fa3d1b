"""Write the golden files: what weld bundles decide on their test split, before a change.

Run it *before* a change that must not move scores (a refactor), commit the file, and
``tests/export/test_golden_weld.py`` then holds every later version of the code to it:

    python tests/golden/make_golden.py [CASE ...]   # every case of CASES when none is named

The file holds the bundle's manifest without its provenance (creation time, package versions),
the sha256 of every bundle file, and per test image the raw head scores, the calibrated and
fused probabilities (as ``float.hex``, so "the same" means to the bit) and the decision.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = {"default": HERE / "weld_default.json", "all_heads": HERE / "weld_all_heads.json"}
#: torch intra-op threads for the export (float results depend on it)
TORCH_THREADS = 2
#: Manifest keys that say when and with what a bundle was made, not what it is.
PROVENANCE_KEYS = ("created_utc", "autoweld_version", "packages")


def comparable_manifest(manifest: dict) -> dict:
    """The manifest less its provenance and its file table (hashes are compared apart); the
    training data's folder (a temporary directory) is replaced by a placeholder."""
    kept = {k: v for k, v in manifest.items() if k not in (*PROVENANCE_KEYS, "files")}
    if isinstance(kept.get("training_data"), dict) and "data_root" in kept["training_data"]:
        kept["training_data"] = {**kept["training_data"], "data_root": "<data_root>"}
    if isinstance(kept.get("recipe"), dict) and "source" in kept["recipe"]:
        # the recipe file's absolute path depends on the checkout
        kept["recipe"] = {**kept["recipe"], "source": Path(kept["recipe"]["source"]).name}
    return _without_timings(kept)


def _without_timings(value):
    """``value`` less every ``seconds`` entry (how long a head trained is not what it is)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    return value


#: The golden cases: the default weld bundle as the README's first command makes it, and a tiny
#: weld bundle with every head (PatchCore, student-teacher, feature AE, global reference) fused.
CASES = {
    "default": {},
    "all_heads": {
        "weld_params": {"n_train": 20, "n_test_good": 3, "n_test_per_defect": 1, "image_size": 64},
        "image_size": 64,
        "models": ["patchcore", "student_teacher", "feature_ae", "global_reference"],
    },
}


def export_and_inspect(workdir: Path, case: str = "default") -> dict:
    """Export one of :data:`CASES` under ``workdir`` and inspect its weld test split."""
    import torch

    from autoweld import data
    from autoweld.data import WeldParams
    from autoweld.export.pipeline import ExportOptions, export_category

    settings = dict(CASES[case])
    params = WeldParams(**settings.pop("weld_params")) if "weld_params" in settings else None
    data_root = workdir / "data"
    options = ExportOptions(
        category="weld", data_root=data_root, out_dir=workdir / "bundles", weld_params=params
    )
    for key, value in settings.items():
        setattr(options, key, value)
    # torch's float reductions depend on its thread count (another test may have changed it):
    # the golden files were written with TORCH_THREADS
    threads_before = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        result = export_category(options)
    finally:
        torch.set_num_threads(threads_before)
    test_split = data.load_category("weld", data_root=data_root, weld_params=params).test
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    return {
        "manifest": comparable_manifest(manifest),
        "files": {name: entry["sha256"] for name, entry in manifest["files"].items()},
        "images": _inspect(result.bundle_dir, test_split),
    }


def _inspect(bundle_dir: Path, samples) -> dict:
    from autoweld.runtime.inspector import Inspector

    images = {}
    with Inspector(bundle_dir, threads=2) as inspector:
        for sample in samples:
            outcome = inspector.inspect(sample.path)
            images[f"{sample.defect_type}/{Path(sample.path).name}"] = {
                "decision": outcome.decision,
                "error": outcome.error,
                "probability": float(outcome.probability).hex(),
                "scores": {k: float(v).hex() for k, v in outcome.scores.items()},
                "probabilities": {k: float(v).hex() for k, v in outcome.probabilities.items()},
            }
    return images


def main(cases: list[str]) -> int:
    for case in cases or list(CASES):
        with tempfile.TemporaryDirectory(prefix="autoweld-golden-") as tmp:
            golden = export_and_inspect(Path(tmp), case)
        golden["made_on"] = {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "torch_threads": TORCH_THREADS,
        }
        GOLDEN[case].write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN[case]} ({len(golden['images'])} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
