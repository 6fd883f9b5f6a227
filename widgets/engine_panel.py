"""The engine panel: start / stop the Runner (a thread in this kernel) with the engine settings chosen
here - world size, backend, sp, cfg-parallel, SP scheme, FSDP, attention backend - and what the engine
reports: its ranks' devices and memory, the attention backend that ran, the last job's step times.

The Runner builds its engine (an Engine, or a WorkerGroup of rank processes) lazily for the first job,
in its own thread, so Start returns at once; an engine that fails to build fails that job, and its
error shows in the queue panel. Changing a setting takes effect at the next Start.
"""

from __future__ import annotations

import html
import resource
import sys
import threading
from typing import Callable

import ipywidgets as w

from ovi.config import ATTENTION_BACKENDS, FSDP_STRATEGIES
from ovi.parallel.sequence import SCHEME_CONFIGS
from ovi.queue import JobQueue
from ovi.runtime.runner import EngineFactory, Runner, make_engine_factory
from widgets.gallery import read_sidecar

SP_CHOICES = (("auto (from world size)", None), ("1", 1), ("2", 2), ("4", 4), ("8", 8))
FSDP_CHOICES = (("off", None), *((s, s) for s in FSDP_STRATEGIES))
BACKENDS = (("auto (in-process for 1 rank)", None), ("gloo", "gloo"), ("nccl", "nccl"))


def mib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"


def step_times(events: list[dict]) -> list[float]:
    """Seconds between consecutive progress events of one job (the first step counts from `running`)."""
    marks = [e["time"] for e in events if e["kind"] in ("running", "progress")]
    return [b - a for a, b in zip(marks, marks[1:])]


