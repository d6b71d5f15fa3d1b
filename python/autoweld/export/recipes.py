"""Export recipes: one small TOML file per category (keys documented in docs/recipes.md).

Installed wheels carry them as package data in ``autoweld/recipes/``; in an editable install they
are read from the source tree's top-level ``export/`` directory.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

__all__ = ["Recipe", "list_recipes", "load_recipe", "recipe_dirs", "resolve_recipe"]

_TOP_KEYS = {
    "category",
    "description",
    "profile",
    "seed",
    "preprocess",
    "calibration",
    "scoring",
    "selection",
    "engine",
}
_PROFILE_KEYS = {"backbone", "image_size", "mean", "std", "models", "batch_size", "layers"}
_PREPROCESS_KEYS = {"clahe", "clip_limit", "tile_grid", "sigma"}
_CALIBRATION_KEYS = {
    "val_fraction",
    "threshold_method",
    "target_frr",
    "anomalies_per_image",
    "anomaly_sources",
}
#: generators of calibration anomalies for categories other than weld (docs/recipes.md)
ANOMALY_SOURCES = ("generic", "perlin", "subtle")
_SCORING_KEYS = {"map_sigma"}
#: ``[engine]``: the precision of the exported graph and, for INT8, how it is quantised.
_ENGINE_KEYS = {
    "precision",
    "calibration_method",
    "calibration_images",
    "fp32_leading_convs",
    "keep_fp32",
}
# Input normalisation each backbone's weights were trained with (used when --backbone swaps the
# backbone of a profile that was written for another one).
_NORMALISATION = {
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_lite1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_lite2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalisation_of(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean/std the backbone's weights were trained with."""
    return _NORMALISATION.get(backbone, _NORMALISATION["imagenet"])


def recipe_dirs() -> list[Path]:
    """Where recipes are looked for: the installed package data, then the source tree."""
    package = Path(__file__).resolve().parent.parent
    return [package / "recipes", package.parent.parent / "export"]


def list_recipes() -> list[str]:
    """Names of every shipped recipe."""
    names: set[str] = set()
    for directory in recipe_dirs():
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.toml"))
    return sorted(names)


def _find(name: str) -> Path | None:
    for directory in recipe_dirs():
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return candidate
    return None


def load_recipe(name_or_path: str | Path) -> tuple[dict[str, Any], Path]:
    """The raw TOML of a recipe (by category name or file path) and where it came from."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        found = _find(str(name_or_path))
        if found is None:
            raise ValueError(
                f"recipe {str(name_or_path)!r} not found in {[str(d) for d in recipe_dirs()]} "
                f"(shipped: {', '.join(list_recipes()) or 'none'})"
            )
        path = found
    if not path.is_file():
        raise ValueError(f"recipe file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"recipe {path}: not valid TOML ({error})") from None
    return raw, path


@dataclass
class Recipe:
    """A resolved recipe: one profile chosen, CLI overrides applied."""

    category: str
    source: str
    profile: str
    backbone: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    models: list[str]
    batch_size: int
    layers: list[str] | None
    seed: int
    preprocess: dict[str, Any]
    calibration: dict[str, Any]
    scoring: dict[str, Any]
    head_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)  # the raw [selection] table
    #: ``[engine]`` with its defaults, or None: no table and no --int8, an FP32 graph (kept
    #: out of :meth:`as_dict` then, so FP32 manifests read as they did before INT8 existed)
    engine: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The recipe as the manifest records it. Keys added since format 1 (``selection``,
        ``calibration.anomaly_sources``) appear only when set, so bundles made without them
        (weld) stay byte-identical to before."""
        calibration = dict(self.calibration)
        if calibration.get("anomaly_sources") == ["generic"]:
            del calibration["anomaly_sources"]
        extra = {"selection": copy.deepcopy(self.selection)} if self.selection else {}
        return {
            "category": self.category,
            "source": self.source,
            "profile": self.profile,
            "backbone": self.backbone,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "models": list(self.models),
            "batch_size": self.batch_size,
            "layers": list(self.layers) if self.layers is not None else None,
            "seed": self.seed,
            "preprocess": dict(self.preprocess),
            "calibration": calibration,
            "scoring": dict(self.scoring),
            "head_settings": copy.deepcopy(self.head_settings),
            **extra,
            **({} if self.engine is None else {"engine": copy.deepcopy(self.engine)}),
        }

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"int8"``: the graph the bundle serves."""
        return "fp32" if self.engine is None else str(self.engine["precision"])


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{where} must be a list of 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _profile(
    raw: Mapping[str, Any], path: Path, backbone: str | None
) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]]]:
    """The profile to use: its name, its plain keys and its head tables (``[<profile>.<head>]``).

    ``backbone`` picks the profile of that name when the recipe has one, else the default."""
    profiles = {k: v for k, v in raw.items() if isinstance(v, dict) and k not in _TOP_KEYS}
    _check_keys({k: v for k, v in raw.items() if k not in profiles}, _TOP_KEYS, str(path))
    default_profile = raw.get("profile")
    if default_profile not in profiles:
        raise ValueError(f"{path}: 'profile' must name one of the profiles {sorted(profiles)}")
    chosen = backbone if backbone in profiles else default_profile
    table = dict(profiles[chosen])
    heads = {k: dict(v) for k, v in table.items() if isinstance(v, dict)}
    plain = {k: v for k, v in table.items() if k not in heads}
    _check_keys(plain, _PROFILE_KEYS, f"{path} [{chosen}]")
    for key in ("backbone", "image_size", "mean", "std", "models"):
        if key not in plain:
            raise ValueError(f"{path} [{chosen}]: missing {key!r}")
    return chosen, plain, heads


def _section(raw: Mapping[str, Any], name: str, allowed: set[str], path: Path) -> dict[str, Any]:
    table = dict(raw.get(name, {}))
    _check_keys(table, allowed, f"{path} [{name}]")
    return table


def _typed_sections(
    preprocess: Mapping[str, Any], calibration: Mapping[str, Any], scoring: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``[preprocess]``, ``[calibration]`` and ``[scoring]`` with their defaults, typed."""
    return {
        "preprocess": {
            "clahe": bool(preprocess.get("clahe", True)),
            "clip_limit": float(preprocess.get("clip_limit", 2.0)),
            "tile_grid": [int(v) for v in preprocess.get("tile_grid", [8, 8])],
            "sigma": float(preprocess.get("sigma", 0.0)),
        },
        "calibration": {
            "val_fraction": float(calibration.get("val_fraction", 0.2)),
            "threshold_method": str(calibration.get("threshold_method", "best_f1")),
            "target_frr": float(calibration.get("target_frr", 0.01)),
            "anomalies_per_image": int(calibration.get("anomalies_per_image", 1)),
            "anomaly_sources": [str(v) for v in calibration.get("anomaly_sources", ["generic"])],
        },
        "scoring": {"map_sigma": float(scoring.get("map_sigma", 4.0))},
    }


