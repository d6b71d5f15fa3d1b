"""Scoring through a Triton server: :class:`RemoteInspector`, the Inspector's twin.

The station keeps what is local to it -- decoding, preprocessing, the heat-map, the ledger and
the PLC -- and sends the preprocessed images to an AutoWeld model on a Triton server
(``grpc://HOST:PORT[/MODEL]``), which runs the graph, kNN, scoring, calibration and fusion. The
result is built from the server's numbers by the same code as the Inspector's
(:func:`autoweld.runtime.inspector.assemble_result`), so the fields and decisions are the same.

Fail safe, as the Inspector: ``inspect`` never raises. A server that is down, slow (no answer
within ``timeout_s``), answers with an error, or serves another bundle than the local manifest
gives a FAIL whose ``error`` says so; the next inspection tries again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from autoweld import native
from autoweld.bundle import Bundle
from autoweld.runtime.decode import DecodeLimits, image_for_inspection
from autoweld.runtime.inspector import (
    ImageInput,
    InspectionResult,
    _describe,
    assemble_result,
    failed_result,
)
from autoweld.serving import contract

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RemoteInspector",
    "ServerAddress",
    "open_inspector",
    "parse_server_url",
]

log = logging.getLogger(__name__)

#: how long one inspection waits for the server before it is a FAIL
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ServerAddress:
    """``grpc://HOST:PORT[/MODEL]``: where the server is, and which model (None: the one
    AutoWeld model serving the local bundle)."""

    host: str
    port: int
    model: str | None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"grpc://{self.target}" + (f"/{self.model}" if self.model else "")


def parse_server_url(url: str) -> ServerAddress:
    """``ValueError`` (a usage error) unless ``url`` is ``grpc://HOST:PORT[/MODEL]``."""
    parts = urlsplit(url)
    if parts.scheme != "grpc" or not parts.hostname:
        raise ValueError(f"--server {url!r}: expected grpc://HOST:PORT[/MODEL]")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"--server {url!r}: needs a port (Triton's gRPC port is 8001)")
    model = parts.path.strip("/") or None
    if model is not None and "/" in model:
        raise ValueError(f"--server {url!r}: the path is one model name")
    return ServerAddress(parts.hostname, port, model)


