import numpy as np
import pytest
from tinybundle import FEATURE, SIZE, make_graph

from autoweld.bundle import load_bundle
from autoweld.runtime.engine import (
    OnnxRunner,
    available_providers,
    open_engine,
    resolve_providers,
)


def test_resolve_short_and_ort_names():
    assert resolve_providers(("cpu",)) == ["CPUExecutionProvider"]
    assert resolve_providers("CPU") == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider", "cpu"]) == ["CPUExecutionProvider"]


def test_unknown_provider_lists_available():
    with pytest.raises(
        ValueError, match=r"'warp-drive' is unknown; available: .*cpu \(CPUExecutionProvider\)"
    ):
        resolve_providers(["warp-drive"])
    with pytest.raises(ValueError, match="at least one"):
        resolve_providers([])


def test_known_but_unavailable_provider_says_so():
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA provider is available here")
    with pytest.raises(
        ValueError, match=r"'cuda' is not available in this onnxruntime; available: "
    ):
        resolve_providers(["cuda", "cpu"])


def test_runner_infers_and_closes():
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    with OnnxRunner(make_graph(), threads=1) as runner:
        assert runner.input_names == ["image"]
        assert set(runner.output_names) == {"patchcore_embeddings", "feature_ae_map"}
        assert runner.active_providers == ["CPUExecutionProvider"]
        out = runner.infer(x)
        emb = out["patchcore_embeddings"]
        assert emb.shape == (2, FEATURE * FEATURE, 3)
        # embedding of patch (row 1, col 2) = mean of its 4x4 cell
        expected = x[1, :, 4:8, 8:12].mean(axis=(1, 2))
        np.testing.assert_allclose(emb[1, 1 * FEATURE + 2], expected, rtol=1e-5)
        np.testing.assert_allclose(
            out["feature_ae_map"], emb.mean(axis=2).reshape(2, FEATURE, FEATURE), rtol=1e-5
        )
        only = runner.infer({"image": x}, outputs=["feature_ae_map"])
        assert list(only) == ["feature_ae_map"]
        with pytest.raises(ValueError, match="not in the graph's outputs"):
            runner.infer(x, outputs=["nope"])
    with pytest.raises(RuntimeError, match="closed"):
        runner.infer(x)


def test_runner_rejects_bad_threads():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            OnnxRunner(make_graph(), threads=bad)


def test_runner_workers_do_not_spin_unless_asked():
    """Idle ORT workers must not busy-wait: they would take the cores from the Inspector's own
    kNN and preprocessing threads (see autoweld-bench)."""

    def spinning(runner: OnnxRunner) -> str:
        options = runner._session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    with OnnxRunner(make_graph(), threads=1) as runner:
        assert spinning(runner) == "0"
    with OnnxRunner(make_graph(), threads=1, spinning=True) as runner:
        assert spinning(runner) == "1"


def test_open_engine_for_bundle(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    with open_engine(bundle, providers=["cpu"], threads=1) as runner:
        assert "patchcore_embeddings" in runner.output_names
