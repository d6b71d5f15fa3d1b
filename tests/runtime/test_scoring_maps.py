"""The per-pixel Platt and the fused map are computed in place; they must be, to the bit, the
expressions they replaced (written out here): maps and heatmaps of earlier releases stay
reproducible."""

from types import SimpleNamespace

import numpy as np
import pytest

from autoweld.bundle.schema import Calibration
from autoweld.runtime.scoring import BatchScores, Fusion


def reference_probability(calibration: Calibration, values: np.ndarray) -> np.ndarray:
    z = np.clip(np.float32(calibration.a) * values + np.float32(calibration.b), -88.0, 88.0)
    return 1.0 / (1.0 + np.exp(z, dtype=np.float32))


def maps(seed: int, n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.gamma(2.0, 1.5, (n, size, size)).astype(np.float32)
    out[0, 0, :4] = [0.0, 1e-30, 80.0, 3e4]  # exp clipped at both ends, denormal-ish inputs
    return out


@pytest.mark.parametrize("a,b", [(-3.2, 5.1), (-0.7, 0.0), (-40.0, 100.0), (2.5, -1.0)])
def test_map_probability_is_the_plain_expression_to_the_bit(a, b):
    calibration = Calibration(a=a, b=b)
    values = maps(1, 1, 67)[0]
    got = calibration.probability(values, np.float32)
    want = reference_probability(calibration, values)
    assert got.dtype == np.float32 and got.shape == values.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(values, maps(1, 1, 67)[0])  # the input is not written to


@pytest.mark.parametrize("weights", [{"p": 1.0}, {"p": 0.7, "q": 0.3}, {"p": 0.0, "q": 1.0},
                                     {"p": 0.25, "q": 0.25, "r": 0.5}])  # fmt: skip
def test_fused_map_is_the_weighted_sum_it_was_to_the_bit(weights):
    size = 40
    calibrations = {
        "p": Calibration(a=-2.0, b=3.0),
        "q": Calibration(a=-0.5, b=1.5),
        "r": Calibration(a=-9.0, b=20.0),
    }
    heads = {name: SimpleNamespace(calibration=calibrations[name]) for name in weights}
    fusion = Fusion(heads, weights, map_sigma=4.0, size=size)
    batch = BatchScores(
        maps={name: maps(7 + k, 2, size) for k, name in enumerate(weights)},
        probabilities={},
        fused=np.zeros(2),
    )
    for i in range(2):
        want = np.zeros((size, size), dtype=np.float32)
        for name, weight in weights.items():
            if weight > 0:
                want += np.float32(weight) * reference_probability(
                    calibrations[name], batch.maps[name][i]
                )
        got = fusion.fused_map(batch, i)
        assert got.dtype == np.float32 and got.shape == (size, size)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # the batch's maps are left as they were
    for k, name in enumerate(weights):
        assert np.array_equal(batch.maps[name], maps(7 + k, 2, size))


def test_fused_map_without_weighted_heads_is_zero():
    fusion = Fusion({"p": SimpleNamespace(calibration=Calibration(a=-1.0, b=0.0))}, {"p": 0.0},
                    map_sigma=0.0, size=8)  # fmt: skip
    batch = BatchScores(maps={"p": maps(3, 1, 8)}, probabilities={}, fused=np.zeros(1))
    assert np.array_equal(fusion.fused_map(batch, 0), np.zeros((8, 8), np.float32))
