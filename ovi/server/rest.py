"""REST API over the queue database (`ovi queue serve`), with SSE, WebSocket and Socket.IO events.

    GET    /api/health                      liveness, queue counts, paused, limits
    POST   /api/generate                    queue a request -> 202 + the job (flat GenerateRequest
                                            fields, or the seed's {id, mode, prompt, options})
    POST   /api/uploads                     an image (multipart `file`, or JSON {"image": data URL})
                                            -> 201 {name, ...}; a request names it as `image`
    GET    /api/configs, /api/loras         the names a request may choose from
    GET    /api/jobs[?state=&limit=&offset=]
    GET    /api/jobs/{id}                   by the client's id or the queue's integer id
    DELETE /api/jobs/{id}                   cancel (a running job stops at its next step)
    POST   /api/jobs/{id}/retry             re-queue a failed, cancelled or lost job
    POST   /api/jobs/{id}/move              {"before": id} | {"after": id} | {"priority": n}
    POST   /api/jobs/{id}/extend            queue a job continuing a done job's clip -> 202 + the job
                                            ({"duration"?, "prompt"?, "id"?, "priority"?})
    POST   /api/pause, /api/resume          start no new job / start again
    GET    /api/videos/{filename}           a clip file from the output folder
    GET    /api/events[?job=&since=&timeout=]   live events (Server-Sent Events)
    GET    /api/jobs/{id}/events            one job's events; ends when the job settles
    WS     /api/ws[?job=&since=]            the same events over a WebSocket
    Socket.IO at /socket.io/                submit_job, cancel_job -> job_update (ovi.server.sio)

What a body may hold, and the limits, are in ovi.server.intake; the rules for plain values (text,
integers, job ids) in ovi.inputs; the browser rules (Host, Origin, JSON bodies) in
ovi.server.browser. Binds 127.0.0.1 by default; with a token (`ovi queue serve` always has one) every
route (WebSocket, Socket.IO and the docs /docs, /redoc, /openapi.json included) needs
`Authorization: Bearer <token>`, or `?access_token=` for clients that cannot set headers
(EventSource, browser WebSockets). Responses are ASCII JSON: any text a client sent is echoed
escaped, never as bytes that cannot be encoded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.websockets import WebSocketDisconnect

import ovi
from ovi.inputs import ID_MAX, ValueProblem, check_int
from ovi.queue.folders import ServerFolders
from ovi.queue.jobqueue import STATES, JobQueue, default_out_dir
from ovi.runtime.shutdown import SHUTDOWN_GRACE_SECONDS
from ovi.server.browser import BrowserGuard
from ovi.server.intake import BodySizeLimit, Refused
from ovi.server.limits import ServerLimits
from ovi.server.service import ApiService
from ovi.server.sio import SOCKETIO_PATH, SocketIOBridge

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEP_ALIVE_SECONDS = 15.0
WS_POLICY_VIOLATION = 1008  # WebSocket close code for a refused token


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"  # what the schema documents for the SSE routes


# One Server-Sent Event as the schema documents it (`data` is the event's JSON as text).
SSE_EVENTS = {"content": {"text/event-stream": {"schema": {
    "type": "object", "properties": {"id": {"type": "string"}, "event": {"type": "string"},
                                     "data": {"type": "string"}}}}},
    "description": "Server-Sent Events: snapshot, then one per queue event"}
# The clip files a video URL may serve, as the schema documents them.
CLIP_TYPES = {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in
                          ("video/mp4", "video/webm", "audio/x-wav", "application/json", "image/png",
                           "image/jpeg")}, "description": "the clip file"}


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: text a client sent (a lone surrogate included)
    can always be echoed in a message without failing to encode."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def create_app(db: str | os.PathLike | JobQueue = "outputs/queue.db", *,
               out_dir: str | os.PathLike | None = None, token: str | None = None,
               run: bool = False, engine_factory=None, folders: ServerFolders | None = None,
               limits: ServerLimits | None = None, allow_origins: list[str] | None = None,
               allowed_hosts: frozenset | None = None, any_ip_host: bool = False) -> FastAPI:
    """The API app over queue `db` (`app.state.service` is its ApiService). `run=True` also drives
    a Runner in this process while the app runs. `folders` default to the ones beside the database.
    `allowed_hosts` (None: any, for an in-process app) and `any_ip_host` are the Host rule of
    ovi.server.browser; `ovi queue serve` passes its bound address (`allowed_hosts_for`)."""
    owns_queue = not isinstance(db, JobQueue)
    queue = JobQueue(db) if owns_queue else db
    service = ApiService(
        queue, out_dir=Path(out_dir) if out_dir is not None else default_out_dir(queue),
        folders=folders or ServerFolders.beside(queue.path), limits=limits or ServerLimits(),
        token=token, run=run, engine_factory=engine_factory)
    socket_io = SocketIOBridge(service, allow_origins=allow_origins)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        pump = asyncio.create_task(socket_io.pump())
        try:
            yield
        finally:
            service.begin_shutdown()
            await asyncio.to_thread(service.stop, SHUTDOWN_GRACE_SECONDS)
            await asyncio.gather(pump, return_exceptions=True)
            if owns_queue:
                queue.close()

    # The docs are routes of our own below, behind the token.
    app = FastAPI(title="Ovi Workbench queue", version=ovi.__version__, lifespan=lifespan,
                  default_response_class=AsciiJSONResponse, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_body_bytes)
    if allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allow_origins, allow_methods=["*"],
                           allow_headers=["*"])
    # Outermost: a refused Host or Origin is answered before anything else runs.
    app.add_middleware(BrowserGuard, allowed_hosts=allowed_hosts, any_ip=any_ip_host,
                       allow_origins=allow_origins, socketio_path=SOCKETIO_PATH)

    def authorize(request: Request) -> None:
        if not service.authorized(authorization=request.headers.get("authorization"),
                                  token=request.query_params.get("access_token")):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused):
        return AsciiJSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes the input as UTF-8: a lone surrogate made it a 500.
        return AsciiJSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})

    guarded = [Depends(authorize)]

    # -- the API's own description, behind the token like every route -------------------------
    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    def openapi_schema() -> dict:
        return app.openapi()

    def _schema_url(request: Request) -> str:
        # The page's own fetch of the schema carries the token only if the page was opened with
        # it (and only ours: the value lands in the page's script).
        given = request.query_params.get("access_token")
        ours = bool(given and service.token and service.authorized(token=given))
        return "/openapi.json" + (f"?access_token={service.token}" if ours else "")

    @app.get("/docs", dependencies=guarded, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=_schema_url(request), title=app.title)

    @app.get("/redoc", dependencies=guarded, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=_schema_url(request), title=app.title)

    # -- queue -----------------------------------------------------------------------------------
    @app.get("/api/health", dependencies=guarded)
    def health() -> dict:
        return {"status": "ok", "version": ovi.__version__, "paused": queue.paused,
                "jobs": queue.counts(), "runner": bool(service.runner and service.runner.running),
                "limits": dataclasses.asdict(service.limits)}

    @app.post("/api/generate", status_code=202, dependencies=guarded)
    def generate(payload: Any = Body(...)) -> dict:
        return service.submit(payload)  # JSON only: BrowserGuard refused other content types

    @app.post("/api/uploads", status_code=201, dependencies=guarded)
    async def upload(request: Request) -> dict:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            file = form.get("file") or form.get("image")
            if file is None or isinstance(file, str):
                raise Refused(422, "send the image as the multipart field 'file'", loc=["file"])
            data = await file.read()
        else:
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError):
                body = None
            if not (isinstance(body, dict) and isinstance(body.get("image"), str)):
                raise Refused(422, "send multipart/form-data with a 'file' field, or JSON "
                                   "{\"image\": \"data:image/png;base64,...\"}", loc=["image"])
            return await asyncio.to_thread(service.upload_data_url, body["image"])
        return await asyncio.to_thread(service.upload, data)

    @app.get("/api/configs", dependencies=guarded)
    def configs() -> dict:
        return {"configs": service.folders.config_names()}

    @app.get("/api/loras", dependencies=guarded)
    def loras() -> dict:
        return {"loras": service.folders.lora_names()}

    @app.get("/api/jobs", dependencies=guarded)
    def list_jobs(state: Literal[STATES] | None = None,  # type: ignore[valid-type]
                  limit: int = Query(default=100, ge=1, le=10000),
                  offset: int = Query(default=0, ge=0, le=ID_MAX)) -> dict:
        jobs = queue.list(state, limit=limit, offset=offset)
        return {"jobs": [service.job_json(j) for j in jobs], "counts": queue.counts(),
                "paused": queue.paused}

    @app.get("/api/jobs/{ref}", dependencies=guarded)
    def get_job(ref: str) -> dict:
        return service.job_json(service.find(ref))

    @app.delete("/api/jobs/{ref}", dependencies=guarded)
    def cancel_job(ref: str) -> dict:
        return service.cancel(ref)

    @app.post("/api/jobs/{ref}/retry", dependencies=guarded)
    def retry_job(ref: str) -> dict:
        return service.retry(ref)

    @app.post("/api/jobs/{ref}/move", dependencies=guarded)
    def move_job(ref: str, where: dict = Body(...)) -> dict:
        given = {k: v for k, v in where.items() if v is not None}
        if len(given) != 1 or not set(given) <= {"before", "after", "priority"}:
            raise Refused(422, "give exactly one of before (a job id), after (a job id) or "
                               "priority (an integer)", loc=sorted(given)[:1])
        return service.move(ref, **given)

    @app.post("/api/jobs/{ref}/extend", status_code=202, dependencies=guarded)
    def extend_job(ref: str, payload: Any = Body(None)) -> dict:
        return service.extend(ref, payload)

    @app.post("/api/pause", dependencies=guarded)
    def pause() -> dict:
        return service.set_paused(True)

    @app.post("/api/resume", dependencies=guarded)
    def resume() -> dict:
        return service.set_paused(False)

    @app.get("/api/videos/{filename:path}", dependencies=guarded, responses={200: CLIP_TYPES})
    def video(filename: str):
        return FileResponse(service.video_path(filename))

    # -- events ----------------------------------------------------------------------------------
    def _job_filter(job: str | None) -> tuple[int | None, dict | None]:
        if job is None:
            return None, None
        found = service.find(job, field="job", part="query")
        return found["id"], found

    async def sse(request: Request, job: str | None, since: int | None, timeout: float | None):
        job_id, found = _job_filter(job)
        last_event_id = request.headers.get("last-event-id")
        if since is None and last_event_id:  # an EventSource reconnecting
            try:
                since = check_int("Last-Event-ID", last_event_id, lo=0, hi=ID_MAX)
            except ValueProblem as exc:
                raise Refused(400, f"header {exc}; send the id of the last event received") from None
        cursor = since if since is not None else await asyncio.to_thread(queue.last_event_id)

        async def stream():
            if found is not None:
                snapshot = {**service.job_json(found), "kind": "snapshot", "seq": cursor}
                yield f"event: snapshot\ndata: {json.dumps(snapshot)}\n\n"
            last_write = asyncio.get_running_loop().time()
            async for event in service.follow(cursor, job_id=job_id, timeout=timeout):
                now = asyncio.get_running_loop().time()
                if event is not None:
                    last_write = now
                    yield f"id: {event['seq']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"
                elif await request.is_disconnected():
                    return
                elif now - last_write > KEEP_ALIVE_SECONDS:
                    last_write = now
                    yield ": keep-alive\n\n"  # lets proxies and clients see the stream is alive

        return EventStreamResponse(stream(), headers=SSE_HEADERS)

    @app.get("/api/events", dependencies=guarded, response_class=EventStreamResponse,
             responses={200: SSE_EVENTS})
    async def events(request: Request, job: str | None = None,
                     since: int | None = Query(None, ge=0, le=ID_MAX), timeout: float | None = Query(None, gt=0)):
        return await sse(request, job, since, timeout)

    @app.get("/api/jobs/{ref}/events", dependencies=guarded, response_class=EventStreamResponse,
             responses={200: SSE_EVENTS})
    async def job_events(request: Request, ref: str, since: int | None = Query(None, ge=0, le=ID_MAX),
                         timeout: float | None = Query(None, gt=0)):
        return await sse(request, ref, since, timeout)

    @app.websocket("/api/ws")
    async def ws_events(websocket: WebSocket, job: str | None = None,
                        since: int | None = Query(None, ge=0, le=ID_MAX)):
        if not service.authorized(authorization=websocket.headers.get("authorization"),
                                  token=websocket.query_params.get("access_token")):
            await websocket.close(code=WS_POLICY_VIOLATION, reason="missing or wrong bearer token")
            return
        try:
            job_id, found = await asyncio.to_thread(_job_filter, job)
        except Refused as exc:
            await websocket.close(code=WS_POLICY_VIOLATION, reason=exc.message)
            return
        await websocket.accept()
        cursor = since if since is not None else await asyncio.to_thread(queue.last_event_id)

        async def send_events():
            if found is not None:
                await websocket.send_json({**service.job_json(found), "kind": "snapshot",
                                           "seq": cursor})
            async for event in service.follow(cursor, job_id=job_id):
                if event is not None:
                    await websocket.send_json(event)

        async def until_client_leaves(scope: anyio.CancelScope):
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # the stream is one-way; anything a client sends is ignored
            scope.cancel()

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(until_client_leaves, tasks.cancel_scope)
                await send_events()
                tasks.cancel_scope.cancel()
            await websocket.close()
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away while we were sending

    app.mount(SOCKETIO_PATH, socket_io.asgi_app())
    return app
