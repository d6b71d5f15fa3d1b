"""The web app of the operator terminal: one plain page and a small JSON API (FastAPI).

Routes (all under the page's own origin; nothing is fetched from anywhere else):

* ``GET /`` — the page (``static/index.html``; vanilla JS, no build step, no CDN).
* ``GET /api/status`` — station, bundle, PLC state, counts and rate, the latest result, and
  ``forwarding`` (the central ledger's backlog, :meth:`Forwarder.status`; null without one).
* ``GET /api/latest.png`` — the latest image with its heat-map overlay and decision banner.
* ``GET /api/records?part_id=&limit=`` — ledger records, newest first, with signature status.
* ``GET /api/verify`` — verify the whole ledger chain (read-only).
* ``POST /api/inspect?part_id=ID`` — body: the encoded image. The only route that leads to a
  write, and only through the inspection path (PLC signal, then a new signed record).

Nothing here can change or delete a record: reads and verify use a ledger connection opened
read-only, and the one POST route appends a new record through the station's worker, exactly
as an image from the camera folder does.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from autoweld import __version__
from autoweld.quality.ledger import redact_url
from autoweld.terminal.service import Station, check_part_id

__all__ = ["create_app"]

log = logging.getLogger(__name__)

#: Largest upload accepted (bytes); the decoder has its own, larger, limit for the camera.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: How long an upload waits for its own result before answering 202 (still queued).
UPLOAD_WAIT_S = 60.0
STATIC = files("autoweld.terminal") / "static"
_NO_CACHE = {"Cache-Control": "no-store"}


def create_app(
    station: Station, *, watch_folder: str | None = None, forwarder: Any = None
) -> FastAPI:
    """The FastAPI app serving the page and its API for ``station`` (already started);
    ``forwarder``: a started :class:`autoweld.quality.forward.Forwarder`, shown in the status."""
    app = FastAPI(
        title="AutoWeld operator terminal",
        version=__version__,
        docs_url=None,  # no interactive API console on a station
        redoc_url=None,
        openapi_url=None,
    )
    app.state.station = station
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    _add_read_routes(app, station, watch_folder, forwarder)
    _add_upload_route(app, station)
    return app


def _add_read_routes(
    app: FastAPI, station: Station, watch_folder: str | None, forwarder: Any = None
) -> None:
    """The page and every GET route: they only read (the ledger through its read-only
    connection)."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers=_NO_CACHE)

    @app.get("/api/status")
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

    @app.get("/api/latest.png")
    def latest_png() -> Response:
        latest = station.latest()
        if latest is None or not latest.overlay_png:
            raise HTTPException(status_code=404, detail="no inspection yet")
        return Response(latest.overlay_png, media_type="image/png", headers=_NO_CACHE)

    @app.get("/api/records")
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

    @app.get("/api/verify")
    def verify() -> JSONResponse:
        try:
            report = station.verify()
        except Exception as error:  # noqa: BLE001 - a verify that cannot run is not an "OK"
            shown = redact_url(str(error))
            log.error("ledger verify failed: %s", shown)
            report = {"ok": False, "checked": 0, "reason": f"verify could not run: {shown}"}
        return JSONResponse(report, headers=_NO_CACHE)


async def _read_upload(request: Request) -> bytes:
    """The uploaded image, refused (413) past MAX_UPLOAD_BYTES before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise HTTPException(status_code=413, detail=f"image larger than {MAX_UPLOAD_BYTES} B")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(status_code=413, detail=f"image larger than {MAX_UPLOAD_BYTES} B")
    if not data:
        raise HTTPException(status_code=400, detail="empty body: send the image file")
    return bytes(data)


def _add_upload_route(app: FastAPI, station: Station) -> None:
    """``POST /api/inspect``: the one route that leads to a write, through the inspection path."""

    @app.post("/api/inspect")
    async def inspect(request: Request, part_id: str = Query(max_length=200)) -> JSONResponse:
        try:
            part_id = check_part_id(part_id)
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        data = await _read_upload(request)
        try:
            future = station.submit(part_id, data=data, source="upload")
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
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
