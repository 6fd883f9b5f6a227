"""`Studio(...)`: the whole workbench in one notebook cell.

    from widgets import Studio
    Studio()                       # the embedded tiny model, queue at outputs/queue.db

Pieces: a form that builds `ovi.GenerateRequest`s and submits them to the durable queue
(`ovi.queue.JobQueue`), the queue panel and the gallery (both read the store, so a kernel restart
loses nothing), and the engine panel, which starts the `ovi.runtime.Runner` thread that turns queued
jobs into clips (in this kernel, or in WorkerGroup rank processes).

Nothing here blocks the kernel: a submit is one SQLite transaction; generation runs in the Runner
thread; a small watcher thread follows the store's event log and updates the widgets (ipywidgets 8
sends state changes made from any thread through the kernel's comm). An exception from a button or
the watcher is shown in the Studio's message line; a failed job shows its error in its queue row.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from pathlib import Path

import ipywidgets as w

from ovi.config import load_config
from ovi.errors import InputError
from ovi.pipeline.windows import read_prior
from ovi.queue import DEFAULT_DB, FINISHED, JobQueue
from ovi.request import GenerateRequest
from ovi.runtime.runner import EngineFactory
from widgets.catalog import extension_duration
from widgets.engine_panel import EnginePanel
from widgets.form import GenerateForm
from widgets.gallery import Gallery
from widgets.queue_panel import QueuePanel

log = logging.getLogger("widgets.studio")

STYLE = """<style>
.ovi-studio .widget-label { min-width: 7ex; }
.ovi-message-error { color: #c62828; white-space: pre-wrap; }
</style>"""


class Studio:
    """The workbench. `db`: the queue store; `config`: a shipped config name or yaml path (None: the
    embedded tiny default); `engine`: engine-setting overrides for every job (config keys, e.g.
    {"ckpt_dir": ...}); `autostart`: start the Runner now (else: the engine panel's Start, or
    Generate now). `engine_factory` replaces the engine panel's settings (tests pass a fake);
    `runner_options` go to `Runner(...)`; `poll`: seconds between looks at the store's events."""

    def __init__(self, db: str | Path = DEFAULT_DB, config: str | Path | None = None, *, engine: dict | None = None,
                 autostart: bool = True, poll: float = 0.5, engine_factory: EngineFactory | None = None,
                 runner_options: dict | None = None, gallery_size: int = 12):
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        self.queue = JobQueue(db)
        self.upload_dir = Path(self.queue.path).resolve().parent / "uploads"
        config_name = str(config) if config is not None else None
        self.config = load_config(config_name, **dict(engine or {}))
        self.message = w.HTML()
        self.form = GenerateForm(self.config, config_name=config_name, engine=engine, on_error=self.show_error)
        self.queue_panel = QueuePanel(self.queue, on_error=self.show_error)
        self.gallery = Gallery(self.queue, limit=gallery_size,
                               on_extend=lambda job_id: self._guarded(lambda: self.extend(job_id)))
        self.engine_panel = EnginePanel(self.queue, on_error=self.show_error, engine_factory=engine_factory,
                                        runner_options=runner_options)
        self.form.submit.on_click(lambda _: self._guarded(self.submit))
        self.form.generate_now.on_click(lambda _: self._guarded(self.generate_now))

        self.widget = w.VBox([
            w.HTML(STYLE + f"<h3 style='margin:4px 0'>Ovi Studio</h3><div>model <b>{self.config.model_name}</b>"
                   f" ({html.escape(config_name or 'embedded tiny default')})</div>"),
            w.HBox([w.VBox([w.HTML("<b>Generate</b>"), self.form.widget], layout=w.Layout(width="60%")),
                    w.VBox([w.HTML("<b>Engine</b>"), self.engine_panel.widget], layout=w.Layout(width="40%"))]),
            self.message, self.queue_panel.widget, self.gallery.widget])
        self.widget.add_class("ovi-studio")

        self._about: int | None = None  # the job the message line speaks of (None: an error, or nothing)
        self._lock = threading.RLock()  # the watcher and button clicks refresh the same widgets
        self._cursor = self.queue.last_event_id()
        self._stop = threading.Event()
        self.poll = float(poll)
        self._watcher = threading.Thread(target=self._watch, name="ovi-studio-watch", daemon=True)
        self._watcher.start()
        if autostart:
            self.engine_panel.start()

    # ---- display -------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- user actions --------------------------------------------------------------------------
    def submit(self, priority: int | None = None) -> int:
        """Queue the form's request; returns the job id."""
        request = self.form.request(self.upload_dir)
        job_id = self.queue.submit(request, priority=int(self.form.priority.value if priority is None else priority))
        self.show(f"queued job #{job_id}{self._stopped_note()}", about=job_id)
        self.refresh()
        return job_id

    def extend(self, job_id: int) -> int:
        """Queue a job continuing finished job `job_id`'s clip (the gallery card's Extend): the request names
        the clip and the form's Duration as windows added (1x: one window, 2x: two, ...) and, with
        "Extend with this prompt", the form's prompt, else the clip's own. It runs under the clip's own
        config and engine settings, and what it leaves unset (seed, steps, ...) is the clip's (its sidecar).
        A clip without saved latents is refused here, before anything is queued. Returns the new job id."""
        job = self.queue.get(job_id)
        mp4 = ((job or {}).get("result") or {}).get("mp4")
        if job is None or job["state"] != "done" or not mp4:
            raise InputError(f"job #{job_id} has no finished clip to extend")
        made = job["request"]
        config, engine = made.get("config"), dict(made.get("engine") or {})
        model_name = load_config(config, **engine).model_name
        try:
            prior = read_prior(mp4, model_name)
        except InputError as exc:
            raise InputError(f"cannot extend job #{job_id}'s clip: {exc}") from None
        prompt = self.form.prompt.value if self.form.extend_with_prompt.value else prior.settings.get("prompt")
        windows = (self.form.duration.index or 0) + 1
        request = GenerateRequest(prompt, extend=str(mp4), duration=extension_duration(model_name, windows),
                                  config=config, engine=engine)
        new = self.queue.submit(request, priority=int(self.form.priority.value))
        self.show(f"queued job #{new}: extends #{job_id} by {windows} window{'s' if windows > 1 else ''}"
                  f"{self._stopped_note()}", about=new)
        self.refresh()
        return new

    def generate_now(self) -> int:
        """Queue the form's request ahead of every queued job and make sure the runner runs."""
        queued = self.queue.list("queued")
        top = max([j["priority"] for j in queued] + [int(self.form.priority.value) - 1]) + 1
        job_id = self.submit(priority=top)
        self.engine_panel.start()
        self.show(f"job #{job_id} is next (priority {top}); the runner is working", about=job_id)
        return job_id

    def _stopped_note(self) -> str:
        return "" if self.engine_panel.running else " (runner stopped: press Start or Generate now)"

    def show(self, text: str, about: int | None = None) -> None:
        """A status line; `about`: the job it speaks of, so the line is rewritten once that job has finished."""
        self._about = about
        self.message.value = f"<div class='ovi-message'>{html.escape(text)}</div>"

    def show_error(self, exc: BaseException | str) -> None:
        self._about = None  # an error stays until the next action
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.message.value = f"<pre class='ovi-message-error'>{html.escape(text)}</pre>"

    def _settled_status(self) -> None:
        """Once the job the status line speaks of has finished, the line says so and what the queue does now
        (it never claims work that is over, e.g. "job #2 is next" after every job is done)."""
        job = self.queue.get(self._about) if self._about is not None else None
        if job is None or job["state"] not in (*FINISHED, "lost"):
            return
        counts = self.queue.counts()
        running = [j["id"] for j in self.queue.list("running")]
        if running or counts["queued"]:
            parts = [f"job #{i} running" for i in running] + ([f"{counts['queued']} queued"] if counts["queued"] else [])
            now = ", ".join(parts) + self._stopped_note()
        else:
            now = "nothing left to run" + ("; the runner is idle" if self.engine_panel.running else "")
        text = f"job #{job['id']} {job['state']}; {now}"
        self.message.value = f"<div class='ovi-message'>{html.escape(text)}</div>"

    def _guarded(self, action) -> None:
        try:
            action()
        except Exception as exc:
            self.show_error(exc)

    # ---- following the store -------------------------------------------------------------------
    def refresh(self, events: list[dict] | None = None) -> None:
        """Show the store as it is now (the watcher calls this with the events it saw)."""
        with self._lock:
            self.queue_panel.refresh()
            kinds = {e["kind"] for e in events or []}
            if events is None or kinds & {"done", "retried"} or kinds & set(FINISHED):
                self.gallery.refresh()
            self.engine_panel.refresh()
            self._settled_status()
            for event in events or []:
                if event["kind"] == "failed":
                    self.show_error(f"job #{event['id']} failed: {event['error']}")

    def _watch(self) -> None:
        last_full = 0.0
        while not self._stop.wait(self.poll):
            try:
                events = self.queue.events(since=self._cursor)
                if events:
                    self._cursor = events[-1]["seq"]
                # Also every few seconds without news: a running job's elapsed time moves on.
                if events or (self.engine_panel.running and time.monotonic() - last_full > 2.0):
                    self.refresh(events)
                    last_full = time.monotonic()
            except Exception as exc:  # the store went away or a widget failed: say so, keep watching
                log.exception("studio watcher")
                self.show_error(exc)

    def close(self) -> None:
        """Stop watching, stop the runner (its job goes back to the queue) and close the store."""
        self._stop.set()
        self._watcher.join(timeout=5)
        self.engine_panel.stop(wait=True)
        self.queue.close()

    def __enter__(self) -> "Studio":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
