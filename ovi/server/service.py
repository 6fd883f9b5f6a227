"""The server's one core, shared by its two transports (REST + WebSocket/SSE in ovi.server.rest,
Socket.IO in ovi.server.sio): submitting, job actions, the JSON a client sees, the event stream, the
token rule and the Runner a `--run` server drives.

A client knows a job by `id`: the id it chose at submit (the seed fork's API), else the queue's
integer id; `job_id` is always the integer. Job and event JSON carry the seed's fields `id`, `status`,
`progress`, `videoUrl`, `error`, plus ours.

What a client sees never shows the server's folders or memory: result paths are relative to the
output folder, known folders in messages are shown by name, `<... at 0x...>` addresses are cut.
A record already stored that cannot be sent as UTF-8 JSON (e.g. a lone surrogate written before
the intake refused them) is shown as `damaged`, so one bad row never stops a listing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from pathlib import Path
from typing import AsyncIterator

from ovi.config import load_config
from ovi.errors import InputError
from ovi.inputs import ValueProblem, check_int, check_job_ref, text_problem, without_addresses
from ovi.queue.folders import ServerFolders
from ovi.queue.jobqueue import FINISHED, DuplicateJobError, JobQueue
from ovi.pipeline.windows import clip_files, read_prior
from ovi.request import GenerateRequest, RequestError
from ovi.runtime.runner import Runner
from ovi.server.changes import STORE_WAIT_SECONDS, QueueChanges
from ovi.server.intake import Refused, check_frames, check_image, decode_data_url, parse_extension, parse_submission
from ovi.specs import MODEL_SPECS
from ovi.server.limits import ServerLimits

# Only clip files are served; the output folder also holds the queue database, which must not leak.
SERVED_SUFFIXES = {".mp4", ".wav", ".json", ".png", ".jpg", ".jpeg", ".webm"}
EVENT_EXTRAS = ("step", "total", "attempt", "priority")
MAX_FILE_NAME = 255  # the longest name a file system holds; longer is an OSError, not a 404
IDLE_SECONDS = 1.0  # an idle stream yields None this often (keep-alives, noticing a gone client)
RESCAN_SECONDS = 30.0  # an idle stream reads the log anyway this often, should a wake-up be missed
log = logging.getLogger("ovi.server")


def client_safe(value) -> bool:
    """True when `value` can be sent as UTF-8 JSON (no NaN, no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return False
    return True


class ApiService:
    """queue: the JobQueue; out_dir: where clips are (and are served from); folders: named configs,
    LoRAs, uploads; limits: per-request bounds; token: a bearer token every route needs (None: open);
    run + engine_factory: drive a Runner in this process between `start()` and `stop()`."""

    def __init__(self, queue: JobQueue, *, out_dir: Path, folders: ServerFolders,
                 limits: ServerLimits, token: str | None = None, run: bool = False,
                 engine_factory=None):
        self.queue = queue
        self.out_root = Path(out_dir).resolve()
        self.folders = folders
        self.limits = limits
        self.token = token or None
        self.run = run
        self.engine_factory = engine_factory
        self.runner: Runner | None = None
        self.stopping = threading.Event()  # set on shutdown: event streams end
        self.changes = QueueChanges(queue.store, self.stopping)  # wakes the event streams
        self.rescan_seconds = RESCAN_SECONDS

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.stopping.clear()
        if self.run:
            self.runner = Runner(self.queue, engine_factory=self.engine_factory, out_dir=self.out_root,
                                 folders=self.folders).start()

    def begin_shutdown(self) -> None:
        """First step of a shutdown, safe from a signal handler: streams end, and the running job
        stops at its next step and goes back to the queue. Waits for nothing."""
        self.stopping.set()
        self.changes.wake_all()
        if self.runner is not None:
            self.runner.stop(interrupt=True, timeout=0)

    def stop(self, timeout: float | None = None) -> None:
        """End the Runner (handing its job back) and release its engine; blocks up to `timeout`."""
        self.begin_shutdown()
        self.changes.join(STORE_WAIT_SECONDS + 1.0)  # before anyone closes the queue under it
        runner, self.runner = self.runner, None
        if runner is None:
            return
        if runner.stop(interrupt=True, timeout=timeout):
            runner.close()
        else:  # stuck outside a step (e.g. loading weights): it dies with the process
            log.warning("the runner is still busy %ss after the stop; leaving it", timeout)

    # -- the token rule --------------------------------------------------------------------------
    def authorized(self, *, authorization: str | None = None, token: str | None = None) -> bool:
        """`Authorization: Bearer <token>`, or the token itself (a query's access_token, a
        Socket.IO auth payload) for clients that cannot set headers."""
        if not self.token:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        given = value if scheme.lower() == "bearer" and value else (token or "")
        # A client may send anything (a number, a dict, a lone surrogate): it is simply not the token.
        if not isinstance(given, str) or not given or text_problem(given, multiline=False):
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    # -- what a client sees ----------------------------------------------------------------------
    def video_url(self, result: dict | None) -> str | None:
        for kind in ("mp4", "webm", "wav"):
            path = (result or {}).get(kind)
            if path:
                p = Path(path).resolve()
                if p.parent == self.out_root and p.suffix.lower() in SERVED_SUFFIXES:
                    return f"/api/videos/{p.name}"
        return None

    def client_text(self, text):
        """A message for a client: the server's folders by name, no memory addresses."""
        if not isinstance(text, str):
            return text
        for folder, shown in ((self.folders.loras, "loras"), (self.folders.configs, "configs"),
                              (self.folders.uploads, "uploads"), (self.out_root, "")):
            text = text.replace(str(folder) + "/", f"{shown}/" if shown else "")
            text = text.replace(str(folder), shown or ".")
        return without_addresses(text)

    def relative_result(self, result):
        """Result paths relative to the output folder (a path elsewhere: its file name)."""
        if not isinstance(result, dict):
            return result
        shown = {}
        for key, value in result.items():
            if isinstance(value, str) and Path(value).is_absolute():
                path = Path(value)
                value = (str(path.relative_to(self.out_root)) if path.is_relative_to(self.out_root)
                         else path.name)
            shown[key] = value
        return shown

    def job_json(self, job: dict) -> dict:
        request = job.get("request")
        if isinstance(request, dict) and request.get("extend"):  # the clip it continues, not the server's folder
            request = {**request, "extend": self.relative_result({"extend": request["extend"]})["extend"]}
        shown = {**job, "id": job.get("client_id") or job["id"], "job_id": job["id"], "request": request,
                 "status": job["state"], "videoUrl": self.video_url(job.get("result")),
                 "result": self.relative_result(job.get("result")),
                 "error": self.client_text(job.get("error"))}
        return shown if client_safe(shown) else self._damaged(job)

    def _damaged(self, job: dict) -> dict:
        log.warning("job %s: its stored record cannot be sent as JSON; shown as damaged", job.get("id"))
        client_id = job.get("client_id")
        return {"id": client_id if client_safe(client_id) and client_id else job.get("id"),
                "job_id": job.get("id"), "status": job.get("state"), "state": job.get("state"),
                "damaged": True, "request": None, "result": None, "videoUrl": None,
                "progress": job.get("progress") if client_safe(job.get("progress")) else None,
                "error": "this job's stored record holds values that cannot be sent as JSON (e.g. "
                         "text that is not valid UTF-8); cancel or leave it"}

    def event_json(self, event: dict) -> dict:
        shown = {"id": event.get("client_id") or event["id"], "job_id": event["id"],
                 "status": event["status"], "progress": event["progress"],
                 "videoUrl": self.video_url(event.get("result")),
                 "error": self.client_text(event["error"]),
                 "kind": event["kind"], "seq": event["seq"], "time": event["time"],
                 **{k: event[k] for k in EVENT_EXTRAS if k in event}}
        if client_safe(shown):
            return shown
        return {**{k: shown[k] for k in ("job_id", "kind", "seq", "time")},
                "id": event["id"], "status": event["status"], "progress": None, "videoUrl": None,
                "damaged": True, "error": "this event's stored record cannot be sent as JSON"}

    def video_path(self, filename: str) -> Path:
        """A clip file in the output folder by its plain name; anything that could walk out of it
        (separators, '..', hidden names, NUL, links out) is refused before touching the disk."""
        if (not filename or "/" in filename or "\\" in filename or filename.startswith(".")
                or len(filename) > MAX_FILE_NAME or text_problem(filename, multiline=False)):
            raise Refused(400, f"give a plain file name (at most {MAX_FILE_NAME} characters) from a "
                               f"job's videoUrl, without folders")
        try:
            path = (self.out_root / filename).resolve()
            found = (path.parent == self.out_root and path.suffix.lower() in SERVED_SUFFIXES
                     and path.is_file())
        except OSError:  # a name the file system cannot hold
            found = False
        if not found:
            raise Refused(404, f"no clip named {ascii(filename)[1:-1]}")
        return path

    # -- actions ---------------------------------------------------------------------------------
    def submit(self, payload) -> dict:
        """Check and queue one request body (see ovi.server.intake); the job as JSON. With n > 1
        the first job, plus `job_ids` of all."""
        submission = parse_submission(payload, self.folders, self.limits)
        if submission.client_id is not None and self.queue.find(submission.client_id) is not None:
            raise Refused(409, f"a job with id {submission.client_id!r} already exists; choose another id")
        if submission.image is not None:
            submission.image.store(self.folders.uploads)
        requests = submission.request.expand(default_seed=submission.default_seed)
        client_ids = None if submission.client_id is None else [submission.client_id]
        try:
            ids = self.queue.submit_many(requests, priority=submission.priority, client_ids=client_ids)
        except DuplicateJobError as exc:
            raise Refused(409, str(exc)) from None
        except RequestError as exc:
            raise Refused(422, exc.reason, loc=[exc.field] if exc.field else []) from None
        job = self.job_json(self.queue.get(ids[0]))
        return {**job, "job_ids": ids} if len(ids) > 1 else job

    def extend(self, ref, payload) -> dict:
        """Queue a job continuing finished job `ref`'s clip (`POST /api/jobs/{id}/extend`): the clip is the
        job's own output, found from its result, never a path a client sends. The extension runs under the
        job's config; the body may change the prompt and the duration added, the rest is the clip's own.
        Refused before anything is queued: an unfinished job (409), a clip without saved latents or
        another model's (422), an extended clip over `max_frames` (422 naming `duration`)."""
        job = self.find(ref)
        extension = parse_extension(payload, self.limits)
        mp4 = (job.get("result") or {}).get("mp4")
        if job["state"] != "done" or not mp4:
            raise Refused(409, f"job {ref} is {job['state']}: only a done job's clip can be extended")
        made = job["request"]
        try:
            cfg = load_config(self.folders.resolve_config(made.get("config")), **(made.get("engine") or {}))
        except InputError as exc:
            raise Refused(409, f"job {ref}'s config no longer loads: {self.client_text(str(exc))}") from None
        if not clip_files(mp4)[0].is_file():
            raise Refused(422, f"job {ref}'s clip has no saved latents, so it cannot be continued (a clip is "
                               f"continued from its latents, not its video); generate it again through the queue, "
                               f"which keeps them", loc=["ref"], part="path")
        try:
            prior = read_prior(mp4, cfg.model_name)
        except InputError as exc:
            raise Refused(422, self.client_text(str(exc)), loc=["ref"], part="path") from None
        check_frames(MODEL_SPECS[cfg.model_name], extension.duration, self.limits, config_loc=["duration"],
                     duration_loc=["duration"], config_name=made.get("config"),
                     prior_video_frames=prior.video.shape[1])
        if extension.client_id is not None and self.queue.find(extension.client_id) is not None:
            raise Refused(409, f"a job with id {extension.client_id!r} already exists; choose another id")
        request = GenerateRequest.from_dict({
            "prompt": extension.prompt if extension.prompt is not None else prior.settings.get("prompt"),
            "duration": extension.duration, "extend": str(mp4), "config": made.get("config"),
            "engine": made.get("engine") or {}})
        client_ids = None if extension.client_id is None else [extension.client_id]
        try:
            [job_id] = self.queue.submit_many([request], priority=extension.priority, client_ids=client_ids)
        except DuplicateJobError as exc:
            raise Refused(409, str(exc)) from None
        return self.job_json(self.queue.get(job_id))

    def upload(self, data: bytes) -> dict:
        image = check_image(data, self.limits)
        image.store(self.folders.uploads)
        return image.describe()

    def upload_data_url(self, text: str) -> dict:
        return self.upload(decode_data_url(text, self.limits, loc=["image"]))

    def find(self, ref, *, field: str = "ref", part: str = "path") -> dict:
        """The job a client names (see ovi.inputs.check_job_ref); 422 for what cannot be an id."""
        try:
            ref = check_job_ref(field, ref)
        except ValueProblem as exc:
            raise Refused(422, exc.problem, loc=[field], part=part) from None
        job = self.queue.find(ref)
        if job is None:
            raise Refused(404, f"no job {ref}")
        return job

    def cancel(self, ref, **where) -> dict:
        """`where`: field= and part= of the reference, for a 422's loc (default the URL path)."""
        return self._act(ref, self.queue.cancel, **where)

    def retry(self, ref) -> dict:
        return self._act(ref, self.queue.retry)

    def move(self, ref, *, before=None, after=None, priority=None) -> dict:
        before = None if before is None else self.find(before, field="before", part="body")["id"]
        after = None if after is None else self.find(after, field="after", part="body")["id"]
        if priority is not None:
            try:
                priority = check_int("priority", priority)
            except ValueProblem as exc:
                raise Refused(422, exc.problem, loc=["priority"]) from None
        return self._act(ref, lambda job_id: self.queue.move(job_id, before=before, after=after,
                                                             priority=priority))

    def _act(self, ref, action, **where) -> dict:
        job = self.find(ref, **where)
        try:
            return self.job_json(action(job["id"]))
        except InputError as exc:  # not in a state that allows it (already finished, not queued)
            raise Refused(409, str(exc)) from None

    def set_paused(self, paused: bool) -> dict:
        (self.queue.pause if paused else self.queue.resume)()
        return {"paused": self.queue.paused}

    # -- events ----------------------------------------------------------------------------------
    async def follow(self, since: int | None = None, *, job_id: int | None = None,
                     timeout: float | None = None) -> AsyncIterator[dict | None]:
        """Events as client JSON, from after seq `since` (default: from now on). Yields None when
        idle (a chance to send a keep-alive or notice a gone client). Ends at shutdown, after
        `timeout` seconds, or, following one job, once that job has settled. Reads the log when
        the store says the queue changed (`self.changes`), else only every `rescan_seconds`."""
        cursor = since if since is not None else await asyncio.to_thread(self.queue.last_event_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        settled, read_due, seen, last_read = False, True, 0, 0.0
        while not self.stopping.is_set() and (deadline is None or time.monotonic() < deadline):
            if read_due:
                seen = self.changes.count  # before the read: a change during it wakes the wait
                events = await asyncio.to_thread(self.queue.events, cursor, job_id=job_id)
                last_read = time.monotonic()
                for event in events:
                    cursor = event["seq"]
                    yield self.event_json(event)
                if events:
                    continue
                if settled:
                    return
                if job_id is not None:
                    state = ((await asyncio.to_thread(self.queue.get, job_id)) or {}).get("state")
                    # Settled: read once more, for events written between the read above and now.
                    settled = state in FINISHED or state == "lost"
                    if settled:
                        continue
            yield None
            wait = IDLE_SECONDS if deadline is None else min(IDLE_SECONDS, deadline - time.monotonic())
            changed = await self.changes.wait(seen, max(wait, 0.0))
            read_due = changed or time.monotonic() - last_read >= self.rescan_seconds
