"""Schemathesis over the server's own OpenAPI schema: every route, with the token, finds no 500 and
no response outside the schema (issue 20). Bounded (MAX_EXAMPLES per route) so the suite stays fast;
the count of cases run is printed. Event streams end at once here (the service is `stopping`), so
every case gets its answer; they are checked with the parameters schemathesis generates.

After the run, `GET /api/jobs` answers 200 and the jobs queued before it are all there, their
requests unchanged (routes may move, cancel or retry them, never lose or rewrite them)."""

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from ovi.queue import JobQueue
from ovi.server.rest import create_app

MAX_EXAMPLES = 40
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_ROOT = Path(tempfile.mkdtemp(prefix="ovi-schemathesis-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
QUEUE = JobQueue(_ROOT / "queue.db")
EARLIER = {QUEUE.submit({"prompt": f"earlier {i}", "seed": i}): {"prompt": f"earlier {i}", "seed": i}
           for i in range(3)}
APP = create_app(QUEUE, token=TOKEN)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers=AUTH)
CASES = {"count": 0, "operations": set()}


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_route_answers_500_or_breaks_its_schema(case):
    CASES["count"] += 1
    CASES["operations"].add(case.operation.label)
    APP.state.service.stopping.set()  # event streams answer and end at once (after the lifespan's start)
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error, response_schema_conformance,
                                                 content_type_conformance])


def test_after_the_fuzzing_every_earlier_job_is_intact(capsys):
    from fastapi.testclient import TestClient
    with TestClient(APP) as client:
        r = client.get("/api/jobs", params={"limit": 10000}, headers=AUTH)
    assert r.status_code == 200
    listed = {job["job_id"]: job["request"] for job in r.json()["jobs"]}
    assert all(listed[job_id] == request for job_id, request in EARLIER.items())
    with capsys.disabled():
        print(f"\nschemathesis: {CASES['count']} cases over {len(CASES['operations'])} operations "
              f"(max {MAX_EXAMPLES} each); {len(listed)} jobs listed afterwards")
    assert CASES["count"] >= len(CASES["operations"]) >= 15
