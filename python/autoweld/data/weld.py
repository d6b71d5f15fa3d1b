"""The built-in synthetic ``weld`` category.

Each image is a butt-weld seam seen from above: a horizontal-ish bead with chevron ripples and
specular glare, heat-tint bands on both sides, brushed base metal, and small pose and lighting
changes. Test images carry one defect each with its exact mask (see ``defects.py``).

Every image is drawn from its own random stream, ``default_rng([seed, split, type, index])``, so
it does not depend on generation order or on the other images; the files are byte-identical for
the same seed and parameters. A stamp file records version, seed and parameters; a tree whose
stamp differs is regenerated.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from autoweld.data.defects import WELD_DEFECT_TYPES, BeadGeometry, synthesize_defect

__all__ = [
    "GENERATOR_VERSION",
    "STAMP_NAME",
    "WeldParams",
    "ensure_weld",
    "generate_weld",
    "render_weld",
    "stamp_matches",
]

logger = logging.getLogger(__name__)

# Bump whenever the pictures change, so cached trees are regenerated.
GENERATOR_VERSION = 6
STAMP_NAME = "autoweld_weld.json"
CATEGORY = "weld"

_SPLIT_TRAIN, _SPLIT_TEST = 0, 1
_GOOD_CODE = 0  # defect types are 1 + their index in WELD_DEFECT_TYPES


@dataclass(frozen=True)
class WeldParams:
    """Sizes of the generated ``weld`` category."""

    n_train: int = 150
    n_test_good: int = 40
    n_test_per_defect: int = 12
    image_size: int = 256

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test_good", "n_test_per_defect", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {self.n_train}")
        if self.n_test_good < 0 or self.n_test_per_defect < 0:
            raise ValueError("n_test_good and n_test_per_defect must be >= 0")
        if self.n_test_good + self.n_test_per_defect == 0:
            raise ValueError("the test split would be empty: n_test_good + n_test_per_defect = 0")
        if not 64 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [64, 4096], got {self.image_size}")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


# ---- rendering -------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency random field in about [-1, 1]: a coarse grid upsampled bicubically."""
    coarse = rng.uniform(-1.0, 1.0, (cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(coarse, (size + 3 * size // cells,) * 2, interpolation=cv2.INTER_CUBIC)
    off = size // cells
    return big[off : off + size, off : off + size]


def _brushed(rng: np.random.Generator, size: int, angle_deg: float) -> np.ndarray:
    """Brushed / rolled metal grain: noise smeared along one direction, unit std."""
    pad = size // 2
    big = size + 2 * pad
    noise = rng.standard_normal((big, big)).astype(np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=size / 14.0, sigmaY=0.7)
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), angle_deg, 1.0)
    streaks = cv2.warpAffine(
        streaks, rot, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    streaks = streaks[pad : pad + size, pad : pad + size]
    return streaks / (streaks.std() + 1e-6)


# Heat tint, from the bead outwards (t = distance from the toe / tint width), BGR in [0, 1].
_TINT_T = np.array([0.0, 0.15, 0.35, 0.55, 0.8, 1.0], np.float32)
_TINT_BGR = np.array(
    [
        [0.30, 0.28, 0.30],  # grey-brown oxide at the toe
        [0.50, 0.26, 0.40],  # purple
        [0.62, 0.42, 0.28],  # blue
        [0.30, 0.50, 0.62],  # bronze / straw
        [0.42, 0.60, 0.68],  # light straw
        [0.52, 0.55, 0.56],  # fading into the metal
    ],
    np.float32,
)


def render_weld(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, BeadGeometry]:
    """Render one defect-free weld image, BGR uint8 ``(size, size, 3)``, and its bead geometry.

    The layers are drawn in a fixed order from one generator (same seed, same image): base
    metal, heat tint, bead, then optics and camera."""
    h = w = int(size)
    scale = size / 256.0
    angle = math.radians(rng.uniform(-5.0, 5.0))
    center_y = h / 2 + rng.uniform(-0.07, 0.07) * h
    half_width = rng.uniform(0.13, 0.17) * h
    geom = BeadGeometry(center_y=center_y, angle=angle, half_width=half_width)
    s, d = geom.frame(h, w)
    span = 1.5 * w
    metal = _base_metal(rng, h, w, scale)
    img, u, local_hw = _heat_tint(rng, metal, s, d, span, scale, half_width, h, w)
    img = _bead(rng, img, metal, s, u, local_hw, span, scale, half_width)
    return _camera(rng, img, h, w, scale), geom


@dataclass(frozen=True)
class _Metal:
    """The base-metal layer and the textures the bead reuses."""

    image: np.ndarray  # float32 (h, w, 3)
    lum: np.ndarray
    fine: np.ndarray
    mottle: np.ndarray
    level: float


def _base_metal(rng: np.random.Generator, h: int, w: int, scale: float) -> _Metal:
    """Brushed grain, fine grain, mottling, a cool steel tint."""
    grain_angle = rng.choice([0.0, 90.0]) + rng.uniform(-8, 8)
    brushed = _brushed(rng, w, grain_angle)
    fine = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.7 * scale)
    mottle = _smooth_field(rng, w, 4)
    metal_level = rng.uniform(0.45, 0.58)
    lum = metal_level + 0.025 * brushed + 0.015 * fine + 0.035 * mottle
    steel = np.array([1.03, 1.0, 0.96], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return _Metal(lum[..., None] * steel, lum, fine, mottle, metal_level)


def _heat_tint(
    rng: np.random.Generator,
    metal: _Metal,
    s: np.ndarray,
    d: np.ndarray,
    span: float,
    scale: float,
    half_width: float,
    h: int,
    w: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heat tint on both sides of the bead, with ragged band edges. Returns the image, the
    across-bead coordinate u (-1..1 inside the bead) and the local half width."""
    wobble = (
        1.5
        * scale
        * (
            np.sin(2 * np.pi * s / rng.uniform(90, 160) / scale + rng.uniform(0, 6.3))
            + 0.5 * np.sin(2 * np.pi * s / rng.uniform(30, 60) / scale)
        )
    )
    edge = 0.04 * _noise_along(rng, s, span, 16 * scale) + 0.012 * _noise_along(
        rng, s, span, 6 * scale
    )
    local_hw = half_width * (1.0 + edge)
    dd = d - wobble
    u = dd / local_hw
    tint_width = np.where(dd < 0, rng.uniform(0.16, 0.26), rng.uniform(0.16, 0.26)) * h
    t = (np.abs(dd) - local_hw) / tint_width
    t = t + 0.15 * _smooth_field(rng, w, 5) + 0.06 * _noise_along(rng, s, span, 20 * scale)
    tint_rgb = np.stack([np.interp(t, _TINT_T, _TINT_BGR[:, c]) for c in range(3)], -1)
    # Oxide colours differ with alloy and shielding gas: vary the saturation per image.
    grey = tint_rgb.mean(axis=-1, keepdims=True)
    tint_rgb = grey + rng.uniform(0.45, 1.0) * (tint_rgb - grey)
    tint_rgb = tint_rgb.astype(np.float32) * (metal.lum / metal.level)[..., None]
    tint_alpha = (np.clip(1.0 - t / 1.1, 0, 1) ** 0.8 * rng.uniform(0.45, 0.85)).astype(np.float32)
    img = metal.image * (1 - tint_alpha[..., None]) + tint_rgb * tint_alpha[..., None]
    return img, u, local_hw


def _bead(
    rng: np.random.Generator,
    img: np.ndarray,
    metal: _Metal,
    s: np.ndarray,
    u: np.ndarray,
    local_hw: np.ndarray,
    span: float,
    scale: float,
    half_width: float,
) -> np.ndarray:
    """The bead: a dome with chevron ripples, glare along its crown, shadows at the toes."""
    inside = np.clip(1.0 - u**2, 0.0, 1.0)
    height = np.sqrt(inside)
    period = rng.uniform(9.0, 15.0) * scale
    chevron = rng.uniform(0.5, 1.1) * half_width
    # Travel speed is never quite constant: the ripple spacing drifts along the bead.
    drift = 0.35 * _noise_along(rng, s, span, 40 * scale)
    phase = (s + chevron * u**2) / period + drift + rng.uniform(0, 1)
    saw = phase - np.floor(phase)
    ripple = saw**1.6  # slow rise, sharp drop: overlapping solidified puddles
    slope = -u / np.maximum(height, 0.15)  # across-bead slope; light comes from above
    bead_lum = (
        rng.uniform(0.42, 0.55)
        + 0.18 * height
        - 0.08 * slope * rng.uniform(0.6, 1.2)
        + 0.13 * (ripple - 0.5) * (0.4 + height)
    )
    bead_lum = bead_lum + 0.03 * metal.fine + 0.02 * metal.mottle
    glare_u = rng.uniform(-0.45, -0.1)
    glare_w = rng.uniform(0.06, 0.12)
    glare_along = 0.6 + 0.4 * _noise_along(rng, s, span, 25 * scale)
    glare = np.exp(-(((u - glare_u) / glare_w) ** 2)) * glare_along * (0.35 + 0.65 * ripple)
    glare = glare * rng.uniform(0.45, 0.8)
    bead_tint = np.array([1.0, 1.0, 0.98], np.float32) * rng.uniform(0.97, 1.03, 3).astype(
        np.float32
    )
    bead = np.clip(bead_lum, 0, 1)[..., None] * bead_tint
    bead = bead + (1.0 - bead) * np.clip(glare, 0, 1)[..., None]
    toe_shadow = np.exp(-(((np.abs(u) - 0.97) / 0.07) ** 2)) * 0.35
    bead = bead * (1.0 - toe_shadow[..., None])
    cover = np.clip((1.0 - np.abs(u)) * local_hw / (1.5 * scale) + 0.5, 0, 1)[..., None]
    img = img * (1 - cover) + bead * cover
    outside_shadow = np.exp(-(((np.abs(u) - 1.0) / 0.08) ** 2)) * 0.2 * (np.abs(u) >= 1.0)
    return img * (1.0 - outside_shadow[..., None])


def _camera(rng: np.random.Generator, img: np.ndarray, h: int, w: int, scale: float) -> np.ndarray:
    """Optics and camera: slight blur, lighting gradient, gain, gamma, sensor noise."""
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.6 * scale)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light_dir = rng.uniform(0, 2 * math.pi)
    ramp = (xx / w - 0.5) * math.cos(light_dir) + (yy / h - 0.5) * math.sin(light_dir)
    vignette = (xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2
    light = 1.0 + rng.uniform(0.0, 0.15) * ramp - rng.uniform(0.0, 0.25) * vignette
    img = img * light[..., None] * rng.uniform(0.88, 1.12)
    img = np.clip(img, 0, 1) ** rng.uniform(0.87, 1.15)
    img = img + rng.normal(0, rng.uniform(0.006, 0.014), img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _noise_along(rng: np.random.Generator, s: np.ndarray, span: float, scale: float) -> np.ndarray:
    n = max(4, int(span / scale) + 4)
    knots = rng.uniform(-1.0, 1.0, n)
    grid = np.linspace(-span / 2 - scale, span / 2 + scale, n)
    return np.interp(s, grid, knots).astype(np.float32)


# ---- the dataset tree ------------------------------------------------------------------------


def _stream(seed: int, split: int, type_code: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, type_code, index, GENERATOR_VERSION])


def _stamp(seed: int, params: WeldParams) -> dict:
    return {
        "generator": "autoweld.data.weld",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "params": asdict(params),
        "defect_types": list(WELD_DEFECT_TYPES),
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - encoding a uint8 array does not fail
        raise OSError(f"could not encode {path}")
    encoded.tofile(str(path))


def generate_weld(
    root: str | Path,
    *,
    seed: int = 0,
    n_train: int = WeldParams.n_train,
    n_test_good: int = WeldParams.n_test_good,
    n_test_per_defect: int = WeldParams.n_test_per_defect,
    image_size: int = WeldParams.image_size,
    progress: bool = True,
) -> Path:
    """Write the ``weld`` category to ``ROOT/weld`` in the MVTec AD layout and return that path.

    An existing ``ROOT/weld`` written by this generator is replaced; a folder of that name that
    this generator did not write (no stamp file) is refused with ``FileExistsError``. The tree is
    built in a temporary folder beside it and moved into place at the end, so an interrupted run
    never leaves a half-written category behind.
    """
    seed = _check_seed(seed)
    params = WeldParams(n_train, n_test_good, n_test_per_defect, image_size)
    root = Path(root).expanduser()
    target = root / CATEGORY
    if target.exists() and not (target / STAMP_NAME).is_file():
        raise FileExistsError(
            f"{target} exists but was not written by the weld generator (no {STAMP_NAME}); "
            "remove it or choose another data root"
        )
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".weld-", dir=root))
    try:
        _write_tree(work, seed, params, progress)
        (work / STAMP_NAME).write_text(json.dumps(_stamp(seed, params), indent=2) + "\n")
        _swap_in(work, target, seed, params)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when it was moved into place
    logger.info("generated weld category (seed %d) in %s", seed, target)
    return target


def _swap_in(work: Path, target: Path, seed: int, params: WeldParams) -> None:
    """Move the finished tree ``work`` to ``target`` with renames only, so that a reader never
    sees a half-written or half-deleted category. (Two processes generating the same tree at
    once write byte-identical files, so whichever lands last is as good as the other.)"""
    trash = None
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=".weld-old-", dir=target.parent))
        os.replace(target, trash / CATEGORY)
    try:
        os.replace(work, target)
    except OSError:
        if not stamp_matches(target, seed, params):
            raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _write_tree(out: Path, seed: int, params: WeldParams, progress: bool) -> None:
    size = params.image_size
    jobs: list[tuple[str, int, int]] = [("train", _GOOD_CODE, i) for i in range(params.n_train)]
    jobs += [("test", _GOOD_CODE, i) for i in range(params.n_test_good)]
    for code in range(1, len(WELD_DEFECT_TYPES) + 1):
        jobs += [("test", code, i) for i in range(params.n_test_per_defect)]
    (out / "train" / "good").mkdir(parents=True)
    (out / "test" / "good").mkdir(parents=True)
    if params.n_test_per_defect:
        for kind in WELD_DEFECT_TYPES:
            (out / "test" / kind).mkdir(parents=True)
            (out / "ground_truth" / kind).mkdir(parents=True)
    for split, code, index in tqdm(jobs, desc="weld images", disable=not progress, leave=False):
        rng = _stream(seed, _SPLIT_TRAIN if split == "train" else _SPLIT_TEST, code, index)
        image, geom = render_weld(rng, size)
        name = f"{index:03d}"
        if code == _GOOD_CODE:
            _write_png(out / split / "good" / f"{name}.png", image)
            continue
        kind = WELD_DEFECT_TYPES[code - 1]
        image, mask = synthesize_defect(image, kind, rng, bead=geom)
        _write_png(out / "test" / kind / f"{name}.png", image)
        _write_png(out / "ground_truth" / kind / f"{name}_mask.png", mask.astype(np.uint8) * 255)


def stamp_matches(folder: str | Path, seed: int, params: WeldParams | None = None) -> bool:
    """True when ``folder`` holds a weld tree generated with this version, seed and parameters."""
    stamp_path = Path(folder) / STAMP_NAME
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return False
    return stamp == _stamp(_check_seed(seed), params or WeldParams())


def ensure_weld(data_root: str | Path, seed: int = 0, params: WeldParams | None = None) -> Path:
    """Return ``DATA_ROOT/weld``, generating it first unless its stamp matches."""
    params = params or WeldParams()
    target = Path(data_root).expanduser() / CATEGORY
    if stamp_matches(target, seed, params):
        return target
    if target.exists():
        logger.info("%s was generated with other settings; regenerating", target)
    else:
        logger.info("generating the weld category in %s (one-off, seconds)", target)
    return generate_weld(data_root, seed=seed, **asdict(params))
