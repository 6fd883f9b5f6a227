"""What the server accepts from a client: one request body, uploaded images, body sizes.

Both transports (REST and Socket.IO) hand a client's JSON to `parse_submission`, which returns a
checked `Submission` or raises `Refused` (an HTTP status, where in the body, and why). The rules:

- The body is GenerateRequest's fields (upstream's and the seed fork's names too), flat or in the
  seed's shape `{"id", "mode", "prompt", "options": {...}}`; `id` is a client-chosen job id and
  `priority` the queue priority. Checked by GenerateRequest; a bad field is a 422 naming it.
- Per-clip fields only: engine settings (`engine`/`set`, config keys such as `ckpt_dir`) and the
  output folder (`out`/`output_dir`) are the server's.
- No server paths: `config` and LoRAs are names from the server's folders (ovi.queue.folders);
  `image` is the name of an upload (`POST /api/uploads`) or a `data:` URL carrying the image.
- Server limits (`ServerLimits`) on steps, frame area, frames per clip (all the windows a `duration`
  makes), prompt length, clips per request and upload size: a 422 (413 for size) naming the limit.
- Extending a clip names a finished job (`POST /api/jobs/{id}/extend`), never a file: its body takes
  only `prompt`, `duration`, `id` and `priority` (`parse_extension`).

Nothing is written before every check has passed; an image that came with the request is stored
in the uploads folder only then.

The request-size guard (`BodySizeLimit`) is written here because Starlette and uvicorn have none: it
refuses a body over the limit (413) from its Content-Length, or while it streams in without one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ovi.config import ENGINE_KEYS, load_config
from ovi.errors import InputError
from ovi.inputs import ValueProblem, check_int, sendable, without_addresses
from ovi.pipeline.engine import resolve_device
from ovi.pipeline.memory_profiles import check_memory_settings
from ovi.queue.folders import ServerFolders
from ovi.pipeline.windows import spec_layout
from ovi.queue.jobqueue import check_client_id
from ovi.request import ALIASES, GenerateRequest, RequestError
from ovi.server.limits import ServerLimits
from ovi.specs import MODEL_SPECS

RESERVED_KEYS = ("id", "priority", "options")
# The seed fork's web UI options that are not GenerateRequest names or aliases.
SEED_RESOLUTIONS = {"16:9": [512, 992], "9:16": [992, 512]}  # upstream's default frame size, both ways
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,(?P<data>.*)", re.DOTALL)
_SIDE = re.compile(r"[0-9]{1,6}")


class Refused(Exception):
    """The server will not take this: `status` (404, 409, 413, 422, ...), `loc` (where in the
    request `part`, body/path/query, for 422) and a message saying what to fix."""

    def __init__(self, status: int, message: str, *, loc: list | None = None,
                 kind: str = "value_error", part: str = "body"):
        message, loc = sendable(message), sendable(loc)  # they may echo a client's bad text
        super().__init__(message)
        self.status, self.message, self.loc, self.kind, self.part = status, message, loc, kind, part

    @property
    def detail(self):
        """FastAPI's shape: a list of {loc, msg, type} for a 422, else the message."""
        if self.status == 422:
            return [{"loc": [self.part, *(self.loc or [])], "msg": self.message, "type": self.kind}]
        return self.message


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    name: str        # content hash + the format's suffix: the same image always gets the same name
    width: int
    height: int
    format: str

    def describe(self) -> dict:
        return {"name": self.name, "width": self.width, "height": self.height,
                "format": self.format, "bytes": len(self.data)}

    def store(self, folder: Path) -> Path:
        """Write into `folder` atomically (temp file + rename); an existing copy is kept."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.name
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self.data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return path


@dataclass(frozen=True)
class Submission:
    """A checked request: what to queue, under which client id and priority."""

    request: GenerateRequest
    client_id: str | None
    priority: int
    default_seed: int                   # the config's seed: n clips use seed, seed+1, ...
    image: CheckedImage | None = None   # an image that came inside the body, stored at submit


# -- images ------------------------------------------------------------------------------------------
def check_image(data: bytes, limits: ServerLimits, *, field: str = "image") -> CheckedImage:
    """Bytes that PIL reads as a PNG, JPEG or WebP image within the size limit, or Refused."""
    if len(data) > limits.max_upload_bytes:
        raise Refused(413, f"{field}: {len(data)} bytes is over this server's limit of "
                           f"{limits.max_upload_bytes} bytes (max_upload_bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = im.format, im.size
                im.verify()
    except Exception as exc:  # PIL raises many types for bad data
        reason = without_addresses(str(exc)).strip()  # PIL names the BytesIO by its address
        raise Refused(422, f"not an image PIL can read ({type(exc).__name__}: {reason}); upload a "
                           f"PNG, JPEG or WebP file", loc=[field]) from None
    if fmt not in IMAGE_FORMATS:
        raise Refused(422, f"a {fmt} image; upload PNG, JPEG or WebP", loc=[field])
    name = hashlib.sha256(data).hexdigest()[:32] + IMAGE_FORMATS[fmt]
    return CheckedImage(data=data, name=name, width=width, height=height, format=fmt)


def decode_data_url(text: str, limits: ServerLimits, *, loc: list) -> bytes:
    match = _DATA_URL.fullmatch(text.strip())
    if match is None:
        raise Refused(422, "expected a data URL: data:image/<type>;base64,<data>", loc=loc)
    encoded = match["data"]
    if len(encoded) * 3 // 4 > limits.max_upload_bytes + 3:
        raise Refused(413, f"{loc[-1]}: the image is over this server's limit of "
                           f"{limits.max_upload_bytes} bytes (max_upload_bytes)")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(422, "the data URL is not valid base64", loc=loc) from None


# -- request bodies ----------------------------------------------------------------------------------
def _merge_shapes(payload) -> tuple[dict, dict, object, object]:
    """Flat body or the seed's {id, mode, prompt, options} -> (fields, loc of each field, id, priority)."""
    if not isinstance(payload, dict):
        raise Refused(422, f"the body must be a JSON object of request fields, got "
                           f"{type(payload).__name__}", loc=[])
    body = dict(payload)
    client_id, priority, options = (body.pop(k, None) for k in RESERVED_KEYS)
    locs = {key: [key] for key in body}
    if options is not None:
        if not isinstance(options, dict):
            raise Refused(422, "options must be an object of option: value", loc=["options"])
        for key, value in options.items():
            if key in RESERVED_KEYS or key in body:
                raise Refused(422, f"{key} is given twice (at the top level and in options)",
                              loc=["options", key])
            body[key], locs[key] = value, ["options", key]
    return body, locs, client_id, priority


