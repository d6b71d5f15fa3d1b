"""The ONNX Runtime runner: one ``InferenceSession`` over the bundle's ONNX graph.

onnxruntime is imported lazily, inside the runner, so importing this module costs nothing and a
GPU build of onnxruntime is only touched when a runner is made.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoweld.runtime.engines.base import BaseRunner
from autoweld.runtime.engines.providers import import_onnxruntime, resolve_providers

__all__ = ["SPINNING_MODES", "OnnxRunner", "spinning_mode"]

#: What ONNX Runtime's idle intra-op workers may do (see :class:`OnnxRunner`).
SPINNING_MODES = ("during-run", "off", "always")
#: Environment variable that picks the mode when the caller does not.
SPINNING_ENV = "AUTOWELD_ORT_SPINNING"

log = logging.getLogger(__name__)


def spinning_mode(spinning: str | bool | None) -> str:
    """The spinning mode of :class:`OnnxRunner` for ``spinning``: a mode name, ``True``
    (``"always"``), ``False`` (``"off"``) or ``None`` (``AUTOWELD_ORT_SPINNING``, else
    ``"during-run"``). ``ValueError`` for anything else, naming where it came from."""
    if spinning is True:
        return "always"
    if spinning is False:
        return "off"
    where = "spinning"
    if spinning is None:
        spinning = os.environ.get(SPINNING_ENV, "").strip() or "during-run"
        where = SPINNING_ENV
    if spinning not in SPINNING_MODES:
        raise ValueError(f"{where} must be one of {', '.join(SPINNING_MODES)}; got {spinning!r}")
    return spinning


class OnnxRunner(BaseRunner):
    """One ONNX Runtime session over a graph file or serialised model bytes.

    ``providers``: short or ORT provider names (see :func:`resolve_providers`); ``providers``
    the attribute holds them resolved, as requested. ``threads`` sets ONNX Runtime's intra-op
    thread count (``None``: ORT's default, all cores). ``spinning`` (:data:`SPINNING_MODES`;
    ``None``: ``AUTOWELD_ORT_SPINNING`` or ``"during-run"``) — what ORT's intra-op workers do
    while they wait for work:

    * ``"during-run"`` (default): busy-wait between the operators of one run, sleep once the
      run has ended (``session.force_spinning_stop``). A graph run hands work to the workers
      once per operator; waking a sleeping worker each time cost the weld engine 0.4-0.9 ms
      of its 3.5 ms on two cores (bench/ab_inspector.py, docs/runtime.md "Threads").
    * ``"off"``: always sleep (the setting before; also ``False``).
    * ``"always"``: ORT's own default, spinning after a run as well (also ``True``). On two
      cores that took the cores from the Inspector's own kNN and preprocessing threads after
      each run and made them about 1.5x slower (autoweld-bench).

    ``image_shape``: see :class:`BaseRunner`.

    Safe to share across threads: ``infer`` holds no per-call state on the runner, and ORT
    sessions support concurrent ``run`` calls.
    """

    model_noun = "graph"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        providers: Sequence[str] | str = ("cpu",),
        threads: int | None = None,
        spinning: str | bool | None = None,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(image_shape)
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.providers = resolve_providers(providers)
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.spinning = spinning_mode(spinning)
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "0" if self.spinning == "off" else "1"
        )
        if self.spinning == "during-run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        source = bytes(model) if isinstance(model, (bytes, bytearray)) else str(Path(model))
        self._session: Any = ort.InferenceSession(
            source, sess_options=options, providers=self.providers
        )
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        log.debug(
            "onnx session on %s, outputs %s", self._session.get_providers(), self.output_names
        )

    @property
    def active_providers(self) -> list[str]:
        """Providers the session actually runs on (ORT may drop one it cannot initialise)."""
        self.require_open()
        return list(self._session.get_providers())

    def infer_impl(self, feed: dict[str, Any], outputs: list[str]) -> dict[str, np.ndarray]:
        session = self._session  # one read: a close() racing this call cannot swap it mid-way
        if session is None:
            self.require_open()
        results = session.run(outputs, feed)
        return dict(zip(outputs, results, strict=True))

    def release(self) -> None:
        self._session = None
