"""QueueChanges: the server's event streams (SSE, WebSocket, Socket.IO) read the event log when the
queue changed, woken by the store, instead of on a timer.

One thread per server blocks in the store's `wait_for_events` — PostgreSQL's LISTEN/NOTIFY, which
carries a change made on any machine; SQLite: a commit in this process at once, another process's
by its `data_version` — and wakes every stream awaiting it. One thread rather than one blocking
wait per stream: asyncio's default thread pool is small (CPUs + 4), and idle streams holding it
would starve the REST routes that run their queue calls there.

A stream takes `count` before it reads the log and passes it to `wait`, so a change that lands
between its read and its wait wakes it at once rather than being slept through.
"""

from __future__ import annotations

import asyncio
import logging
import threading

log = logging.getLogger("ovi.server")

STORE_WAIT_SECONDS = 1.0  # the thread's longest wait in the store: how soon it notices a shutdown


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class QueueChanges:
    """Wake-ups of one queue store for the async streams of one server; ends once `stopping` is
    set (and starts again on the next `wait`)."""

    def __init__(self, store, stopping: threading.Event):
        self._store = store
        self._stopping = stopping
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()
        self._thread: threading.Thread | None = None
        self.count = 0  # changes seen so far

    async def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the queue changed after `seen` (a `count` read before the caller's last read
        of the log): True; False after `timeout` seconds without a change."""
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiter = (loop, future)
        with self._lock:
            if self.count != seen:
                return True
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def wake_all(self) -> None:
        """Count a change and wake every waiting stream (from any thread)."""
        with self._lock:
            self.count += 1
            waiters, self._waiters = self._waiters, set()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that stream's loop has closed
                pass

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (`stopping` is set), so the store can be closed: closing a
        SQLite connection while this thread runs a statement on it crashes the process."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ovi-server-changes",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        mark = None
        try:
            while not self._stopping.is_set():
                try:
                    if mark is None:  # starting, or back after the store was away:
                        mark = self._store.event_mark()
                        self.wake_all()  # what changed meanwhile was not seen; read once
                    self._store.wait_for_events(self._stopping, STORE_WAIT_SECONDS, mark)
                    now = self._store.event_mark()
                except Exception as exc:  # the store is away (a restart): streams rescan meanwhile
                    if self._stopping.is_set():
                        break  # shutting down: the queue may be closed already
                    log.warning("queue change wake-ups paused: %s", exc)
                    mark = None
                    self._stopping.wait(STORE_WAIT_SECONDS)
                    continue
                if now != mark:
                    mark = now
                    self.wake_all()
        finally:
            self.wake_all()  # streams see the shutdown now
