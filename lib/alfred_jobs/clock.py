"""Time and background work, as ports: the one place the runtime reads the clock or starts a thread.

Why: the simulator (``alfred_tools.sim``) runs the real runtime in virtual time, switching between
its actors at every store, queue and clock call, so a seed decides the whole history and replays
it exactly. That only works if nothing reads the wall clock or starts a thread behind its back.
Everything that does goes through a ``Clock`` and a ``Tasks`` held by ``Deps`` (the defaults here
are the real ones); ``tests/unit/test_clock_ports.py`` checks that no other runtime module
imports ``time``, ``threading`` or ``concurrent.futures`` for either.

- ``Clock``: ``now`` (epoch seconds, for records), ``monotonic`` (for intervals), ``sleep``, and
  ``signal()``: a flag another task sets, waited on with a timeout (the lease keeper's stop).
- ``new_id``: a fresh random id (32 hex digits) for the ids that decide an order (a job's id
  breaks ties in its gate's submit order) or name an owner; randomness is nondeterminism too.
- ``Tasks``: ``submit`` runs a function beside the caller and returns a ``Pending`` (a future's
  shape); ``start`` runs a long-lived loop (the lease keeper) and returns a ``Handle``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Signal(Protocol):
    """A flag set once by one task and waited on by another (``threading.Event``'s shape)."""

    def set(self) -> None:
        """Set the flag and wake every waiter."""

    def is_set(self) -> bool:
        """Whether the flag is set."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set or ``timeout`` seconds pass; returns the flag."""


class Pending(Protocol[T_co]):
    """The result of work submitted to ``Tasks`` (``concurrent.futures.Future``'s shape)."""

    def result(self, timeout: float | None = None) -> T_co:
        """Wait for the work and return its value, or raise its exception; ``TimeoutError`` if
        ``timeout`` seconds pass first (the work goes on: the push resolver and the notifier's
        budget rely on this)."""

    def done(self) -> bool:
        """Whether the work has finished."""


class Handle(Protocol):
    """A long-lived task started with ``Tasks.start``."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for the task to end (at most ``timeout``); returns at once when called from the
        task itself."""

    def is_alive(self) -> bool:
        """Whether the task is still running."""


class Clock(Protocol):
    """Wall time, intervals, sleeping and waiting."""

    def now(self) -> float:
        """Seconds since the epoch (what records and events store)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and deadlines)."""

    def sleep(self, seconds: float) -> None:
        """Pause the calling task."""

    def signal(self) -> Signal:
        """A new, unset flag whose ``wait`` runs on this clock."""


class Tasks(Protocol):
    """One way to start background work."""

    def submit(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        """Run ``fn(*args)`` beside the caller (a bounded pool)."""

    def start(self, fn: Callable[[], None], name: str) -> Handle:
        """Run ``fn`` as a long-lived background task (a daemon: it never keeps a process up)."""


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def signal(self) -> Signal:
        return threading.Event()


class _Thread:
    def __init__(self, fn: Callable[[], None], name: str) -> None:
        self._thread = threading.Thread(target=fn, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()


class ThreadTasks:
    """Real threads: a pool for ``submit`` (made on first use), a thread per ``start``."""

    def __init__(self, max_workers: int = 8, name: str = "bg") -> None:
        self.max_workers = max_workers
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=self.name)
        return self._pool.submit(fn, *args)

    def start(self, fn: Callable[[], None], name: str) -> Handle:
        return _Thread(fn, name)


def random_id() -> str:
    """A fresh random id: 32 hex digits (a uuid4)."""
    return uuid.uuid4().hex