def _seed_option(key: str, value, loc: list):
    """The seed UI's `resolution` ("HxW", [H, W] or "16:9"/"9:16") -> height_width."""
    if isinstance(value, str):
        if value in SEED_RESOLUTIONS:
            return list(SEED_RESOLUTIONS[value])
        parts = value.lower().replace(" ", "").split("x")
        if len(parts) == 2 and all(_SIDE.fullmatch(p) for p in parts):  # ASCII digits only
            return [int(p) for p in parts]
        raise Refused(422, f"{value[:40]!a}: give HxW (e.g. \"704x1280\"), [H, W], or one of "
                           f"{', '.join(SEED_RESOLUTIONS)}", loc=loc)
    return value


def _refuse_server_settings(key: str, loc: list, folders: ServerFolders) -> None:
    name = ALIASES.get(key, key)
    if key in ("set", "engine") or name == "engine":
        raise Refused(422, "engine settings are the server's; choose one of its configs by name with "
                           f"'config' ({', '.join(folders.config_names())})", loc=loc)
    if name == "out":
        raise Refused(422, "clips go to the server's output folder; a request cannot choose a folder",
                      loc=loc)
    if name == "extend":  # a server path: never taken from a client (as images are uploaded, not named)
        raise Refused(422, "extend names a file on the server; extend a done job's clip by its id: "
                           "POST /api/jobs/{id}/extend", loc=loc)
    if key in ENGINE_KEYS:
        raise Refused(422, f"{key} is an engine setting, decided by the server's config; choose a "
                           f"config by name with 'config' ({', '.join(folders.config_names())})", loc=loc)


