"""Socket.IO beside the REST API (python-socketio's ASGI app, mounted at /socket.io/ on the same
server), speaking the seed fork's documented events:

    client -> server   submit_job (a request body, as POST /api/generate takes)
                       cancel_job ({"id": ...})
    server -> client   job_update {id, status, progress, videoUrl, error, + ours: job_id, kind,
                       seq, time, step, total, ...} on every state change and progress step
                       queue_update {status: paused | resumed, ...}

submit_job and cancel_job answer through the Socket.IO acknowledgement: `{"ok": true, "job": {...}}`
or `{"ok": false, "status": 422, "error": "...", "detail": ...}` (the REST status and detail). The
token rule is the REST one: a token in the connection's `auth` ({"token": ...}), an `Authorization:
Bearer` header or `?access_token=`; without it the connection is refused.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs

import socketio

from ovi.server.intake import Refused
from ovi.server.service import ApiService

SOCKETIO_PATH = "/socket.io"
log = logging.getLogger("ovi.server.sio")


def _refusal(exc: Refused) -> dict:
    return {"ok": False, "status": exc.status, "error": exc.message, "detail": exc.detail}


class SocketIOBridge:
    """The Socket.IO server of one ApiService; `pump()` forwards queue events while the app runs."""

    def __init__(self, service: ApiService, *, allow_origins: list[str] | None = None):
        self.service = service
        # Same-origin by default (python-socketio checks Origin against Host); non-browser
        # clients send no Origin. A base64 image may ride in submit_job: allow the body limit.
        self.sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=allow_origins or None,
                                        max_http_buffer_size=service.limits.max_body_bytes)
        self.sio.on("connect", self.connect)
        self.sio.on("submit_job", self.submit_job)
        self.sio.on("cancel_job", self.cancel_job)

    def asgi_app(self) -> socketio.ASGIApp:
        # Routing is the FastAPI mount's: everything under /socket.io/ is Engine.IO traffic.
        return socketio.ASGIApp(self.sio, socketio_path=None)

    async def connect(self, sid, environ, auth=None):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        token = None
        if isinstance(auth, dict):  # any JSON a client sends; authorized() refuses non-text
            token = auth.get("token") or auth.get("access_token")
        token = token or (query.get("access_token") or [None])[0]
        if not self.service.authorized(authorization=environ.get("HTTP_AUTHORIZATION"), token=token):
            raise socketio.exceptions.ConnectionRefusedError("missing or wrong bearer token")

    async def submit_job(self, sid, data=None):
        try:
            return {"ok": True, "job": await asyncio.to_thread(self.service.submit, data)}
        except Refused as exc:
            return _refusal(exc)

    async def cancel_job(self, sid, data=None):
        ref = data.get("id") if isinstance(data, dict) else data
        try:
            job = await asyncio.to_thread(self.service.cancel, ref, field="id", part="body")
            return {"ok": True, "job": job}
        except Refused as exc:
            return _refusal(exc)

    async def pump(self) -> None:
        """Emit every queue event (from any process writing the database) to every client."""
        try:
            async for event in self.service.follow():
                if event is None:
                    continue
                name = "job_update" if event["job_id"] is not None else "queue_update"
                await self.sio.emit(name, event)
        except Exception:  # the API keeps serving; say why the push stopped
            log.exception("Socket.IO event push stopped")
        finally:
            # Shutting down: close every client (long-polls too), or the server waits on them.
            await self.sio.eio.disconnect()
            await self.sio.shutdown()
