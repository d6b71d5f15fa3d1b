"""Writing a Triton model repository from bundles (docs/serving.md).

One client-facing model per camera, ``autoweld_<camera>``, each with its own bundle (one bank
per camera), in one of two variants:

- ``python``: one Python-backend model that runs the ONNX graph with ONNX Runtime inside it and
  then kNN, scoring, calibration and fusion through ``autoweld.native``; it serves on any Triton
  with the Python backend (the one ``nvidia-pytriton`` ships included);
- ``ensemble``: ``autoweld_<camera>_graph`` runs the graph (``onnxruntime`` backend, or
  ``tensorrt_plan`` where the bundle has a TensorRT plan; ``--graph-backend python`` runs it in a
  Python-backend model instead), ``autoweld_<camera>_scoring`` (Python backend) scores its head
  outputs, and the ensemble ``autoweld_<camera>`` joins them under the same tensors.

Every model has dynamic batching and an instance group, and names the bundle in its parameters
(:mod:`autoweld.serving.contract`): the sha256 and the exact manifest bytes, so the server
reports what it serves and a client can check it against its own manifest.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoweld.bundle import Bundle, KnnHeadSpec, load_bundle
from autoweld.serving import contract
from autoweld.serving.triton_model import PARAM_PROVIDERS, PARAM_ROLE, PARAM_THREADS

__all__ = ["RepositoryOptions", "write_triton_repository"]

VARIANTS = ("python", "ensemble")
GRAPH_BACKENDS = ("auto", "onnxruntime", "tensorrt", "python")
_CAMERA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

MODEL_PY = '''"""AutoWeld Python-backend model (written by autoweld-serve triton-repo; needs autoweld)."""

from autoweld.serving.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    """How the models are served. ``instances``: model instances per model (``kind`` ``cpu`` or
    ``gpu`` for the graph; scoring runs on CPU); ``max_batch_size`` and ``queue_delay_us``: the
    dynamic batcher's largest batch and how long it waits to fill one; ``threads``: CPU threads
    of ONNX Runtime and the native core per instance (0 = all); ``providers``: ONNX Runtime
    providers of a Python-backend graph."""

    variant: str = "python"
    graph_backend: str = "auto"
    max_batch_size: int = 16
    queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "cpu"
    threads: int = 0
    providers: tuple[str, ...] = ("cpu",)

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.graph_backend not in GRAPH_BACKENDS:
            raise ValueError(f"graph backend must be one of {GRAPH_BACKENDS}")
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"instance kind must be cpu or gpu, got {self.kind!r}")
        for name in ("max_batch_size", "instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.queue_delay_us < 0 or self.threads < 0:
            raise ValueError("queue delay and threads must be >= 0")


def write_triton_repository(
    bundles: Mapping[str, str | Path], out: str | Path, options: RepositoryOptions | None = None
) -> Path:
    """Write the repository for ``bundles`` (camera name -> bundle directory) to ``out``.

    Each bundle is loaded and checked first (a refused bundle raises ``BundleError``); the
    repository is written beside ``out`` and renamed into place, so a failure leaves no half
    repository. An existing ``out`` is replaced only when it holds nothing but AutoWeld models.
    """
    options = options or RepositoryOptions()
    options.check()
    if not bundles:
        raise ValueError("no bundle given")
    loaded = {}
    for camera, path in bundles.items():
        if not _CAMERA.match(camera):
            raise ValueError(
                f"camera name {camera!r}: letters, digits, '_' and '-' only, 63 at most"
            )
        loaded[camera] = load_bundle(Path(path))
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for camera, bundle in loaded.items():
            _write_camera(staging, camera, bundle, options)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    others = [p.name for p in out.iterdir() if not p.name.startswith(contract.MODEL_PREFIX)]
    if not out.is_dir() or others:
        raise ValueError(f"{out}: exists and holds more than AutoWeld models ({others[:3]})")


def _write_camera(root: Path, camera: str, bundle: Bundle, options: RepositoryOptions) -> None:
    name = contract.model_name(camera)
    if options.variant == "python":
        _python_model(root / name, bundle, options, role="inspect")
        return
    graph_backend = options.graph_backend
    if graph_backend == "auto":
        graph_backend = "tensorrt" if _plan_name(bundle) else "onnxruntime"
    if graph_backend == "python":
        _python_model(root / f"{name}_graph", bundle, options, role="graph")
    else:
        _graph_model(root / f"{name}_graph", bundle, options, graph_backend)
    _python_model(root / f"{name}_scoring", bundle, options, role="scoring")
    _ensemble_model(root / name, bundle, options)


# ---- the models --------------------------------------------------------------------------------


def _python_model(directory: Path, bundle: Bundle, options: RepositoryOptions, role: str) -> None:
    version = directory / "1"
    shutil.copytree(bundle.root, version / "bundle", ignore=shutil.ignore_patterns("*.pt"))
    (version / "model.py").write_text(MODEL_PY)
    parameters = contract.ServedBundle.parameters(bundle, options.variant)
    parameters[PARAM_ROLE] = role
    parameters[PARAM_THREADS] = str(options.threads)
    parameters[PARAM_PROVIDERS] = ",".join(options.providers)
    inputs = _head_tensors(bundle) if role == "scoring" else [_images_tensor(bundle)]
    outputs = _head_tensors(bundle) if role == "graph" else _result_tensors(bundle)
    kind = options.kind if role != "scoring" else "cpu"
    config = _config(
        directory.name, 'backend: "python"', options, inputs, outputs, parameters, kind
    )
    (directory / "config.pbtxt").write_text(config)


def _graph_model(directory: Path, bundle: Bundle, options: RepositoryOptions, backend: str) -> None:
    version = directory / "1"
    version.mkdir(parents=True)
    if backend == "tensorrt":
        plan = _plan_name(bundle)
        if plan is None:
            raise ValueError(f"{bundle.root}: --graph-backend tensorrt, but the bundle has no plan")
        shutil.copyfile(bundle.path(plan), version / "model.plan")
        platform, kind = 'platform: "tensorrt_plan"', "gpu"
    else:
        shutil.copyfile(bundle.onnx_path, version / "model.onnx")
        platform, kind = 'platform: "onnxruntime_onnx"', options.kind
    inputs = [_images_tensor(bundle, bundle.manifest.engine.input)]
    parameters = contract.ServedBundle.parameters(bundle, options.variant)
    config = _config(
        directory.name, platform, options, inputs, _head_tensors(bundle), parameters, kind
    )
    (directory / "config.pbtxt").write_text(config)


def _ensemble_model(directory: Path, bundle: Bundle, options: RepositoryOptions) -> None:
    (directory / "1").mkdir(parents=True)
    name = directory.name
    graph_input = bundle.manifest.engine.input if _graph_is_onnx(directory) else contract.IMAGES
    heads = [t[0] for t in _head_tensors(bundle)]
    results = [t[0] for t in _result_tensors(bundle)]
    steps = [
        _step(f"{name}_graph", {graph_input: contract.IMAGES}, {h: f"_{h}" for h in heads}),
        _step(f"{name}_scoring", {h: f"_{h}" for h in heads}, {r: r for r in results}),
    ]
    scheduling = "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
    parameters = contract.ServedBundle.parameters(bundle, options.variant)
    config = _config(
        name,
        'platform: "ensemble"',
        options,
        [_images_tensor(bundle)],
        _result_tensors(bundle),
        parameters,
        kind=None,
    )
    (directory / "config.pbtxt").write_text(config + scheduling)


def _plan_name(bundle: Bundle) -> str | None:
    tensorrt = bundle.manifest.engine.tensorrt
    return tensorrt.plan if tensorrt is not None else None


def _graph_is_onnx(ensemble_dir: Path) -> bool:
    graph_config = ensemble_dir.parent / f"{ensemble_dir.name}_graph" / "config.pbtxt"
    return 'backend: "python"' not in graph_config.read_text()


# ---- config.pbtxt ------------------------------------------------------------------------------

Tensor = tuple[str, str, list[int]]


def _images_tensor(bundle: Bundle, name: str = contract.IMAGES) -> Tensor:
    size = bundle.preprocess.size
    return (name, "TYPE_FP32", [3, size, size])


def _head_tensors(bundle: Bundle) -> list[Tensor]:
    tensors = []
    for head in bundle.heads.values():
        h, w = head.feature_map
        if isinstance(head, KnnHeadSpec):
            tensors.append((head.output, "TYPE_FP32", [h * w, head.embedding_dim or -1]))
        else:
            tensors.append((head.output, "TYPE_FP32", [h, w]))
    return tensors


def _result_tensors(bundle: Bundle) -> list[Tensor]:
    heads, size = len(bundle.heads), bundle.preprocess.size
    return [
        (contract.PROBABILITY, "TYPE_FP64", [1]),
        (contract.SCORES, "TYPE_FP64", [heads]),
        (contract.PROBABILITIES, "TYPE_FP64", [heads]),
        (contract.ANOMALY_MAP, "TYPE_FP32", [size, size]),
        (contract.HEAD_MAPS, "TYPE_FP32", [heads, size, size]),
        (contract.ERROR, "TYPE_STRING", [1]),
        (contract.BUNDLE_SHA256, "TYPE_STRING", [1]),
    ]


def _tensor_block(key: str, tensors: list[Tensor]) -> str:
    rows = [
        f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'
        for name, dtype, dims in tensors
    ]
    return f"{key} [\n" + ",\n".join(rows) + "\n]\n"


def _config(
    name: str,
    backend_line: str,
    options: RepositoryOptions,
    inputs: list[Tensor],
    outputs: list[Tensor],
    parameters: Mapping[str, str],
    kind: str | None,
) -> str:
    text = f'name: "{name}"\n{backend_line}\nmax_batch_size: {options.max_batch_size}\n'
    text += _tensor_block("input", inputs) + _tensor_block("output", outputs)
    if kind is not None:  # an ensemble has neither: its steps batch and place themselves
        text += (
            "dynamic_batching {\n"
            f"  max_queue_delay_microseconds: {options.queue_delay_us}\n"
            "}\n"
            f"instance_group [ {{ count: {options.instances} kind: KIND_{kind.upper()} }} ]\n"
        )
    rows = [
        f'  {{ key: "{key}" value: {{ string_value: "{_pbtxt_string(value)}" }} }}'
        for key, value in parameters.items()
    ]
    return text + "parameters [\n" + ",\n".join(rows) + "\n]\n"


def _step(model: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> str:
    def maps(key: str, pairs: Mapping[str, str]) -> str:
        return "\n".join(f'      {key} {{ key: "{k}" value: "{v}" }}' for k, v in pairs.items())

    return (
        f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
        f"{maps('input_map', inputs)}\n{maps('output_map', outputs)}\n    }}"
    )


def _pbtxt_string(value: str) -> str:
    """A protobuf text-format string body: only our own ASCII values reach here (hex, base64,
    names, numbers), so refusing anything else keeps the escaping trivially right."""
    if not re.fullmatch(r"[A-Za-z0-9_.,:+/=-]*", value):
        raise ValueError(f"config parameter value {value!r} has characters we do not write")
    return value
