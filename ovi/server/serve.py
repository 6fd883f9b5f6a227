"""Serving the API with uvicorn, with the shutdown rules of ovi.runtime.shutdown.

uvicorn's own SIGTERM/SIGINT handling waits for open connections and then for the app's shutdown,
which waited for the running job to finish: with an SSE client attached or a long job, `serve --run`
never exited. Here the first signal also ends the event streams and stops the job at its next step
(back to the queue); a second signal, or the grace period running out, exits at once.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from ovi.runtime.shutdown import SHUTDOWN_GRACE_SECONDS, GracefulShutdown

# Open connections that outlive this (a client that ignores the close) are cut, so the app's own
# shutdown (handing the job back, closing ranks) still fits in the grace period.
CONNECTION_DRAIN_SECONDS = 3


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown: GracefulShutdown):
        super().__init__(config)
        self.shutdown_policy = shutdown

    def handle_exit(self, sig, frame) -> None:
        self.shutdown_policy.request(sig)  # a second signal exits inside this call
        super().handle_exit(sig, frame)


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> int:
    """Run `app` (from ovi.server.rest.create_app) until SIGINT/SIGTERM; returns the exit code."""
    shutdown = GracefulShutdown(app.state.service.begin_shutdown, grace=SHUTDOWN_GRACE_SECONDS)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=CONNECTION_DRAIN_SECONDS)
    _Server(config, shutdown).run()
    return shutdown.exit_code
