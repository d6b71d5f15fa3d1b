import numpy as np
import pytest

from autoweld.train.calibration import (
    choose_threshold,
    fit_calibration,
    fit_fusion_weights,
    fit_platt,
    platt,
)


def _logistic_data(a, b, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-2, 4, n)
    p = 1.0 / (1.0 + np.exp(a * s + b))
    y = (rng.random(n) < p).astype(int)
    return s, y


def test_platt_recovers_known_parameters():
    s, y = _logistic_data(-2.0, 1.5)
    a, b = fit_platt(s, y)
    assert a == pytest.approx(-2.0, abs=0.15)
    assert b == pytest.approx(1.5, abs=0.15)


def test_platt_is_equivariant_to_score_scale_and_shift():
    s, y = _logistic_data(-1.0, 0.5, n=3000, seed=1)
    a, b = fit_platt(s, y)
    a2, b2 = fit_platt(10.0 * s + 3.0, y)
    np.testing.assert_allclose(platt(s, a, b), platt(10.0 * s + 3.0, a2, b2), atol=1e-4)


def test_platt_stays_finite_on_separable_data():
    """Platt's target smoothing: perfectly separated classes still give finite, ordered p."""
    s = np.array([0.1, 0.2, 0.3, 0.4, 2.0, 2.1, 2.2])
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    a, b = fit_platt(s, y)
    assert np.isfinite(a) and np.isfinite(b) and a < 0
    p = platt(s, a, b)
    assert p[:4].max() < 0.5 < p[4:].min()
    # smoothed targets: (N+ + 1)/(N+ + 2) = 0.8 for positives, the fit cannot reach 1.0
    assert p.max() < 0.99


