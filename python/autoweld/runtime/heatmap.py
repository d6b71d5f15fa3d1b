"""Heat-map pictures for people: the inspected image with its anomaly map laid over it.

The map is the fused per-pixel probability (0-1), coloured on a fixed scale (turbo colormap,
0 = blue, 1 = dark red), so the same colour means the same probability on every picture. It is
blended over the image where it matters (transparent where the probability is low), the region
at or above the decision threshold is outlined, and a banner states the decision, the fused
probability and the threshold.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ["render_heatmap", "save_heatmap"]

_PASS_COLOUR = (60, 160, 40)  # BGR green
_FAIL_COLOUR = (40, 40, 220)  # BGR red
_CONTOUR_COLOUR = (255, 255, 255)


def render_heatmap(
    image: np.ndarray,
    anomaly_map: np.ndarray | None,
    decision: str,
    probability: float,
    threshold: float,
    *,
    error: str | None = None,
    max_alpha: float = 0.6,
) -> np.ndarray:
    """Return a BGR uint8 picture: ``image`` with ``anomaly_map`` (H x W, 0-1) overlaid.

    ``anomaly_map=None`` (a failed inspection) gives the image with the banner only; ``error`` is
    printed under the decision.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"image: expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}"
        )
    base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    height, width = base.shape[:2]
    if anomaly_map is not None:
        if anomaly_map.shape != (height, width):
            raise ValueError(
                f"anomaly_map: shape {anomaly_map.shape} differs from the image's {(height, width)}"
            )
        level = np.clip(np.nan_to_num(anomaly_map.astype(np.float32)), 0.0, 1.0)
        colours = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
        # Opacity grows with the probability: normal areas stay readable, hot areas stand out.
        alpha = (max_alpha * level)[:, :, None]
        base = (base * (1.0 - alpha) + colours * alpha).astype(np.uint8)
        region = (level >= threshold).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        thickness = max(1, round(min(height, width) / 200))
        cv2.drawContours(base, contours, -1, _CONTOUR_COLOUR, thickness, cv2.LINE_AA)

    # Banner above the image so it never hides a defect.
    scale = max(0.4, min(width, 1200) / 640)
    line_height = int(28 * scale)
    lines = [f"{decision}  p={probability:.3f}  threshold={threshold:.3f}"]
    if error:
        lines.append(error[:120])
    banner = np.zeros((line_height * len(lines) + 8, width, 3), dtype=np.uint8)
    banner[:] = _PASS_COLOUR if decision == "PASS" else _FAIL_COLOUR
    for i, text in enumerate(lines):
        cv2.putText(
            banner,
            text,
            (6, line_height * (i + 1) - 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7 * scale if i == 0 else 0.5 * scale,
            (255, 255, 255),
            max(1, round(scale * (2 if i == 0 else 1))),
            cv2.LINE_AA,
        )
    return np.vstack([banner, base])


def save_heatmap(path: str | os.PathLike[str], picture: np.ndarray) -> Path:
    """Write a rendered picture as PNG; raises ``ValueError`` if it cannot be written."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"heatmap path {target} must end in .png")
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise ValueError(f"heatmap: could not encode {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encoded.tobytes())
    except OSError as error:
        raise ValueError(f"heatmap: cannot write {target} ({error.strerror or error})") from None
    return target
