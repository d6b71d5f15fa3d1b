"""Tiny ONNX graphs and bundles for runtime tests (no torch: built with onnx.helper).

The graph stands in for a real backbone + heads with the same contract (docs/bundle.md): input
``image`` float32 [N, 3, S, S]; a ``knn`` head output [N, h*w, 3] of average-pooled pixels
(4 x 4 cells, so h = w = S / 4) and a ``map`` head output [N, h, w] (the pooled mean over
channels). ``offset`` is subtracted before a square root in the map head, so pooled values below
``offset`` give NaN: a way to make the engine yield NaN for dark images only. The bundles
normalise with mean 0.5, std 1, so a mid-grey image is about 0 after preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from autoweld.bundle import write_bundle

SIZE = 32
CELL = 4
FEATURE = SIZE // CELL


def make_graph(
    offset: float | None = None, *, heads: tuple[str, ...] = ("patchcore", "feature_ae")
) -> bytes:
    """Serialised ONNX model; see module docstring."""
    nodes = [
        helper.make_node(
            "AveragePool", ["image"], ["pooled"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]
        ),
    ]
    outputs = []
    initializers = [helper.make_tensor("emb_shape", TensorProto.INT64, [3], [0, 3, -1])]
    if "patchcore" in heads:
        nodes += [
            helper.make_node("Reshape", ["pooled", "emb_shape"], ["flat"]),
            helper.make_node("Transpose", ["flat"], ["patchcore_embeddings"], perm=[0, 2, 1]),
        ]
        outputs.append(
            helper.make_tensor_value_info(
                "patchcore_embeddings", TensorProto.FLOAT, ["N", FEATURE * FEATURE, 3]
            )
        )
    if "feature_ae" in heads:
        initializers.append(helper.make_tensor("axes", TensorProto.INT64, [1], [1]))
        if offset is None:
            nodes.append(
                helper.make_node("ReduceMean", ["pooled", "axes"], ["feature_ae_map"], keepdims=0)
            )
        else:
            initializers.append(helper.make_tensor("offset", TensorProto.FLOAT, [], [offset]))
            nodes += [
                helper.make_node("ReduceMean", ["pooled", "axes"], ["mean_map"], keepdims=0),
                helper.make_node("Sub", ["mean_map", "offset"], ["shifted"]),
                helper.make_node("Sqrt", ["shifted"], ["feature_ae_map"]),
            ]
        outputs.append(
            helper.make_tensor_value_info(
                "feature_ae_map", TensorProto.FLOAT, ["N", FEATURE, FEATURE]
            )
        )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def brute_neighbours(bank: np.ndarray, b: int) -> np.ndarray:
    """Each bank row's b nearest rows, itself first (test fixture data)."""
    d = np.linalg.norm(bank[:, None, :] - bank[None, :, :], axis=2)
    return np.argsort(d, axis=1, kind="stable")[:, :b].astype(np.int64)


def manifest(heads: tuple[str, ...] = ("patchcore", "feature_ae"), threshold: float = 0.5) -> dict:
    models = {}
    if "patchcore" in heads:
        models["patchcore"] = {
            "kind": "knn",
            "output": "patchcore_embeddings",
            "feature_map": [FEATURE, FEATURE],
            "calibration": {"a": -20.0, "b": 4.0},
            "memory_bank": "memory_bank.npy",
            "bank_neighbours": "bank_neighbours.npy",
            "embedding_dim": 3,
            "reweight_neighbours": 3,
        }
    if "feature_ae" in heads:
        models["feature_ae"] = {
            "kind": "map",
            "output": "feature_ae_map",
            "feature_map": [FEATURE, FEATURE],
            "calibration": {"a": -3.0, "b": 1.0},
        }
    weights = {name: 1.0 / len(models) for name in models}
    return {
        "category": "unit",
        "preprocess": {
            "size": SIZE,
            "clahe": False,
            "clip_limit": 2.0,
            "tile_grid": [8, 8],
            "sigma": 0.0,
            "mean": [0.5, 0.5, 0.5],
            "std": [1.0, 1.0, 1.0],
            "color_order": "BGR",
        },
        "engine": {"onnx": "model.onnx", "input": "image", "opset": 18},
        "models": models,
        "scoring": {"map_sigma": 1.0},
        "fusion": {"weights": weights, "threshold": threshold, "threshold_method": "best_f1"},
    }


def normal_image(seed: int, size: int = 48) -> np.ndarray:
    """A mid-grey, slightly noisy BGR image: what the tiny bank was 'trained' on."""
    rng = np.random.default_rng(seed)
    return np.clip(128 + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)


def defect_image(seed: int, size: int = 48) -> np.ndarray:
    image = normal_image(seed, size)
    image[8:20, 10:22] = (250, 40, 40)
    return image


TINY_BANK_SEED = 0
NO_BASIS_KEY = "absent"


def tiny_bank() -> np.ndarray:
    return np.random.default_rng(TINY_BANK_SEED).normal(0, 0.02, (64, 3)).astype(np.float32)


def write_tiny_bundle(
    root: Path,
    *,
    offset: float | None = None,
    heads: tuple[str, ...] = ("patchcore", "feature_ae"),
    knn_basis: object = NO_BASIS_KEY,
) -> Path:
    """``knn_basis``: an array is stored as ``knn_basis.npy`` and named in the manifest; any
    other value (None, a wrong type) is written into the manifest as is; the default leaves the
    key out, as bundles written before it existed."""
    bank = tiny_bank()
    files: dict = {"model.onnx": make_graph(offset, heads=heads)}
    spec = manifest(heads)
    if "patchcore" in heads:
        files["memory_bank.npy"] = bank
        files["bank_neighbours.npy"] = brute_neighbours(bank, 3)
        if isinstance(knn_basis, np.ndarray):
            files["knn_basis.npy"] = knn_basis
            spec["models"]["patchcore"]["knn_basis"] = "knn_basis.npy"
        elif knn_basis is not NO_BASIS_KEY:
            spec["models"]["patchcore"]["knn_basis"] = knn_basis
    write_bundle(root, spec, files)
    return root
