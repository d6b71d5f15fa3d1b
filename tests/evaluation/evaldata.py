"""A tiny test category for evaluation, shared with the ``autoweld-eval`` command-line tests."""

import cv2
import numpy as np
from tinybundle import normal_image


def write_dataset(root, n_good=6, per_defect=4):
    """A tiny MVTec-layout category 'unit' (the tiny bundle's category) with two defect types:
    'square' (a red square, found by both heads) and 'dot' (a small dark dot)."""
    base = root / "unit"
    for i in range(3):
        (base / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(base / "train" / "good" / f"{i:03d}.png"), normal_image(100 + i))
    (base / "test" / "good").mkdir(parents=True)
    for i in range(n_good):
        cv2.imwrite(str(base / "test" / "good" / f"{i:03d}.png"), normal_image(200 + i))
    rng = np.random.default_rng(0)
    for defect in ("square", "dot"):
        (base / "test" / defect).mkdir(parents=True)
        (base / "ground_truth" / defect).mkdir(parents=True)
        for i in range(per_defect):
            image = normal_image(300 + i)
            mask = np.zeros(image.shape[:2], np.uint8)
            y, x = (int(v) for v in rng.integers(4, 30, 2))
            if defect == "square":
                image[y : y + 12, x : x + 12] = (250, 40, 40)
                mask[y : y + 12, x : x + 12] = 255
            else:
                cv2.circle(image, (x + 6, y + 6), 3, (20, 20, 20), -1)
                cv2.circle(mask, (x + 6, y + 6), 3, 255, -1)
            cv2.imwrite(str(base / "test" / defect / f"{i:03d}.png"), image)
            cv2.imwrite(str(base / "ground_truth" / defect / f"{i:03d}_mask.png"), mask)
    return root
