"""Defects painted onto images, each with its exact pixel mask.

``synthesize_defect`` paints one weld defect onto a BGR weld image (used to build the ``weld``
test split and, by calibration, to make anomalies from held-out normal images);
``synthesize_anomaly`` paints a generic one (cut-paste, scratch, blob) for any other surface.

Every painter builds an opacity map ``alpha`` and cuts it below ``_ALPHA_CUT``: the returned mask
is exactly ``alpha > 0`` and every pixel outside it is returned byte-for-byte unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "WELD_DEFECT_TYPES",
    "BeadGeometry",
    "estimate_bead",
    "synthesize_anomaly",
    "synthesize_defect",
    "synthesize_perlin_anomaly",
    "synthesize_subtle_anomaly",
]

WELD_DEFECT_TYPES: tuple[str, ...] = (
    "porosity",
    "crack",
    "undercut",
    "spatter",
    "burn_through",
    "lack_of_fusion",
)

# Opacity below which a painter leaves the pixel alone; the mask is where opacity is above it.
_ALPHA_CUT = 0.3


@dataclass(frozen=True)
class BeadGeometry:
    """Where the weld bead lies in an image: a straight centre line and a half width.

    The centre line passes through ``(width / 2, center_y)`` at ``angle`` radians (positive turns
    clockwise on screen, i.e. y grows with x). ``s`` runs along the bead from the image centre
    column, ``d`` across it (positive downwards for angle 0).
    """

    center_y: float
    angle: float
    half_width: float

    def frame(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Bead coordinates ``(s, d)`` of every pixel, float32 ``(H, W)`` each."""
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        dx = xx - width / 2.0
        dy = yy - self.center_y
        return dx * ca + dy * sa, -dx * sa + dy * ca

    def to_image(self, s: np.ndarray, d: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(x, y)`` of bead coordinates ``(s, d)``."""
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        return width / 2.0 + s * ca - d * sa, self.center_y + s * sa + d * ca


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            "image must be a uint8 BGR array of shape (H, W, 3), got "
            + (
                f"{image.dtype} {image.shape}"
                if isinstance(image, np.ndarray)
                else type(image).__name__
            )
        )
    if image.shape[2] != 3 or min(image.shape[:2]) < 32:
        raise ValueError(f"image must be (H, W, 3) with H, W >= 32, got {image.shape}")


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _compose(
    image: np.ndarray, paint: np.ndarray, alpha: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``paint`` (float BGR in [0, 1]) over ``image`` where ``alpha`` passes the cut."""
    mask = alpha > _ALPHA_CUT
    if not mask.any():
        return image.copy(), mask
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    base = image.astype(np.float32) / 255.0
    blended = base * (1.0 - a) + paint * a
    out = image.copy()
    out[mask] = np.clip(np.rint(blended[mask] * 255.0), 0, 255).astype(np.uint8)
    return out, mask


def _disk_alpha(xx: np.ndarray, yy: np.ndarray, x0: float, y0: float, radius: float) -> np.ndarray:
    """Anti-aliased disk opacity."""
    r = np.sqrt((xx - x0) ** 2 + (yy - y0) ** 2)
    return np.clip(radius - r + 0.5, 0.0, 1.0)


def _noise1d(rng: np.random.Generator, s: np.ndarray, span: float, scale: float) -> np.ndarray:
    """Smooth random function of ``s`` (values about in [-1, 1]) with feature size ``scale``."""
    n = max(4, int(span / scale) + 4)
    knots = rng.uniform(-1.0, 1.0, n)
    grid = np.linspace(-span / 2 - scale, span / 2 + scale, n)
    return np.interp(s, grid, knots).astype(np.float32)


# ---- bead estimation -------------------------------------------------------------------------


# Smallest Sobel response (gray levels per pixel, times the kernel's gain of 4) taken for a toe.
_MIN_EDGE = 10.0


def estimate_bead(image: np.ndarray) -> BeadGeometry:
    """Estimate where the bead lies in a weld image (a horizontal-ish textured band).

    Two passes over vertical strips: ripples and glare make the bead the band with the most
    horizontal structure (a rough centre line); then the toes, where the bright bead meets its
    shadow, give the edges, from which centre line and half width are refitted.
    """
    _check_image(image)
    h, w = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx = cv2.GaussianBlur(np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)), (0, 0), 2.0)
    gy = cv2.GaussianBlur(cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3), (0, 0), w / 40, 1.0)
    n_strips = 8
    bounds = [(k * w // n_strips, (k + 1) * w // n_strips) for k in range(n_strips)]
    xs = np.array([(x0 + x1) / 2.0 for x0, x1 in bounds])
    rough = []
    for x0, x1 in bounds:
        profile = cv2.GaussianBlur(gx[:, x0:x1].mean(axis=1).reshape(-1, 1), (0, 0), h / 64)
        profile = profile.ravel()
        # No structure at all (a blank strip): assume the bead is centred.
        rough.append(float(np.argmax(profile)) if np.ptp(profile) > 0.5 else (h - 1) / 2.0)
    slope, intercept = _robust_line(xs, np.array(rough))
    centres, halves = [], []
    near, far = max(2, int(0.03 * h)), max(4, int(0.35 * h))
    for (x0, x1), x in zip(bounds, xs, strict=True):
        c = int(round(slope * x + intercept))
        profile = gy[:, x0:x1].mean(axis=1)
        up_lo, up_hi = max(0, c - far), max(1, c - near)
        dn_lo, dn_hi = min(h - 2, c + near), min(h, c + far)
        if up_hi - up_lo < 2 or dn_hi - dn_lo < 2:
            continue
        top = up_lo + int(np.argmax(profile[up_lo:up_hi]))  # dark above, bright bead below
        bottom = dn_lo + int(np.argmin(profile[dn_lo:dn_hi]))  # bright bead above, dark below
        if profile[top] < _MIN_EDGE or -profile[bottom] < _MIN_EDGE:
            continue  # no toe edge in this strip
        centres.append((x, (top + bottom) / 2.0))
        halves.append((bottom - top) / 2.0)
    if len(centres) >= 3:
        cx, cy = np.array(centres).T
        slope, intercept = _robust_line(cx, cy)
        half_width = float(np.median(halves))
    else:
        half_width = 0.15 * h
    angle = float(np.clip(math.atan(slope), -math.radians(25), math.radians(25)))
    center_y = float(np.clip(slope * (w / 2.0) + intercept, 0, h - 1))
    half_width = float(np.clip(half_width * math.cos(angle), h * 0.04, h * 0.35))
    return BeadGeometry(center_y=center_y, angle=angle, half_width=half_width)


def _robust_line(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    """Least-squares line, refitted without the points furthest off."""
    slope, intercept = np.polyfit(xs, ys, 1)
    resid = np.abs(ys - (slope * xs + intercept))
    keep = resid <= max(float(np.median(resid)) * 3.0, 2.0)
    if keep.sum() >= 3 and not keep.all():
        slope, intercept = np.polyfit(xs[keep], ys[keep], 1)
    return float(slope), float(intercept)


# ---- weld defects ----------------------------------------------------------------------------


def _visible_s(geom: BeadGeometry, w: int, length: float) -> float:
    """How far from the image centre (along the bead) a feature of ``length`` may be centred
    and still lie inside the image."""
    return max(0.0, 0.45 * w - length / 2.0)


def _porosity(img, geom, rng, s, d):
    h, w = img.shape[:2]
    scale = h / 256.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = int(rng.choice([1, 2, 3, 4, 5, 7], p=[0.2, 0.15, 0.2, 0.2, 0.15, 0.1]))
    spread = rng.uniform(6, 20) * scale
    s0 = rng.uniform(-1, 1) * _visible_s(geom, w, 2 * spread)
    d0 = rng.uniform(-0.5, 0.5) * geom.half_width
    alpha = np.zeros((h, w), np.float32)
    paint = np.zeros((h, w, 3), np.float32)
    r_max = 8.0 if n == 1 else 6.0
    for _ in range(n):
        ps = s0 + rng.normal(0, spread)
        pd = d0 + rng.normal(0, spread * 0.5)
        pd = float(np.clip(pd, -0.8 * geom.half_width, 0.8 * geom.half_width))
        x0, y0 = geom.to_image(np.float32(ps), np.float32(pd), w)
        radius = rng.uniform(3.5, r_max) * scale
        a = _disk_alpha(xx, yy, float(x0), float(y0), radius)
        r = np.sqrt((xx - x0) ** 2 + (yy - y0) ** 2) / radius
        # A pore is a dark cup: darkest at its centre, a faint lit lip on the lower side.
        depth = rng.uniform(0.04, 0.14)
        lip = np.clip((yy - y0) / radius, 0, 1) * np.clip(r - 0.6, 0, 0.4) * 0.6
        tone = depth + 0.12 * r**2 + lip
        take = a > alpha
        alpha = np.where(take, a, alpha)
        paint = np.where(take[..., None], tone[..., None] * np.array([1.0, 1.0, 0.95]), paint)
    return paint.astype(np.float32), alpha


def _polyline(rng, start, direction, length, step, wiggle):
    pts = [np.array(start, np.float64)]
    heading = direction
    travelled = 0.0
    while travelled < length:
        heading += rng.normal(0, wiggle)
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        travelled += step
    return np.array(pts)


def _crack(img, geom, rng, s, d):
    h, w = img.shape[:2]
    scale = h / 256.0
    across = rng.random() < 0.4
    if across:
        length = rng.uniform(1.4, 2.2) * geom.half_width
        s0 = rng.uniform(-1, 1) * _visible_s(geom, w, 0)
        d0 = -length / 2
        heading = math.pi / 2 + rng.normal(0, 0.25)
    else:
        length = rng.uniform(0.25, 0.55) * w
        s0 = rng.uniform(-1, 1) * _visible_s(geom, w, length) - length / 2
        d0 = rng.uniform(-0.4, 0.4) * geom.half_width
        heading = rng.normal(0, 0.15)
    # Trace in bead coordinates, then map to the image.
    pts = _polyline(rng, (s0, d0), heading, length, 4.0 * scale, 0.35)
    branches = [pts]
    for _ in range(int(rng.integers(0, 3))):
        k = int(rng.integers(1, len(pts)))
        side = rng.choice([-1.0, 1.0])
        branches.append(
            _polyline(
                rng, pts[k], heading + side * rng.uniform(0.5, 1.0), length * 0.2, 3 * scale, 0.4
            )
        )
    sub = 4  # cv2 sub-pixel shift: coordinates carry 2 fractional bits
    canvas = np.zeros((h, w), np.uint8)
    for i, poly in enumerate(branches):
        x, y = geom.to_image(poly[:, 0], poly[:, 1], w)
        xy = np.round(np.stack([x, y], axis=1) * sub).astype(np.int32)
        thickness = max(1, int(round((2.0 if i == 0 else 1.0) * scale)))
        cv2.polylines(canvas, [xy], False, 255, thickness, cv2.LINE_AA, shift=2)
    alpha = canvas.astype(np.float32) / 255.0
    alpha = np.clip(alpha * 1.3, 0, 1)
    tone = rng.uniform(0.03, 0.12)
    paint = np.full((h, w, 3), tone, np.float32)
    return paint, alpha


def _groove_alpha(rng, s, d, *, center_d, width, length, s0, soft, scale):
    """Opacity of a channel along the bead from s0 to s0+length, centred on d=center_d, with a
    ragged width and a slightly meandering centre."""
    span = float(s.shape[1]) * 1.5
    width_var = 1.0 + 0.3 * _noise1d(rng, s, span, 10.0 * scale)
    center_var = center_d + 1.0 * scale * _noise1d(rng, s, span, 14.0 * scale)
    across = np.abs(d - center_var) / (width * 0.5 * width_var)
    profile = np.clip(1.0 - across**soft, 0, 1) * 1.4
    t = (s - s0) / length
    taper = np.clip(np.minimum(t, 1 - t) * 10.0, 0, 1)
    return np.clip(profile * taper, 0, 1).astype(np.float32)


def _undercut(img, geom, rng, s, d):
    h, w = img.shape[:2]
    scale = h / 256.0
    side = rng.choice([-1.0, 1.0])
    length = rng.uniform(0.4, 0.75) * w
    s0 = rng.uniform(-1, 1) * _visible_s(geom, w, length) - length / 2
    width = rng.uniform(9.0, 13.0) * scale
    center = side * (geom.half_width + 0.45 * width)
    alpha = _groove_alpha(
        rng, s, d, center_d=center, width=width, length=length, s0=s0, soft=2.0, scale=scale
    )
    # A groove melted into the plate beside the toe: dark floor, the far wall catching light.
    across = np.clip((d - center) * side / (0.5 * width), -1, 1)
    floor = rng.uniform(0.06, 0.13)
    tone = floor + 0.45 * np.clip(across, 0, 1) ** 2
    paint = tone[..., None] * np.array([1.0, 0.97, 0.95], np.float32)
    return paint.astype(np.float32), alpha


def _lack_of_fusion(img, geom, rng, s, d):
    h, w = img.shape[:2]
    scale = h / 256.0
    side = rng.choice([-1.0, 1.0])
    length = rng.uniform(0.4, 0.8) * w
    s0 = rng.uniform(-1, 1) * _visible_s(geom, w, length) - length / 2
    width = rng.uniform(3.5, 5.0) * scale
    center = side * geom.half_width * rng.uniform(0.74, 0.88)
    alpha = _groove_alpha(
        rng, s, d, center_d=center, width=width, length=length, s0=s0, soft=4.0, scale=scale
    )
    # An unfused seam: a crisp near-black gap between the bead and the plate edge.
    paint = np.full((h, w, 3), rng.uniform(0.03, 0.1), np.float32)
    return paint, alpha


def _spatter(img, geom, rng, s, d):
    h, w = img.shape[:2]
    scale = h / 256.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = int(rng.integers(3, 11))
    side = rng.choice([-1.0, 1.0])
    s0 = rng.uniform(-1, 1) * _visible_s(geom, w, 60 * scale)
    alpha = np.zeros((h, w), np.float32)
    paint = np.zeros((h, w, 3), np.float32)
    for _ in range(n):
        ps = s0 + rng.normal(0, 22 * scale)
        sd = side if rng.random() < 0.85 else -side
        pd = sd * geom.half_width * rng.uniform(1.12, 2.1)
        x0, y0 = geom.to_image(np.float32(ps), np.float32(pd), w)
        x0, y0 = float(np.clip(x0, 4, w - 5)), float(np.clip(y0, 4, h - 5))
        radius = rng.uniform(2.5, 5.0) * scale
        a = _disk_alpha(xx, yy, x0, y0, radius)
        # A droplet is a little sphere: a specular spot up-left, a dark rim.
        r = np.sqrt((xx - x0) ** 2 + (yy - y0) ** 2) / radius
        spot = np.exp(
            -((xx - x0 + 0.35 * radius) ** 2 + (yy - y0 + 0.35 * radius) ** 2)
            / (0.45 * radius) ** 2
        )
        body = rng.uniform(0.12, 0.3) if rng.random() < 0.5 else rng.uniform(0.45, 0.6)
        tone = body * (1.0 - 0.5 * np.clip(r - 0.6, 0, 0.4) / 0.4) + 0.6 * spot
        take = a > alpha
        alpha = np.where(take, a, alpha)
        colour = np.array([0.9, 0.95, 1.0], np.float32)
        paint = np.where(take[..., None], np.clip(tone, 0, 1)[..., None] * colour, paint)
    return paint.astype(np.float32), alpha


def _burn_through(img, geom, rng, s, d):
    h, w = img.shape[:2]
    scale = h / 256.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = rng.uniform(7.0, 13.0) * scale
    s0 = rng.uniform(-1, 1) * _visible_s(geom, w, 2 * radius)
    d0 = rng.uniform(-0.3, 0.3) * geom.half_width
    x0, y0 = geom.to_image(np.float32(s0), np.float32(d0), w)
    theta = np.arctan2(yy - y0, xx - x0)
    wobble = np.zeros_like(theta)
    for k in (2, 3, 5):
        wobble += rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    r = np.sqrt((xx - x0) ** 2 + (yy - y0) ** 2) / (radius * (1.0 + wobble))
    rim_out = rng.uniform(1.35, 1.6)
    alpha = np.clip((rim_out - r) * radius * 0.8 + 0.5, 0, 1).astype(np.float32)
    hole = np.clip((1.0 - r) * radius + 0.5, 0, 1)
    # Bright oxidised rim (straw / orange), fading outwards; near-black hole.
    rim_colour = np.array([0.45, 0.72, 0.92], np.float32) * rng.uniform(0.85, 1.05)
    fade = np.clip((r - 1.0) / (rim_out - 1.0), 0, 1)
    rim = rim_colour * (1.0 - 0.35 * fade[..., None])
    dark = np.full(3, rng.uniform(0.02, 0.07), np.float32)
    paint = hole[..., None] * dark + (1 - hole[..., None]) * rim
    return paint.astype(np.float32), alpha


_PAINTERS = {
    "porosity": _porosity,
    "crack": _crack,
    "undercut": _undercut,
    "spatter": _spatter,
    "burn_through": _burn_through,
    "lack_of_fusion": _lack_of_fusion,
}


def synthesize_defect(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    *,
    bead: BeadGeometry | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one weld defect of type ``kind`` onto a BGR uint8 weld image.

    Returns ``(defective_image, mask)``: a new uint8 image of the same shape and the bool mask of
    exactly the pixels that were painted; every pixel outside the mask is unchanged. ``bead``
    tells where the bead is; when left out it is estimated from the image (``estimate_bead``).
    """
    _check_image(image)
    if kind not in _PAINTERS:
        raise ValueError(f"kind must be one of {', '.join(WELD_DEFECT_TYPES)}; got {kind!r}")
    _check_rng(rng)
    if bead is None:
        bead = estimate_bead(image)
    elif not isinstance(bead, BeadGeometry):
        raise ValueError(f"bead must be a BeadGeometry or None, got {type(bead).__name__}")
    h, w = image.shape[:2]
    s, d = bead.frame(h, w)
    for _ in range(8):  # a defect can fall (almost) outside the frame; try again
        paint, alpha = _PAINTERS[kind](image, bead, rng, s, d)
        out, mask = _compose(image, np.clip(paint, 0, 1), alpha)
        if mask.sum() >= 4:
            return out, mask
    raise ValueError(f"could not place a {kind} defect on a {w}x{h} image with bead {bead}")


# ---- generic anomalies -----------------------------------------------------------------------


def _random_polygon(rng, cx, cy, radius, n=9):
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = radius * rng.uniform(0.55, 1.0, n)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)


def _cut_paste(image, rng):
    h, w = image.shape[:2]
    side = int(rng.uniform(0.12, 0.25) * min(h, w))
    half = side // 2
    tx, ty = (int(rng.integers(half, w - half)), int(rng.integers(half, h - half)))
    for _ in range(20):  # take the patch from somewhere else, if there is room
        sx, sy = int(rng.integers(half, w - half)), int(rng.integers(half, h - half))
        if abs(sx - tx) + abs(sy - ty) > side:
            break
    patch = image[sy - half : sy + half, sx - half : sx + half].astype(np.float32) / 255.0
    patch = np.rot90(patch, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    gain = rng.uniform(0.6, 1.4)
    patch = np.clip(patch * gain + rng.uniform(-0.1, 0.1, 3), 0, 1)
    shape = np.zeros((h, w), np.uint8)
    cv2.fillPoly(shape, [_random_polygon(rng, tx, ty, half * 0.95)], 255, cv2.LINE_AA)
    paint = image.astype(np.float32) / 255.0
    paint[ty - half : ty + half, tx - half : tx + half] = patch
    return paint, shape.astype(np.float32) / 255.0


def _scratch(image, rng):
    h, w = image.shape[:2]
    p0 = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
    length = rng.uniform(0.25, 0.6) * min(h, w)
    heading = rng.uniform(0, 2 * math.pi)
    pts = _polyline(rng, p0, heading, length, max(2.0, min(h, w) / 64), 0.08)
    canvas = np.zeros((h, w), np.uint8)
    thickness = max(1, int(round(min(h, w) / 128)))
    cv2.polylines(
        canvas, [np.round(pts * 4).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, 2
    )
    tone = rng.uniform(0.0, 0.15) if rng.random() < 0.5 else rng.uniform(0.85, 1.0)
    return np.full((h, w, 3), tone, np.float32), np.clip(canvas / 255.0 * 1.3, 0, 1)


def _blob(image, rng):
    h, w = image.shape[:2]
    radius = rng.uniform(0.05, 0.12) * min(h, w)
    cx = rng.uniform(radius, w - radius)
    cy = rng.uniform(radius, h - radius)
    shape = np.zeros((h, w), np.uint8)
    cv2.fillPoly(shape, [_random_polygon(rng, cx, cy, radius, 12)], 255, cv2.LINE_AA)
    shape = cv2.GaussianBlur(shape, (0, 0), max(1.0, radius / 8))
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    texture = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.5)
    paint = np.clip(colour[None, None, :] + 0.15 * texture[..., None], 0, 1)
    alpha = np.clip(shape.astype(np.float32) / 255.0 * 1.5, 0, 1) * rng.uniform(0.75, 1.0)
    return paint.astype(np.float32), alpha


_GENERIC = {"cut_paste": _cut_paste, "scratch": _scratch, "blob": _blob}


def _paint_one_of(
    painters: dict, image: np.ndarray, rng: np.random.Generator, kind: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """One anomaly from ``painters`` (``kind``, or one drawn at random from the sorted names),
    retried until it is visible: ``(image, mask)``."""
    _check_image(image)
    _check_rng(rng)
    names = sorted(painters)
    if kind is None:
        kind = str(rng.choice(names))
    if kind not in painters:
        raise ValueError(f"kind must be one of {', '.join(names)} or None; got {kind!r}")
    for _ in range(8):
        paint, alpha = painters[kind](image, rng)
        out, mask = _compose(image, paint, alpha)
        if mask.sum() >= 4 and (out != image).any():
            return out, mask
    raise ValueError(f"could not paint a visible {kind} anomaly on this image")


def synthesize_anomaly(
    image: np.ndarray, rng: np.random.Generator, *, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a generic anomaly (``cut_paste``, ``scratch`` or ``blob``; random when ``kind`` is
    None) onto a BGR uint8 image of any surface. Returns ``(image, mask)`` like
    ``synthesize_defect``."""
    return _paint_one_of(_GENERIC, image, rng, kind)


# ---- DRAEM-style anomalies: a thresholded smooth-noise mask blending a foreign texture --------


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise (about zero mean, unit spread): two octaves of bicubically upsampled random
    grids, ``cells`` grid cells across the coarser octave."""
    total = np.zeros((h, w), np.float32)
    for octave, weight in ((cells, 1.0), (cells * 2, 0.5)):
        grid = rng.standard_normal((octave + 1, octave + 1)).astype(np.float32)
        total += weight * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (total - total.mean()) / max(float(total.std()), 1e-6)


def _foreign_texture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A texture that does not belong to the surface (float BGR in [0, 1]): the image itself
    turned, rescaled and recoloured, or coloured noise of a random grain."""
    h, w = image.shape[:2]
    if rng.random() < 0.5:
        zoom = rng.uniform(1.5, 3.0)
        turned = np.rot90(image, int(rng.integers(1, 4)))
        small = cv2.resize(np.ascontiguousarray(turned), None, fx=zoom, fy=zoom)
        texture = small[:h, :w].astype(np.float32) / 255.0
        texture = cv2.resize(texture, (w, h)) if texture.shape[:2] != (h, w) else texture
        gain = rng.uniform(0.4, 1.6, 3).astype(np.float32)
        return np.clip(texture * gain[None, None, :] + rng.uniform(-0.2, 0.2, 3), 0, 1)
    grain = cv2.GaussianBlur(
        rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), rng.uniform(0.8, 4.0)
    )
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    return np.clip(colour[None, None, :] + 0.4 * grain / max(float(grain.std()), 1e-6) * 0.5, 0, 1)


def synthesize_perlin_anomaly(
    image: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A DRAEM-style anomaly on a BGR uint8 image: smooth noise thresholded into one or more
    irregular regions, where a foreign texture is blended in with opacity 0.3..1 (several sizes
    and contrasts). Returns ``(image, mask)`` like :func:`synthesize_anomaly`."""
    _check_image(image)
    _check_rng(rng)
    h, w = image.shape[:2]
    for _ in range(8):
        noise = _fractal_noise(rng, h, w, int(rng.integers(2, 7)))
        region = noise > rng.uniform(1.2, 2.2)  # about 1-10 % of the image
        if region.sum() < 16:
            continue
        soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 1.0)
        alpha = np.where(region, np.maximum(soft, _ALPHA_CUT + 0.01), 0.0) * rng.uniform(0.45, 1.0)
        alpha = np.where(alpha > _ALPHA_CUT, alpha, 0.0).astype(np.float32)
        out, mask = _compose(image, _foreign_texture(image, rng), alpha)
        if mask.sum() >= 16 and (out != image).any():
            return out, mask
    raise ValueError("could not paint a visible perlin anomaly on this image")


# ---- subtle anomalies: small or thin, in the surface's own tones, shifted ---------------------


def _local_tone(image: np.ndarray, x: float, y: float, radius: float) -> np.ndarray:
    """Mean BGR colour (float, [0, 1]) of the image around (x, y)."""
    h, w = image.shape[:2]
    r = max(2, int(radius * 2))
    x0, x1 = max(0, int(x) - r), min(w, int(x) + r + 1)
    y0, y1 = max(0, int(y) - r), min(h, int(y) + r + 1)
    return image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0).astype(np.float32) / 255.0


def _shift_tone(tone: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The tone darkened or brightened by a moderate factor: a defect that differs from its
    surroundings by contrast, not by a colour the surface never has."""
    if rng.random() < 0.7:
        return tone * rng.uniform(0.15, 0.6)
    return np.clip(tone + (1.0 - tone) * rng.uniform(0.35, 0.8), 0, 1)


def _speck(image, rng):
    """One to three small soft spots (radius 2.5-6 % of the side): pits, pores, dust."""
    h, w = image.shape[:2]
    side = min(h, w)
    paint = image.astype(np.float32) / 255.0
    alpha = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.025, 0.06) * side
        x = float(np.clip(cx + rng.normal(0, 0.05 * side), radius, w - radius))
        y = float(np.clip(cy + rng.normal(0, 0.05 * side), radius, h - radius))
        spot = _disk_alpha(xx, yy, x, y, radius)
        spot = cv2.GaussianBlur(spot, (0, 0), max(0.6, radius / 4)) * rng.uniform(0.7, 1.0)
        paint = np.where(
            spot[..., None] > alpha[..., None],
            _shift_tone(_local_tone(image, x, y, radius), rng)[None, None, :],
            paint,
        )
        alpha = np.maximum(alpha, np.clip(spot * 1.4, 0, 1))
    return paint, alpha


def _hairline(image, rng):
    """A thin (1-3 px), wandering line whose tone is the surface's own, shifted."""
    h, w = image.shape[:2]
    side = min(h, w)
    start = rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h])
    pts = _polyline(
        rng,
        start,
        rng.uniform(0, 2 * math.pi),
        rng.uniform(0.12, 0.35) * side,
        max(2.0, side / 48),
        0.25,
    )
    pts = np.clip(pts, 0, [w - 1, h - 1])
    canvas = np.zeros((h, w), np.uint8)
    cv2.polylines(
        canvas,
        [np.round(pts * 4).astype(np.int32)],
        False,
        255,
        int(rng.integers(1, 4)),
        cv2.LINE_AA,
        2,
    )
    tone = _shift_tone(_local_tone(image, *start, side * 0.1), rng)
    alpha = np.clip(canvas.astype(np.float32) / 255.0 * 1.5, 0, 1) * rng.uniform(0.75, 1.0)
    return np.broadcast_to(tone, (h, w, 3)).astype(np.float32), alpha


_SUBTLE = {"speck": _speck, "hairline": _hairline}
SUBTLE_KINDS: tuple[str, ...] = tuple(sorted(_SUBTLE))


def synthesize_subtle_anomaly(
    image: np.ndarray, rng: np.random.Generator, *, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A small or thin anomaly (``speck`` or ``hairline``; random when ``kind`` is None) in tones
    taken from the image itself: the hard end of what a textured surface's defects look like, for
    calibration and choice. Returns ``(image, mask)`` like :func:`synthesize_anomaly`."""
    return _paint_one_of(_SUBTLE, image, rng, kind)
