"""The gallery: finished clips from the store, newest first, each with inline video (H.264 + AAC),
its wav, the settings that made it (read from the clip's json sidecar) and an Extend button (the
Studio queues a job continuing the clip; the longer clip arrives as a card of its own)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Callable

import ipywidgets as w

from ovi.queue import JobQueue

# Sidecar keys shown on a card, in this order (the full sidecar is one click away).
CARD_KEYS = ("mode", "seed", "steps", "solver", "video_guidance_scale", "audio_guidance_scale", "height_width",
             "num_frames", "fps", "attention_backend", "device", "world_size", "sp", "cfg", "loras")


def read_sidecar(path: str | Path | None) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (TypeError, OSError, ValueError):
        return {}


def settings_html(sidecar: dict, request: dict) -> str:
    prompt = sidecar.get("prompt", request.get("prompt", ""))
    rows = "".join(f"<tr><td>{k}</td><td>{html.escape(json.dumps(sidecar[k]))}</td></tr>"
                   for k in CARD_KEYS if k in sidecar)
    total = (sidecar.get("timings") or {}).get("total")
    if total is not None:
        rows += f"<tr><td>time</td><td>{total:.2f}s</td></tr>"
    full = html.escape(json.dumps(sidecar or request, indent=1, sort_keys=True))
    return (f"<div class='ovi-clip-settings' style='font-size:11px;max-width:300px'>"
            f"<div style='font-size:12px'>{html.escape(prompt)}</div>"
            f"<table>{rows}</table><details><summary>all settings</summary>"
            f"<pre style='font-size:10px;white-space:pre-wrap'>{full}</pre></details></div>")


class ClipCard:
    def __init__(self, job: dict, width: int = 256, on_extend: Callable[[int], None] | None = None):
        result = job["result"] or {}
        self.job_id = job["id"]
        self.mp4 = Path(result["mp4"])
        self.sidecar = read_sidecar(result.get("json"))
        self.video = w.Video.from_file(str(self.mp4), format="mp4", autoplay=False, loop=False, controls=True,
                                       width=width)
        self.video.add_class("ovi-clip-video")
        parts = [w.HTML(f"<b>#{job['id']}</b> {html.escape(self.mp4.name)}"), self.video]
        wav = result.get("wav")
        if wav and Path(wav).is_file():
            self.audio = w.Audio.from_file(wav, format="wav", autoplay=False, loop=False, controls=True)
            parts.append(self.audio)
        if on_extend is not None:
            self.extend = w.Button(description="Extend", icon="forward",
                                   tooltip="queue a job continuing this clip by the form's Duration")
            self.extend.on_click(lambda _: on_extend(self.job_id))
            parts.append(self.extend)
        parts.append(w.HTML(settings_html(self.sidecar, job["request"])))
        self.widget = w.VBox(parts, layout=w.Layout(border="1px solid #ddd", padding="4px", margin="2px"))
        self.widget.add_class("ovi-clip")

    def close(self) -> None:
        for child in self.widget.children:
            child.close()
        self.widget.close()


class Gallery:
    """The newest `limit` done jobs whose mp4 exists (a deleted file drops its card)."""

    def __init__(self, queue: JobQueue, *, limit: int = 12, on_extend: Callable[[int], None] | None = None):
        self.queue = queue
        self.limit = limit
        self.on_extend = on_extend  # a card's Extend button: on_extend(job_id)
        self.cards: dict[int, ClipCard] = {}
        self.title = w.HTML("<b>Gallery</b>")
        self.grid = w.GridBox(layout=w.Layout(grid_template_columns="repeat(auto-fill, 320px)"))
        self.widget = w.VBox([self.title, self.grid])
        self.refresh()

    def jobs(self) -> list[dict]:
        done = sorted(self.queue.list("done"), key=lambda j: -(j.get("finished_at") or 0))
        return [j for j in done if (j.get("result") or {}).get("mp4") and Path(j["result"]["mp4"]).is_file()
                ][: self.limit]

    def refresh(self) -> None:
        jobs = self.jobs()
        ids = {j["id"] for j in jobs}
        for job_id in [i for i in self.cards if i not in ids]:
            self.cards.pop(job_id).close()
        for job in jobs:
            if job["id"] not in self.cards:
                self.cards[job["id"]] = ClipCard(job, on_extend=self.on_extend)
        shown = [self.cards[j["id"]].widget for j in jobs]
        if list(self.grid.children) != shown:
            self.grid.children = shown
        self.title.value = f"<b>Gallery</b> ({len(jobs)} clip{'s' if len(jobs) != 1 else ''})"