class EnginePanel:
    def __init__(self, queue: JobQueue, *, on_error: Callable[[Exception], None],
                 engine_factory: EngineFactory | None = None, runner_options: dict | None = None):
        self.queue = queue
        self.on_error = on_error
        self.fixed_factory = engine_factory  # tests pass a fake engine; the settings then do not apply
        self.runner_options = dict(runner_options or {})
        self.runner: Runner | None = None
        self._ranks: list[dict] = []
        self.world_size = w.BoundedIntText(value=1, min=1, max=64, description="World size")
        self.backend = w.Dropdown(options=BACKENDS, value=None, description="Backend")
        self.sp = w.Dropdown(options=SP_CHOICES, value=None, description="SP degree")
        self.cfg_parallel = w.Checkbox(value=False, description="CFG-parallel (2 groups)")
        self.scheme = w.Dropdown(options=list(SCHEME_CONFIGS), value="optimized", description="SP scheme")
        self.fsdp = w.Dropdown(options=FSDP_CHOICES, value=None, description="FSDP")
        self.attention = w.Dropdown(options=ATTENTION_BACKENDS, value="auto", description="Attention")
        self.start_button = w.Button(description="Start", icon="play", button_style="success")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning")
        self.status = w.HTML()
        self.info = w.HTML()
        self.start_button.on_click(lambda _: self._guarded(self.start))
        self.stop_button.on_click(lambda _: self._guarded(self.stop))
        self.widget = w.VBox([
            w.HBox([self.world_size, self.backend, self.sp]),
            w.HBox([self.cfg_parallel, self.scheme, self.fsdp, self.attention]),
            w.HBox([self.start_button, self.stop_button, self.status]), self.info])
        self.refresh()

    # ---- settings -> engine --------------------------------------------------------------------
    def overrides(self) -> dict:
        """The config keys the panel sets (over the config, under a job's own `engine` overrides)."""
        out = {"cfg_parallel": bool(self.cfg_parallel.value), "attention_backend": self.attention.value,
               **SCHEME_CONFIGS[self.scheme.value]}
        if self.sp.value is not None:
            out["sp_size"] = int(self.sp.value)
        if self.fsdp.value is not None:
            out.update(use_fsdp=True, fsdp_sharding_strategy=self.fsdp.value)
        return out

    def engine_factory(self) -> EngineFactory:
        if self.fixed_factory is not None:
            return self.fixed_factory
        return make_engine_factory(world_size=int(self.world_size.value), backend=self.backend.value,
                                   overrides=self.overrides())

    # ---- lifecycle -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    def start(self) -> Runner:
        """Start a Runner thread with the current settings (a running one is kept)."""
        if not self.running:
            self._ranks = []
            self.runner = Runner(self.queue, engine_factory=self.engine_factory(), **self.runner_options).start()
        self.refresh()
        return self.runner

    def stop(self, wait: bool = False) -> None:
        """Stop the Runner at the next step (its job goes back to the queue, keeping its place) and
        release the engine - in the background, so the kernel never waits on a rank."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop(interrupt=True, timeout=0)
            closer = threading.Thread(target=runner.close, name="ovi-runner-close", daemon=True)
            closer.start()
            if wait:
                closer.join()
        self.refresh()

    def _guarded(self, action: Callable) -> None:
        try:
            action()
        except Exception as exc:
            self.on_error(exc)

    # ---- what the engine reports ---------------------------------------------------------------
    def rank_table(self) -> list[dict]:
        """Per rank: device, pid, memory. A WorkerGroup is asked only while idle (its ranks answer
        between jobs); the in-process Engine reports this kernel."""
        runner = self.runner
        engine = runner.engine if runner is not None else None
        if engine is None:
            return []
        if hasattr(engine, "stats") and hasattr(engine, "rank_info"):
            if runner.current_job is None and not engine.closed:
                self._ranks = [{"rank": s["rank"], "device": s["device"], "pid": s["pid"],
                                "memory": s.get("max_memory_allocated") or s.get("max_rss_bytes"),
                                "backend": s["backend"]} for s in engine.stats()]
            return self._ranks
        device = getattr(engine, "device", None)
        if device is None:
            return []  # an engine that reports nothing (e.g. a test's fake)
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        torch = sys.modules.get("torch")
        if torch is not None and device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(engine.device)
        return [{"rank": 0, "device": str(device), "pid": "kernel", "memory": memory, "backend": "-"}]

    def last_job_report(self) -> str:
        """Attention backend, layout and step times of the newest finished clip."""
        done = self.queue.list("done")
        if not done:
            return ""
        job = max(done, key=lambda j: j.get("finished_at") or 0)
        sidecar = read_sidecar((job.get("result") or {}).get("json"))
        times = step_times(self.queue.events(job_id=job["id"]))
        shown = ", ".join(f"{t:.3f}" for t in times[-8:])
        return (f"<div>last clip #{job['id']}: attention <b>{html.escape(str(sidecar.get('attention_backend')))}"
                f"</b>, device {html.escape(str(sidecar.get('device')))}, world size {sidecar.get('world_size')}"
                f" (sp {sidecar.get('sp')}, cfg {sidecar.get('cfg')}), step times [s]: {shown or '-'}</div>")

    def refresh(self) -> None:
        runner = self.runner
        if runner is None:
            self.status.value = "runner <b>stopped</b>: queued jobs wait (Start, or Generate now)"
        else:
            state = "running" if runner.running else "ended"
            job = runner.current_job
            doing = f", working on #{job['id']}" if job else ", idle"
            stats = ", ".join(f"{v} {k}" for k, v in runner.stats.items() if v)
            self.status.value = (f"runner <b>{state}</b>{doing if runner.running else ''}"
                                 f"{' (' + stats + ')' if stats else ''}")
            if runner.last_error:
                self.status.value += (f" <span style='color:#c62828'>runner error: "
                                      f"{html.escape(runner.last_error)}</span>")
        self.start_button.disabled = self.running
        self.stop_button.disabled = not self.running
        try:
            ranks = self.rank_table()
        except Exception as exc:  # a group that died between jobs: its job's error says why
            ranks = []
            self.on_error(exc)
        rows = "".join(f"<tr><td>{r['rank']}</td><td>{html.escape(str(r['device']))}</td><td>{r['pid']}</td>"
                       f"<td>{r['backend']}</td><td>{mib(r['memory'])}</td></tr>" for r in ranks)
        table = (f"<table><tr><th>rank</th><th>device</th><th>pid</th><th>backend</th><th>peak memory</th></tr>"
                 f"{rows}</table>" if rows else "<div>no engine loaded yet (it loads with the first job)</div>")
        self.info.value = table + self.last_job_report()

