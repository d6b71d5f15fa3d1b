"""BatchingInspector: concurrent callers, one worker, batches with a deadline.

Each test forms its batches on purpose (``max_batch`` requests sent together with a long
``max_wait_ms`` make exactly one batch) and checks the batch sizes it formed, so a batcher
that quietly inspected one image at a time would not pass."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tinybundle import (
    FEATURE,
    SIZE,
    brute_neighbours,
    defect_image,
    manifest,
    normal_image,
    tiny_bank,
    write_tiny_bundle,
)

from autoweld.bundle import write_bundle
from autoweld.runtime import BatchingInspector, Inspector
from autoweld.runtime.batcher import gather_batch

#: generous: these tests check behaviour, not speed, on a loaded two-core machine
SLACK_S = 5.0


def conv_graph() -> bytes:
    """The tiny bundle's contract with a real convolution inside (random weights): the engine
    stage of a CNN, whose batched ONNX Runtime kernels must agree with batch 1."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.3, (16, 3, 4, 4)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (3, 16, 1, 1)).astype(np.float32)
    inits = [
        helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel()),
        helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel()),
        helper.make_tensor("emb_shape", TensorProto.INT64, [3], [0, 3, -1]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], strides=[4, 4], kernel_shape=[4, 4]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["c2", "emb_shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["patchcore_embeddings"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["r1", "axes"], ["feature_ae_map"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tinyconv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info(
                "patchcore_embeddings", TensorProto.FLOAT, ["N", FEATURE * FEATURE, 3]
            ),
            helper.make_tensor_value_info(
                "feature_ae_map", TensorProto.FLOAT, ["N", FEATURE, FEATURE]
            ),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_conv_bundle(root):
    bank = tiny_bank()
    files = {
        "model.onnx": conv_graph(),
        "memory_bank.npy": bank,
        "bank_neighbours.npy": brute_neighbours(bank, 3),
    }
    write_bundle(root, manifest(), files)
    return root


@pytest.fixture(scope="module")
def shared_inspector(tmp_path_factory):
    with Inspector(write_tiny_bundle(tmp_path_factory.mktemp("b") / "bundle"), threads=1) as ins:
        yield ins


def images_for(seeds: list[int]) -> list[np.ndarray]:
    """Distinct images: even seeds normal, odd seeds with a defect."""
    return [defect_image(s) if s % 2 else normal_image(s) for s in seeds]


def same_result(a, b) -> bool:
    """Bit for bit: decision, every score and probability, and the fused map."""
    return (
        a.decision == b.decision
        and a.error == b.error
        and a.scores == b.scores
        and a.probabilities == b.probabilities
        and a.probability == b.probability
        and np.array_equal(a.anomaly_map, b.anomaly_map)
        and set(a.head_maps) == set(b.head_maps)
        and all(np.array_equal(a.head_maps[k], b.head_maps[k]) for k in a.head_maps)
    )


def inspect_together(batcher, images, **kwargs):
    """Each image from its own thread, all released at once; results in image order."""
    barrier = threading.Barrier(len(images))

    def one(image):
        barrier.wait()
        return batcher.inspect(image, **kwargs)

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, images))


# ---- equal to inspecting each image alone ---------------------------------------------------


