"""``autoweld-export``: fit + calibrate + export a model bundle to ``OUT/NAME/``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from autoweld.cli import _args

__all__ = ["build_parser", "main"]


def _models(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--models needs at least one name, e.g. patchcore")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoweld-export",
        description="Fit, calibrate and export a model bundle (ONNX graph + memory bank + "
        "manifest) to OUT/NAME/. 'weld' is the built-in synthetic category; any other name is "
        "read from DATA_ROOT/NAME in the MVTec AD layout. Flags override the category's recipe.",
    )
    parser.add_argument("--category", help="category name, e.g. weld or bottle")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the recipe's single profile only: skip the choice among the recipe's [selection] "
        "candidates (also implied by --backbone, --image-size or --models)",
    )
    parser.add_argument("--data-root", help="folder that holds NAME/ in the MVTec AD layout")
    parser.add_argument("--out", default="bundles", help="output folder (default: bundles/)")
    parser.add_argument(
        "--backbone",
        help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2, resnet18, "
        "resnet50, wide_resnet50_2",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="backbone weights: a torchvision .pth state dict")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="random backbone weights: for timing runs only, useless for inspection",
    )
    parser.add_argument("--image-size", type=_args.positive_int, help="input size S (S x S)")
    parser.add_argument("--models", type=_models, help="comma-separated heads, e.g. patchcore")
    parser.add_argument("--seed", type=int, help="seed for splits, synthesis and coreset")
    parser.add_argument(
        "--val-root",
        help="labelled calibration images: VAL_ROOT/good/* normal, VAL_ROOT/<defect>/* "
        "anomalous (default: held-out training images + synthesised anomalies)",
    )
    parser.add_argument("--coreset-ratio", type=_args.ratio, help="PatchCore coreset fraction")
    parser.add_argument(
        "--coreset-max", type=_args.positive_int, help="PatchCore memory bank rows, at most"
    )
    parser.add_argument("--recipe", help="a recipe .toml file instead of the category's own")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="serve an INT8 graph: the ONNX graph quantised (QDQ, calibrated on the fit "
        "images), memory bank and calibration refitted on it (recipe [engine] precision)",
    )
    # --- GPU section: TensorRT engine (docs/gpu.md) ---
    trt = parser.add_argument_group("TensorRT engine (NVIDIA GPU + pip install '.[gpu]')")
    trt.add_argument(
        "--trt",
        action="store_true",
        help="also build model.plan (a TensorRT engine for this GPU) into the bundle",
    )
    trt.add_argument("--fp16", action="store_true", help="let TensorRT use FP16 kernels")
    trt.add_argument(
        "--bundle",
        help="with --trt: add the engine to this existing bundle instead of exporting one",
    )
    trt.add_argument(
        "--trt-max-batch", type=_args.positive_int, default=8, help="largest batch the engine takes"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def _build_trt(bundle_dir: str, args: argparse.Namespace) -> int:
    from autoweld.export.tensorrt import TrtBuildOptions, build_tensorrt_plan

    try:
        result = build_tensorrt_plan(
            bundle_dir, TrtBuildOptions(fp16=args.fp16, max_batch=args.trt_max_batch)
        )
    except (RuntimeError, ValueError) as error:
        print(f"autoweld-export: error: {error}", file=sys.stderr)
        return 2
    entry = result.entry
    print(
        f"tensorrt    {result.bundle.root / entry['plan']} ({_size(result.plan_bytes)}, "
        f"TensorRT {entry['tensorrt_version']}, {entry['gpu']} sm {entry['compute_capability']}, "
        f"fp16 {entry['fp16']}, {result.seconds:.1f}s)"
    )
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _selection_line(selection: dict) -> str:
    """The default export's choice: winner, why, and each candidate's validation score."""
    tried = ", ".join(
        f"{r['name']} {r['score']:.4f}" if r["score"] is not None else f"{r['name']} -"
        for r in selection["results"]
    )
    return f"selection   {selection['chosen']} ({selection['reason']}); {tried}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.bundle is not None:
        if not args.trt:
            parser.error("--bundle is only used with --trt")
        if args.category is not None:
            parser.error(
                "give --category (export a bundle) or --bundle (an existing one), not both"
            )
        return _build_trt(args.bundle, args)
    if args.category is None:
        parser.error("--category is required (or --trt --bundle DIR for an existing bundle)")
    if args.fp16 and not args.trt:
        parser.error("--fp16 is only used with --trt")
    # Imported here so that --help is instant and needs no torch.
    from autoweld.export.pipeline import ExportOptions, export_category

    options = ExportOptions(
        category=args.category,
        data_root=args.data_root,
        out_dir=args.out,
        backbone=args.backbone,
        weights=args.weights,
        random_weights=args.random_weights,
        image_size=args.image_size,
        models=args.models,
        seed=args.seed,
        val_root=args.val_root,
        coreset_ratio=args.coreset_ratio,
        coreset_max=args.coreset_max,
        recipe=args.recipe,
        quick=args.quick,
        precision="int8" if args.int8 else None,
    )
    try:
        result = export_category(options)
    except ValueError as error:
        print(f"autoweld-export: error: {error}", file=sys.stderr)
        return 2
    cal = result.calibration
    lines = [
        f"bundle      {result.bundle_dir}  ({_size(result.bundle_bytes)}, sha256 "
        f"{result.bundle.sha256[:16]}...)",
        f"recipe      {result.recipe.source} [{result.recipe.profile}], backbone "
        f"{result.recipe.backbone}, {result.recipe.image_size}px, models "
        f"{', '.join(result.recipe.models)}",
        f"fitted on   {result.n_fit} images",
    ]
    for name, size in result.bank_sizes.items():
        d = getattr(result.bundle.heads[name], "embedding_dim", None)
        lines.append(f"{name:<11} memory bank {size} x {d}")
    platt_text = ", ".join(f"{n}: a={a:.4g} b={b:.4g}" for n, (a, b) in cal.platt.items())
    lines += [
        f"calibration {cal.source}: {cal.n_normal} normal + {cal.n_anomalous} anomalous; "
        f"Platt {platt_text}",
        f"threshold   {cal.threshold:.4f} ({cal.threshold_method}); on calibration data "
        f"F1 {cal.f1:.3f}, false FAIL {cal.frr:.1%}, false PASS {cal.far:.1%}",
        f"onnx        max |onnx - torch| {result.onnx_max_abs_diff:.2e}",
    ]
    if "chosen" in result.recipe.selection:
        lines.append(_selection_line(result.recipe.selection))
    quantization = result.quantization
    if quantization is not None:
        lines.append(
            f"int8        {result.bundle.manifest.engine.onnx}: QDQ, "
            f"{quantization.calibration_method} ranges from {quantization.calibration_images} "
            f"fit images, {len(quantization.fp32_nodes)} nodes kept FP32; bank and "
            "calibration fitted on the INT8 graph"
        )
    if result.reference_path is not None:
        lines.append(f"reference   {result.reference_path} (torch model, for parity and bench)")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items() if k != "total")
    lines.append(f"time        {result.seconds['total']:.1f}s ({timing})")
    print("\n".join(lines))
    if args.trt:
        return _build_trt(str(result.bundle_dir), args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
