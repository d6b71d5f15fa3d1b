"""Serving AutoWeld models from NVIDIA Triton Inference Server (docs/serving.md).

- :func:`write_triton_repository` (``autoweld-serve triton-repo``): a model repository from
  bundles, one model per camera, pure Python backend or an ensemble;
- :class:`RemoteInspector` (``--server grpc://HOST:PORT``): the Inspector's twin that scores
  through the server, with the Inspector's fields and fail-safe rules;
- :mod:`~autoweld.serving.local`: a ``tritonserver`` on this machine from ``nvidia-pytriton``.

Nothing here imports tritonclient until a server is contacted.
"""

from autoweld.serving.client import (
    DEFAULT_TIMEOUT_S,
    RemoteInspector,
    open_inspector,
    parse_server_url,
)
from autoweld.serving.repository import RepositoryOptions, write_triton_repository

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RemoteInspector",
    "RepositoryOptions",
    "open_inspector",
    "parse_server_url",
    "write_triton_repository",
]
