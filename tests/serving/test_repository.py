"""The generated Triton model repository, checked against Triton's own config schema (the
``ModelConfig`` protobuf that tritonclient ships), without a server."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from tinybundle import brute_neighbours, make_graph, tiny_bank, write_tiny_bundle
from tinybundle import manifest as tiny_manifest

from autoweld.bundle import load_bundle, write_bundle
from autoweld.serving import RepositoryOptions, contract, write_triton_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse_config(path: Path):
    """config.pbtxt parsed strictly as Triton's ModelConfig (an unknown field is an error)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def parameters(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def test_python_variant_names_its_bundle_and_batches(tiny_bundle, tmp_path):
    out = write_triton_repository(
        {"cam1": tiny_bundle},
        tmp_path / "repo",
        RepositoryOptions(max_batch_size=12, queue_delay_us=500, instances=3, threads=2),
    )
    assert sorted(p.name for p in out.iterdir()) == ["autoweld_cam1"]
    config = parse_config(out / "autoweld_cam1" / "config.pbtxt")
    assert config.name == "autoweld_cam1" and config.backend == "python"
    assert config.max_batch_size == 12
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (3, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert [(i.name, list(i.dims)) for i in config.input] == [("IMAGES", [3, 32, 32])]
    assert [o.name for o in config.output] == list(contract.OUTPUTS)
    params = parameters(config)
    bundle = load_bundle(tiny_bundle)
    assert params[contract.PARAM_SHA256] == bundle.sha256
    manifest_bytes = base64.b64decode(params[contract.PARAM_MANIFEST])
    assert manifest_bytes == (tiny_bundle / "manifest.json").read_bytes()
    assert params[contract.PARAM_HEADS] == ",".join(bundle.heads)
    assert params["autoweld_role"] == "inspect" and params["autoweld_threads"] == "2"
    copied = load_bundle(out / "autoweld_cam1" / "1" / "bundle")
    assert copied.sha256 == bundle.sha256
    assert "TritonPythonModel" in (out / "autoweld_cam1" / "1" / "model.py").read_text()


def test_one_model_per_camera_each_with_its_own_bank(tmp_path):
    first = write_tiny_bundle(tmp_path / "a")
    second = write_tiny_bundle(tmp_path / "b", heads=("patchcore",))
    out = write_triton_repository({"line1": first, "line2": second}, tmp_path / "repo")
    shas = {
        model: parameters(parse_config(out / model / "config.pbtxt"))[contract.PARAM_SHA256]
        for model in ("autoweld_line1", "autoweld_line2")
    }
    assert shas == {
        "autoweld_line1": load_bundle(first).sha256,
        "autoweld_line2": load_bundle(second).sha256,
    }
    config = parse_config(out / "autoweld_line2" / "config.pbtxt")
    assert [list(o.dims) for o in config.output if o.name == "SCORES"] == [[1]]


def _step_tensors(config, repo: Path):
    """Every ensemble step's maps checked against the step model's own config."""
    produced = {i.name for i in config.input}
    for step in config.ensemble_scheduling.step:
        step_config = parse_config(repo / step.model_name / "config.pbtxt")
        step_inputs = {i.name for i in step_config.input}
        step_outputs = {o.name for o in step_config.output}
        assert set(step.input_map) == step_inputs, step.model_name
        assert set(step.input_map.values()) <= produced, step.model_name
        assert set(step.output_map) <= step_outputs, step.model_name
        produced |= set(step.output_map.values())
    assert {o.name for o in config.output} <= produced


def test_ensemble_variant_joins_an_onnxruntime_graph_and_python_scoring(tiny_bundle, tmp_path):
    out = write_triton_repository(
        {"cam1": tiny_bundle}, tmp_path / "repo", RepositoryOptions(variant="ensemble")
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["autoweld_cam1", "autoweld_cam1_graph", "autoweld_cam1_scoring"]
    graph = parse_config(out / "autoweld_cam1_graph" / "config.pbtxt")
    assert graph.platform == "onnxruntime_onnx"
    assert (out / "autoweld_cam1_graph" / "1" / "model.onnx").read_bytes() == (
        tiny_bundle / "model.onnx"
    ).read_bytes()
    assert [(i.name, list(i.dims)) for i in graph.input] == [("image", [3, 32, 32])]
    assert {(o.name, tuple(o.dims)) for o in graph.output} == {
        ("patchcore_embeddings", (64, 3)),
        ("feature_ae_map", (8, 8)),
    }
    scoring = parse_config(out / "autoweld_cam1_scoring" / "config.pbtxt")
    assert scoring.backend == "python"
    assert parameters(scoring)["autoweld_role"] == "scoring"
    ensemble = parse_config(out / "autoweld_cam1" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "autoweld_cam1_graph",
        "autoweld_cam1_scoring",
    ]
    _step_tensors(ensemble, out)
    assert parameters(ensemble)[contract.PARAM_SHA256] == load_bundle(tiny_bundle).sha256
    assert (out / "autoweld_cam1" / "1").is_dir()  # Triton needs the version directory


def test_ensemble_takes_the_tensorrt_plan_where_the_bundle_has_one(tmp_path):
    bank = tiny_bank()
    spec = tiny_manifest()
    spec["engine"]["tensorrt"] = {
        "plan": "model.plan",
        "gpu": "NVIDIA H100",
        "tensorrt_version": "10.0",
    }
    files = {
        "model.onnx": make_graph(),
        "memory_bank.npy": bank,
        "bank_neighbours.npy": brute_neighbours(bank, 3),
        "model.plan": b"not a real plan: only copied",
    }
    bundle = write_bundle(tmp_path / "b", spec, files)
    out = write_triton_repository(
        {"gpu1": bundle.root}, tmp_path / "repo", RepositoryOptions(variant="ensemble")
    )
    graph = parse_config(out / "autoweld_gpu1_graph" / "config.pbtxt")
    assert graph.platform == "tensorrt_plan"
    assert [g.kind for g in graph.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert (out / "autoweld_gpu1_graph/1/model.plan").read_bytes() == files["model.plan"]
    _step_tensors(parse_config(out / "autoweld_gpu1" / "config.pbtxt"), out)


def test_refuses_bad_names_foreign_directories_and_keeps_no_half_repository(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="camera name"):
        write_triton_repository({"cam 1": tiny_bundle}, tmp_path / "repo")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds more than AutoWeld models"):
        write_triton_repository({"cam1": tiny_bundle}, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    (tiny_bundle / "memory_bank.npy").write_bytes(b"changed")
    with pytest.raises(Exception, match="memory_bank.npy"):
        write_triton_repository({"cam1": tiny_bundle}, tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".repo")] == []


def test_served_bundle_refuses_a_manifest_that_does_not_hash_to_its_sha(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    params = contract.ServedBundle.parameters(bundle, "python")
    served = contract.ServedBundle.from_parameters(params, "model x")
    assert served.sha256 == bundle.sha256 and served.heads == tuple(bundle.heads)
    tampered = json.loads((tiny_bundle / "manifest.json").read_bytes())
    tampered["fusion"]["threshold"] = 0.99
    params[contract.PARAM_MANIFEST] = base64.b64encode(json.dumps(tampered).encode()).decode()
    with pytest.raises(ValueError, match="hashes to"):
        contract.ServedBundle.from_parameters(params, "model x")
    with pytest.raises(ValueError, match="not an AutoWeld model"):
        contract.ServedBundle.from_parameters({}, "model y")


def test_cli_writes_the_repository(tiny_bundle, tmp_path, capsys):
    from autoweld.cli.serve import main

    status = main(
        [
            "triton-repo",
            "--bundle",
            f"cam7={tiny_bundle}",
            "--out",
            str(tmp_path / "r"),
            "--variant",
            "ensemble",
            "--instances",
            "2",
        ]
    )
    assert status == 0
    assert (tmp_path / "r" / "autoweld_cam7_scoring" / "config.pbtxt").exists()
    assert (
        main(["triton-repo", "--bundle", str(tmp_path / "missing"), "--out", str(tmp_path / "s")])
        == 2
    )
    assert "bundle refused" in capsys.readouterr().err
