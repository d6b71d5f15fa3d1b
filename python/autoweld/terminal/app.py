"""The web app of the operator terminal: one plain page and a small JSON API (FastAPI).

Routes (all under the page's own origin; nothing is fetched from anywhere else):

* ``GET /`` — the page (``static/index.html``; vanilla JS, no build step, no CDN).
* ``GET /api/session`` — whether a credential is needed, and whose the request's token is.
* ``GET /api/status`` — station, bundle, PLC state, counts and rate, the latest result, and
  ``forwarding`` (the central ledger's backlog, :meth:`Forwarder.status`; null without one).
* ``GET /api/latest.png`` — the latest image with its heat-map overlay and decision banner.
* ``GET /api/records?part_id=&limit=`` — ledger records, newest first, with signature status.
* ``GET /api/verify`` — verify the whole ledger chain (read-only; role ``quality``).
* ``POST /api/inspect?part_id=ID`` — body: the encoded image, as ``application/octet-stream``
  or ``image/*``. The only route that leads to a write, and only through the inspection path
  (PLC signal, then a new signed record). Always needs a credential (role ``operator``).

Nothing here can change or delete a record: reads and verify use a ledger connection opened
read-only, and the one POST route appends a new record through the station's worker, exactly
as an image from the camera folder does.

Who and from where (:mod:`autoweld.terminal.security`): every request must name a served host
(else 421); an ``/api/`` request from a foreign origin is refused (403); with credentials
configured, every ``/api/`` route but ``/api/session`` needs an ``Authorization: Bearer`` token
(401 without, 403 for a role that may not). The upload refuses the content types a plain form
or a ``no-cors`` fetch can send (415), is bounded in size (413, read with a limit, never whole),
in uploads received at once (429) and in queued inspections (503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from autoweld import __version__
from autoweld.quality.ledger import redact_url
from autoweld.terminal.security import Credentials, Identity, RequestGuard, bearer_token
from autoweld.terminal.service import Station, check_part_id

__all__ = ["UPLOAD_CONTENT_TYPES", "UploadLimits", "create_app"]

log = logging.getLogger(__name__)

#: How long an upload waits for its own result before answering 202 (still queued).
UPLOAD_WAIT_S = 60.0
#: What an upload may be sent as: none is a type a form or a no-cors fetch can send, so a page
#: on another site cannot deliver one without a CORS preflight (never granted).
UPLOAD_CONTENT_TYPES = frozenset(
    {"application/octet-stream", "image/png", "image/jpeg", "image/bmp", "image/tiff"}
)
STATIC = files("autoweld.terminal") / "static"
_NO_CACHE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on uploads (``--max-upload-mb``, ``--max-uploads``, ``--max-queue``).

    The memory uploads can hold is at most about ``(concurrent + queue) * max_bytes``: bodies
    being received, plus bodies waiting in the queue for the worker."""

    max_bytes: int = 64 * 1024 * 1024
    concurrent: int = 4
    queue: int = 16

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.concurrent < 1 or self.queue < 1:
            raise ValueError(f"upload limits must all be >= 1, got {self}")


def create_app(
    station: Station,
    *,
    hosts: Collection[str],
    credentials: Credentials | None = None,
    watch_folder: str | None = None,
    limits: UploadLimits | None = None,
    forwarder: Any = None,
) -> FastAPI:
    """The FastAPI app serving the page and its API for ``station`` (already started).

    ``hosts``: the ``Host`` header values served (:func:`~autoweld.terminal.security.
    served_hosts`); ``credentials``: who may act (None: nobody may upload, reads are open, which
    the command line allows on loopback only); ``forwarder``: a started
    :class:`autoweld.quality.forward.Forwarder`, shown in the status."""
    app = FastAPI(
        title="AutoWeld operator terminal",
        version=__version__,
        docs_url=None,  # no interactive API console on a station
        redoc_url=None,
        openapi_url=None,
    )
    app.state.station = station
    app.add_middleware(RequestGuard, hosts=frozenset(h.lower() for h in hosts))
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    _add_session_route(app, credentials)
    _add_read_routes(app, station, watch_folder, _requirement(credentials), forwarder)
    _add_upload_route(app, station, _requirement(credentials), limits or UploadLimits())
    return app


