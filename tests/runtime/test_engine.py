import numpy as np
import pytest
from tinybundle import FEATURE, SIZE, make_graph

from autoweld.bundle import load_bundle
from autoweld.runtime.engines import (
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


def test_runner_workers_spin_only_while_a_run_is_in_flight_unless_asked(monkeypatch):
    """ORT's workers busy-wait between the operators of a run and sleep after it by default:
    spinning after the run would take the cores from the Inspector's own kNN and
    preprocessing threads (see autoweld-bench); sleeping between operators costs the engine
    a wake-up per operator. The other modes are there to be chosen, by argument or env."""

    def entry(runner: OnnxRunner, key: str) -> str | None:
        try:
            return runner._session.get_session_options().get_session_config_entry(key)
        except RuntimeError as missing:  # ORT's answer for a key that was never set
            assert "does not have configuration" in str(missing)
            return None

    def config(runner: OnnxRunner) -> tuple[str | None, str | None]:
        return (
            entry(runner, "session.intra_op.allow_spinning"),
            entry(runner, "session.force_spinning_stop"),
        )

    monkeypatch.delenv("AUTOWELD_ORT_SPINNING", raising=False)
    expected = {"during-run": ("1", "1"), "off": ("0", None), "always": ("1", None)}
    for argument, mode in ((None, "during-run"), ("during-run", "during-run"), ("off", "off"),
                           (False, "off"), ("always", "always"), (True, "always")):  # fmt: skip
        with OnnxRunner(make_graph(), threads=2, spinning=argument) as runner:
            assert runner.spinning == mode
            assert config(runner) == expected[mode]
    for mode in ("off", "always"):
        monkeypatch.setenv("AUTOWELD_ORT_SPINNING", mode)
        with OnnxRunner(make_graph(), threads=2) as runner:
            assert runner.spinning == mode and config(runner) == expected[mode]
    with OnnxRunner(make_graph(), threads=2, spinning="during-run") as runner:
        assert config(runner) == expected["during-run"]  # an argument wins over the env
    monkeypatch.setenv("AUTOWELD_ORT_SPINNING", "sometimes")
    with pytest.raises(ValueError, match="AUTOWELD_ORT_SPINNING must be one of"):
        OnnxRunner(make_graph(), threads=2)
    with pytest.raises(ValueError, match="spinning must be one of"):
        OnnxRunner(make_graph(), threads=2, spinning="yes")


def test_open_engine_for_bundle(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    with open_engine(bundle, providers=["cpu"], threads=1) as runner:
        assert "patchcore_embeddings" in runner.output_names


def test_runner_checks_every_input_against_the_bundle_shape():
    x = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    with OnnxRunner(make_graph(), threads=1, image_shape=(3, SIZE, SIZE)) as runner:
        with pytest.raises(ValueError, match="'image' must be float32, got float64"):
            runner.infer(x.astype(np.float64))
        with pytest.raises(
            ValueError, match=r"must be 4-D \[N, C, H, W\], got shape \(3, 32, 32\)"
        ):
            runner.infer(x[0])
        with pytest.raises(ValueError, match="empty batch"):
            runner.infer(x[:0])
        with pytest.raises(ValueError, match=r"the bundle's images are \[N, 3, 32, 32\]"):
            runner.infer(np.zeros((1, 3, SIZE // 2, SIZE // 2), dtype=np.float32))
        with pytest.raises(ValueError, match=r"missing \['image'\], unknown \['img'\]"):
            runner.infer({"img": x})
        with pytest.raises(ValueError, match="must be an array, got list"):
            runner.infer([[0.0]])
        assert runner.infer(x)["feature_ae_map"].shape == (1, FEATURE, FEATURE)


def test_runner_close_is_idempotent_and_use_after_close_is_clear():
    runner = OnnxRunner(make_graph(), threads=1)
    runner.close()
    runner.close()
    assert runner.closed
    with pytest.raises(RuntimeError, match="OnnxRunner is closed"):
        runner.active_providers  # noqa: B018 - the property raises
    with pytest.raises(RuntimeError, match="OnnxRunner is closed"):
        runner.__enter__()


def test_open_engine_checks_the_bundles_image_size(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    with open_engine(bundle, providers=["cpu"], threads=1) as runner:
        assert runner.image_shape == (3, SIZE, SIZE)
        with pytest.raises(ValueError, match=r"the bundle's images are \[N, 3, 32, 32\]"):
            runner.infer(np.zeros((1, 3, SIZE * 2, SIZE * 2), dtype=np.float32))
