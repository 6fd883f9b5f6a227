"""REST API over the same queue database (`ovi queue serve`).

    GET    /api/health                 liveness + queue counts
    POST   /api/generate               queue a request -> 202 + the job
    GET    /api/jobs[?state=&limit=&offset=]
    GET    /api/jobs/{id}
    DELETE /api/jobs/{id}              cancel (a running job stops between steps)
    GET    /api/videos/{filename}      a clip file from the output folder
    GET    /api/events[?job=&since=&timeout=]   live events (Server-Sent Events)
    GET    /api/jobs/{id}/events       one job's events; the stream ends when the job settles

Job and event JSON carry `id`, `status`, `progress`, `videoUrl`, `error` (plus the full job).
Binds 127.0.0.1 by default; with a token every route needs `Authorization: Bearer <token>`
(SSE clients that cannot set headers may pass `?access_token=`). Bad input is a 4xx whose
detail names the field.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

import ovi
from ovi.errors import InputError
from ovi.queue.jobqueue import FINISHED, STATES, JobQueue, default_out_dir
from ovi.queue.requests import RequestError, check_engine_settings, validate_request

# Only clip files are served; the folder also holds the queue database, which must not leak.
SERVED_SUFFIXES = {".mp4", ".wav", ".json", ".png", ".jpg", ".jpeg", ".webm"}


class GenerateBody(BaseModel):
    """POST /api/generate. Unknown fields are rejected (422 names them); `out` is not accepted:
    clips go to the server's output folder, so they can be served back."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    mode: Literal["t2v", "i2v", "t2i2v"] | None = None
    image: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    audio_negative_prompt: str | None = None
    steps: int | None = Field(default=None, ge=1)
    solver: str | None = None
    video_guidance_scale: float | None = None
    audio_guidance_scale: float | None = None
    slg_layer: int | None = None
    height_width: tuple[int, int] | None = None
    config: str | None = None
    set: dict[str, Any] | None = None
    loras: list[str | dict[str, Any]] | None = None
    priority: int = 0


def _unprocessable(field: str | None, message: str) -> JSONResponse:
    loc = ["body", field] if field else ["body"]
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": loc, "msg": message, "type": "value_error"}]})


