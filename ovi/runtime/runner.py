"""Runner: takes jobs from a JobQueue and drives an engine (Engine or WorkerGroup) through them.

Runs as a background thread in a kernel (`Runner(q).start()`) or in the foreground
(`runner.run()`, which is what `ovi queue run` does). Per job: claim → engine for its config
(reused while consecutive jobs share config path + overrides + LoRA set, so weights load once per
group) → `generate(..., progress=cb)` → `clip.save(out/<stem>)` → done with the output paths.

- A failing job fails alone (error text kept); the runner goes on with the next.
- Cancel of a running job: the progress callback sees the flag and raises JobCancelled between
  two denoising steps; the partial files are removed and the job marked cancelled.
- Liveness: a claim is a lease (`ovi.queue.lease`); a heartbeat thread extends it every few seconds
  while a job runs (also through long weight loads), so other runners' `recover_lost` only takes
  jobs whose runner really died. Every write names the lease's generation: a runner whose lease
  was taken over (it was paused, or cut off) is refused, stops the job and touches none of its
  files, which now belong to the new owner.
- A runner says what it serves (`serves`: config names/paths; None = all) and who it is
  (`label`): it claims only jobs of those configs and keeps a roll-call row (`ovi queue runners`).
- Ctrl-C / SIGTERM while a job runs gives the job back to the queue (never dropped).
"""

from __future__ import annotations

import glob
import importlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable

from ovi.errors import InputError
from ovi.queue.folders import ServerFolders
from ovi.queue.jobqueue import JobCancelled, JobQueue, default_out_dir, make_worker_id
from ovi.queue.requests import engine_key, validate_request

log = logging.getLogger("ovi.runtime.runner")

EngineFactory = Callable[[dict], object]


def make_engine_factory(*, world_size: int | None = None, backend: str | None = None,
                        overrides: dict | None = None) -> EngineFactory:
    """An engine factory with engine settings chosen by the caller (the Studio's engine panel):
    `overrides` (config keys) go under each job's own `engine` overrides; `world_size` / `backend`
    are the WorkerGroup's. Several ranks, FSDP sharding (a process group even on one rank) or a backend
    named -> a WorkerGroup (rank processes); else a single-process Engine."""
    chosen = dict(overrides or {})

    def factory(key: dict):
        # Lazy: a Runner driving a fake engine must not need torch.
        from ovi.config import load_config
        from ovi.parallel.dims import ParallelDims

        cfg = load_config(key.get("config"), **{**chosen, **dict(key.get("engine") or {})})
        dims = ParallelDims.from_config(cfg, world_size)  # the one resolution of this launch, handed down
        if dims.needs_process_group or backend is not None:
            from ovi.runtime.worker_group import WorkerGroup

            return WorkerGroup(cfg, backend=backend, dims=dims)
        from ovi.pipeline.engine import Engine

        return Engine.from_config(cfg, dims=dims)

    return factory


def default_engine_factory(key: dict):
    """Build the engine for an engine key {config, engine}: a WorkerGroup when the config asks for
    several ranks (sp_size > 1 or cfg_parallel) or FSDP sharding, else a single-process Engine."""
    return make_engine_factory()(key)


def load_engine_factory(spec: str) -> EngineFactory:
    """'package.module:function' -> the function (for `--engine-factory`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"--engine-factory {spec!r}: use the form module.path:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"--engine-factory {spec!r}: cannot import {module_name} ({exc}); "
                         f"check PYTHONPATH") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"--engine-factory {spec!r}: {module_name} has no function {attr!r}")
    return factory


def clip_stem_for(job: dict, clip) -> str | None:
    """The stem `ovi generate` would use (prompt_HxW_seed_index, from the clip's sidecar), with
    the job id as the index so every job's files are distinct; None if the clip cannot say."""
    meta = getattr(clip, "meta", None) or {}
    hw, seed = meta.get("height_width"), meta.get("seed")
    if not hw or seed is None:
        return None
    try:
        from ovi.pipeline.prompts import clip_stem
    except ImportError:
        return None
    return clip_stem(str(job["request"]["prompt"]), int(hw[0]), int(hw[1]), int(seed), job["id"])


def job_stem(job: dict) -> str:
    """Stem known before generation (for clips without a sidecar, and for cleaning up after a
    cancel): a slug of the prompt's first words, then the job id."""
    prompt = str(job["request"].get("prompt", ""))
    prompt = re.sub(r"<[^>]*>", " ", prompt)  # drop upstream's <S>..<E>, <AUDCAP> tags
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48].rstrip("_")
    return f"{slug or 'clip'}_job{job['id']}"