def _requirement(credentials: Credentials | None) -> Callable[[str, bool], Any]:
    """``require(role, always)``: a FastAPI dependency that lets a request through if its token
    holds ``role``. Without credentials configured it lets everything through unless
    ``always`` (a route that acts, which then nobody may use)."""

    def require(role: str, always: bool = False) -> Any:
        def check(request: Request) -> Identity | None:
            if credentials is None:
                if always:
                    raise HTTPException(
                        status_code=403,
                        detail="this terminal was started without --credentials: uploads are "
                        "refused (see docs/terminal.md, 'Credentials')",
                    )
                return None
            identity = credentials.identify(bearer_token(request.headers.get("authorization")))
            if identity is None:
                raise HTTPException(
                    status_code=401,
                    detail="sign in: a valid token is needed",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not identity.may(role):
                raise HTTPException(
                    status_code=403, detail=f"{identity.name} ({identity.role}) may not do this"
                )
            return identity

        return Depends(check)

    return require


def _add_session_route(app: FastAPI, credentials: Credentials | None) -> None:
    @app.get("/api/session")
    def session(request: Request) -> JSONResponse:
        identity = None
        if credentials is not None:
            identity = credentials.identify(bearer_token(request.headers.get("authorization")))
        return JSONResponse(
            {
                "credentials_required": credentials is not None,
                "name": identity.name if identity else None,
                "role": identity.role if identity else None,
                "may_inspect": identity is not None,
                "may_verify": credentials is None or bool(identity and identity.may("quality")),
            }
        )


def _add_read_routes(
    app: FastAPI,
    station: Station,
    watch_folder: str | None,
    require: Callable[..., Any],
    forwarder: Any = None,
) -> None:
    """The page and every GET route: they only read (the ledger through its read-only
    connection)."""
    viewer = [require("operator")]

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers=_NO_CACHE)

    @app.get("/api/status", dependencies=viewer)
    def status() -> JSONResponse:
        latest = station.latest()
        body: dict[str, Any] = {
            "station_id": station.config.station_id,
            "package_version": __version__,
            "bundle": station.bundle.to_json(),
            "ledger": redact_url(station.config.ledger_url),
            "watch_folder": watch_folder,
            "plc": station.plc_state(),
            "counts": station.counts(),
            "latest": latest.to_json() if latest is not None else None,
            "forwarding": forwarder.status() if forwarder is not None else None,
        }
        return JSONResponse(body, headers=_NO_CACHE)

    @app.get("/api/latest.png", dependencies=viewer)
    def latest_png() -> Response:
        latest = station.latest()
        if latest is None or not latest.overlay_png:
            raise HTTPException(status_code=404, detail="no inspection yet")
        return Response(latest.overlay_png, media_type="image/png", headers=_NO_CACHE)

    @app.get("/api/records", dependencies=viewer)
    def records(
        part_id: str | None = Query(default=None, max_length=200),
        limit: int = Query(default=50, ge=1, le=1000),
    ) -> JSONResponse:
        wanted = part_id.strip() if part_id is not None and part_id.strip() else None
        try:
            rows = station.records(part_id=wanted, limit=limit)
        except Exception as error:  # noqa: BLE001 - the page shows why the ledger is unreadable
            shown = redact_url(str(error))
            log.error("ledger read failed: %s", shown)
            raise HTTPException(status_code=503, detail=f"ledger read failed: {shown}") from None
        return JSONResponse({"part_id": wanted, "records": rows}, headers=_NO_CACHE)

    @app.get("/api/verify", dependencies=[require("quality")])
    def verify() -> JSONResponse:
        try:
            report = station.verify()
        except Exception as error:  # noqa: BLE001 - a verify that cannot run is not an "OK"
            shown = redact_url(str(error))
            log.error("ledger verify failed: %s", shown)
            report = {"ok": False, "checked": 0, "reason": f"verify could not run: {shown}"}
        return JSONResponse(report, headers=_NO_CACHE)


def _upload_content_type(request: Request) -> None:
    declared = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if declared not in UPLOAD_CONTENT_TYPES:
        raise HTTPException(
            status_code=415,
            detail=f"send the image as one of {sorted(UPLOAD_CONTENT_TYPES)}, "
            f"not {declared or 'no content type'!r}",
        )


async def _read_upload(request: Request, max_bytes: int) -> bytes:
    """The uploaded image, refused (413) past ``max_bytes`` before it is all read."""
    too_large = HTTPException(status_code=413, detail=f"image larger than {max_bytes} B")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    data = bytearray()
    async for chunk in request.stream():
        if len(data) + len(chunk) > max_bytes:
            raise too_large
        data += chunk
    if not data:
        raise HTTPException(status_code=400, detail="empty body: send the image file")
    return bytes(data)


class _UploadGate:
    """Counts uploads being received; refuses past the limits (the event loop is one thread,
    so a plain counter is exact)."""

    def __init__(self, station: Station, limits: UploadLimits) -> None:
        self.station = station
        self.limits = limits
        self.receiving = 0

    def check_queue(self) -> None:
        if self.station.pending >= self.limits.queue:
            raise HTTPException(
                status_code=503,
                detail=f"inspection queue full ({self.limits.queue} waiting): try again",
                headers={"Retry-After": "1"},
            )

    async def receive(self, request: Request) -> bytes:
        if self.receiving >= self.limits.concurrent:
            raise HTTPException(
                status_code=429,
                detail=f"{self.limits.concurrent} uploads are being received: try again",
                headers={"Retry-After": "1"},
            )
        self.check_queue()
        self.receiving += 1
        try:
            return await _read_upload(request, self.limits.max_bytes)
        finally:
            self.receiving -= 1


def _add_upload_route(
    app: FastAPI, station: Station, require: Callable[..., Any], limits: UploadLimits
) -> None:
    """``POST /api/inspect``: the one route that leads to a write, through the inspection path."""
    gate = _UploadGate(station, limits)
    app.state.upload_gate = gate

    @app.post("/api/inspect", dependencies=[require("operator", always=True)])
    async def inspect(request: Request, part_id: str = Query(max_length=200)) -> JSONResponse:
        _upload_content_type(request)
        try:
            part_id = check_part_id(part_id)
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        data = await gate.receive(request)
        gate.check_queue()  # it may have filled while this body arrived
        try:
            future = station.submit(part_id, data=data, source="upload")
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        del data  # the job holds the only copy
        try:
            # shield: a timed-out wait must not cancel the job; the part is inspected regardless
            outcome = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), UPLOAD_WAIT_S
            )
        except asyncio.TimeoutError:
            return JSONResponse({"queued": True, "part_id": part_id}, status_code=202)
        except Exception as error:  # noqa: BLE001
            raise HTTPException(
                status_code=503, detail=redact_url(f"not inspected: {error}")
            ) from None
        return JSONResponse(outcome.to_json(), headers=_NO_CACHE)
