import math

import numpy as np
import pytest

from autoweld.bench.stats import LatencySummary, median, percentile, ratio, summarize


def test_percentiles_of_one_to_hundred():
    samples = list(range(1, 101))
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 95) == pytest.approx(95.05)
    assert percentile(samples, 99) == pytest.approx(99.01)
    assert percentile(samples, 0) == 1 and percentile(samples, 100) == 100
    summary = summarize(samples[::-1])  # order must not matter
    assert summary == LatencySummary(
        n=100, p50_ms=50.5, p95_ms=95.05, p99_ms=99.01, max_ms=100.0, mean_ms=50.5, min_ms=1.0
    )


def test_percentiles_interpolate_between_order_statistics():
    # 4 samples: rank q/100 * 3; p50 -> between 2nd and 3rd, p95 -> 2.85 -> 30 + 0.85 * 60
    samples = [10.0, 40.0, 20.0, 90.0]
    assert median(samples) == pytest.approx(30.0)
    assert percentile(samples, 95) == pytest.approx(40.0 + 0.85 * 50.0)
    summary = summarize(samples)
    assert summary.p99_ms == pytest.approx(40.0 + 0.97 * 50.0)
    assert summary.max_ms == 90.0 and summary.min_ms == 10.0 and summary.n == 4


def test_single_sample_and_skewed_tail():
    assert summarize([7.5]).to_json() == {
        "n": 1,
        "p50_ms": 7.5,
        "p95_ms": 7.5,
        "p99_ms": 7.5,
        "max_ms": 7.5,
        "mean_ms": 7.5,
        "min_ms": 7.5,
    }
    # one slow outlier in 200 shows only in max (p99 sits at rank 197.01 of 0..199) ...
    summary = summarize(np.r_[np.full(199, 2.0), 500.0])
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms, summary.max_ms) == (2, 2, 2, 500)
    # ... two reach p99: 0.01 of the way from rank 197 (2 ms) to rank 198 (500 ms)
    summary = summarize(np.r_[np.full(198, 2.0), 500.0, 500.0])
    assert summary.p95_ms == 2.0
    assert summary.p99_ms == pytest.approx(2.0 + 0.01 * 498.0)


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [[1.0, 2.0]], [math.inf]])
def test_bad_samples_are_refused(bad):
    with pytest.raises(ValueError, match="samples_ms"):
        summarize(bad)


@pytest.mark.parametrize("q", [-1, 101, True, "50"])
def test_bad_percentile_is_refused(q):
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0, 2.0], q)


def test_ratio():
    assert ratio(30.0, 10.0) == pytest.approx(3.0)
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None and ratio(math.nan, 1.0) is None
