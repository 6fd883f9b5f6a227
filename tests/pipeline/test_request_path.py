"""One request's path: the Studio's form -> the queue's store -> the Runner -> a rank -> the sidecar.

Three conversions are needed and no more: the JSON at the store (to_dict when submitted, from_dict when the
Runner takes the job), the pickle across to the ranks, and `fill` (plan() resolving it against the config).
coerce at the public entry points hands a GenerateRequest on as it is, so the object the rank unpickles is
the one its Engine plans. The sidecar carries the resolved request's per-clip fields (its `to_dict()`
less `config`/`engine`/`out`; three fields in the richer form they took, see Engine.sidecar)."""

import json
import pickle
from collections import Counter

import pytest

import ovi
from ovi.pipeline.engine import Engine
from ovi.queue import JobQueue
from ovi.request import GenerateRequest
from ovi.runtime.runner import Runner
from widgets.form import GenerateForm

# Sidecar fields that record a resolved field in a richer form (Engine.sidecar's docstring).
RECORDED_AS_APPLIED = {"loras", "lightning", "slg_layer"}


class AsAWorkerGroup:
    """The Runner's engine, doing what WorkerGroup.generate + a rank do with a request, in this process:
    coerce at the entry point, pickle it across, and the rank's Engine.generate on what it unpickled."""

    def __init__(self, engine):
        self.engine, self.received = engine, []

    def generate(self, request, *, progress=None):
        payload = pickle.dumps(GenerateRequest.coerce(request))
        unpickled = pickle.loads(payload)
        self.received.append(unpickled)
        return self.engine.generate(unpickled, progress=progress)

    def close(self):
        pass


@pytest.fixture
def counted(monkeypatch):
    """Counts the request's conversions (the real methods still run)."""
    counts = Counter()

    def count(name, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(GenerateRequest, "to_dict", count("to_dict", GenerateRequest.to_dict))
    monkeypatch.setattr(GenerateRequest, "fill", count("fill", GenerateRequest.fill))
    real_from_dict = GenerateRequest.from_dict.__func__

    def from_dict(cls, data, **kw):
        if isinstance(data, dict):
            counts["from_dict"] += 1
        return real_from_dict(cls, data, **kw)
    monkeypatch.setattr(GenerateRequest, "from_dict", classmethod(from_dict))
    monkeypatch.setattr(GenerateRequest, "__reduce_ex__",
                        count("pickle", lambda self, protocol: object.__reduce_ex__(self, protocol)), raising=False)
    return counts


def test_a_request_from_the_form_reaches_the_sidecar_in_three_conversions(tmp_path, counted, monkeypatch):
    cfg = ovi.load_config(None, sample_steps=2)
    engine = AsAWorkerGroup(Engine.from_config(cfg))
    plans, before_sidecar = [], []
    real_plan, real_sidecar = Engine._plan, Engine.sidecar
    monkeypatch.setattr(Engine, "_plan", lambda self, request: plans.append(real_plan(self, request)) or plans[-1])
    monkeypatch.setattr(Engine, "sidecar", lambda self, *a, **kw: before_sidecar.append(Counter(counted))
                        or real_sidecar(self, *a, **kw))

    form = GenerateForm(cfg, config_name="tiny")
    form.seed.value, form.steps.value = 11, 2
    request = form.request(tmp_path / "uploads")
    assert not counted  # making the request converts nothing

    queue = JobQueue(tmp_path / "queue.db")
    try:
        job_id = queue.submit(request)
        runner = Runner(queue, engine_factory=lambda key: engine, out_dir=tmp_path / "out")
        runner.run(until_empty=True)
        job = queue.get(job_id)
    finally:
        queue.close()
    assert job["state"] == "done", job["error"]

    # Up to the sidecar: JSON at the store (out once, in once), one pickle to the ranks, one fill: three
    # conversions. The sidecar then writes the submitted and the resolved request out (to_dict each).
    assert before_sidecar == [{"to_dict": 1, "from_dict": 1, "pickle": 1, "fill": 1}], before_sidecar
    assert counted == {"to_dict": 3, "from_dict": 1, "pickle": 1, "fill": 1}, counted
    (planned,) = plans
    assert planned.request is engine.received[0]  # the rank's Engine planned what it unpickled, as it was
    assert planned.request == request             # ... and that is what the form made

    sidecar = json.loads(open(job["result"]["json"]).read())
    resolved = planned.resolved.per_clip_settings
    assert {k: v for k, v in sidecar.items() if k in resolved and k not in RECORDED_AS_APPLIED} == \
        {k: v for k, v in resolved.items() if k not in RECORDED_AS_APPLIED}
    assert set(resolved) - set(sidecar) == set()
    assert sidecar["request"] == request.to_dict() and request.config is not None  # the form names its config
    assert (sidecar["steps"], sidecar["seed"], sidecar["height_width"]) == (2, 11, [128, 128])
