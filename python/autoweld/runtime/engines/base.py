"""The runner interface every engine shares (Polygraphy's ``BaseRunner`` + ``infer_impl``).

:meth:`BaseRunner.infer` does what is the same for every engine -- the runner is still open, a
bare array feeds the single input, every input is a batch of images as the bundle describes it
(float32, ``[N, C, S, S]``, N >= 1), the requested outputs exist -- and then hands the checked
feed to the backend's :meth:`~BaseRunner.infer_impl`. A runner owns its engine: it is a context
manager, :meth:`~BaseRunner.close` is idempotent, and any use after it is a ``RuntimeError``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

__all__ = ["BaseRunner", "check_image_batch"]

_FLOAT32 = np.dtype(np.float32)
_Runner = TypeVar("_Runner", bound="BaseRunner")


def check_image_batch(name: str, array: Any, image_shape: tuple[int, int, int] | None) -> None:
    """Raises ``ValueError`` unless ``array`` (numpy, or a device array with ``dtype`` and
    ``shape``) is a float32 ``[N, C, H, W]`` batch with N >= 1 and ``(C, H, W) == image_shape``
    (when given: the bundle's channels and input size)."""
    dtype, shape = getattr(array, "dtype", None), getattr(array, "shape", None)
    if dtype is None or shape is None:
        raise ValueError(f"inputs: {name!r} must be an array, got {type(array).__name__}")
    shape = tuple(int(d) for d in shape)
    if np.dtype(dtype) != _FLOAT32:
        raise ValueError(f"inputs: {name!r} must be float32, got {np.dtype(dtype)}")
    if len(shape) != 4:
        raise ValueError(f"inputs: {name!r} must be 4-D [N, C, H, W], got shape {shape}")
    if shape[0] < 1:
        raise ValueError(f"inputs: {name!r} has an empty batch (shape {shape})")
    if image_shape is not None and shape[1:] != tuple(image_shape):
        expected = ", ".join(str(d) for d in image_shape)
        raise ValueError(
            f"inputs: {name!r} has shape {shape}; the bundle's images are [N, {expected}]"
        )


class BaseRunner(abc.ABC):
    """One engine's session over one model; subclasses implement :meth:`infer_impl` and
    :meth:`release`, and set ``input_names``/``output_names`` in their constructor.

    ``image_shape`` is ``(C, H, W)`` of the images the bundle was exported for (checked on every
    call); ``None`` checks dtype, rank and batch only.
    """

    #: what the model is called in messages ("graph", "plan")
    model_noun = "model"

    def __init__(self, image_shape: tuple[int, int, int] | None = None) -> None:
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._closed = False

    # ---- what every backend shares -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def require_open(self) -> None:
        """Raises ``RuntimeError`` once the runner is closed."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def feed(self, inputs: Mapping[str, Any] | Any) -> dict[str, Any]:
        """``inputs`` as input name -> checked array; a bare array feeds the single input."""
        if not isinstance(inputs, Mapping):
            if len(self.input_names) != 1:
                raise ValueError(
                    f"inputs: the {self.model_noun} has {len(self.input_names)} inputs "
                    f"({', '.join(self.input_names)}); pass a dict"
                )
            inputs = {self.input_names[0]: inputs}
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise ValueError(
                f"inputs: missing {missing}, unknown {extra} "
                f"(the {self.model_noun}'s inputs: {self.input_names})"
            )
        for name in self.input_names:
            check_image_batch(name, inputs[name], self.image_shape)
        return dict(inputs)

    def wanted_outputs(self, outputs: Sequence[str] | None) -> list[str]:
        """The requested output names (all by default), each checked to exist."""
        names = list(outputs) if outputs is not None else list(self.output_names)
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(
                f"outputs: {unknown} not in the {self.model_noun}'s outputs {self.output_names}"
            )
        return names

    def infer(
        self,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model on host arrays; returns output name -> host array, in ``outputs`` order.
        A bare array feeds the single input."""
        self.require_open()
        return self.infer_impl(self.feed(inputs), self.wanted_outputs(outputs))

    def close(self) -> None:
        """Release the engine (idempotent)."""
        if not self._closed:
            self._closed = True
            self.release()

    def __enter__(self: _Runner) -> _Runner:
        self.require_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- what each backend implements --------------------------------------------------------

    @property
    @abc.abstractmethod
    def active_providers(self) -> list[str]:
        """What the model actually runs on (for logs and reports)."""

    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, Any], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run on a checked feed; return the named outputs as host arrays."""

    @abc.abstractmethod
    def release(self) -> None:
        """Free the backend's session/engine; called once, by :meth:`close`."""
