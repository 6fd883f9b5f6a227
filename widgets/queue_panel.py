"""The queue panel: the durable store's jobs, one row each, with the user actions of ovi.queue.

It holds no state of its own: `refresh()` reads the store (JobQueue), so it shows the same after a
kernel restart, and jobs submitted from the CLI, papermill or REST appear too. Row order: running,
then queued in the order they will run, then finished jobs, newest first.
"""

from __future__ import annotations

import html
import time
from typing import Callable

import ipywidgets as w

from ovi.queue import JobQueue

STATE_COLOURS = {"queued": "#555", "running": "#1565c0", "done": "#2e7d32", "failed": "#c62828",
                 "cancelled": "#8d6e63", "lost": "#ef6c00"}
SMALL = w.Layout(width="auto")


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def timing_text(job: dict, now: float | None = None) -> str:
    """Elapsed (and ETA from the progress so far) of a running job; run time of a finished one."""
    now = time.time() if now is None else now
    started, finished, progress = job.get("started_at"), job.get("finished_at"), job.get("progress") or 0.0
    if started is None:
        return "waiting"
    if finished is not None:
        return f"took {duration_text(finished - started)}"
    elapsed = now - started
    eta = elapsed * (1 - progress) / progress if progress > 0 else None
    return f"{duration_text(elapsed)} elapsed, ETA {duration_text(eta)}"


class JobRow:
    """One job's widgets; `update(job)` shows its current state."""

    def __init__(self, job_id: int, panel: "QueuePanel"):
        self.job_id = job_id
        self.label = w.HTML(layout=w.Layout(width="40px"))
        self.state = w.HTML(layout=w.Layout(width="80px"))
        self.priority = w.HTML(layout=w.Layout(width="40px"))
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="120px"))
        self.timing = w.HTML(layout=w.Layout(width="170px"))
        self.prompt = w.HTML(layout=w.Layout(width="300px"))
        self.error = w.HTML()
        self.cancel = w.Button(description="Cancel", icon="stop", layout=SMALL)
        self.retry = w.Button(description="Retry", icon="redo", layout=SMALL)
        self.up = w.Button(description="", icon="arrow-up", tooltip="run earlier", layout=SMALL)
        self.down = w.Button(description="", icon="arrow-down", tooltip="run later", layout=SMALL)
        self.cancel.on_click(lambda _: panel.act(panel.cancel, job_id))
        self.retry.on_click(lambda _: panel.act(panel.retry, job_id))
        self.up.on_click(lambda _: panel.act(panel.move_up, job_id))
        self.down.on_click(lambda _: panel.act(panel.move_down, job_id))
        self.line = w.HBox([self.label, self.state, self.priority, self.progress, self.timing, self.prompt,
                            self.cancel, self.retry, self.up, self.down])
        self.widget = w.VBox([self.line, self.error])
        self.widget.add_class("ovi-job")

    def close(self) -> None:
        for value in vars(self).values():
            if isinstance(value, w.Widget):
                value.close()

    def update(self, job: dict, now: float | None = None, waiting: str | None = None) -> None:
        """`waiting`: why a queued job waits beyond its turn (JobQueue.why_waiting), if it does."""
        state = job["state"]
        if job.get("cancel_requested") and state == "running":
            state_text = "cancelling"
        else:
            state_text = state
        self.label.value = f"<b>#{job['id']}</b>"
        self.state.value = f"<span style='color:{STATE_COLOURS[state]}'>{state_text}</span>"
        self.priority.value = f"p{job['priority']}"
        self.progress.value = float(job.get("progress") or 0.0)
        self.progress.bar_style = {"done": "success", "failed": "danger", "running": "info"}.get(state, "")
        self.timing.value = (f"<span class='ovi-job-waiting' style='color:#ef6c00'>waiting: "
                             f"{html.escape(waiting)}</span>" if waiting else timing_text(job, now))
        prompt = str(job["request"].get("prompt", ""))
        self.prompt.value = f"<span title='{html.escape(prompt)}'>{html.escape(prompt[:60])}</span>"
        error = job.get("error") if state in ("failed", "lost") else None
        self.error.value = (f"<pre class='ovi-job-error' style='color:#c62828;white-space:pre-wrap;margin:0'>"
                            f"{html.escape(error)}</pre>" if error else "")
        self.cancel.disabled = state not in ("queued", "running", "lost") or bool(job.get("cancel_requested"))
        self.retry.disabled = state not in ("failed", "cancelled", "lost")
        self.up.disabled = self.down.disabled = state != "queued"


class QueuePanel:
    """Rows for the store's jobs plus pause/resume all. `on_error(exc)` reports a refused action."""

    def __init__(self, queue: JobQueue, *, on_error: Callable[[Exception], None], limit: int = 40):
        self.queue = queue
        self.on_error = on_error
        self.limit = limit
        self.rows: dict[int, JobRow] = {}
        self.summary = w.HTML()
        self.pause_button = w.Button(description="Pause all", icon="pause")
        self.resume_button = w.Button(description="Resume all", icon="play")
        self.pause_button.on_click(lambda _: self.act(self.queue.pause))
        self.resume_button.on_click(lambda _: self.act(self.queue.resume))
        self.list = w.VBox()
        self.widget = w.VBox([w.HBox([self.summary, self.pause_button, self.resume_button]), self.list])
        self.refresh()

    # ---- actions (each changes the store, then shows it) ------------------------------------------
    def act(self, action: Callable, *args) -> None:
        try:
            action(*args)
        except Exception as exc:  # a refused action (e.g. retry of a done job) is shown, not raised
            self.on_error(exc)
        self.refresh()

    def cancel(self, job_id: int) -> dict:
        return self.queue.cancel(job_id)

    def retry(self, job_id: int) -> dict:
        return self.queue.retry(job_id)

    def move_up(self, job_id: int) -> dict | None:
        order = [j["id"] for j in self.queue.list("queued")]
        i = order.index(job_id)
        return self.queue.move(job_id, before=order[i - 1]) if i > 0 else None

    def move_down(self, job_id: int) -> dict | None:
        order = [j["id"] for j in self.queue.list("queued")]
        i = order.index(job_id)
        return self.queue.move(job_id, after=order[i + 1]) if i + 1 < len(order) else None

    # ---- reading the store ------------------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """The jobs shown, in display order."""
        finished = sorted(self.queue.list(["done", "failed", "cancelled", "lost"]), key=lambda j: -j["id"])
        return [*self.queue.list("running"), *self.queue.list("queued"), *finished][: self.limit]

    def refresh(self) -> None:
        jobs = self.jobs()
        now = time.time()
        waiting = self.queue.why_waiting(jobs)
        for job in jobs:
            row = self.rows.get(job["id"])
            if row is None:
                row = self.rows[job["id"]] = JobRow(job["id"], self)
            row.update(job, now, waiting.get(job["id"]))
        ids = {j["id"] for j in jobs}
        for job_id in [i for i in self.rows if i not in ids]:  # scrolled out: free its widgets
            self.rows.pop(job_id).close()
        shown = [self.rows[j["id"]].widget for j in jobs]
        if list(self.list.children) != shown:
            self.list.children = shown
        counts = self.queue.counts()
        paused = self.queue.paused
        parts = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        self.summary.value = (f"<b>Queue</b> {html.escape(str(self.queue.path))}: {parts or 'empty'}"
                              + (" <b style='color:#ef6c00'>(paused)</b>" if paused else ""))
        self.pause_button.disabled, self.resume_button.disabled = paused, not paused