def _engine_section(
    raw: Mapping[str, Any], path: Path, precision: str | None
) -> dict[str, Any] | None:
    """``[engine]`` with its defaults, typed; ``precision`` (``--int8``) overrides the table's.
    None when neither says anything (an FP32 graph, recorded as before)."""
    if "engine" not in raw and precision is None:
        return None
    table = _section(raw, "engine", _ENGINE_KEYS, path)
    chosen = str(precision if precision is not None else table.get("precision", "fp32"))
    if chosen not in ("fp32", "int8"):
        raise ValueError(f"{path} [engine] precision must be fp32 or int8, got {chosen!r}")
    from autoweld.export.quantize import QuantizationSettings  # onnx: only when asked for

    try:
        settings = QuantizationSettings.from_mapping(table)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} [engine] {error}") from None
    return {"precision": chosen, **settings.to_recipe()}


def resolve_recipe(
    category: str,
    *,
    recipe: str | Path | None = None,
    backbone: str | None = None,
    image_size: int | None = None,
    models: list[str] | None = None,
    seed: int | None = None,
    head_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    precision: str | None = None,
) -> Recipe:
    """Load the recipe of ``category`` (or ``recipe``), pick the profile and apply overrides.

    Profiles are top-level tables named after a backbone (e.g. ``[efficientnet_lite0]``,
    ``[wide_resnet50_2]``); ``profile`` names the default. ``backbone`` picks the profile of that
    name when the recipe has one, else the default profile with only the backbone swapped.
    Categories without a recipe of their own use ``default.toml``.
    """
    if recipe is None and _find(category) is None:
        raw, path = load_recipe("default")
    else:
        raw, path = load_recipe(recipe if recipe is not None else category)
    chosen, plain, heads = _profile(raw, path, backbone)
    preprocess = _section(raw, "preprocess", _PREPROCESS_KEYS, path)
    calibration = _section(raw, "calibration", _CALIBRATION_KEYS, path)
    scoring = _section(raw, "scoring", _SCORING_KEYS, path)

    size = int(image_size if image_size is not None else plain["image_size"])
    if size < 32 or size % 8:
        raise ValueError(f"image_size must be a multiple of 8 and >= 32, got {size}")
    chosen_models = list(models if models is not None else plain["models"])
    if not chosen_models:
        raise ValueError("models: at least one model is needed")
    for name, values in (head_overrides or {}).items():
        heads.setdefault(name, {}).update({k: v for k, v in values.items() if v is not None})
    mean = _triple(plain["mean"], f"{path} [{chosen}] mean")
    std = _triple(plain["std"], f"{path} [{chosen}] std")
    layers = [str(v) for v in plain["layers"]] if "layers" in plain else None
    if backbone is not None and backbone != plain["backbone"]:
        mean, std = normalisation_of(backbone)
        layers = None  # the profile's taps belong to its own backbone
    result = Recipe(
        category=category,
        source=str(path),
        profile=chosen,
        backbone=backbone or plain["backbone"],
        image_size=size,
        mean=mean,
        std=std,
        models=chosen_models,
        batch_size=int(plain.get("batch_size", 8)),
        layers=layers,
        seed=int(seed if seed is not None else raw.get("seed", 0)),
        **_typed_sections(preprocess, calibration, scoring),
        head_settings={name: heads.get(name, {}) for name in chosen_models},
        selection=dict(raw.get("selection", {})),
        engine=_engine_section(raw, path, precision),
    )
    bad_sources = set(result.calibration["anomaly_sources"]) - set(ANOMALY_SOURCES)
    if bad_sources or not result.calibration["anomaly_sources"]:
        raise ValueError(f"anomaly_sources: each one of {ANOMALY_SOURCES}, got {bad_sources}")
    if not 0.0 < result.calibration["val_fraction"] < 1.0:
        raise ValueError(
            f"val_fraction must be in (0, 1), got {result.calibration['val_fraction']}"
        )
    if any(s <= 0 for s in result.std):
        raise ValueError(f"std must be positive, got {result.std}")
    return result
