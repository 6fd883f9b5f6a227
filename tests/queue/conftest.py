"""Queue fixtures: every queue test runs on both stores — a SQLite file and a real PostgreSQL
database (a throwaway server this session starts: initdb + pg_ctl on a free port; nothing mocked).
Missing server binaries fail the PostgreSQL tests with the install command, never skip them."""

import pytest

from ovi.queue import JobQueue


@pytest.fixture(scope="session")
def pg_server():
    from ovi.queue.pgtemp import TempPostgres

    server = TempPostgres().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request, tmp_path, monkeypatch):
    """A URL of a fresh, empty queue database of each store. A PostgreSQL queue's output root
    ($OVI_QUEUE_ROOT, for CLI commands and runners too) is tmp_path, as a SQLite file's folder is."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.db")
    monkeypatch.setenv("OVI_QUEUE_ROOT", str(tmp_path))
    return request.getfixturevalue("pg_server").create_database()


@pytest.fixture
def queue(queue_url, tmp_path):
    """A fresh JobQueue of each store; outputs under tmp_path."""
    q = JobQueue(queue_url, root=tmp_path)
    yield q
    q.close()
