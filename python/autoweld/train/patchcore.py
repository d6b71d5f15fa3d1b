"""PatchCore (Roth et al., 2022): locally aware patch embeddings + a coreset memory bank.

Embedding (exported in the ONNX graph): each feature tap gets a 3x3 local average (stride 1,
padding 1), the deeper tap is upsampled bilinearly to the shallower tap's size, the two are
concatenated along channels and, optionally, projected to a fixed ``embedding_dim`` by adaptive
average pooling over channels (the paper implementation's projection; written here as a constant
matrix product so it exports as one ``MatMul``). Output ``[N, h*w, D]``, row-major over h, w.

Fitting: embeddings of every fit image (progress bar) -> greedy coreset with
``autoweld.native.coreset`` -> memory bank; then ``autoweld.native.bank_neighbours`` precomputes
each bank row's ``b`` nearest bank rows for the score re-weighting at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoweld import native
from autoweld.train.backbones import FeatureExtractor
from autoweld.train.heads import ExportHead, HeadContext, register_head, settings_from_mapping

logger = logging.getLogger(__name__)

__all__ = ["PatchCoreHead", "PatchCoreSettings", "adaptive_pool_matrix"]

MEMORY_BANK_FILE = "memory_bank.npy"
BANK_NEIGHBOURS_FILE = "bank_neighbours.npy"
KNN_BASIS_FILE = "knn_basis.npy"


@dataclass(frozen=True)
class PatchCoreSettings:
    """The recipe's ``[<profile>.patchcore]`` table."""

    coreset_ratio: float = 0.1
    coreset_max: int = 10_000
    embedding_dim: int = 0  # 0: no projection, D = C1 + C2
    reweight_neighbours: int = 9
    projection_dim: int = 128  # random projection used inside the coreset search

    def __post_init__(self) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio!r}")
        if self.coreset_max < 1:
            raise ValueError(f"coreset_max must be >= 1, got {self.coreset_max!r}")
        if self.embedding_dim < 0:
            raise ValueError(f"embedding_dim must be >= 0 (0 = off), got {self.embedding_dim!r}")
        if self.reweight_neighbours < 1:
            raise ValueError(f"reweight_neighbours must be >= 1, got {self.reweight_neighbours!r}")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim!r}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PatchCoreSettings:
        return settings_from_mapping(cls, values, "patchcore")


