"""The Studio driven headless: widgets set and buttons clicked as a user would, the store checked."""

import threading

import pytest

from ovi.queue import JobQueue
from ovi.runtime.runner import Runner
from tests.queue.fakes import factory as fake_factory
from widgets import Studio
from widgets.catalog import CATEGORIES, TEMPLATES, durations, insert_template


@pytest.fixture
def studio(tmp_path):
    s = Studio(tmp_path / "queue.db", autostart=False, engine_factory=fake_factory, poll=0.05)
    yield s
    s.close()


def _row_buttons(studio, job_id):
    return studio.queue_panel.rows[job_id]


def test_templates_cover_the_categories_and_carry_ovi_tags():
    assert len(TEMPLATES) >= 16 and set(CATEGORIES) == {"nature", "urban", "abstract", "character"}
    for t in TEMPLATES:
        assert t.prompt.count("<AUDCAP>") == 1 and t.prompt.rstrip().endswith("<ENDAUDCAP>"), t.title
        assert t.prompt.count("<S>") == t.prompt.count("<E>")
    tiny = [t for t in TEMPLATES if t.tiny_vocabulary]
    assert "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>" in [t.prompt for t in tiny]
    speech = next(t for t in TEMPLATES if "<S>" in t.prompt)
    # Into a prompt of the user's own: the scene stays, the template's speech and caption replace the old caption.
    merged = insert_template("A cat on a sofa. <AUDCAP>purring<ENDAUDCAP>", speech)
    assert merged.startswith("A cat on a sofa. <S>") and merged.count("<AUDCAP>") == 1 and "purring" not in merged
    assert durations("960x960_5s") == {"5 s": "960x960_5s", "10 s": "960x960_10s"}
    assert list(durations("tiny")) == ["0.7 s"]


def test_submit_stores_exactly_the_form_settings(studio):
    f = studio.form
    f.category.value = "abstract"
    f.template.value = "Blue square, low tone (tiny model)"
    f.insert.click()
    f.negative_prompt.value = "blur"
    f.audio_negative_prompt.value = "hiss"
    f.resolution.value = (704, 1280)
    f.video_guidance.value = 5.5
    f.audio_guidance.value = 2.0
    f.solver.value = "euler"
    f.steps.value = 6
    f.seed.value = 42
    f.lora_path.value = "adapters/style.safetensors"
    f.lora_weight.value = 0.5
    f.lora_add.click()
    f.priority.value = 3
    f.submit.click()
    assert "Error" not in studio.message.value, studio.message.value
    [job] = studio.queue.list()
    assert job["priority"] == 3 and job["state"] == "queued"
    assert job["request"] == {
        "prompt": "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>", "mode": "t2v", "seed": 42,
        "negative_prompt": "blur", "audio_negative_prompt": "hiss", "steps": 6, "solver": "euler",
        "video_guidance_scale": 5.5, "audio_guidance_scale": 2.0, "height_width": [704, 1280],
        "loras": [{"path": "adapters/style.safetensors", "weight": 0.5, "name": "style", "merge": True}],
        "lightning": False}
    assert job["id"] in studio.queue_panel.rows  # the panel shows it at once

    f.lightning.value = True  # the Lightning preset: few steps
    f.random_each.value = True
    f.submit.click()
    second = studio.queue.get(job["id"] + 1)["request"]
    assert second["lightning"] is True and second["steps"] == 4


