"""The typed manifest: what a bundle is, as dataclasses (docs/bundle.md, "manifest.json").

:meth:`Manifest.from_json` checks a parsed ``manifest.json`` once and raises
:class:`BundleError` naming the field and why; :meth:`Manifest.to_json` gives back the JSON
object, so ``Manifest.from_json(obj).to_json() == obj`` for every manifest ``autoweld-export``
writes. Export builds a :class:`Manifest`; everyone else reads it through
:class:`autoweld.bundle.Bundle` — by attribute, never by string key.

Head-specific fields that only record how a head was trained (coreset settings, training
losses, quantiles) stay as read-only ``extras`` beside the typed ones: they are provenance,
not something the runtime computes with. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "HEAD_KINDS",
    "SUPPORTED_FORMAT_VERSIONS",
    "BackboneSpec",
    "BundleError",
    "Calibration",
    "ENGINE_PRECISIONS",
    "EngineSpec",
    "FileEntry",
    "FusionSpec",
    "HeadSpec",
    "KnnHeadSpec",
    "Manifest",
    "MapHeadSpec",
    "PreprocessSpec",
    "Provenance",
    "QuantizationSpec",
    "ScoringSpec",
    "TensorRTSpec",
    "head_from_json",
]

#: The manifest layout this autoweld writes, and the ones it reads.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
HEAD_KINDS = ("knn", "map")
REQUIRED_KEYS = ("format_version", "category", "preprocess", "engine", "models", "fusion", "files")
_WEIGHT_SUM_TOLERANCE = 1e-6


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


class BundleError(ValueError):
    """A bundle that cannot be used: the message names the file and says why."""


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy, nested objects and arrays included (arrays become tuples)."""
    return MappingProxyType({k: _frozen_value(v) for k, v in (mapping or {}).items()})