def adaptive_pool_matrix(in_dim: int, out_dim: int) -> np.ndarray:
    """[in_dim, out_dim] matrix M with ``x @ M == adaptive_avg_pool1d(x, out_dim)``."""
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"adaptive_pool_matrix needs positive sizes, got {in_dim}, {out_dim}")
    matrix = np.zeros((in_dim, out_dim), dtype=np.float32)
    for j in range(out_dim):
        start = (j * in_dim) // out_dim
        end = -((-(j + 1) * in_dim) // out_dim)  # ceil
        matrix[start:end, j] = 1.0 / (end - start)
    return matrix


class PatchCoreHead(ExportHead):
    """PatchCore: patch embeddings in the graph, memory bank beside it."""

    name = "patchcore"
    kind = "knn"
    output_name = "patchcore_embeddings"

    def __init__(
        self,
        channels: tuple[int, int],
        settings: PatchCoreSettings,
        seed: int = 0,
        stride: int = 8,
    ) -> None:
        super().__init__()
        self.stride = int(stride)  # of the shallower tap: sets the patch grid
        self.settings = settings
        self.seed = seed
        self.in_dim = int(sum(channels))
        self.local_pool = nn.AvgPool2d(3, stride=1, padding=1)
        if settings.embedding_dim and settings.embedding_dim != self.in_dim:
            self.embedding_dim = settings.embedding_dim
            self.register_buffer(
                "projection",
                torch.from_numpy(adaptive_pool_matrix(self.in_dim, settings.embedding_dim)),
            )
        else:
            self.embedding_dim = self.in_dim
            self.projection = None
        # Fitted state: numpy, not parameters — it lives in the bundle, not in the graph.
        self.memory_bank: np.ndarray | None = None
        self.bank_neighbours: np.ndarray | None = None
        # knn_basis() of the bank it was computed for: (that bank, its basis or None).
        self._knn_basis: tuple[np.ndarray, np.ndarray | None] | None = None
        self.n_patches_seen = 0
        self._feature_map: tuple[int, int] | None = None

    def forward(self, image: Tensor, features: list[Tensor]) -> Tensor:
        shallow, deep = (self.local_pool(f) for f in features[:2])
        h, w = int(shallow.shape[-2]), int(shallow.shape[-1])
        deep = F.interpolate(deep, size=(h, w), mode="bilinear", align_corners=False)
        patches = torch.cat([shallow, deep], dim=1)  # [N, C, h, w]
        patches = patches.permute(0, 2, 3, 1).reshape(patches.shape[0], h * w, self.in_dim)
        if self.projection is not None:
            patches = patches @ self.projection
        return patches

    def feature_map_size(self, image_size: int) -> tuple[int, int]:
        # The grid of the shallower tap; SAME / odd padding rounds up.
        side = -(-image_size // self.stride)
        return (side, side)

    @torch.no_grad()
    def embed(self, extractor: FeatureExtractor, batches: Sequence[Tensor]) -> np.ndarray:
        """Patch embeddings of every image, stacked: float32 [sum(n)*h*w, D]."""
        chunks: list[np.ndarray] = []
        for batch in tqdm(batches, desc="patchcore: features", unit="batch", leave=False):
            out = self.forward(batch, extractor(batch))
            self._feature_map = self._map_from_output(batch, out)
            chunks.append(out.reshape(-1, self.embedding_dim).cpu().numpy())
        if not chunks:
            raise ValueError("batches: no fit images")
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def _map_from_output(self, batch: Tensor, out: Tensor) -> tuple[int, int]:
        h, w = self.feature_map_size(int(batch.shape[-1]))
        if h * w != out.shape[1]:
            raise ValueError(f"patchcore: {out.shape[1]} patches do not form a {h}x{w} map")
        return (h, w)

    def fit(self, extractor: FeatureExtractor, batches: Sequence[Tensor]) -> None:
        self.fit_embeddings(self.embed(extractor, batches))

    def fit_embeddings(self, embeddings: np.ndarray) -> None:
        """Coreset memory bank and bank neighbours from patch embeddings ``[n*h*w, D]`` (from
        :meth:`embed`, or from an exported engine's output: an INT8 bundle's bank is made from
        the INT8 graph's embeddings)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings: expected (n, {self.embedding_dim}), got {embeddings.shape}"
            )
        total = embeddings.shape[0]
        n = int(min(max(round(total * self.settings.coreset_ratio), 1), self.settings.coreset_max))
        n = min(n, total)
        logger.info(
            "patchcore: coreset of %d rows from %d patch embeddings (D=%d)",
            n,
            total,
            self.embedding_dim,
        )
        if n < total:
            with tqdm(total=1, desc=f"patchcore: coreset {n}/{total}", leave=False) as bar:
                index = native.coreset(
                    embeddings,
                    n,
                    projection_dim=min(self.settings.projection_dim, self.embedding_dim),
                    seed=self.seed,
                )
                bar.update(1)
            bank = np.ascontiguousarray(embeddings[np.asarray(index, dtype=np.int64)])
        else:
            bank = embeddings
        b = min(self.settings.reweight_neighbours, bank.shape[0])
        self.memory_bank = bank
        self.bank_neighbours = np.asarray(native.bank_neighbours(bank, b), dtype=np.int64)
        self.n_patches_seen = total

    def _require_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.memory_bank is None or self.bank_neighbours is None:
            raise ValueError("patchcore head is not fitted (call fit() or set_bank() first)")
        return self.memory_bank, self.bank_neighbours

    def set_bank(self, memory_bank: np.ndarray, bank_neighbours: np.ndarray) -> None:
        """Install a bank (e.g. the one read back from a bundle)."""
        memory_bank = np.ascontiguousarray(memory_bank, dtype=np.float32)
        bank_neighbours = np.ascontiguousarray(bank_neighbours, dtype=np.int64)
        if memory_bank.ndim != 2 or memory_bank.shape[1] != self.embedding_dim:
            raise ValueError(
                f"memory_bank: expected (M, {self.embedding_dim}), got {memory_bank.shape}"
            )
        if bank_neighbours.ndim != 2 or bank_neighbours.shape[0] != memory_bank.shape[0]:
            raise ValueError(
                f"bank_neighbours: expected ({memory_bank.shape[0]}, b), got {bank_neighbours.shape}"
            )
        self.memory_bank, self.bank_neighbours = memory_bank, bank_neighbours

    def knn_basis(self) -> np.ndarray | None:
        """The runtime's kNN pruning basis for this bank: its leading principal axes, float32
        ``(P, D)`` (see :class:`autoweld.native.KnnIndex`), or None when the bank's variance is
        too spread for pruning to pay (the runtime then searches by brute force)."""
        bank, _ = self._require_fitted()
        # manifest_entry and bundle_files both ask: one PCA per bank (a new bank, a new one).
        if self._knn_basis is None or self._knn_basis[0] is not bank:
            pca = native.principal_axes(bank)
            self._knn_basis = (bank, pca.basis() if pca.worth_pruning(bank.shape[0]) else None)
        return self._knn_basis[1]

    def manifest_entry(self) -> dict[str, Any]:
        bank, neighbours = self._require_fitted()
        basis = self.knn_basis()
        return {
            "memory_bank": MEMORY_BANK_FILE,
            "bank_neighbours": BANK_NEIGHBOURS_FILE,
            "knn_basis": KNN_BASIS_FILE if basis is not None else None,
            "embedding_dim": self.embedding_dim,
            "bank_size": int(bank.shape[0]),
            "num_neighbours": 1,
            "reweight_neighbours": int(neighbours.shape[1]),
            "coreset_ratio": self.settings.coreset_ratio,
            "coreset_max": self.settings.coreset_max,
            "n_patches_fitted": int(self.n_patches_seen),
        }

    def bundle_files(self) -> dict[str, np.ndarray]:
        bank, neighbours = self._require_fitted()
        files = {MEMORY_BANK_FILE: bank, BANK_NEIGHBOURS_FILE: neighbours}
        basis = self.knn_basis()
        if basis is not None:
            files[KNN_BASIS_FILE] = basis
        return files


@register_head("patchcore")
def _build_patchcore(context: HeadContext) -> ExportHead:
    return PatchCoreHead(
        context.channels,
        PatchCoreSettings.from_mapping(dict(context.settings)),
        seed=context.seed,
        stride=context.strides[0],
    )