def _limit(value, limit: int, limit_name: str, loc: list, subject: str) -> None:
    if value > limit:
        raise Refused(422, f"{subject} is over this server's limit of {limit} ({limit_name})",
                      loc=loc, kind="limit_exceeded")


def check_frames(spec, duration: float | None, limits: ServerLimits, *, config_loc: list, duration_loc: list,
                 config_name: str | None, prior_video_frames: int = 0) -> int:
    """The frames the clip will have (every continuation window a `duration` makes, or the model's own
    clip; with `prior_video_frames`, the extended clip's whole length) against `max_frames`; returns them."""
    windows = spec_layout(spec, duration, prior_video_frames=prior_video_frames)
    if windows is None:
        _limit(spec.num_frames, limits.max_frames, "max_frames", config_loc,
               f"{spec.num_frames} frames per clip (config {config_name or 'default'})")
        return spec.num_frames
    asked = "one window" if duration is None else f"duration {duration:g} s"
    whole = " (the extended clip as a whole)" if prior_video_frames else ""
    _limit(windows.num_frames, limits.max_frames, "max_frames", duration_loc,
           f"{asked}: {windows.num_frames} frames in {windows.windows} windows of {spec.num_frames}{whole}")
    return windows.num_frames


def parse_submission(payload, folders: ServerFolders, limits: ServerLimits) -> Submission:
    """Check one request body against every rule in the module docstring; writes nothing."""
    body, locs, client_id, priority = _merge_shapes(payload)

    def loc(key: str) -> list:
        return locs.get(key, [key])

    for key in list(body):
        _refuse_server_settings(key, loc(key), folders)
        if key == "resolution":
            body["height_width"] = _seed_option(key, body.pop(key), loc(key))
            locs["height_width"] = loc(key)
    try:
        request = GenerateRequest.from_dict(body, aliases=True)
    except RequestError as exc:
        raise Refused(422, exc.reason, loc=loc(exc.field) if exc.field else []) from None
    if priority is not None:
        try:
            priority = check_int("priority", priority)
        except ValueProblem as exc:
            raise Refused(422, exc.problem, loc=["priority"]) from None
    if client_id is not None:
        try:
            client_id = check_client_id(client_id)
        except RequestError as exc:
            raise Refused(422, exc.reason, loc=["id"]) from None
    given = {ALIASES.get(k, k): k for k in body}  # field -> the key the client used

    def field_loc(name: str) -> list:
        return loc(given.get(name, name))

    # -- names, never paths --------------------------------------------------------------------
    if request.config is not None and not folders.has_config(request.config):
        raise Refused(422, f"{request.config!r} is not one of this server's configs; give a name "
                           f"({', '.join(folders.config_names())}), not a path", loc=field_loc("config"))
    for lora in request.loras:
        if folders.lora_path(lora["path"]) is None:
            names = ", ".join(folders.lora_names()) or "none yet"
            raise Refused(422, f"{lora['path']!r} is not one of this server's LoRAs ({names}); give "
                               f"a name, not a path", loc=field_loc("loras"))
    image = None
    if isinstance(request.image, str):
        if request.image.startswith("data:"):
            image = check_image(decode_data_url(request.image, limits, loc=field_loc("image")), limits,
                                field=given.get("image", "image"))
            request = request.replace(image=image.name)
        elif folders.upload_path(request.image) is None:
            raise Refused(422, "give the name of an uploaded image (POST /api/uploads) or a data: URL "
                               "with the image; server paths are not accepted", loc=field_loc("image"))
    if request.n > 1 and client_id is not None:
        raise Refused(422, "a job id names one job: send one request per clip", loc=field_loc("n"))
    _limit(request.n, limits.max_clips, "max_clips", field_loc("n"), f"n {request.n}")

    # -- limits, on the values the job will run with (the config fills what the request leaves) --
    try:
        cfg = load_config(folders.resolve_config(request.config))
        check_memory_settings(cfg, resolve_device(cfg.device).type)  # e.g. quantize: fp8 on a server without fp8
    except InputError as exc:
        raise Refused(422, str(exc), loc=field_loc("config")) from None
    run = request.fill(cfg.request_defaults(request.prompt))
    note = {name: "" if getattr(request, name) is not None else " (the config's default)"
            for name in ("steps", "height_width")}
    _limit(run.steps, limits.max_steps, "max_steps", field_loc("steps"),
           f"steps {run.steps}{note['steps']}")
    height, width = run.height_width
    _limit(height * width, limits.max_pixels, "max_pixels", field_loc("height_width"),
           f"frame area {height}x{width} = {height * width} pixels{note['height_width']}")
    check_frames(MODEL_SPECS[cfg.model_name], request.duration, limits, config_loc=field_loc("config"),
                 duration_loc=field_loc("duration"), config_name=request.config)
    for name in ("prompt", "negative_prompt", "audio_negative_prompt"):
        text = getattr(request, name)
        if text is not None:
            _limit(len(text), limits.max_prompt_chars, "max_prompt_chars", field_loc(name),
                   f"{name} of {len(text)} characters")
    return Submission(request=request, client_id=client_id, priority=priority or 0,
                      default_seed=cfg.seed, image=image)


