import cv2
import numpy as np
import pytest

from autoweld.runtime.heatmap import render_heatmap, save_heatmap


def _scene():
    image = np.full((120, 160, 3), 90, np.uint8)
    amap = np.zeros((120, 160), np.float32)
    amap[40:70, 60:100] = 0.95
    return image, amap


def test_overlay_marks_the_hot_region_and_keeps_the_rest(tmp_path):
    image, amap = _scene()
    picture = render_heatmap(image, amap, "FAIL", 0.93, 0.5)
    banner = picture.shape[0] - image.shape[0]
    assert picture.shape[1] == 160 and banner > 0
    body = picture[banner:]
    # low-probability areas stay (almost) the original image; the hot region is coloured red-ish
    assert np.abs(body[5:30, 5:50].astype(int) - 90).max() <= 1
    hot = body[50:60, 70:90].reshape(-1, 3).mean(axis=0)
    assert hot[2] > hot[0] + 40  # red over blue in BGR
    # the contour of the thresholded region is drawn in white on its border
    assert (body[40, 60:100] > 200).all(axis=1).mean() > 0.8
    # banner colour says FAIL (red)
    assert picture[2, -2, 2] > 150 and picture[2, -2, 1] < 100
    path = save_heatmap(tmp_path / "out" / "h.png", picture)
    np.testing.assert_array_equal(cv2.imread(str(path)), picture)


def test_pass_banner_and_grey_input():
    image, amap = _scene()
    picture = render_heatmap(image[:, :, 0], np.zeros_like(amap), "PASS", 0.1, 0.5)
    assert picture.ndim == 3 and picture[2, -2, 1] > 120  # green banner
    # nothing over threshold -> no contour, image unchanged
    np.testing.assert_array_equal(picture[picture.shape[0] - 120 :], image)


def test_failed_inspection_without_map_still_renders():
    image, _ = _scene()
    picture = render_heatmap(image, None, "FAIL", float("nan"), 0.5, error="engine gave NaN")
    assert picture.shape[0] > image.shape[0]


def test_bad_arguments():
    image, amap = _scene()
    with pytest.raises(ValueError, match="anomaly_map"):
        render_heatmap(image, amap[:10], "FAIL", 1.0, 0.5)
    with pytest.raises(ValueError, match="image"):
        render_heatmap(image.astype(np.float32), amap, "FAIL", 1.0, 0.5)
    with pytest.raises(ValueError, match=r"\.png"):
        save_heatmap("x.jpg", image)
