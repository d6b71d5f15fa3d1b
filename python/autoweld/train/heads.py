"""The head interface every model head follows, the head registry, and the exported graph.

A *head* turns the backbone's feature taps into what the runtime scores:

* ``kind == "knn"`` heads (PatchCore) output patch embeddings ``[N, h*w, D]`` (row-major over h,
  then w); the runtime finds each row's nearest memory-bank row.
* ``kind == "map"`` heads output an anomaly score per location ``[N, h, w]``; the image score is
  the maximum.

:class:`InspectionGraph` runs the backbone once and every head after it; it is the module that is
exported to ONNX, one output per head in head order.

Adding a head is one registration::

    @register_head("feature_ae")
    def _build(context: HeadContext) -> ExportHead:
        return FeatureAEHead(context.channels, **context.settings)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from autoweld.bundle import HEAD_KINDS  # the kinds a bundle knows: one definition, no torch
from autoweld.train.backbones import FeatureExtractor

__all__ = [
    "ExportHead",
    "HeadContext",
    "InspectionGraph",
    "available_heads",
    "build_head",
    "register_head",
]


class ExportHead(nn.Module):
    """Base class of every model head.

    Subclasses set the class attributes ``name``, ``kind`` and ``output_name`` and implement
    :meth:`forward`, :meth:`fit`, :meth:`manifest_entry` and :meth:`bundle_files`.
    """

    name: str = ""
    kind: str = ""
    output_name: str = ""

    def forward(self, image: Tensor, features: list[Tensor]) -> Tensor:
        """``image``: the preprocessed batch [N,3,S,S]; ``features``: the backbone taps.

        knn heads return [N, h*w, D]; map heads return [N, h, w] anomaly scores. Must export to
        ONNX (no data-dependent control flow, no ``cdist``).
        """
        raise NotImplementedError

    def fit(self, extractor: FeatureExtractor, batches: Sequence[Tensor]) -> None:
        """Fit on normal images only. ``batches``: preprocessed [n,3,S,S] tensors, re-iterable
        (a head that trains for several epochs may walk them many times)."""
        raise NotImplementedError

    def fit_validation(self, extractor: FeatureExtractor, batches: Sequence[Tensor]) -> None:
        """After :meth:`fit`: fit what a head takes from the held-out *normal* validation images
        (the student-teacher's map quantiles, the feature autoencoder's mean + 3 sigma
        threshold). ``batches`` as in :meth:`fit`; never test images. Default: nothing."""
        del extractor, batches

    def feature_map_size(self, image_size: int) -> tuple[int, int]:
        """[h, w] of this head's score map for an S x S input."""
        raise NotImplementedError

    def manifest_entry(self) -> dict[str, Any]:
        """Head-specific manifest fields (``kind``/``output``/``feature_map``/calibration are
        added by the exporter)."""
        return {}

    def bundle_files(self) -> dict[str, np.ndarray]:
        """Arrays that go into the bundle beside the graph (e.g. ``memory_bank.npy``)."""
        return {}


@dataclass
class HeadContext:
    """What a head factory gets: the frozen backbone, the input size and the head's settings
    (the recipe's ``[<profile>.<head>]`` table, after CLI overrides)."""

    extractor: FeatureExtractor
    image_size: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def channels(self) -> tuple[int, int]:
        return self.extractor.channels

    @property
    def strides(self) -> tuple[int, int]:
        return self.extractor.strides


HeadFactory = Callable[[HeadContext], ExportHead]
_REGISTRY: dict[str, HeadFactory] = {}


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Decorator: register a head factory under ``name`` (the manifest's model key)."""

    def decorate(factory: HeadFactory) -> HeadFactory:
        if name in _REGISTRY:
            raise ValueError(f"head {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


_Settings = TypeVar("_Settings")


def settings_from_mapping(cls: type[_Settings], values: Mapping[str, Any], head: str) -> _Settings:
    """A head's settings dataclass from its recipe table; an unknown key is an error naming it."""
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = set(values) - known
    if unknown:
        raise ValueError(
            f"{head} settings: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    return cls(**values)


# Modules whose import registers heads (a new head module adds its name here).
HEAD_MODULES: tuple[str, ...] = (
    "autoweld.train.patchcore",
    "autoweld.train.student_teacher",
    "autoweld.train.feature_ae",
    "autoweld.train.global_reference",
)


def _ensure_builtin_heads() -> None:
    for module in HEAD_MODULES:
        importlib.import_module(module)


def available_heads() -> list[str]:
    """Names of the heads that can be built."""
    _ensure_builtin_heads()
    return sorted(_REGISTRY)


def build_head(name: str, context: HeadContext) -> ExportHead:
    """Build a registered head; unknown names raise ``ValueError`` listing the known ones."""
    _ensure_builtin_heads()
    if name not in _REGISTRY:
        raise ValueError(
            f"models: head {name!r} is not implemented in this autoweld "
            f"(available: {', '.join(sorted(_REGISTRY))})"
        )
    head = _REGISTRY[name](context)
    if head.name != name or head.kind not in HEAD_KINDS or not head.output_name:
        raise ValueError(
            f"head factory {name!r} built a head with name={head.name!r}, kind={head.kind!r}, "
            f"output_name={head.output_name!r}"
        )
    return head


class InspectionGraph(nn.Module):
    """Backbone once, then every head: what is exported to ONNX (one output per head)."""

    input_name = "image"

    def __init__(self, extractor: FeatureExtractor, heads: Sequence[ExportHead]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("heads: an inspection graph needs at least one head")
        names = [h.name for h in heads]
        if len(set(names)) != len(names):
            raise ValueError(f"heads: duplicate head names {names}")
        self.extractor = extractor
        self.heads = nn.ModuleList(heads)
        self.eval()

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.heads]

    @property
    def output_names(self) -> list[str]:
        return [h.output_name for h in self.heads]

    def head(self, name: str) -> ExportHead:
        for h in self.heads:
            if h.name == name:
                return h
        raise ValueError(f"head {name!r} is not in this graph ({self.head_names})")

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        features = self.extractor(image)
        return tuple(head(image, features) for head in self.heads)

    @torch.no_grad()
    def run(self, image: Tensor) -> dict[str, Tensor]:
        """Eager inference: head name -> output."""
        return dict(zip(self.head_names, self.forward(image), strict=True))
