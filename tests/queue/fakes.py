"""A small stand-in for ovi.Engine, so queue/runner tests run without a model.

`factory(key)` is an engine factory (also for `ovi queue run --engine-factory
tests.queue.fakes:factory`). Behaviour comes from the request, so a subprocess runner needs no
extra wiring:
- steps: the request's `steps`, else 4;
- seconds per step: the engine key's `fake_step_seconds` (a request's `engine` override), else
  $OVI_FAKE_STEP_SECONDS, else 0.002;
- a prompt containing "FAIL" raises in the middle of generation.
Every engine build is appended to LOADS (and to the file $OVI_FAKE_LOAD_LOG, for subprocesses).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

LOADS: list[dict] = []


class FakeClip:
    def __init__(self, prompt: str, meta: dict):
        self.prompt = prompt
        self.meta = meta

    def save(self, path_stem) -> dict:
        stem = Path(path_stem)
        files = {"mp4": stem.with_name(stem.name + ".mp4"), "wav": stem.with_name(stem.name + ".wav"),
                 "json": stem.with_name(stem.name + ".json")}
        files["mp4"].write_bytes(b"\x00\x00\x00\x18ftypmp42fake-video")
        files["wav"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEfake")
        files["json"].write_text(json.dumps({"prompt": self.prompt, **self.meta}))
        return files


class FakeEngine:
    def __init__(self, key: dict):
        self.key = key
        self.closed = False
        self.calls: list[dict] = []
        self.on_step = None  # tests may hook in: on_step(step, total)

    def generate(self, request, *, progress=None):
        overrides = self.key.get("engine") or {}
        prompt = request.prompt
        kwargs = {k: v for k, v in request.per_clip_settings.items() if k not in ("prompt", "steps")}
        total = request.steps or 4
        delay = float(overrides.get("fake_step_seconds",
                                    os.environ.get("OVI_FAKE_STEP_SECONDS", 0.002)))
        self.calls.append({"prompt": prompt, "steps": total, **kwargs})
        for step in range(1, total + 1):
            time.sleep(delay)
            if self.on_step is not None:
                self.on_step(step, total)
            if "FAIL" in prompt and step == max(1, total // 2):
                raise RuntimeError("fake engine told to fail (prompt contains FAIL)")
            if progress is not None:
                progress(step, total, {"stage": "denoise"})
        # Like Engine's sidecar, but `height_width` and `seed` only when the request gave them
        # (so the runner's two stem styles both get exercised).
        meta = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, list))}
        return FakeClip(prompt, {"steps": total, **meta})

    def close(self):
        self.closed = True


def factory(key: dict) -> FakeEngine:
    LOADS.append(key)
    log = os.environ.get("OVI_FAKE_LOAD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(key, sort_keys=True) + "\n")
    return FakeEngine(key)
