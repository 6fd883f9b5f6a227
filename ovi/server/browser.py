"""Browser safety, the rules Jupyter's server applies, as one ASGI middleware (`BrowserGuard`).

A web page the user happens to open can send requests to 127.0.0.1 with the user's network
position. A token stops most of that (`ovi queue serve` always has one), and these rules stop the
rest, token or not:

- Host: a page on attacker.example whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends
  `Host: attacker.example`. Only the bound address, `localhost` when bound to loopback or every
  interface, any IP literal when bound to every interface (rebinding needs a name), and names given with
  `--allow-host` are accepted; anything else gets 400.
- Origin: a browser sends Origin on every cross-origin request that could change state. A request
  that changes state (not GET/HEAD/OPTIONS), a WebSocket, or any Socket.IO traffic with an Origin
  must be same-origin (Origin's host:port is the Host header) or one of `--allow-origin`; else 403.
  Clients that are not browsers send no Origin and are not affected.
- Bodies are JSON only (`Content-Type: application/json`; multipart only for uploads): a form or
  `text/plain` POST, which a page can send without a CORS preflight, gets 415. Engine.IO's own
  long-polling bodies under /socket.io/ are exempt (the Origin rule covers them).

Starlette's TrustedHostMiddleware checks names only (no rule for "any IP literal") and knows
nothing of Origin, hence this module.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
JSON_TYPES = ("application/json",)
UPLOAD_TYPES = ("application/json", "multipart/form-data")


def _split_host(value: str) -> tuple[str, str]:
    """'Host' header or Origin netloc -> (host in lower case without [], port text)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.lstrip(":")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def allowed_hosts_for(bind: str, extra: list[str] | None = None) -> tuple[frozenset, bool]:
    """(names accepted in Host, whether any IP literal is) for a server bound to `bind`."""
    bind = bind.strip("[]").lower()
    names = {bind, *(name.lower() for name in extra or ())}
    wildcard = bind in WILDCARD_BINDS
    if wildcard or bind in LOOPBACK_NAMES or (_is_ip(bind) and ipaddress.ip_address(bind).is_loopback):
        names |= LOOPBACK_NAMES  # `localhost` always names this machine
    return frozenset(names), wildcard


class BrowserGuard:
    """ASGI middleware applying the module's rules. `allowed_hosts=None` skips the Host rule (an
    in-process app, e.g. under TestClient); `any_ip` accepts every IP literal as Host."""

    def __init__(self, app, *, allowed_hosts: frozenset | None = None, any_ip: bool = False,
                 allow_origins: list[str] | None = None, socketio_path: str = "/socket.io"):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.any_ip = any_ip
        self.allow_origins = {o.rstrip("/").lower() for o in allow_origins or ()}
        self.socketio_path = socketio_path

    def _host_problem(self, host: str) -> str | None:
        if self.allowed_hosts is None:
            return None
        name, _ = _split_host(host)
        if name in self.allowed_hosts or (self.any_ip and _is_ip(name)):
            return None
        return (f"Host {ascii(host)[1:-1][:100]} is not this server's address; use "
                f"{sorted(self.allowed_hosts)[0]} or start the server with --allow-host NAME")

    def _origin_problem(self, origin: str, host: str) -> str | None:
        if origin.rstrip("/").lower() in self.allow_origins:
            return None
        parts = urlsplit(origin.strip())
        if parts.scheme in ("http", "https") and parts.netloc and host:
            if _split_host(parts.netloc) == _split_host(host) or parts.netloc.lower() == host.lower():
                return None
        return (f"Origin {ascii(origin)[1:-1][:100]} may not use this server from a browser; start "
                f"the server with --allow-origin ORIGIN to allow a web page")

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {}
        for key, value in scope.get("headers") or []:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host", "")
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        socketio = path == self.socketio_path or path.startswith(self.socketio_path + "/")
        status, problem = 400, self._host_problem(host)
        if problem is None and "origin" in headers and (
                scope["type"] == "websocket" or socketio or method not in SAFE_METHODS):
            status, problem = 403, self._origin_problem(headers["origin"], host)
        if problem is None and scope["type"] == "http" and not socketio and _has_body(headers):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            accepted = UPLOAD_TYPES if path.rstrip("/").endswith("/api/uploads") else JSON_TYPES
            if kind not in accepted:
                status = 415
                problem = (f"a body of type {ascii(kind or 'none')[1:-1][:60]}: send "
                           f"{' or '.join(accepted)} (Content-Type header)")
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            # Refuse the handshake: an HTTP 403 response before accept.
            await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
            return
        await JSONResponse({"detail": problem}, status_code=status)(scope, receive, send)


def _has_body(headers: dict) -> bool:
    length = headers.get("content-length", "").strip()
    return "transfer-encoding" in headers or (length not in ("", "0"))