def test_i2v_upload_is_stored_and_referenced(studio, tmp_path):
    from PIL import Image
    import datetime
    import io
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    f = studio.form
    f.mode.value = "i2v"
    f.submit.click()
    assert "needs an image" in studio.message.value and not studio.queue.list()
    f.image.value = ({"name": "red.png", "type": "image/png", "size": len(buf.getvalue()),
                      "content": memoryview(buf.getvalue()),
                      "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    f.submit.click()
    [job] = studio.queue.list()
    path = job["request"]["image"]
    assert job["request"]["mode"] == "i2v" and open(path, "rb").read() == buf.getvalue()
    assert str(studio.upload_dir) in path


def test_panel_cancel_retry_move_change_the_store(tmp_path):
    db = tmp_path / "queue.db"
    with JobQueue(db) as q:
        a, b, c = (q.submit({"prompt": p}) for p in ("first", "second", "third"))
    studio = Studio(db, autostart=False, engine_factory=fake_factory)  # a fresh kernel: it reads the store
    try:
        order = lambda: [j["id"] for j in studio.queue.list("queued")]  # noqa: E731
        assert order() == [a, b, c] and set(studio.queue_panel.rows) == {a, b, c}
        studio.queue_panel.rows[c].up.click()
        assert order() == [a, c, b]
        studio.queue_panel.rows[a].down.click()
        assert order() == [c, a, b]
        studio.queue_panel.rows[a].cancel.click()
        assert studio.queue.get(a)["state"] == "cancelled"
        assert studio.queue_panel.rows[a].retry.disabled is False
        studio.queue_panel.rows[a].retry.click()
        assert studio.queue.get(a)["state"] == "queued" and order() == [c, b, a]
        studio.queue_panel.pause_button.click()
        assert studio.queue.paused and "paused" in studio.queue_panel.summary.value
        studio.queue_panel.resume_button.click()
        assert not studio.queue.paused
        studio.queue_panel.rows[b].retry.click()  # refused (queued): shown, not raised
        assert "only failed, cancelled or lost jobs can be retried" in studio.message.value
    finally:
        studio.close()


def test_failing_job_shows_its_error(studio):
    studio.form.prompt.value = "please FAIL here <AUDCAP>x<ENDAUDCAP>"
    studio.form.steps.value = 4
    studio.form.submit.click()
    [job] = studio.queue.list()
    Runner(studio.queue, engine_factory=fake_factory).run(until_empty=True)
    studio.refresh(studio.queue.events(job_id=job["id"]))
    row = studio.queue_panel.rows[job["id"]]
    assert "fake engine told to fail" in row.error.value and "failed" in row.state.value
    assert f"job #{job['id']} failed" in studio.message.value


def test_watcher_follows_the_runner_and_engine_panel_starts_and_stops(studio):
    seen = threading.Event()
    refresh = studio.refresh

    def watched(events=None):
        refresh(events)
        if any(e["kind"] == "done" for e in events or []):
            seen.set()
    studio.refresh = watched
    studio.form.prompt.value = "a quick one"
    studio.form.steps.value = 2
    studio.form.generate_now.click()
    [job] = studio.queue.list()
    job_id = job["id"]
    assert studio.engine_panel.running
    assert seen.wait(30), "the watcher never saw the job finish"
    assert "done" in studio.queue_panel.rows[job_id].state.value
    assert studio.queue_panel.rows[job_id].progress.value == 1.0
    studio.engine_panel.stop_button.click()
    assert not studio.engine_panel.running and "stopped" in studio.engine_panel.status.value


def test_engine_panel_settings_become_engine_overrides(studio, tiny_ckpt):
    from ovi.runtime import WorkerGroup
    panel = studio.engine_panel
    panel.sp.value, panel.scheme.value, panel.cfg_parallel.value = 2, "upstream", True
    assert panel.overrides() == {"cfg_parallel": True, "attention_backend": "auto", "sp_size": 2,
                                 "use_optimized_comms": False, "enable_async_comms": False}
    panel.sp.value, panel.cfg_parallel.value, panel.fsdp.value = None, False, "FULL_SHARD"
    panel.fixed_factory = None
    # FSDP shards through a process group even on one rank: the panel's factory starts a WorkerGroup.
    with panel.engine_factory()({"config": None, "engine": {"model_name": "tiny", "ckpt_dir": str(tiny_ckpt)}}) as group:
        assert isinstance(group, WorkerGroup) and group.world_size == 1
        assert group.stats()[0]["memory"]["strategy"] == "FULL_SHARD"


def test_real_tiny_generation_reaches_the_gallery_and_a_missing_lora_fails_its_job(tmp_path, tiny_ckpt):
    studio = Studio(tmp_path / "queue.db", engine={"model_name": "tiny", "ckpt_dir": str(tiny_ckpt)}, autostart=False, poll=0.05)
    try:
        studio.form.steps.value = 2
        good = studio.submit()
        studio.form.lora_path.value = "adapters/missing.safetensors"
        studio.form.lora_add.click()
        lora = studio.submit()
        assert studio.queue.get(good)["request"]["engine"] == {"model_name": "tiny", "ckpt_dir": str(tiny_ckpt)}
        runner = studio.engine_panel.start()
        for job_id in (good, lora):
            for _ in studio.queue.subscribe(job_id=job_id, since=0, until_finished=True, timeout=120):
                pass
        assert studio.queue.get(good)["state"] == "done", studio.queue.get(good)["error"]
        studio.refresh()
        [card] = studio.gallery.cards.values()
        assert card.video.value[4:8] == b"ftyp" and card.audio.value[:4] == b"RIFF"
        assert card.sidecar["steps"] == 2 and "attention_backend" in card.sidecar
        error = studio.queue_panel.rows[lora].error.value
        assert "InputError: LoRA" in error and "file not found" in error and "missing.safetensors" in error
        assert "last clip" in studio.engine_panel.info.value and runner.engine is not None
    finally:
        studio.close()


def test_duration_list_offers_window_multiples_and_is_submitted(studio):
    from ovi.pipeline.windows import spec_layout
    from ovi.request import MAX_DURATION_SECONDS
    from ovi.specs import MODEL_SPECS
    from widgets.catalog import long_durations
    spec = MODEL_SPECS[studio.config.model_name]
    options = long_durations(studio.config.model_name)
    assert options[0][1] is None and "the model's clip" in options[0][0]
    for n, (label, seconds) in enumerate(options[1:], start=2):
        lay = spec_layout(spec, seconds)  # n x exactly: n windows, no extra one for the overlap
        assert lay.windows == n and f"{n} windows" in label and 0 < seconds <= MAX_DURATION_SECONDS
        assert lay.num_frames == spec.num_frames + (n - 1) * (lay.video_starts[1] - lay.video_starts[0]) * 4
    step = options[-1][1] - options[-2][1]  # one more window: past the maximum, so the list ends here
    assert options[-1][1] + step > MAX_DURATION_SECONDS >= options[-1][1]
    # The 5 s model family: its Window list picks the checkpoint, the Duration list follows it.
    assert [s for _, s in long_durations("960x960_10s")][:3] == [None, 20.0417, 30.0417]

    f = studio.form
    assert f.duration.value is None and f.duration.options == tuple(options)
    f.submit.click()
    assert "duration" not in studio.queue.list()[-1]["request"]  # the model's own length: left out
    f.duration.index = 2
    f.submit.click()
    assert studio.queue.list()[-1]["request"]["duration"] == options[2][1]


def test_status_line_says_what_is_true_once_the_jobs_are_done(studio):
    studio.form.steps.value = 2
    first = studio.submit()
    second = studio.generate_now()
    assert f"job #{second} is next" in studio.message.value and "the runner is working" in studio.message.value
    for job_id in (first, second):
        for _ in studio.queue.subscribe(job_id=job_id, since=0, until_finished=True, timeout=60):
            pass
    studio.refresh()
    text = studio.message.value
    assert f"job #{second} done" in text and "nothing left to run; the runner is idle" in text, text
    assert "is next" not in text and "is working" not in text
    # While other work remains, the line names it; a stopped runner is said to be stopped.
    studio.engine_panel.stop(wait=True)
    third = studio.submit()
    studio.show("-", about=second)
    studio.refresh()
    assert f"job #{second} done; 1 queued (runner stopped" in studio.message.value
    assert studio.queue.get(third)["state"] == "queued"


def test_extend_without_saved_latents_is_refused_in_the_widget(studio):
    studio.form.steps.value = 2
    job_id = studio.submit()
    Runner(studio.queue, engine_factory=fake_factory).run(until_empty=True)  # the fake writes no latents
    studio.refresh()
    card = studio.gallery.cards[job_id]
    card.extend.click()
    message = studio.message.value
    assert "ovi-message-error" in message and f"cannot extend job #{job_id}" in message, message
    assert "latents are not saved" in message
    assert [j["id"] for j in studio.queue.list()] == [job_id]  # nothing queued


def test_extend_button_queues_a_longer_clip_through_the_runner(tmp_path):
    """The trained default, for real: Extend on a card queues a job that continues the clip; the new clip
    is a card of its own, longer, and its first part is the old clip's latents, unchanged."""
    from safetensors.torch import load_file

    from ovi.pipeline.windows import clip_files
    from ovi.runtime.runner import make_engine_factory
    studio = Studio(tmp_path / "queue.db", autostart=False, poll=0.05)
    try:
        f = studio.form
        f.prompt.value = "A red circle moves left. <AUDCAP>a high tone<ENDAUDCAP>"
        f.steps.value = 2
        first = studio.submit()
        runner = Runner(studio.queue, engine_factory=make_engine_factory())
        runner.run(until_empty=True)
        studio.refresh()
        assert studio.queue.get(first)["state"] == "done", studio.queue.get(first)["error"]
        f.prompt.value = "A red circle moves right. <AUDCAP>a high tone<ENDAUDCAP>"
        f.extend_with_prompt.value = True
        f.duration.index = 1  # 2x: two windows added
        studio.gallery.cards[first].extend.click()
        assert "Error" not in studio.message.value, studio.message.value
        [queued] = studio.queue.list("queued")
        old_mp4 = studio.queue.get(first)["result"]["mp4"]
        assert queued["request"]["extend"] == old_mp4 and queued["request"]["duration"] == 1.3333  # 2 x 16 frames
        assert queued["request"]["prompt"] == f.prompt.value
        assert f"extends #{first} by 2 windows" in studio.message.value
        runner.run(until_empty=True)
        runner.close()
        studio.refresh()
        job = studio.queue.get(queued["id"])
        assert job["state"] == "done", job["error"]
        assert set(studio.gallery.cards) == {first, job["id"]}  # a new card; the old one stays
        card = studio.gallery.cards[job["id"]]
        old, new = (load_file(str(clip_files(p)[0])) for p in (old_mp4, job["result"]["mp4"]))
        frames, tokens = old["video"].shape[1], old["audio"].shape[0]
        assert new["video"].shape[1] == frames + 2 * 4 and new["audio"].shape[0] > tokens  # two windows of 4 new
        assert (new["video"][:, :frames] == old["video"]).all() and (new["audio"][:tokens] == old["audio"]).all()
        assert card.sidecar["num_frames"] > studio.gallery.cards[first].sidecar["num_frames"]
        assert card.sidecar["prompt"] == f.prompt.value
    finally:
        studio.close()


def test_queue_panel_says_why_a_job_waits(tmp_path):
    """A job of a config no live runner serves shows the reason `ovi queue list` prints."""
    db = tmp_path / "queue.db"
    with JobQueue(db) as q:
        big = q.submit({"prompt": "big", "config": "960x960_10s"})
        small = q.submit({"prompt": "small", "config": "720x720_5s"})
        q.register_runner("host:1:abc", label="box24", serves=["720x720_5s"])
        assert q.why_waiting(q.list("queued")) == {big: "no runner serves 960x960_10s"}
    studio = Studio(db, autostart=False, engine_factory=fake_factory)
    try:
        rows = studio.queue_panel.rows
        assert "waiting: no runner serves 960x960_10s" in rows[big].timing.value
        assert "no runner serves" not in rows[small].timing.value  # its runner is alive
    finally:
        studio.close()