def test_platt_rejects_bad_input():
    with pytest.raises(ValueError, match="both normal"):
        fit_platt(np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="same length"):
        fit_platt(np.ones(4), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        fit_platt(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        fit_platt(np.ones(3), np.array([0, 1, 2]))


def test_platt_function_does_not_overflow():
    p = platt(np.array([-1e6, 0.0, 1e6]), -1.0, 0.0)
    np.testing.assert_allclose(p, [0.0, 0.5, 1.0])


def test_fusion_single_model_is_one():
    p = np.array([[0.1], [0.9]])
    np.testing.assert_array_equal(fit_fusion_weights(p, np.array([0, 1])), [1.0])


def test_fusion_prefers_the_informative_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(np.where(y == 1, 0.85, 0.15) + rng.normal(0, 0.05, 400), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, 400)
    w = fit_fusion_weights(np.stack([noise, good], axis=1), y)
    assert w.shape == (2,)
    assert np.all(w >= 0)
    assert w.sum() == pytest.approx(1.0)
    assert w[1] > 0.8


def test_fusion_rejects_bad_input():
    with pytest.raises(ValueError, match="probabilities"):
        fit_fusion_weights(np.ones(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_fusion_weights(np.array([[0.5, 1.5], [0.2, 0.1]]), np.array([0, 1]))


def test_best_f1_threshold_separates_separable_classes():
    fused = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    y = np.array([0, 0, 0, 1, 1])
    choice = choose_threshold(fused, y, "best_f1")
    assert 0.3 < choice.threshold <= 0.7
    assert choice.f1 == 1.0 and choice.frr == 0.0 and choice.far == 0.0
    assert choice.target_frr is None


def test_best_f1_threshold_on_overlap_is_optimal():
    rng = np.random.default_rng(3)
    fused = np.concatenate([rng.normal(0.3, 0.1, 200), rng.normal(0.6, 0.1, 100)])
    y = np.array([0] * 200 + [1] * 100)
    choice = choose_threshold(fused, y, "best_f1")

    def f1(t):
        fail = fused >= t
        tp = np.sum(fail & (y == 1))
        return 2 * tp / (2 * tp + np.sum(fail & (y == 0)) + np.sum(~fail & (y == 1)))

    grid = np.linspace(0, 1, 1001)
    assert choice.f1 == pytest.approx(f1(choice.threshold))
    assert choice.f1 >= max(f1(t) for t in grid) - 1e-12


def test_target_frr_threshold_is_the_lowest_that_meets_the_target():
    rng = np.random.default_rng(5)
    normals = rng.uniform(0, 1, 100)
    anomalies = rng.uniform(0.5, 1.5, 50)
    fused = np.concatenate([normals, anomalies])
    y = np.array([0] * 100 + [1] * 50)
    choice = choose_threshold(fused, y, "target_frr", target_frr=0.05)
    assert choice.frr <= 0.05
    assert np.mean(normals >= choice.threshold) == choice.frr
    # any lower threshold that passes one more normal value breaks the target
    lower = np.sort(normals)[np.sort(normals) < choice.threshold][-1]
    assert np.mean(normals >= lower) > 0.05
    zero = choose_threshold(fused, y, "target_frr", target_frr=0.0)
    assert zero.frr == 0.0 and zero.threshold > normals.max()


def test_threshold_rejects_bad_method():
    with pytest.raises(ValueError, match="method"):
        choose_threshold(np.array([0.1, 0.9]), np.array([0, 1]), "youden")
    with pytest.raises(ValueError, match="target_frr"):
        choose_threshold(np.array([0.1, 0.9]), np.array([0, 1]), "target_frr", target_frr=1.5)


@pytest.mark.parametrize("method", ["best_f1", "target_frr"])
def test_threshold_stays_a_probability_when_calibration_saturates(method):
    """A normal at exactly 1.0 must not push the threshold above 1: no part could FAIL then."""
    fused = np.array([0.1, 0.2, 1.0, 0.9, 1.0])
    labels = np.array([0, 0, 0, 1, 1])
    choice = choose_threshold(fused, labels, method, target_frr=0.0)
    assert 0.0 < choice.threshold <= 1.0
    # every anomaly at 1.0 is still rejected at the chosen threshold
    assert all(p >= choice.threshold for p in fused[(labels == 1) & (fused == 1.0)])


def test_threshold_is_never_zero():
    fused = np.array([0.0, 0.0, 0.0, 0.0])
    labels = np.array([1, 1, 0, 0])
    assert choose_threshold(fused, labels, "best_f1").threshold > 0.0


def _two_head_scores(seed=7):
    """An informative head and a noisy one, on different scales, 60 normals + 30 anomalies."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 60 + [1] * 30)
    sharp = np.where(labels == 1, 3.0, 1.0) + rng.normal(0, 0.6, labels.size)
    noisy = 100.0 * rng.uniform(0, 1, labels.size) + 20.0 * labels
    return {"noisy": noisy, "sharp": sharp}, labels


@pytest.mark.parametrize("method", ["best_f1", "target_frr"])
def test_fit_calibration_is_platt_then_fusion_then_threshold(method):
    """The entry point export runs equals the three fits done by hand, to the bit, per head
    name (the fusion columns follow the order of ``raw_scores``)."""
    raw, labels = _two_head_scores()
    summary = fit_calibration(raw, labels, method=method, target_frr=0.05, source="val_root")
    params = {name: fit_platt(scores, labels) for name, scores in raw.items()}
    probabilities = np.stack([platt(raw[n], *params[n]) for n in ("noisy", "sharp")], axis=1)
    weights = fit_fusion_weights(probabilities, labels)
    choice = choose_threshold(probabilities @ weights, labels, method, target_frr=0.05)
    assert summary.platt == params
    assert summary.fusion_weights == {"noisy": float(weights[0]), "sharp": float(weights[1])}
    assert summary.fusion_weights["sharp"] > summary.fusion_weights["noisy"]
    assert (summary.threshold, summary.threshold_method) == (choice.threshold, method)
    assert (summary.f1, summary.frr, summary.far) == (choice.f1, choice.frr, choice.far)
    assert summary.target_frr == (0.05 if method == "target_frr" else None)
    assert (summary.source, summary.n_normal, summary.n_anomalous) == ("val_root", 60, 30)


def test_fit_calibration_weights_follow_the_head_names():
    """Reordering the heads reorders nothing that matters: each head keeps its own Platt
    parameters and weight."""
    raw, labels = _two_head_scores()
    forward = fit_calibration(raw, labels, source="synthesised")
    backward = fit_calibration(dict(reversed(raw.items())), labels, source="synthesised")
    assert list(backward.fusion_weights) == ["sharp", "noisy"]
    assert backward.platt == forward.platt
    for name in raw:
        assert backward.fusion_weights[name] == pytest.approx(
            forward.fusion_weights[name], abs=1e-6
        )


def test_fit_calibration_needs_a_head():
    with pytest.raises(ValueError, match="at least one head"):
        fit_calibration({}, np.array([0, 1]), source="synthesised")
