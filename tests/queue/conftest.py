import sys
from pathlib import Path

import pytest

# `tests.queue.fakes` must import the same way here and in runner subprocesses (cwd = repo root).
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def queue(tmp_path):
    from ovi.queue import JobQueue

    q = JobQueue(tmp_path / "queue.db")
    yield q
    q.close()