def _frozen_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _frozen(value)
    if isinstance(value, (list, tuple)):
        return tuple(_frozen_value(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """A JSON-ready copy: read-only mappings and tuples become dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thawed(v) for v in value]
    return value


# ---- checks -----------------------------------------------------------------------------------


def _finite_number(value: Any, what: str) -> float:
    """``value`` as a float if it is a finite JSON number (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise BundleError(f"{what} must be finite, got {value!r}")
    return number


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"{what} must be a positive integer, got {value!r}")
    return value


def _int_pair(value: Any, what: str) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise BundleError(f"{what} must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BundleError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, int) for v in value
    ):
        raise BundleError(f"{what} must be a list of integers, got {value!r}")
    return tuple(value)


def _texts(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"{what} must be a list of strings, got {value!r}")
    return tuple(value)


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise BundleError(f"{what} must be three numbers, got {value!r}")
    return tuple(_finite_number(v, what) for v in value)  # type: ignore[return-value]


# ---- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessSpec:
    """The arguments of ``autoweld.native.preprocess`` the bundle was trained with."""

    size: int
    clahe: bool = True
    clip_limit: float = 2.0
    tile_grid: tuple[int, int] = (8, 8)
    sigma: float = 0.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color_order: str = "BGR"

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "clahe": self.clahe,
            "clip_limit": self.clip_limit,
            "tile_grid": self.tile_grid,
            "sigma": self.sigma,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> PreprocessSpec:
        obj = _object(obj, f"{where}: preprocess")
        for key in ("size", "mean", "std"):
            if key not in obj:
                raise BundleError(f"{where}: preprocess lacks {key!r}")
        clahe = obj.get("clahe", True)
        if not isinstance(clahe, bool):
            raise BundleError(f"{where}: preprocess.clahe must be true or false, got {clahe!r}")
        color_order = obj.get("color_order", "BGR")
        if color_order != "BGR":
            raise BundleError(f"{where}: preprocess.color_order must be 'BGR', got {color_order!r}")
        return cls(
            size=_positive_int(obj["size"], f"{where}: preprocess.size"),
            clahe=clahe,
            clip_limit=_finite_number(
                obj.get("clip_limit", 2.0), f"{where}: preprocess.clip_limit"
            ),
            tile_grid=_int_pair(obj.get("tile_grid", (8, 8)), f"{where}: preprocess.tile_grid"),
            sigma=_finite_number(obj.get("sigma", 0.0), f"{where}: preprocess.sigma"),
            mean=_triple(obj["mean"], f"{where}: preprocess.mean"),
            std=_triple(obj["std"], f"{where}: preprocess.std"),
            color_order=color_order,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "clahe": self.clahe,
            "clip_limit": self.clip_limit,
            "tile_grid": list(self.tile_grid),
            "sigma": self.sigma,
            "mean": list(self.mean),
            "std": list(self.std),
            "color_order": self.color_order,
        }


@dataclass(frozen=True)
class BackboneSpec:
    """Which network made the features: its name, taps, and where its weights came from."""

    name: str
    layers: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    weights: str | None = None
    weights_sha256: str | None = None

    @classmethod
    def from_json(cls, obj: Any, where: str) -> BackboneSpec:
        obj = _object(obj, f"{where}: backbone")
        return cls(
            name=_text(obj.get("name"), f"{where}: backbone.name"),
            layers=_texts(obj.get("layers", ()), f"{where}: backbone.layers"),
            channels=_ints(obj.get("channels", ()), f"{where}: backbone.channels"),
            strides=_ints(obj.get("strides", ()), f"{where}: backbone.strides"),
            weights=_optional_text(obj.get("weights"), f"{where}: backbone.weights"),
            weights_sha256=_optional_text(
                obj.get("weights_sha256"), f"{where}: backbone.weights_sha256"
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": list(self.layers),
            "channels": list(self.channels),
            "strides": list(self.strides),
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
        }


@dataclass(frozen=True)
class TensorRTSpec:
    """``engine.tensorrt``: a plan and what it was built for. Fields are checked when an engine
    is chosen (``autoweld.runtime``), not here: a bundle with a stale plan still loads and runs
    its ONNX graph."""

    plan: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    tensorrt_version: str | None = None
    extras: Mapping[str, Any] = field(default_factory=_empty)

    _KEYS: ClassVar[tuple[str, ...]] = ("plan", "gpu", "compute_capability", "tensorrt_version")

    @classmethod
    def from_json(cls, obj: Any, where: str) -> TensorRTSpec:
        obj = _object(obj, f"{where}: engine.tensorrt")
        known = {k: (None if obj.get(k) is None else str(obj[k])) for k in cls._KEYS if k in obj}
        return cls(**known, extras=_frozen({k: v for k, v in obj.items() if k not in cls._KEYS}))

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._KEYS if getattr(self, k) is not None}
        return {**out, **_thawed(self.extras)}


#: What ``engine.precision`` may say; a manifest without the key is ``"fp32"``.
ENGINE_PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class QuantizationSpec:
    """``engine.quantization``: how an INT8 graph was made from the FP32 one (docs/bundle.md,
    "INT8 engines"). Recorded for audit; the runtime runs the QDQ graph as it is."""

    format: str = "qdq"
    calibration_method: str = "minmax"
    calibration_images: int = 0
    calibration_source: str = "fit"
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    fp32_nodes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, where: str) -> QuantizationSpec:
        what = f"{where}: engine.quantization"
        obj = _object(obj, what)
        per_channel = obj.get("per_channel", True)
        if not isinstance(per_channel, bool):
            raise BundleError(f"{what}.per_channel must be true or false, got {per_channel!r}")
        return cls(
            format=_text(obj.get("format", "qdq"), f"{what}.format"),
            calibration_method=_text(
                obj.get("calibration_method", "minmax"), f"{what}.calibration_method"
            ),
            calibration_images=_positive_int(
                obj.get("calibration_images"), f"{what}.calibration_images"
            ),
            calibration_source=_text(
                obj.get("calibration_source", "fit"), f"{what}.calibration_source"
            ),
            activation_type=_text(obj.get("activation_type", "uint8"), f"{what}.activation_type"),
            weight_type=_text(obj.get("weight_type", "int8"), f"{what}.weight_type"),
            fp32_nodes=_texts(obj.get("fp32_nodes", ()), f"{what}.fp32_nodes"),
            per_channel=per_channel,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "calibration_method": self.calibration_method,
            "calibration_images": self.calibration_images,
            "calibration_source": self.calibration_source,
            "per_channel": self.per_channel,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "fp32_nodes": list(self.fp32_nodes),
        }


@dataclass(frozen=True)
class EngineSpec:
    """The graph every head's output comes from: ONNX file, input name, opset; maybe a plan.

    ``precision`` is ``"fp32"`` (the default, and what a manifest without the key means) or
    ``"int8"``: a QDQ graph quantised at export, described by ``quantization``."""

    onnx: str
    input: str = "image"
    opset: int | None = None
    tensorrt: TensorRTSpec | None = None
    precision: str = "fp32"
    quantization: QuantizationSpec | None = None

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise BundleError(
                f"engine.precision must be one of {', '.join(ENGINE_PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        if (self.precision == "int8") != (self.quantization is not None):
            raise BundleError("engine.quantization is required with precision int8 and only there")

    @classmethod
    def from_json(cls, obj: Any, where: str) -> EngineSpec:
        obj = _object(obj, f"{where}: engine")
        plan = obj.get("tensorrt")
        opset = obj.get("opset")
        quantization = obj.get("quantization")
        try:
            return cls(
                onnx=_text(obj.get("onnx"), f"{where}: engine.onnx"),
                input=_text(obj.get("input", "image"), f"{where}: engine.input"),
                opset=None if opset is None else _positive_int(opset, f"{where}: engine.opset"),
                tensorrt=TensorRTSpec.from_json(plan, where) if plan else None,
                precision=obj.get("precision", "fp32"),
                quantization=None
                if quantization is None
                else QuantizationSpec.from_json(quantization, where),
            )
        except BundleError as error:
            message = str(error)
            raise BundleError(
                message if message.startswith(where) else f"{where}: {message}"
            ) from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"onnx": self.onnx, "input": self.input}
        if self.opset is not None:
            out["opset"] = self.opset
        if self.tensorrt is not None:
            out["tensorrt"] = self.tensorrt.to_json()
        if self.precision != "fp32":  # FP32 manifests stay as they were written before INT8
            out["precision"] = self.precision
        if self.quantization is not None:
            out["quantization"] = self.quantization.to_json()
        return out


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of one head's image score: p = 1 / (1 + exp(a·s + b))."""

    a: float
    b: float

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Calibration:
        if not isinstance(obj, Mapping):
            raise BundleError(f"{what} calibration must be an object")
        return cls(
            a=_finite_number(obj.get("a"), f"{what} calibration.a"),
            b=_finite_number(obj.get("b"), f"{what} calibration.b"),
        )

    def to_json(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b}

    def probability(self, scores: Any, dtype: type[np.floating] = np.float64) -> np.ndarray:
        """p = 1 / (1 + exp(a·s + b)) elementwise, in ``dtype``; exp never overflows.

        The numpy Platt of autoweld (the torch one is ``autoweld.train.reference.platt``, the
        C++ one ``autoweld.native.platt``). float64, for image scores (export's calibration and
        fusion fit): ``exp(-logaddexp(0, z))``. float32, for anomaly maps per pixel (cheaper; a
        map needs no more): ``1 / (1 + exp(z))`` with z clipped to ±88, where p is 0 or 1 to
        float32 precision anyway. Each keeps the arithmetic its results were made with.
        """
        if dtype == np.float64:
            z = self.a * np.asarray(scores, dtype=np.float64) + self.b
            return np.exp(-np.logaddexp(0.0, z))
        if dtype == np.float32:
            # the same operations in the same order as 1 / (1 + exp(clip(a*s + b))), in one
            # buffer: a map's temporaries (256 KB each at 256 px) cost 5x the arithmetic
            z = np.multiply(np.float32(self.a), np.asarray(scores, dtype=np.float32))
            z += np.float32(self.b)
            np.clip(z, -88.0, 88.0, out=z)
            np.exp(z, out=z)
            z += np.float32(1.0)
            return np.divide(np.float32(1.0), z, out=z)
        raise ValueError(f"dtype must be numpy.float64 or numpy.float32, got {dtype!r}")


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """One model head (docs/bundle.md, "Heads"): which graph output it reads, the grid of that
    output, and the Platt calibration of its image score. ``extras`` holds the head's other
    manifest fields (how it was trained), read-only."""

    name: str
    kind: str
    output: str
    feature_map: tuple[int, int]
    calibration: Calibration
    extras: Mapping[str, Any] = field(default_factory=_empty)

    _COMMON: ClassVar[tuple[str, ...]] = ("kind", "output", "feature_map", "calibration")
    _TYPED: ClassVar[tuple[str, ...]] = ()

    @property
    def platt_a(self) -> float:
        return self.calibration.a

    @property
    def platt_b(self) -> float:
        return self.calibration.b

    @classmethod
    def _common_from_json(cls, name: str, obj: Mapping[str, Any], what: str) -> dict[str, Any]:
        output = obj["output"]
        if not isinstance(output, str) or not output:
            raise BundleError(f"{what} output must be a non-empty string, got {output!r}")
        return {
            "name": name,
            "kind": obj["kind"],
            "output": output,
            "feature_map": _int_pair(obj["feature_map"], f"{what} feature_map"),
            "calibration": Calibration.from_json(obj["calibration"], what),
            "extras": _frozen(
                {k: v for k, v in obj.items() if k not in cls._COMMON and k not in cls._TYPED}
            ),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **_thawed(self.extras),
            **self._typed_json(),
            "kind": self.kind,
            "output": self.output,
            "feature_map": list(self.feature_map),
            "calibration": self.calibration.to_json(),
        }

    def _typed_json(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, kw_only=True)
class MapHeadSpec(HeadSpec):
    """``kind: "map"``: the graph output is already an anomaly score per location ``[N, h, w]``;
    the image score is its maximum."""

    @classmethod
    def from_json(cls, name: str, obj: Mapping[str, Any], what: str) -> MapHeadSpec:
        return cls(**cls._common_from_json(name, obj, what))


@dataclass(frozen=True, kw_only=True)
class KnnHeadSpec(HeadSpec):
    """``kind: "knn"`` (PatchCore): the graph output is patch embeddings ``[N, h·w, D]``, scored
    by their distance to the memory bank. ``knn_basis`` names the bank's principal axes for the
    pruned exact search, or is None for a brute-force search; ``choose_pruning`` is True for
    bundles written before export recorded that choice (the runtime then makes it at load)."""

    memory_bank: str | None = None
    bank_neighbours: str | None = None
    knn_basis: str | None = None
    choose_pruning: bool = False
    embedding_dim: int | None = None
    reweight_neighbours: int | None = None

    _TYPED: ClassVar[tuple[str, ...]] = (
        "memory_bank",
        "bank_neighbours",
        "knn_basis",
        "embedding_dim",
        "reweight_neighbours",
    )

    @classmethod
    def from_json(cls, name: str, obj: Mapping[str, Any], what: str) -> KnnHeadSpec:
        basis = obj.get("knn_basis")
        if basis is not None and not isinstance(basis, str):
            raise BundleError(f"{what} knn_basis must be a file name or null, got {basis!r}")
        files = {}
        for key in ("memory_bank", "bank_neighbours"):
            files[key] = _optional_text(obj.get(key), f"{what} {key}")
        sizes = {}
        for key in ("embedding_dim", "reweight_neighbours"):
            value = obj.get(key)
            sizes[key] = None if value is None else _positive_int(value, f"{what} {key}")
        return cls(
            **cls._common_from_json(name, obj, what),
            **files,
            **sizes,
            knn_basis=basis,
            choose_pruning="knn_basis" not in obj,
        )

    def _typed_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("memory_bank", "bank_neighbours", "embedding_dim", "reweight_neighbours"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if not self.choose_pruning:
            out["knn_basis"] = self.knn_basis
        return out


_HEAD_TYPES: dict[str, Callable[[str, Mapping[str, Any], str], HeadSpec]] = {
    "knn": KnnHeadSpec.from_json,
    "map": MapHeadSpec.from_json,
}


def head_from_json(name: str, obj: Any, where: str) -> HeadSpec:
    """One ``models.<name>`` entry, checked and typed by its ``kind``."""
    what = f"{where}: model {name!r}"
    if not isinstance(obj, Mapping):
        raise BundleError(f"{what} must be an object")
    for key in HeadSpec._COMMON:
        if key not in obj:
            raise BundleError(f"{what} lacks {key!r}")
    if obj["kind"] not in HEAD_KINDS:
        raise BundleError(f"{what} has unknown kind {obj['kind']!r}")
    return _HEAD_TYPES[obj["kind"]](name, obj, what)


@dataclass(frozen=True)
class ScoringSpec:
    """How head outputs become maps: σ of the anomaly-map blur."""

    map_sigma: float = 4.0

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ScoringSpec:
        obj = _object(obj, f"{where}: scoring")
        sigma = _finite_number(obj.get("map_sigma", 4.0), f"{where}: scoring.map_sigma")
        if sigma < 0:
            raise BundleError(f"{where}: scoring.map_sigma must be >= 0, got {sigma!r}")
        return cls(map_sigma=sigma)

    def to_json(self) -> dict[str, Any]:
        return {"map_sigma": self.map_sigma}


@dataclass(frozen=True)
class FusionSpec:
    """Late fusion: head → weight (non-negative, summing to 1) and the threshold on the fused
    probability, with how it was chosen."""

    weights: Mapping[str, float]
    threshold: float
    threshold_method: str | None = None
    target_frr: float | None = None
    extras: Mapping[str, Any] = field(default_factory=_empty)

    _KEYS: ClassVar[tuple[str, ...]] = ("weights", "threshold", "threshold_method", "target_frr")

    @classmethod
    def from_json(cls, obj: Any, head_names: list[str], where: str) -> FusionSpec:
        if not isinstance(obj, Mapping):
            raise BundleError(f"{where}: fusion must be an object")
        weights = obj.get("weights", {})
        if not isinstance(weights, Mapping) or not weights:
            raise BundleError(f"{where}: fusion weights must be a non-empty object")
        unknown = sorted(set(weights) - set(head_names))
        if unknown:
            raise BundleError(f"{where}: fusion weights name unknown models {unknown}")
        checked: dict[str, float] = {}
        for name, weight in weights.items():
            value = _finite_number(weight, f"{where}: fusion weight {name!r}")
            if value < 0.0:
                raise BundleError(f"{where}: fusion weight {name!r} is negative ({value!r})")
            checked[name] = value
        total = sum(checked.values())
        if abs(total - 1.0) > _WEIGHT_SUM_TOLERANCE:
            raise BundleError(f"{where}: fusion weights sum to {total!r}, not 1")
        if "threshold" not in obj:
            raise BundleError(f"{where}: fusion lacks 'threshold'")
        threshold = _finite_number(obj["threshold"], f"{where}: fusion threshold")
        if not 0.0 < threshold <= 1.0:
            # fused probabilities lie in [0, 1]: a threshold above 1 would pass every part
            raise BundleError(f"{where}: fusion threshold {threshold!r} is outside (0, 1]")
        target_frr = obj.get("target_frr")
        return cls(
            # the JSON numbers as written (an int weight stays an int in to_json)
            weights=_frozen({name: weights[name] for name in checked}),
            threshold=obj["threshold"],
            threshold_method=obj.get("threshold_method"),
            target_frr=None
            if target_frr is None
            else _finite_number(target_frr, f"{where}: fusion target_frr"),
            extras=_frozen({k: v for k, v in obj.items() if k not in cls._KEYS}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **_thawed(self.extras),
            "weights": dict(self.weights),
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "target_frr": self.target_frr,
        }


@dataclass(frozen=True)
class Provenance:
    """Where the bundle came from: when, with which packages, from which data and recipe, and
    which data calibration and the threshold were fitted on (never the test split). Recorded for
    the audit trail; the runtime does not compute with it."""

    created_utc: str | None = None
    autoweld_version: str | None = None
    packages: Mapping[str, str] = field(default_factory=_empty)
    training_data: Mapping[str, Any] | None = None
    calibration_data: Mapping[str, Any] | None = None
    recipe: Mapping[str, Any] | None = None

    _KEYS: ClassVar[tuple[str, ...]] = (
        "created_utc",
        "autoweld_version",
        "packages",
        "training_data",
        "calibration_data",
        "recipe",
    )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str) -> Provenance:
        sections = {}
        for key in ("packages", "training_data", "calibration_data", "recipe"):
            if obj.get(key) is not None:
                sections[key] = _frozen(_object(obj[key], f"{where}: {key}"))
        return cls(
            created_utc=obj.get("created_utc"),
            autoweld_version=obj.get("autoweld_version"),
            **sections,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._KEYS:
            value = getattr(self, key)
            if key == "packages" and not value:
                continue
            if value is not None:
                out[key] = _thawed(value)
        return out


@dataclass(frozen=True)
class FileEntry:
    """One listed bundle file: its sha256 and size in bytes."""

    sha256: str
    bytes: int

    @classmethod
    def from_json(cls, name: Any, obj: Any, where: str) -> FileEntry:
        if (
            not isinstance(name, str)
            or not name
            or "/" in name
            or "\\" in name
            or name in (".", "..")
        ):
            raise BundleError(f"{where}: file name {name!r} leaves the bundle")
        if not isinstance(obj, Mapping):
            raise BundleError(f"{where}: files[{name!r}] must be an object")
        digest, size = obj.get("sha256"), obj.get("bytes")
        if not isinstance(digest, str) or isinstance(size, bool) or not isinstance(size, int):
            raise BundleError(
                f"{where}: files[{name!r}] must hold 'sha256' (hex) and 'bytes' (an integer), "
                f"got {dict(obj)!r}"
            )
        return cls(sha256=digest, bytes=size)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


# ---- the manifest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A bundle's ``manifest.json``, checked. ``heads`` are the JSON's ``models``, in order."""

    category: str
    preprocess: PreprocessSpec
    engine: EngineSpec
    heads: Mapping[str, HeadSpec]
    fusion: FusionSpec
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    backbone: BackboneSpec | None = None
    provenance: Provenance = field(default_factory=Provenance)
    files: Mapping[str, FileEntry] = field(default_factory=_empty)
    format_version: int = FORMAT_VERSION
    #: top-level keys this version does not know, kept so a rewrite loses nothing
    extras: Mapping[str, Any] = field(default_factory=_empty)

    _SECTIONS: ClassVar[tuple[str, ...]] = (
        "format_version",
        "category",
        "preprocess",
        "engine",
        "models",
        "fusion",
        "scoring",
        "backbone",
        "files",
    )

    @classmethod
    def from_json(cls, obj: Any, where: str = "manifest.json") -> Manifest:
        """Check a parsed manifest and type it; ``where`` prefixes every error message."""
        if not isinstance(obj, Mapping):
            raise BundleError(f"{where}: not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            raise BundleError(f"{where}: manifest lacks required field(s) {', '.join(missing)}")
        version = obj["format_version"]
        if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
            raise BundleError(
                f"{where}: format_version {version!r} is not supported by this autoweld "
                f"(supported: {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); "
                "re-export the bundle or upgrade autoweld"
            )
        return _READERS[version](obj, where)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json`` (``autoweld.bundle.canonical_json`` serialises
        it)."""
        out: dict[str, Any] = {
            **_thawed(self.extras),
            **self.provenance.to_json(),
            "format_version": self.format_version,
            "category": self.category,
            "preprocess": self.preprocess.to_json(),
            "engine": self.engine.to_json(),
            "models": {name: head.to_json() for name, head in self.heads.items()},
            "scoring": self.scoring.to_json(),
            "fusion": self.fusion.to_json(),
            "files": {name: entry.to_json() for name, entry in self.files.items()},
        }
        if self.backbone is not None:
            out["backbone"] = self.backbone.to_json()
        return out

    def with_files(self, files: Mapping[str, FileEntry]) -> Manifest:
        return replace(self, files=_frozen(files))


def _read_v1(obj: Mapping[str, Any], where: str) -> Manifest:
    models = obj["models"]
    if not isinstance(models, Mapping) or not models:
        raise BundleError(f"{where}: manifest lists no models")
    heads = {name: head_from_json(name, spec, where) for name, spec in models.items()}
    files = _object(obj["files"], f"{where}: files")
    return Manifest(
        format_version=obj["format_version"],
        category=_text(obj["category"], f"{where}: category"),
        preprocess=PreprocessSpec.from_json(obj["preprocess"], where),
        engine=EngineSpec.from_json(obj["engine"], where),
        heads=_frozen(heads),
        fusion=FusionSpec.from_json(obj["fusion"], list(heads), where),
        scoring=ScoringSpec.from_json(obj.get("scoring", {}), where),
        backbone=BackboneSpec.from_json(obj["backbone"], where) if obj.get("backbone") else None,
        provenance=Provenance.from_json(obj, where),
        files=_frozen({n: FileEntry.from_json(n, e, where) for n, e in files.items()}),
        extras=_frozen(
            {
                k: v
                for k, v in obj.items()
                if k not in Manifest._SECTIONS and k not in Provenance._KEYS
            }
        ),
    )


_READERS: dict[int, Callable[[Mapping[str, Any], str], Manifest]] = {1: _read_v1}
