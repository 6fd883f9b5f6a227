"""Runner: jobs end to end with a fake engine — progress events, engine reuse, failures,
cancel of a running job, stop/interrupt."""

import threading
from pathlib import Path

import pytest

from ovi.errors import InputError
from ovi.queue import JobQueue
from ovi.runtime import Runner
from ovi.runtime.runner import job_stem, load_engine_factory
from tests.launcher import wait_until
from tests.queue import fakes


@pytest.fixture(autouse=True)
def _fresh_loads():
    fakes.LOADS.clear()


def test_runner_processes_20_tiny_model_jobs_end_to_end_with_progress_events(queue, tmp_path, tiny_ckpt):
    """The real engine (default factory) on the tiny model: 20 playable mp4s, engine loaded once."""
    from ovi.pipeline.output import probe_media
    ids = queue.submit_many([{"prompt": f"A cat number {i}", "seed": i, "steps": 3,
                              "engine": {"model_name": "tiny", "ckpt_dir": str(tiny_ckpt)}} for i in range(20)])
    events = queue.subscribe(since=0, poll=0.01)
    runner = Runner(queue)
    assert runner.run(until_empty=True) == 20

    jobs = [queue.get(i) for i in ids]
    assert all(j["state"] == "done" and j["progress"] == 1.0 and j["attempts"] == 1 for j in jobs)
    for job in jobs:
        assert set(job["result"]) == {"mp4", "wav", "json", "latents"}  # latents kept: a queued clip can be extended
        mp4 = Path(job["result"]["mp4"])
        assert mp4.is_file() and mp4.parent == tmp_path and mp4.name.endswith(f"_{job['id']}.mp4")
        info = probe_media(mp4)
        assert info["video_frames"] == 17 and info["sample_rate"] == 16000
    assert len({j["result"]["mp4"] for j in jobs}) == 20

    seen = []
    for event in events:
        seen.append(event)
        if event["kind"] == "done" and event["id"] == ids[-1]:
            break
    events.close()
    for job_id in ids:
        mine = [e for e in seen if e["id"] == job_id]
        assert [e["kind"] for e in mine] == ["submitted", "running", "progress", "progress",
                                             "progress", "done"]
        assert [round(e["progress"], 3) for e in mine if e["kind"] == "progress"] == \
            [0.333, 0.667, 1.0]
        assert [(e["step"], e["total"]) for e in mine if e["kind"] == "progress"] == \
            [(1, 3), (2, 3), (3, 3)]
    assert runner.stats["engine_loads"] == 1  # one config: weights loaded once


def test_engine_is_reused_while_engine_settings_stay_the_same(queue):
    """Jobs are grouped by engine settings (config + engine overrides), never by per-clip fields:
    steps, LoRAs and the rest change per clip on the same engine."""
    queue.submit_many([{"prompt": "a"}, {"prompt": "b", "engine": {}},
                       {"prompt": "c", "engine": {"fp8": True}},
                       {"prompt": "d", "engine": {"fp8": True}, "steps": 2},
                       {"prompt": "e", "loras": ["style.safetensors:0.8"], "steps": 3},
                       {"prompt": "f", "set": {"sample_steps": 2}},  # the old `set` form: a per-clip key
                       {"prompt": "g", "config": "tiny"}])
    runner = Runner(queue, engine_factory=fakes.factory)
    runner.run(until_empty=True)
    assert fakes.LOADS == [{"config": None, "engine": {}}, {"config": None, "engine": {"fp8": True}},
                           {"config": None, "engine": {}}, {"config": "tiny", "engine": {}}]
    assert runner.stats["engine_loads"] == 4


