"""Stopping a process that runs jobs (`ovi queue run`, `ovi queue serve --run`) on SIGTERM / SIGINT
without losing or failing the running job.

First signal: the Runner stops the running job at its next denoising step and hands it back to the
queue (`queued`, the interrupted run not counted as an attempt), then the process winds down. A
watchdog ends the process `grace` seconds after the signal if winding down hangs (a weight load or a
step that does not return). A second signal ends the process at once. A job left `running` by such a
hard exit is found when a runner next starts (its process is gone) and re-queued, as after a crash.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

# Below the 10 s that service managers commonly allow between SIGTERM and SIGKILL.
SHUTDOWN_GRACE_SECONDS = 8.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _say(text: str) -> None:
    # os.write, not print: a signal handler may interrupt the main thread inside a print.
    try:
        os.write(2, f"ovi: {text}\n".encode())
    except OSError:
        pass


class GracefulShutdown:
    """Signal policy for a job-running process. `request(signum)` is what a handler calls;
    `handling_signals()` installs it for SIGINT and SIGTERM (main thread only). `on_first`
    callables run on the first signal (e.g. interrupt a Runner, end event streams)."""

    def __init__(self, on_first: Callable[[], None] | None = None, *,
                 grace: float = SHUTDOWN_GRACE_SECONDS):
        self.grace = float(grace)
        self._on_first = [on_first] if on_first is not None else []
        self.signum: int | None = None

    def add(self, callback: Callable[[], None]) -> None:
        self._on_first.append(callback)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal's number once one arrived (the shell's convention), else 0."""
        return 0 if self.signum is None else 128 + self.signum

    def request(self, signum: int) -> None:
        if self.signum is not None:
            _say(f"{signal.Signals(signum).name} again: exiting now")
            os._exit(128 + signum)
        self.signum = signum
        _say(f"{signal.Signals(signum).name}: stopping; the running job goes back to the queue at its "
             f"next step (send the signal again to exit at once)")
        for callback in self._on_first:
            callback()
        watchdog = threading.Timer(self.grace, self._expire)
        watchdog.daemon = True
        watchdog.start()

    def _expire(self) -> None:
        _say(f"still stopping {self.grace:.0f}s after the signal: exiting now")
        os._exit(self.exit_code)

    @contextmanager
    def handling_signals(self) -> Iterator["GracefulShutdown"]:
        previous = {sig: signal.signal(sig, lambda signum, frame: self.request(signum))
                    for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def interrupt_runner(runner) -> Callable[[], None]:
    """An `on_first` callback: stop `runner` at its job's next step, without waiting for it."""
    return lambda: runner.stop(interrupt=True, timeout=0)