def inspect_alone_and_batched(bundle, threads, images):
    with Inspector(bundle, threads=threads) as inspector:
        alone = [inspector.inspect(image) for image in images]
        with BatchingInspector(inspector, max_batch=len(images), max_wait_ms=10_000) as batcher:
            batched = inspect_together(batcher, images)
            stats = batcher.stats()
    assert stats.batch_sizes == {len(images): 1}  # one batch of all: batching really happened
    assert {r.decision for r in alone} == {"PASS", "FAIL"}
    return alone, batched


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_results_equal_per_image_inspect_bit_for_bit(tmp_path, threads):
    alone, batched = inspect_alone_and_batched(
        write_tiny_bundle(tmp_path / "bundle"), threads, images_for(list(range(8)))
    )
    for a, b in zip(alone, batched, strict=True):
        assert same_result(a, b), (a.scores, b.scores, a.probability, b.probability)
        assert b.timings_ms["batch_wait"] >= 0.0


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_cnn_equals_per_image_up_to_onnx_runtimes_reduce_order(tmp_path, threads):
    """The convolutions give the same bits at batch 8 as at batch 1 (so does the default weld
    bundle, bench/results/multicamera.md), and so do the kNN head's scores. ONNX Runtime's
    ReduceMean over channels picks its summation order by tensor shape, so the map head built
    on it may move by about one float32 ulp between batch sizes (2.4e-7 here): never more than
    a relative 1e-5, and never a changed decision."""
    alone, batched = inspect_alone_and_batched(
        write_conv_bundle(tmp_path / "bundle"), threads, images_for(list(range(8)))
    )
    for a, b in zip(alone, batched, strict=True):
        assert a.decision == b.decision and a.error is None and b.error is None
        assert a.scores["patchcore"] == b.scores["patchcore"]  # the kNN head: bit for bit
        assert b.scores["feature_ae"] == pytest.approx(a.scores["feature_ae"], rel=1e-5)
        assert b.probability == pytest.approx(a.probability, rel=1e-5)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=1e-5, atol=1e-6)


def test_mixed_head_map_requests_in_one_batch(shared_inspector):
    images = images_for([0, 1, 2, 3])
    with BatchingInspector(shared_inspector, max_batch=4, max_wait_ms=10_000) as batcher:
        barrier = threading.Barrier(4)

        def one(i):
            barrier.wait()
            return batcher.inspect(images[i], keep_head_maps=i % 2 == 1)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
    for i, result in enumerate(results):
        expected = shared_inspector.inspect(images[i], keep_head_maps=i % 2 == 1)
        assert same_result(expected, result)
        assert bool(result.head_maps) is (i % 2 == 1)


# ---- results reach the right caller ------------------------------------------------------------


@pytest.fixture(scope="module")
def expected_by_seed(shared_inspector):
    seeds = range(12)
    expected = {s: shared_inspector.inspect(images_for([s])[0]) for s in seeds}
    # the check below tells callers apart by their result: every seed's must differ
    assert len({r.probability for r in expected.values()}) == len(expected)
    return expected


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    plan=st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=6), min_size=2, max_size=8),
    max_batch=st.integers(1, 6),
    max_wait_ms=st.sampled_from([0.0, 1.0, 5.0]),
)
def test_many_threads_each_get_their_own_results(
    shared_inspector, expected_by_seed, plan, max_batch, max_wait_ms
):
    """``plan``: one list of image seeds per camera thread, inspected back to back."""
    with BatchingInspector(
        shared_inspector, max_batch=max_batch, max_wait_ms=max_wait_ms
    ) as batcher:
        barrier = threading.Barrier(len(plan))

        def camera(seeds):
            barrier.wait()
            return [(s, batcher.inspect(images_for([s])[0])) for s in seeds]

        with ThreadPoolExecutor(len(plan)) as pool:
            got = [pair for pairs in pool.map(camera, plan) for pair in pairs]
        stats = batcher.stats()
    for seed, result in got:
        assert same_result(expected_by_seed[seed], result), seed
    assert stats.images == sum(len(seeds) for seeds in plan)
    assert max(stats.batch_sizes) <= max_batch


# ---- the deadline ---------------------------------------------------------------------------


def test_lone_request_waits_for_the_deadline_and_no_longer(shared_inspector):
    image = normal_image(0)
    expected = shared_inspector.inspect(image)
    with BatchingInspector(shared_inspector, max_batch=8, max_wait_ms=300) as batcher:
        start = time.monotonic()
        result = batcher.inspect(image)
        elapsed = time.monotonic() - start
        stats = batcher.stats()
    assert same_result(expected, result)
    assert stats.batch_sizes == {1: 1}
    # it waited for company (the deadline), then went alone instead of waiting for a full batch
    assert result.timings_ms["batch_wait"] >= 250
    assert elapsed < 0.3 + SLACK_S