def test_generate_receives_the_request_settings(queue):
    engines = []

    def factory(key):
        engines.append(fakes.factory(key))
        return engines[-1]

    queue.submit({"prompt": "p", "mode": "t2i2v", "seed": 3, "steps": 2, "solver": "euler",
                  "height_width": [64, 96], "video_guidance_scale": 4.5, "set": {"shift": 5}})
    Runner(queue, engine_factory=factory).run(until_empty=True)
    call = engines[0].calls[0]
    assert call == {"prompt": "p", "steps": 2, "mode": "t2i2v", "seed": 3, "solver": "euler",
                    "height_width": [64, 96], "video_guidance_scale": 4.5, "shift": 5.0}


def test_a_failing_job_fails_alone(queue, tmp_path):
    ok1 = queue.submit({"prompt": "fine one"})
    bad = queue.submit({"prompt": "please FAIL now", "steps": 4})
    ok2 = queue.submit({"prompt": "fine two"})
    runner = Runner(queue, engine_factory=fakes.factory)
    assert runner.run(until_empty=True) == 3
    assert queue.get(ok1)["state"] == "done" and queue.get(ok2)["state"] == "done"
    job = queue.get(bad)
    assert job["state"] == "failed" and "told to fail" in job["error"]
    assert job["error"].startswith("RuntimeError")
    assert not list(tmp_path.glob(job_stem(job) + ".*"))
    assert runner.stats["failed"] == 1 and runner.stats["done"] == 2


def test_engine_factory_failure_fails_the_job_not_the_runner(queue):
    calls = []

    def factory(key):
        calls.append(key)
        if key["config"] == "broken.yaml":
            raise InputError("config broken.yaml: unknown key 'smaple_steps'")
        return fakes.factory(key)

    bad = queue.submit({"prompt": "x", "config": "broken.yaml"})
    good = queue.submit({"prompt": "y"})
    Runner(queue, engine_factory=factory).run(until_empty=True)
    assert queue.get(bad)["state"] == "failed" and "smaple_steps" in queue.get(bad)["error"]
    assert queue.get(good)["state"] == "done"


def test_cancel_of_a_running_job_stops_between_steps_and_removes_partial_files(queue, tmp_path):
    job_id = queue.submit({"prompt": "long one", "steps": 200, "engine": {"fake_step_seconds": 0.01}})
    after = queue.submit({"prompt": "next one"})
    stem = job_stem(queue.get(job_id))
    engines = []

    def factory(key):
        engine = fakes.factory(key)
        if key["engine"]:  # the long job's engine writes as it goes, like a real one might
            engine.on_step = lambda step, total: (tmp_path / f"{stem}.mp4").write_bytes(b"part")
        engines.append(engine)
        return engine

    runner = Runner(queue, engine_factory=factory, poll_interval=0.05).start()
    wait_until(lambda: (queue.get(job_id)["progress"] or 0) > 0.05, 30, "the job to make progress")
    queue.cancel(job_id)
    wait_until(lambda: queue.get(after)["state"] == "done", 30, "the next job to run")
    assert runner.stop(timeout=30)
    job = queue.get(job_id)
    assert job["state"] == "cancelled" and job["progress"] < 1.0
    assert engines[0].closed  # the next job had another config: engine swapped
    assert not (tmp_path / f"{stem}.mp4").exists()
    assert not list(tmp_path.glob(stem + ".*"))


def test_background_thread_start_stop_and_subscribe(queue):
    runner = Runner(queue, engine_factory=fakes.factory, poll_interval=0.05).start()
    assert runner.running
    sub = runner.subscribe(poll=0.01, timeout=30)
    job_id = queue.submit({"prompt": "from a widget"})
    for event in sub:
        if event["id"] == job_id and event["kind"] == "done":
            break
    sub.close()
    assert queue.get(job_id)["state"] == "done"
    assert runner.stop(timeout=10) and not runner.running


def test_stop_with_interrupt_gives_the_job_back(queue):
    job_id = queue.submit({"prompt": "slow", "steps": 500, "engine": {"fake_step_seconds": 0.01}})
    runner = Runner(queue, engine_factory=fakes.factory, poll_interval=0.05).start()
    wait_until(lambda: queue.get(job_id)["state"] == "running", 30, "the job to start")
    assert runner.stop(interrupt=True, timeout=30)
    job = queue.get(job_id)
    assert job["state"] == "queued" and job["attempts"] == 0  # interrupted is not an attempt
    assert runner.stats["released"] == 1


