"""`ovi doctor --queue URL` / `check_queue`: store, schema version, jobs and the runners seen."""

import pytest

from ovi.errors import InputError
from ovi.queue import JobQueue
from ovi.queue.check import check_queue, format_queue_report


def test_check_queue_reports_schema_jobs_and_runners(queue_url):
    q = JobQueue(queue_url)
    q.submit({"prompt": "a"})
    q.register_runner("host:1:abc", label="gpu-node-1", serves=["960x960_10s"])
    q.register_runner("host:2:def", label="old-box", serves=None)
    with q.store.write() as tx:  # old-box last beat 10 minutes ago
        tx.touch_runner("host:2:def", 0.0, None)
    report = check_queue(queue_url)
    assert report["store"] == ("postgres" if queue_url.startswith("postgresql://") else "sqlite")
    assert report["schema_version"] == q.store.schema_version() >= 1
    assert report["jobs"]["queued"] == 1
    live = {r["label"]: r["live"] for r in report["runners"]}
    assert live == {"gpu-node-1": True, "old-box": False}
    text = format_queue_report(report)
    assert "1 live runner(s) of 2 seen" in text and "serves 960x960_10s" in text and "(silent)" in text
    # A queued job of the default config waits for a runner that serves it.
    assert q.waiting_reasons() == {"default": "no runner serves default"}
    q.close()


def test_doctor_refuses_a_bad_queue_url_with_exit_2(capsys):
    from ovi.cli import main

    assert main(["doctor", "--queue", "postgresql://ovi:pw@127.0.0.1:1/ovi"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the PostgreSQL queue at 127.0.0.1:1" in err and "pw@" not in err


def test_check_queue_on_a_file_of_another_program(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(InputError, match="another program"):
        check_queue(str(path))