# -- extending a finished job's clip ---------------------------------------------------------------
EXTENSION_KEYS = ("prompt", "duration")  # what an extension may change; the rest is the clip's own


@dataclass(frozen=True)
class Extension:
    """A checked body of `POST /api/jobs/{id}/extend` (the job and its clip are checked by the service)."""

    prompt: str | None       # None: the clip's own prompt
    duration: float | None   # seconds added; None: one window
    client_id: str | None
    priority: int


def parse_extension(payload, limits: ServerLimits) -> Extension:
    """`{"prompt"?, "duration"?, "id"?, "priority"?}` (an empty body: one more window with the clip's prompt);
    any other key is a 422 naming it. Writes nothing."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise Refused(422, f"the body must be a JSON object (prompt, duration, id, priority), got "
                           f"{type(payload).__name__}", loc=[])
    body = dict(payload)
    client_id, priority = body.pop("id", None), body.pop("priority", None)
    for key in body:
        if key not in EXTENSION_KEYS:
            raise Refused(422, f"an extension takes only {', '.join(EXTENSION_KEYS)} (plus id and priority); "
                               f"everything else is the extended clip's own setting", loc=[key])
    try:
        # Checked by GenerateRequest's own rules (a stand-in prompt when the clip's own is kept).
        checked = GenerateRequest.from_dict({"prompt": body.get("prompt", "-"), "duration": body.get("duration")})
        priority = None if priority is None else check_int("priority", priority)
        client_id = None if client_id is None else check_client_id(client_id)
    except RequestError as exc:
        raise Refused(422, exc.reason, loc=[exc.field or ""]) from None
    except ValueProblem as exc:
        raise Refused(422, exc.problem, loc=["priority"]) from None
    prompt = body.get("prompt")
    if prompt is not None:
        _limit(len(prompt), limits.max_prompt_chars, "max_prompt_chars", ["prompt"],
               f"prompt of {len(prompt)} characters")
    return Extension(prompt=prompt, duration=checked.duration, client_id=client_id, priority=priority or 0)


# -- request size ------------------------------------------------------------------------------------
class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 (by its Content-Length up front,
    or as soon as a streamed body passes the limit)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _too_large(self) -> str:
        return f"request body over this server's limit of {self.max_bytes} bytes (max_upload_bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"detail": self._too_large()}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self._too_large())
            return message

        await self.app(scope, limited, send)
