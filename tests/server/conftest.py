"""A live API server (uvicorn in a thread, a real tiny engine), the npm Socket.IO client, and a Python
Socket.IO client that collects `job_update`s."""

import asyncio
import shutil
import subprocess
import threading

import pytest
import socketio
import uvicorn

from ovi.config import CONFIG_DIR
from ovi.server.rest import create_app
from tests.launcher import ROOT, free_port, wait_until

NODE_DIR = ROOT / "tests" / "node"
TOKEN = "s3cret"
CONFIG = "tiny_fast"


class LiveServer:
    def __init__(self, app):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="live-api", daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 60, "the server to start")
        assert self.server.started, "the API server did not start"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the API server did not stop"


async def connect_job_updates(url: str, **connect_kwargs):
    """A connected python-socketio client that appends every `job_update` to `updates` and sets
    `changed` -> (client, updates, changed)."""
    client = socketio.AsyncClient(reconnection=False)
    updates, changed = [], asyncio.Event()

    @client.on("job_update")
    async def on_update(data):
        updates.append(data)
        changed.set()

    await client.connect(url, **connect_kwargs)
    return client, updates, changed


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_ckpt):
    """`ovi queue serve --run --token` as a user starts it, with one named tiny config."""
    root = tmp_path_factory.mktemp("served")
    (root / "configs").mkdir()
    tiny = (CONFIG_DIR / "tiny.yaml").read_text()
    (root / "configs" / f"{CONFIG}.yaml").write_text(f"{tiny}\nmodel_name: tiny\nckpt_dir: {tiny_ckpt}\nsample_steps: 3\n")
    with LiveServer(create_app(root / "queue.db", run=True, token=TOKEN)) as server:
        yield server


@pytest.fixture(scope="session")
def socketio_client_js():
    """node + the script using the npm `socket.io-client` package, installed here on first use
    (tests/node/package-lock.json pins it). No npm or no registry: the test fails, saying so."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the Socket.IO client test (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "socket.io-client" / "package.json").is_file():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"`npm ci` in {NODE_DIR} failed (is the npm registry reachable?):\n"
                        f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return node, NODE_DIR / "socketio_client.mjs"
