import itertools

import numpy as np
import pytest

from autoweld.evaluation.metrics import aupro, auroc, pixel_auroc, pro_curve


def brute_auroc(scores, labels):
    """P(score of anomalous > score of normal) + 0.5 P(equal), over all pairs."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def test_auroc_hand_cases():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # pairs: (0.4 vs 0.1) win, (0.4 vs 0.6) lose, (0.7 vs 0.1) win, (0.7 vs 0.6) win -> 3/4
    assert auroc([0.1, 0.4, 0.6, 0.7], [0, 1, 0, 1]) == 0.75
    # a tie between classes counts one half: (0.5 vs 0.5) half, (0.9 vs 0.5) win -> 1.5/2
    assert auroc([0.5, 0.5, 0.9], [0, 1, 1]) == 0.75


@pytest.mark.parametrize("seed", range(8))
def test_auroc_equals_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1
    scores = rng.integers(0, 6, n).astype(float)  # many ties on purpose
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_auroc_rejects_bad_input():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2], [0, 2])


def test_pixel_auroc_flattens_all_images():
    maps = [np.array([[0.1, 0.9], [0.2, 0.3]]), np.array([[0.4, 0.05, 0.8]])]
    masks = [np.array([[0, 1], [0, 0]]), np.array([[0, 0, 1]])]
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([m.ravel() for m in masks])
    assert pixel_auroc(maps, masks) == pytest.approx(brute_auroc(scores, labels))
    assert pixel_auroc(maps, masks) == 1.0
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="2 anomaly maps but 1 masks"):
        pixel_auroc([np.zeros((2, 2))] * 2, [np.zeros((2, 2))])


def test_pro_curve_hand_case():
    # one image, 1 x 6: region A = pixels 0-1 (2 px), region B = pixel 4 (1 px), 3 normal pixels.
    mask = np.array([[1, 1, 0, 0, 1, 0]])
    amap = np.array([[0.9, 0.5, 0.7, 0.1, 0.6, 0.3]])
    fpr, pro = pro_curve([amap], [mask])
    # thresholds descending: 0.9 (A half), 0.7 (+normal), 0.6 (B), 0.5 (A full), 0.3, 0.1
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.75, 1.0, 1.0, 1.0])


def test_aupro_hand_case():
    mask = np.array([[1, 1, 0, 0, 1, 0]])
    amap = np.array([[0.9, 0.5, 0.7, 0.1, 0.6, 0.3]])
    # PRO over FPR on [0, 0.3]: the curve jumps 0 -> 0.25 at fpr 0, stays 0.25 until fpr 1/3,
    # so the area up to 0.3 is 0.25 * 0.3 and normalised by 0.3 gives 0.25.
    assert aupro([amap], [mask]) == pytest.approx(0.25)
    # up to fpr 1: 0.25*(1/3) + 1.0*(1/3) (after the vertical jump) + 1.0*(1/3)
    assert aupro([amap], [mask], max_fpr=1.0) == pytest.approx((0.25 + 1 + 1) / 3)


def test_aupro_interpolates_at_max_fpr():
    # 10 normal pixels with scores 0.1..1.0 interleaved with one region of 1 pixel scoring 0.55
    mask = np.zeros((1, 11), int)
    mask[0, 10] = 1
    amap = np.concatenate([np.linspace(1.0, 0.1, 10), [0.55]])[None, :]
    # pro is 0 until fpr = 0.5 (five normal pixels above 0.55), so the area to 0.3 is 0
    assert aupro([amap], [mask]) == 0.0
    # region pixel scoring above everything -> pro 1 from fpr 0 -> perfect
    amap[0, 10] = 2.0
    assert aupro([amap], [mask]) == pytest.approx(1.0)
    # with a linear ramp between points, the trapezoid at 0.3 uses the interpolated value
    fpr, pro = pro_curve([amap], [mask])
    assert fpr[0] == 0 and pro[-1] == 1.0


def test_aupro_regions_count_equally_whatever_their_size():
    # a big region fully found and a small one missed -> PRO 0.5 (pixel-wise it would be ~0.97)
    mask = np.zeros((10, 10), int)
    mask[0:6, 0:6] = 1  # 36 px
    mask[9, 9] = 1  # 1 px, 8-connectivity keeps it separate
    amap = np.zeros((10, 10))
    amap[0:6, 0:6] = 1.0
    fpr, pro = pro_curve([amap], [mask])
    assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0
    # 8-connectivity: diagonal neighbours are one region
    diag = np.eye(4, dtype=int)
    _, pro_diag = pro_curve([np.eye(4)], [diag])
    assert pro_diag[1] == pytest.approx(1.0)


def test_aupro_needs_regions():
    with pytest.raises(ValueError, match="anomalous region"):
        aupro([np.zeros((3, 3))], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="max_fpr"):
        aupro([np.zeros((3, 3))], [np.ones((3, 3))], max_fpr=0)
