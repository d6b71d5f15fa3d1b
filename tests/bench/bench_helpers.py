"""Helpers shared by the bench tests (a module of its own: ``conftest`` names clash across
test folders)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
from tinybundle import defect_image, normal_image


def write_images(folder: Path, n_normal: int = 3, n_defect: int = 2, size: int = 48) -> Path:
    """PNG files of the tiny bundle's normal and defective images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        cv2.imwrite(str(folder / f"good_{i:02d}.png"), normal_image(10 + i, size=size))
    for i in range(n_defect):
        cv2.imwrite(str(folder / f"defect_{i:02d}.png"), defect_image(20 + i, size=size))
    return folder


def slow_first_append(ledger, delay_s: float) -> None:
    """Make the ledger's first append of a PASS durable only after ``delay_s`` (a stalled
    fsync). A FAIL has no deadline to miss (nothing is corrected), so FAILs are not slowed."""
    real, slowed = ledger.append, []

    def append(record, **kwargs):
        if record.decision == "PASS" and not slowed:
            slowed.append(record.part_id)
            time.sleep(delay_s)
        return real(record, **kwargs)

    ledger.append = append