def test_a_full_batch_does_not_wait_for_the_deadline(shared_inspector):
    with BatchingInspector(shared_inspector, max_batch=3, max_wait_ms=60_000) as batcher:
        start = time.monotonic()
        results = inspect_together(batcher, images_for([0, 2, 4]))
        elapsed = time.monotonic() - start
    assert [r.decision for r in results] == ["PASS"] * 3
    assert elapsed < SLACK_S


def test_zero_wait_takes_only_what_is_queued(shared_inspector):
    with BatchingInspector(shared_inspector, max_batch=8, max_wait_ms=0) as batcher:
        result = batcher.inspect(normal_image(0))
    assert result.decision == "PASS"
    assert result.timings_ms["batch_wait"] < 1000 * SLACK_S


def test_gather_batch_stops_at_max_batch_deadline_and_sentinel():
    import queue

    source: queue.Queue = queue.Queue()
    for item in (2, 3, 4):
        source.put(item)
    assert gather_batch(source, 1, 3, time.monotonic() + 60) == ([1, 2, 3], False)
    assert gather_batch(source, 9, 3, time.monotonic() - 1) == ([9, 4], False)  # queued: taken
    source.put(None)
    source.put(5)
    assert gather_batch(source, 8, 3, time.monotonic() + 60) == ([8], True)
    start = time.monotonic()
    assert gather_batch(source, 6, 3, time.monotonic() + 0.2) == ([6, 5], False)
    assert time.monotonic() - start >= 0.15


# ---- timeouts, close, failures ----------------------------------------------------------------


def hold_batches(inspector, monkeypatch, limit_s: float = 20.0) -> threading.Event:
    """Make ``inspector.inspect_batch`` wait until the returned event is set."""
    release = threading.Event()
    real = inspector.inspect_batch

    def held(images, **kwargs):
        release.wait(limit_s)
        return real(images, **kwargs)

    monkeypatch.setattr(inspector, "inspect_batch", held)
    return release


def test_a_caller_past_its_timeout_gets_a_fail_and_the_batcher_carries_on(tiny_bundle, monkeypatch):
    with Inspector(tiny_bundle, threads=1) as inspector:
        release = hold_batches(inspector, monkeypatch)
        with BatchingInspector(inspector, max_batch=1, max_wait_ms=0, timeout_s=0.3) as batcher:
            start = time.monotonic()
            late = batcher.inspect(normal_image(0))
            waited = time.monotonic() - start
            release.set()
            later = batcher.inspect(normal_image(0), timeout_s=30)
            stats = batcher.stats()
    assert late.decision == "FAIL" and "timed out" in late.error
    assert 0.25 <= waited < 0.3 + SLACK_S
    assert later.decision == "PASS" and later.error is None
    assert stats.timed_out == 1


def test_close_fails_queued_requests_and_finishes_the_one_in_hand(tiny_bundle, monkeypatch):
    with Inspector(tiny_bundle, threads=1) as inspector:
        release = hold_batches(inspector, monkeypatch)
        batcher = BatchingInspector(inspector, max_batch=1, max_wait_ms=0, timeout_s=60)
        with ThreadPoolExecutor(5) as pool:  # four callers and close
            futures = [pool.submit(batcher.inspect, normal_image(0))]
            deadline = time.monotonic() + SLACK_S
            while not batcher._in_hand and time.monotonic() < deadline:
                time.sleep(0.01)
            futures += [pool.submit(batcher.inspect, normal_image(i)) for i in (2, 4, 6)]
            while batcher._queue.qsize() < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            closing = pool.submit(batcher.close)
            queued = [f.result(SLACK_S) for f in futures[1:]]  # failed before the release
            release.set()
            in_hand = futures[0].result(SLACK_S)
            closing.result(SLACK_S)
        after = batcher.inspect(normal_image(0))
        still_open = inspector.inspect(normal_image(0))  # close_inspector=False: not closed
    assert all(r.decision == "FAIL" and "closed before inspection" in r.error for r in queued)
    assert in_hand.decision == "PASS"
    assert after.decision == "FAIL" and "closed" in after.error
    assert still_open.decision == "PASS"