def create_app(db: str | os.PathLike | JobQueue = "outputs/queue.db", *,
               out_dir: str | os.PathLike | None = None, token: str | None = None,
               run: bool = False, engine_factory=None) -> FastAPI:
    """The API app over queue `db`. `run=True` also starts a Runner thread in this process."""
    owns_queue = not isinstance(db, JobQueue)
    queue = JobQueue(db) if owns_queue else db
    out_root = (Path(out_dir) if out_dir is not None else default_out_dir(queue)).resolve()
    runner_box: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        if run:
            from ovi.runtime.runner import Runner

            runner_box["runner"] = Runner(queue, engine_factory=engine_factory,
                                          out_dir=out_root).start()
        yield
        if "runner" in runner_box:
            runner_box.pop("runner").close()
        if owns_queue:
            queue.close()

    app = FastAPI(title="Ovi Workbench queue", version=ovi.__version__, lifespan=lifespan)
    app.state.queue = queue
    app.state.out_dir = out_root

    def authorize(request: Request) -> None:
        if not token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer":
            value = request.query_params.get("access_token", "")
        if not (value and hmac.compare_digest(value.encode(), token.encode())):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    def video_url(job: dict) -> str | None:
        for kind in ("mp4", "webm", "wav"):
            path = (job.get("result") or {}).get(kind)
            if path:
                p = Path(path).resolve()
                if p.parent == out_root and p.suffix.lower() in SERVED_SUFFIXES:
                    return f"/api/videos/{p.name}"
        return None

    def job_json(job: dict) -> dict:
        return {**job, "status": job["state"], "videoUrl": video_url(job)}

    def event_json(event: dict) -> dict:
        job = {"result": event.get("result")}
        return {"id": event["id"], "status": event["status"], "progress": event["progress"],
                "videoUrl": video_url(job), "error": event["error"], "kind": event["kind"],
                "seq": event["seq"], "time": event["time"],
                **{k: event[k] for k in ("step", "total", "attempt") if k in event}}

    def must_get(job_id: int) -> dict:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return job

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return _unprocessable(exc.field, exc.reason)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    guarded = [Depends(authorize)]

    @app.get("/api/health", dependencies=guarded)
    def health() -> dict:
        return {"status": "ok", "version": ovi.__version__, "paused": queue.paused,
                "jobs": queue.counts(),
                "runner": bool(runner_box.get("runner") and runner_box["runner"].running)}

    @app.post("/api/generate", status_code=202, dependencies=guarded)
    def generate(body: GenerateBody) -> dict:
        request = body.model_dump(exclude_none=True, exclude={"priority"})
        if "height_width" in request:
            request["height_width"] = list(request["height_width"])
        if body.image is not None and not Path(body.image).is_file():
            return _unprocessable("image", f"no such file on the server: {body.image}")
        validate_request(request)
        check_engine_settings(request)  # config/set/loras typos: 422 now, not a failed job later
        job_id = queue.submit(request, priority=body.priority)
        return job_json(queue.get(job_id))

    @app.get("/api/jobs", dependencies=guarded)
    def list_jobs(state: Literal[STATES] | None = None,  # type: ignore[valid-type]
                  limit: int = Query(default=100, ge=1, le=10000),
                  offset: int = Query(default=0, ge=0)) -> dict:
        jobs = queue.list(state, limit=limit, offset=offset)
        return {"jobs": [job_json(j) for j in jobs], "counts": queue.counts(),
                "paused": queue.paused}

    @app.get("/api/jobs/{job_id}", dependencies=guarded)
    def get_job(job_id: int) -> dict:
        return job_json(must_get(job_id))

    @app.delete("/api/jobs/{job_id}", dependencies=guarded)
    def cancel_job(job_id: int) -> dict:
        must_get(job_id)
        try:
            return job_json(queue.cancel(job_id))
        except InputError as exc:  # already finished
            raise HTTPException(status_code=409, detail=str(exc)) from None

    @app.get("/api/videos/{filename:path}", dependencies=guarded)
    def video(filename: str):
        # One plain file name inside the output folder; anything that could walk out of it
        # (separators, '..', hidden names, NUL) is refused before touching the filesystem.
        if (not filename or "/" in filename or "\\" in filename or "\x00" in filename
                or filename.startswith(".")):
            raise HTTPException(status_code=400, detail="give a plain file name from a job's "
                                                        "videoUrl, without folders")
        path = (out_root / filename).resolve()
        if path.parent != out_root or path.suffix.lower() not in SERVED_SUFFIXES:
            raise HTTPException(status_code=404, detail=f"no clip named {filename}")
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"no clip named {filename}")
        return FileResponse(path)

    async def stream(request: Request, job_id: int | None, since: int | None,
                     timeout: float | None):
        cursor = since if since is not None else queue.last_event_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        if job_id is not None:
            job = must_get(job_id)
            snapshot = {**job_json(job), "kind": "snapshot", "seq": cursor}
            yield f"event: snapshot\ndata: {json.dumps(snapshot)}\n\n"
        wait, last_write = 0.05, time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            events = await asyncio.to_thread(queue.events, cursor, job_id=job_id)
            for event in events:
                cursor = event["seq"]
                yield f"id: {cursor}\nevent: {event['kind']}\ndata: {json.dumps(event_json(event))}\n\n"
            if events:
                wait, last_write = 0.05, time.monotonic()
                continue
            if job_id is not None:
                state = (queue.get(job_id) or {}).get("state")
                if state in FINISHED or state == "lost":
                    return
            if time.monotonic() - last_write > 15:
                yield ": keep-alive\n\n"  # lets proxies and clients see the stream is alive
                last_write = time.monotonic()
            await asyncio.sleep(wait)
            wait = min(wait * 2, 0.5)

    def _since(request: Request, since: int | None) -> int | None:
        if since is None and request.headers.get("last-event-id", "").isdigit():
            return int(request.headers["last-event-id"])  # an EventSource reconnecting
        return since

    sse_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    @app.get("/api/events", dependencies=guarded)
    def events(request: Request, job: int | None = None, since: int | None = Query(None, ge=0),
               timeout: float | None = Query(None, gt=0)):
        if job is not None:
            must_get(job)
        return StreamingResponse(stream(request, job, _since(request, since), timeout),
                                 media_type="text/event-stream", headers=sse_headers)

    @app.get("/api/jobs/{job_id}/events", dependencies=guarded)
    def job_events(request: Request, job_id: int, since: int | None = Query(None, ge=0),
                   timeout: float | None = Query(None, gt=0)):
        must_get(job_id)
        return StreamingResponse(stream(request, job_id, _since(request, since), timeout),
                                 media_type="text/event-stream", headers=sse_headers)

    return app