class RemoteInspector:
    """Inspects images through a Triton server; the interface of
    :class:`~autoweld.runtime.inspector.Inspector` (``inspect``, ``inspect_batch``, ``close``,
    ``bundle``, ``heads``, ``threshold``; a context manager) and its fail-safe rules.

    ``bundle_or_path``: the station's copy of the bundle; only what its manifest says is used
    here (preprocessing, heads, threshold), and the server must serve exactly that bundle (its
    sha256), or every inspection is a FAIL saying so. A bad local bundle raises ``BundleError``
    from the constructor, as the Inspector does; the server is not contacted before the first
    inspection, so a station starts while its server is down. Threads may share it.
    """

    def __init__(
        self,
        bundle_or_path: Bundle | str | os.PathLike[str],
        server: str | ServerAddress,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        threads: int | None = None,
        decode_limits: DecodeLimits | None = None,
        require_signed: bool | None = None,
    ) -> None:
        from autoweld.runtime.inspector import load_checked_bundle

        self.address = server if isinstance(server, ServerAddress) else parse_server_url(server)
        if not timeout_s > 0:
            raise ValueError(f"server timeout must be > 0 s, got {timeout_s}")
        # The same signature rule and unsigned-bundle warning as the in-process Inspector: the
        # local bundle is what the records name and what the server's sha256 is checked against.
        self.bundle = load_checked_bundle(bundle_or_path, require_signed)
        self.bundle_signed = self.bundle.signed
        self.timeout_s = float(timeout_s)
        self.threads = threads
        self.decode_limits = decode_limits or DecodeLimits()
        self.preprocess_spec = self.bundle.preprocess
        self.heads = self.bundle.heads
        self.threshold = self.bundle.threshold
        #: the model and the bundle sha256 the server reported, once it answered
        self.model: str | None = self.address.model
        self.served_sha256: str | None = None
        self._max_batch = 1
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Any] = []
        self._closed = threading.Event()

    # ---- public API (the Inspector's) --------------------------------------------------------

    def inspect(self, image: ImageInput, *, keep_head_maps: bool = False) -> InspectionResult:
        """Inspect one image through the server. Never raises."""
        return self.inspect_batch([image], keep_head_maps=keep_head_maps)[0]

    def inspect_batch(
        self, images: Sequence[ImageInput], *, keep_head_maps: bool = False
    ) -> list[InspectionResult]:
        """One result per image, in order; an image that cannot be decoded fails alone, a server
        that fails fails the images it was sent. Never raises."""
        if isinstance(images, (str, bytes, bytearray, os.PathLike)):
            return [failed_result("images: expected a sequence of images", self.threshold)]
        try:
            images = list(images)
        except Exception as error:  # noqa: BLE001 - fail safe
            return [failed_result(f"images: {_describe(error)}", self.threshold)]
        if self._closed.is_set():
            return [failed_result("inspector is closed", self.threshold) for _ in images]
        results: list[InspectionResult | None] = [None] * len(images)
        decoded: list[tuple[int, np.ndarray, float]] = []
        for i, image in enumerate(images):
            start = time.perf_counter()
            try:
                array = image_for_inspection(image, self.decode_limits)
            except Exception as error:  # noqa: BLE001 - fail safe
                elapsed = {"decode": (time.perf_counter() - start) * 1e3}
                results[i] = failed_result(_describe(error), self.threshold, elapsed)
                continue
            decoded.append((i, array, (time.perf_counter() - start) * 1e3))
        for chunk_start in range(0, len(decoded), max(1, self._max_batch)):
            chunk = decoded[chunk_start : chunk_start + max(1, self._max_batch)]
            scored = self._score_safely([array for _, array, _ in chunk], keep_head_maps)
            for (i, _, decode_ms), result in zip(chunk, scored, strict=True):
                result.timings_ms = {"decode": decode_ms, **result.timings_ms}
                results[i] = result
        return [r if r is not None else failed_result("not inspected") for r in results]

    def close(self) -> None:
        """Close the connections. Later inspections return FAIL ("inspector is closed")."""
        self._closed.set()
        with self._lock:
            for client in self._clients:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            self._clients.clear()

    def __enter__(self) -> RemoteInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the server --------------------------------------------------------------------------

    def _score_safely(self, images: list[np.ndarray], keep: bool) -> list[InspectionResult]:
        start = time.perf_counter()
        try:
            return self._score(images, keep)
        except Exception as error:  # noqa: BLE001 - fail safe: the server is down, slow or wrong
            elapsed = {"server": (time.perf_counter() - start) * 1e3}
            reason = f"server {self.address}: {_server_error(error)}"
            log.warning("inspection failed: %s", reason)
            return [failed_result(reason, self.threshold, elapsed) for _ in images]

    def _client(self) -> Any:
        """This thread's gRPC client (one channel per thread)."""
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(self.address.target)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _connect(self, client: Any) -> str:
        """The model to send to, checked once: it serves the local bundle (its config's
        parameters name the local manifest's sha256). Raises ``ValueError`` otherwise."""
        if self.served_sha256 is not None and self.model is not None:
            return self.model
        models = [self.model] if self.model else self._autoweld_models(client)
        served = {}
        for model in models:
            config = client.get_model_config(model, as_json=True, client_timeout=self.timeout_s)
            config = config.get("config", config)
            parameters = {
                key: value.get("string_value", "")
                for key, value in config.get("parameters", {}).items()
            }
            if contract.PARAM_SHA256 in parameters or self.model:
                served[model] = (parameters, int(config.get("max_batch_size", 1) or 1))
        matching = [
            m for m, (p, _) in served.items() if p.get(contract.PARAM_SHA256) == self.bundle.sha256
        ]
        if not matching:
            named = {m: p.get(contract.PARAM_SHA256, "none") for m, (p, _) in served.items()}
            raise ValueError(
                f"serves no model of the local bundle {self.bundle.sha256} (models and the "
                f"bundles they serve: {named})"
            )
        model = matching[0]
        parameters, max_batch = served[model]
        contract.ServedBundle.from_parameters(parameters, f"model {model}")
        self.model, self._max_batch = model, max_batch
        self.served_sha256 = parameters[contract.PARAM_SHA256]
        log.info(
            "scoring through %s, model %s, bundle %s", self.address, model, self.served_sha256[:12]
        )
        return model

    def _autoweld_models(self, client: Any) -> list[str]:
        index = client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        return [
            m["name"]
            for m in index.get("models", [])
            if m.get("state") == "READY" and m["name"].startswith(contract.MODEL_PREFIX)
        ]

    def _score(self, images: list[np.ndarray], keep: bool) -> list[InspectionResult]:
        import tritonclient.grpc as grpcclient

        spec = self.preprocess_spec
        start = time.perf_counter()
        batch = native.preprocess_batch(images, spec.size, threads=self.threads, **spec.as_kwargs())
        preprocess_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        client = self._client()
        model = self._connect(client)
        request = grpcclient.InferInput(contract.IMAGES, list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        wanted = [n for n in contract.OUTPUTS if keep or n != contract.HEAD_MAPS]
        response = client.infer(
            model,
            [request],
            outputs=[grpcclient.InferRequestedOutput(n) for n in wanted],
            client_timeout=self.timeout_s,
        )
        arrays = {name: response.as_numpy(name) for name in wanted}
        server_ms = (time.perf_counter() - start) * 1e3
        n = len(images)
        timings = {"preprocess": preprocess_ms / n, "server": server_ms / n}
        return [self._result(image, i, arrays, keep, timings) for i, image in enumerate(images)]

    def _result(
        self, image: np.ndarray, i: int, arrays: dict[str, Any], keep: bool, timings: dict
    ) -> InspectionResult:
        """Image ``i``'s result from the server's arrays; a reply of the wrong shape, from
        another bundle, or naming an error is a FAIL."""
        heads = list(self.heads)
        size = self.preprocess_spec.size
        expected = {
            contract.PROBABILITY: (1,),
            contract.SCORES: (len(heads),),
            contract.PROBABILITIES: (len(heads),),
            contract.ANOMALY_MAP: (size, size),
            contract.HEAD_MAPS: (len(heads), size, size),
            contract.ERROR: (1,),
            contract.BUNDLE_SHA256: (1,),
        }
        for name, array in arrays.items():
            if array is None or tuple(array.shape[1:]) != expected[name] or array.shape[0] <= i:
                shape = None if array is None else array.shape
                return failed_result(
                    f"server {self.address}: reply {name} has shape {shape}",
                    self.threshold,
                    timings,
                )
        served = _text(arrays[contract.BUNDLE_SHA256][i, 0])
        if served != self.bundle.sha256:
            return failed_result(
                f"server {self.address}: scored with bundle {served}, not the local "
                f"{self.bundle.sha256}",
                self.threshold,
                timings,
            )
        error = _text(arrays[contract.ERROR][i, 0])
        if error:
            return failed_result(error, self.threshold, timings)
        result = assemble_result(
            image.shape,
            probability=float(arrays[contract.PROBABILITY][i, 0]),
            scores={h: float(v) for h, v in zip(heads, arrays[contract.SCORES][i], strict=True)},
            probabilities={
                h: float(v) for h, v in zip(heads, arrays[contract.PROBABILITIES][i], strict=True)
            },
            threshold=self.threshold,
            fused_map=np.ascontiguousarray(arrays[contract.ANOMALY_MAP][i], dtype=np.float32),
            head_maps=(
                {h: arrays[contract.HEAD_MAPS][i, j] for j, h in enumerate(heads)} if keep else {}
            ),
        )
        result.timings_ms = dict(timings)
        return result


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _server_error(error: BaseException) -> str:
    """A short reason: tritonclient's exceptions carry a gRPC status and a message."""
    status = getattr(error, "status", None)
    message = getattr(error, "message", None)
    if callable(status) and callable(message):
        return f"{status() or 'error'}: {message()}"
    return _describe(error)


def open_inspector(
    bundle_or_path: Bundle | str | os.PathLike[str],
    *,
    server: str | None = None,
    server_timeout_s: float = DEFAULT_TIMEOUT_S,
    providers: Sequence[str] | str = ("cpu",),
    threads: int | None = None,
    decode_limits: DecodeLimits | None = None,
    require_signed: bool | None = None,
) -> Any:
    """An :class:`~autoweld.runtime.inspector.Inspector`, or with ``server`` a
    :class:`RemoteInspector` scoring through it: what ``--server`` switches in every command.
    ``require_signed``: as for the Inspector (None: ``AUTOWELD_REQUIRE_SIGNED``)."""
    if server:
        return RemoteInspector(
            bundle_or_path,
            server,
            timeout_s=server_timeout_s,
            threads=threads,
            decode_limits=decode_limits,
            require_signed=require_signed,
        )
    from autoweld.runtime.inspector import Inspector

    return Inspector(
        bundle_or_path,
        providers=providers,
        threads=threads,
        decode_limits=decode_limits,
        require_signed=require_signed,
    )