def test_close_with_a_stuck_batch_fails_it_and_returns(tiny_bundle, monkeypatch):
    with Inspector(tiny_bundle, threads=1) as inspector:
        release = hold_batches(inspector, monkeypatch)
        batcher = BatchingInspector(
            inspector, max_batch=1, max_wait_ms=0, timeout_s=60, close_inspector=True
        )
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(batcher.inspect, normal_image(0))
            deadline = time.monotonic() + SLACK_S
            while not batcher._in_hand and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.monotonic()
            batcher.close(join_timeout_s=0.2)
            closed_in = time.monotonic() - start
            result = future.result(SLACK_S)
            release.set()
        assert inspector.inspect(normal_image(0)).decision == "PASS"  # left open: still busy
    assert result.decision == "FAIL" and "closed mid-inspection" in result.error
    assert closed_in < SLACK_S


def test_an_image_the_engine_fails_in_a_batch_fails_alone(tmp_path):
    # the map head is sqrt(mean + 0.2): NaN for a dark image, finite for mid-grey
    bundle = write_tiny_bundle(tmp_path / "nan", offset=-0.2)
    dark = np.full((40, 40, 3), 20, np.uint8)
    images = [normal_image(0), dark, defect_image(1), normal_image(2)]
    with Inspector(bundle, threads=1) as inspector:
        alone = [inspector.inspect(image) for image in images]
        with BatchingInspector(inspector, max_batch=4, max_wait_ms=60_000) as batcher:
            results = inspect_together(batcher, images)
            stats = batcher.stats()
    assert stats.batch_sizes == {4: 1}  # the dark image was inside the batch
    assert results[1].decision == "FAIL" and "NaN/Inf" in results[1].error
    for i in (0, 2, 3):
        assert results[i].error is None and same_result(alone[i], results[i])


def test_an_image_that_does_not_decode_fails_at_once_outside_any_batch(shared_inspector):
    bad = [b"not an image", np.zeros((8, 8, 4), np.uint8), "/no/such/file.png"]
    with BatchingInspector(shared_inspector, max_batch=8, max_wait_ms=60_000) as batcher:
        start = time.monotonic()
        results = inspect_together(batcher, bad)
        elapsed = time.monotonic() - start
        stats = batcher.stats()
    assert elapsed < SLACK_S  # not held for the 60 s deadline
    assert stats.images == 0
    for image, result in zip(bad, results, strict=True):
        expected = shared_inspector.inspect(image)  # the very FAIL the Inspector gives
        assert result.decision == "FAIL" and result.error == expected.error


def test_an_exception_from_the_inspector_fails_its_batch_only(tiny_bundle, monkeypatch):
    with Inspector(tiny_bundle, threads=1) as inspector:
        real = inspector.inspect_batch
        calls = []

        def flaky(images, **kwargs):
            calls.append(len(images))
            if len(calls) == 1:
                raise RuntimeError("engine fell over")
            return real(images, **kwargs)

        monkeypatch.setattr(inspector, "inspect_batch", flaky)
        with BatchingInspector(inspector, max_batch=2, max_wait_ms=60_000) as batcher:
            first = inspect_together(batcher, images_for([0, 2]))
            second = inspect_together(batcher, images_for([0, 2]))
    assert all(r.decision == "FAIL" and "engine fell over" in r.error for r in first)
    assert [r.decision for r in second] == ["PASS", "PASS"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch": 0},
        {"max_batch": 2.0},
        {"max_wait_ms": -1},
        {"max_wait_ms": float("nan")},
        {"timeout_s": 0},
        {"timeout_s": float("inf")},
    ],
)
def test_bad_settings_are_refused(shared_inspector, kwargs):
    with pytest.raises(ValueError):
        BatchingInspector(shared_inspector, **kwargs)


def test_a_bad_per_call_timeout_is_a_fail_not_a_raise(shared_inspector):
    with BatchingInspector(shared_inspector) as batcher:
        result = batcher.inspect(normal_image(0), timeout_s=-1)
    assert result.decision == "FAIL" and "timeout_s" in result.error