def test_keyboard_interrupt_requeues_the_running_job(queue):
    job_id = queue.submit({"prompt": "x", "steps": 3})

    class Interrupting(fakes.FakeEngine):
        def generate(self, prompt, **kw):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Runner(queue, engine_factory=Interrupting).run(until_empty=True)
    assert queue.get(job_id)["state"] == "queued"


def test_paused_queue_runs_nothing_and_until_empty_returns(queue):
    queue.submit({"prompt": "x"})
    queue.pause()
    assert Runner(queue, engine_factory=fakes.factory).run(until_empty=True) == 0
    queue.resume()
    assert Runner(queue, engine_factory=fakes.factory).run(until_empty=True) == 1


def test_runner_heartbeats_during_a_long_step(queue):
    job_id = queue.submit({"prompt": "x", "steps": 1, "engine": {"fake_step_seconds": 0.6}})
    runner = Runner(queue, engine_factory=fakes.factory, heartbeat_interval=0.1)
    t = threading.Thread(target=runner.run, kwargs={"until_empty": True})
    t.start()
    first = wait_until(lambda: queue.get(job_id)["heartbeat_at"], 30, "the job to start")
    wait_until(lambda: (queue.get(job_id)["heartbeat_at"] or 0) > first + 0.15, 30,
               "a heartbeat while no step reported progress")
    t.join(timeout=30)
    assert queue.get(job_id)["state"] == "done"


def test_request_out_dir_and_stem(queue, tmp_path):
    out = tmp_path / "elsewhere"
    job_id = queue.submit({"prompt": "A <S>talking<E> cat!", "out": str(out)})
    Runner(queue, engine_factory=fakes.factory).run(until_empty=True)
    job = queue.get(job_id)
    assert Path(job["result"]["mp4"]) == out / f"a_talking_cat_job{job_id}.mp4"


def test_load_engine_factory_errors_are_clear():
    assert load_engine_factory("tests.queue.fakes:factory") is fakes.factory
    with pytest.raises(InputError, match="module.path:function"):
        load_engine_factory("nocolon")
    with pytest.raises(InputError, match="cannot import"):
        load_engine_factory("no_such_module_xyz:f")
    with pytest.raises(InputError, match="no function"):
        load_engine_factory("tests.queue.fakes:nope")


def test_outputs_are_named_like_ovi_generate_when_the_clip_says_its_size_and_seed(queue, tmp_path):
    job_id = queue.submit({"prompt": "A cat sings. <S>Hi<E>", "seed": 7, "height_width": [64, 96]})
    Runner(queue, engine_factory=fakes.factory).run(until_empty=True)
    mp4 = Path(queue.get(job_id)["result"]["mp4"])
    assert mp4.name == f"A_cat_sings._Hi_64x96_7_{job_id}.mp4" and mp4.is_file()


def test_default_engine_factory_runs_the_tiny_model(tmp_path, monkeypatch):
    """The real path with nothing but the embedded default config (its checkpoint made on first use)."""
    monkeypatch.chdir(tmp_path)  # the tiny checkpoint is made under ./outputs
    q = JobQueue(tmp_path / "outputs" / "queue.db")
    job_id = q.submit({"prompt": "A cat sings. <S>Hello<E>", "steps": 2, "seed": 1})
    events = q.subscribe(job_id=job_id, since=0, poll=0.01, until_finished=True, timeout=60)
    with Runner(q) as runner:
        runner.run(until_empty=True)
    job = q.get(job_id)
    assert job["state"] == "done", job["error"]
    assert Path(job["result"]["mp4"]).stat().st_size > 0
    assert [e["step"] for e in events if e["kind"] == "progress"][:2] == [1, 2]
    q.close()