def _close_engine(engine) -> None:
    close = getattr(engine, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # a broken engine must not stop the runner
            log.exception("closing the engine failed")


class Runner:
    """Pull jobs from `queue` (a JobQueue or a database path) and run them.

    engine_factory(key) -> engine: builds an engine for {config, set, loras}; default
        `default_engine_factory`. Tests pass a small fake.
    out_dir: where clips go unless a request says `out` (default: the database's folder).
    folders: where config, LoRA and image *names* in a request point (default: the folders beside
        the database, as `ovi queue serve` uses).
    poll_interval: longest sleep between looks at an empty or paused queue.
    heartbeat_interval: seconds between heartbeats of the running job.
    recover_interval: how often the runner looks for jobs lost by dead runners (at start, then
        between jobs, while idle and from the heartbeat thread; at most a quarter of the lease).
    serves: the configs (serve keys: a config name or path as requests give it, "default" for
        the embedded one) this runner can run; None runs any job.
    label: the name `ovi queue runners` shows and each clip's sidecar records (default: the
        worker id).
    keep_events: seconds of event history kept (older events are pruned when a run starts).
    """

    def __init__(self, queue: JobQueue | str, *, engine_factory: EngineFactory | None = None,
                 out_dir: str | Path | None = None, folders: ServerFolders | None = None,
                 worker_id: str | None = None,
                 poll_interval: float = 0.5, heartbeat_interval: float = 5.0,
                 recover_interval: float = 10.0, keep_events: float = 7 * 86400.0,
                 serves: list[str] | None = None, label: str | None = None):
        self._owns_queue = not isinstance(queue, JobQueue)
        self.queue = JobQueue(queue) if self._owns_queue else queue
        self.engine_factory = engine_factory or default_engine_factory
        self.out_dir = Path(out_dir) if out_dir is not None else default_out_dir(self.queue)
        self.folders = folders or ServerFolders.beside(self.queue.path)
        self.worker_id = worker_id or make_worker_id()
        self.serves = None if serves is None else [str(k) for k in serves]
        self.label = label or self.worker_id
        self._lease: int | None = None  # the generation of the current job's lease
        self._registered = False
        self._last_touch = 0.0
        self.poll_interval = float(poll_interval)
        # Beat well inside the lost-job timeout, or a slow step would look like a dead runner.
        self.heartbeat_interval = min(float(heartbeat_interval),
                                      self.queue.policy.heartbeat_timeout / 4)
        self.keep_events = float(keep_events)
        # Look four times per lease (also from the heartbeat thread while a job runs): a dead
        # runner's job is re-queued within 1.25 leases of its last heartbeat.
        self.recover_interval = min(float(recover_interval),
                                    self.queue.policy.heartbeat_timeout / 4)
        self.stats = {"done": 0, "failed": 0, "cancelled": 0, "released": 0, "engine_loads": 0}
        self.last_error: str | None = None
        self._engine = None
        self._engine_key: str | None = None
        self._current: dict | None = None
        self._abort = threading.Event()       # stop(interrupt=True): hand the current job back
        self._taken = threading.Event()       # the current job was declared lost and taken over
        self._stop = threading.Event()        # stop the loop after the current job
        self._thread: threading.Thread | None = None
        self._last_recover = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "Runner":
        """Run in a daemon thread (e.g. inside a Jupyter kernel); returns self."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._abort.clear()
        self._thread = threading.Thread(target=self._thread_main, name="ovi-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, interrupt: bool = False, timeout: float | None = None) -> bool:
        """Stop after the current job, or with interrupt=True at its next step (the job goes
        back to the queue, keeping its place). Returns True when the thread has ended."""
        self._stop.set()
        if interrupt:
            self._abort.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def current_job(self) -> dict | None:
        return self._current

    @property
    def engine(self):
        """The engine loaded for the last job (an Engine or a WorkerGroup), or None."""
        return self._engine

    def close(self) -> None:
        """Stop, and release the engine (its weights) and a queue this runner opened."""
        self.stop()
        if self._registered:
            try:
                self.queue.unregister_runner(self.worker_id)
            except Exception:  # the roll call is informative; a dead database must not block close
                log.exception("could not remove runner %s from the roll call", self.label)
            self._registered = False
        _close_engine(self._engine)
        self._engine, self._engine_key = None, None
        if self._owns_queue:
            self.queue.close()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def subscribe(self, **kwargs):
        """The queue's event stream (progress of every job): see JobQueue.subscribe."""
        return self.queue.subscribe(**kwargs)

    # -- the loop -----------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            self.run()
        except Exception as exc:  # keep the kernel alive; say what happened
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("ovi runner stopped")

    def run(self, *, until_empty: bool = False, max_jobs: int | None = None) -> int:
        """Process jobs until stopped (or, with until_empty, until nothing is claimable — the
        queue is empty or paused). Returns how many jobs this call handled."""
        if threading.current_thread() is not self._thread:
            # Foreground run: forget an earlier stop(). (start() clears them for the thread, so
            # a stop() right after start() is never lost.)
            self._stop.clear()
            self._abort.clear()
        self.queue.register_runner(self.worker_id, label=self.label, serves=self.serves)
        self._registered = True
        self._recover()
        self.queue.prune_events(older_than=self.keep_events)  # the event log must not grow forever
        handled = 0
        wait = min(0.05, self.poll_interval)
        while not self._stop.is_set() and (max_jobs is None or handled < max_jobs):
            try:
                job = self.run_one()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # the store itself failed (disk full, locked)
                self.last_error = f"{type(exc).__name__}: {exc}"
                if until_empty:
                    raise  # a batch run should end with an error, not look "empty"
                log.exception("runner: queue access failed; retrying")
                job = None
            try:
                # Also between jobs: with every runner busy, a dead one's job must not wait for
                # an idle runner to be noticed.
                if time.monotonic() - self._last_recover > self.recover_interval:
                    self._recover()
                if job is None and time.monotonic() - self._last_touch > self.heartbeat_interval:
                    self._touch(None)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("runner: queue access failed; retrying")
            if job is not None:
                handled += 1
                wait = min(0.05, self.poll_interval)
                continue
            if until_empty:
                break
            self._stop.wait(wait)
            wait = min(wait * 2, self.poll_interval)
        return handled

    def run_one(self) -> dict | None:
        """Claim and process one job; returns its final dict, or None when nothing was claimable."""
        job = self.queue.claim(self.worker_id, serves=self.serves)
        if job is None:
            return None
        return self.process(job)

    def _touch(self, job_id: int | None) -> None:
        self._last_touch = time.monotonic()
        if self._registered:
            self.queue.touch_runner(self.worker_id, job_id)

    def _recover(self) -> None:
        self._last_recover = time.monotonic()
        for job_id in self.queue.recover_lost():
            log.warning("job %s was lost by a dead runner; recovered per policy", job_id)

    # -- one job ------------------------------------------------------------------------------
    def process(self, job: dict) -> dict:
        """Run a claimed job to its end state (done, failed, cancelled, or back to queued)."""
        job_id = job["id"]
        log.info("job %s: started (attempt %s) %.60r", job_id, job["attempts"],
                 job["request"].get("prompt"))
        self._current = job
        self._lease = job.get("lease_generation")
        self._taken.clear()
        out_dir = Path(job["request"].get("out") or self.out_dir)
        stems = [out_dir / job_stem(job)]  # _generate adds the final stem once it is known
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job_id, beat_stop),
                                name=f"ovi-heartbeat-{job_id}", daemon=True)
        beat.start()
        try:
            try:
                result = self._generate(job, stems)
            except JobCancelled as exc:
                return self._stopped(job_id, stems, exc.reason)
            except (KeyboardInterrupt, SystemExit):
                self._remove_partial(stems)
                if self.queue.release(job_id, worker_id=self.worker_id, lease=self._lease,
                                      reason="runner interrupted") is not None:
                    self.stats["released"] += 1
                raise
            except Exception as exc:
                if self._should_stop(job_id):
                    # The engine wrapped our JobCancelled in its own error: still a cancel.
                    return self._stopped(job_id, stems, "cancel requested")
                return self._failed(job_id, stems, exc)
            final = self.queue.finish(job_id, result, worker_id=self.worker_id, lease=self._lease)
            if final is None:
                log.warning("job %s finished here but was taken over meanwhile; keeping the "
                            "other runner's state", job_id)
                return self.queue.get(job_id)
            self.stats["done"] += 1
            log.info("job %s: done %s", job_id, result.get("mp4") or "")
            return final
        finally:
            beat_stop.set()
            beat.join(timeout=5)
            self._current = None

    def _generate(self, job: dict, stems: list[Path]) -> dict:
        job_id = job["id"]
        if self._should_stop(job_id):
            raise JobCancelled(job_id)
        request = validate_request(job["request"])  # the stored dict -> the GenerateRequest it stands for
        engine = self._engine_for(request)
        request = self.folders.resolve(request)  # image / LoRA names -> files in the server's folders

        def progress(step: int, total: int, info: dict | None = None) -> None:
            fraction = step / total if total else 0.0
            stop = self.queue.set_progress(job_id, fraction, worker_id=self.worker_id,
                                           lease=self._lease,
                                           info={"step": int(step), "total": int(total)})
            if stop or self._abort.is_set() or self._taken.is_set():
                raise JobCancelled(job_id)

        clip = engine.generate(request, progress=progress)
        if self._should_stop(job_id):
            raise JobCancelled(job_id)  # cancelled during the last step: do not save
        if isinstance(getattr(clip, "meta", None), dict):
            clip.meta["runner"] = self.label  # the sidecar names who made the clip
        name = clip_stem_for(job, clip)
        if name is not None:
            stems.append(stems[0].parent / name)
        stem_path = stems[-1]
        stem_path.parent.mkdir(parents=True, exist_ok=True)
        keep = {"save_latents": True} if getattr(clip, "latents", None) else {}  # a queued clip can be extended
        paths = clip.save(stem_path, **keep) or {}
        # Absolute, so the queue can store those under its root relative to it (a shared root).
        return {str(kind): str(Path(path).absolute()) for kind, path in dict(paths).items()}

    def _engine_for(self, request):
        key = engine_key(request)
        key["config"] = self.folders.resolve_config(key["config"])
        key_text = json.dumps(key, sort_keys=True)
        if self._engine is None or key_text != self._engine_key:
            _close_engine(self._engine)
            self._engine, self._engine_key = None, None
            self._engine = self.engine_factory(key)
            self._engine_key = key_text
            self.stats["engine_loads"] += 1
        return self._engine

    def _should_stop(self, job_id: int) -> bool:
        if self._abort.is_set() or self._taken.is_set():
            return True
        job = self.queue.get(job_id)
        if not self._still_mine(job):
            self._taken.set()
            return True
        return bool(job["cancel_requested"])

    def _still_mine(self, job: dict | None) -> bool:
        """Does our lease still hold? (Else the job and its files belong to whoever re-claimed it.)"""
        return bool(job and job["state"] == "running" and job["worker"] == self.worker_id and (
            self._lease is None or job["lease_generation"] == self._lease))

    def _stopped(self, job_id: int, stems: list[Path], reason: str) -> dict:
        if not self._taken.is_set() and not self._still_mine(self.queue.get(job_id)):
            self._taken.set()
        if self._taken.is_set():
            # Declared lost and re-queued (maybe running elsewhere, writing the same stem):
            # leave the job and its files to the new owner.
            return self.queue.get(job_id)
        self._remove_partial(stems)
        if self.queue.is_cancel_requested(job_id):
            final = self.queue.mark_cancelled(job_id, worker_id=self.worker_id, lease=self._lease)
            if final is not None:
                self.stats["cancelled"] += 1
                log.info("job %s: cancelled", job_id)
                return final
        elif self._abort.is_set():  # stop(interrupt=True): hand the job back
            final = self.queue.release(job_id, worker_id=self.worker_id, lease=self._lease,
                                       reason="runner stopped")
            if final is not None:
                self.stats["released"] += 1
                return final
        return self.queue.get(job_id)

    def _failed(self, job_id: int, stems: list[Path], exc: Exception) -> dict:
        if not self._still_mine(self.queue.get(job_id)):
            log.warning("job %s failed here after its lease was taken over; leaving it to the "
                        "new owner", job_id)
            return self.queue.get(job_id)
        self._remove_partial(stems)
        log.error("job %s failed: %s: %s", job_id, type(exc).__name__, exc)
        if not isinstance(exc, InputError):
            # The engine may be in a bad state (e.g. a dead rank): rebuild it for the next job.
            _close_engine(self._engine)
            self._engine, self._engine_key = None, None
        final = self.queue.fail(job_id, f"{type(exc).__name__}: {exc}", worker_id=self.worker_id,
                                lease=self._lease)
        self.stats["failed"] += 1
        return final if final is not None else self.queue.get(job_id)

    @staticmethod
    def _remove_partial(stems: list[Path]) -> None:
        # `<stem>.*` are the clip's files (mp4, wav, json, latents); `.<stem>.*` temp files of
        # an atomic write in progress. The job id in each stem keeps other clips out of reach.
        for stem_path in stems:
            folder = stem_path.parent
            if not folder.is_dir():
                continue
            for pattern in (f"{glob.escape(stem_path.name)}.*", f".{glob.escape(stem_path.name)}.*"):
                for path in folder.glob(pattern):
                    try:
                        path.unlink()
                    except (FileNotFoundError, IsADirectoryError, PermissionError):
                        pass

    def _beat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            try:
                if not self.queue.heartbeat(job_id, self.worker_id, lease=self._lease):
                    if not stop.is_set():  # not merely finished a moment ago
                        self._taken.set()
                    return
                self._touch(job_id)
                if time.monotonic() - self._last_recover > self.recover_interval:
                    self._recover()  # busy runners keep watching for dead ones too
            except Exception:
                log.exception("heartbeat for job %s failed", job_id)
