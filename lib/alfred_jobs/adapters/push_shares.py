"""The push sender's threads, shared fairly between users (issue 26).

One pool of ``threads`` sends every user's pushes. A user may have at most
``max(1, threads // (active users + 1))`` of them at a time, counted when each send would start
(a user is active while a send of theirs runs or waits): alone, half the pool; with others, less,
always leaving room for one more user. Their further sends wait in a queue of their own, not in
the pool's, so a user whose endpoints are slow (or hostile) waits behind themselves only: their
sends hold at most their share, each for at most its request's deadline, and the next user's
push starts at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from alfred_jobs.clock import Clock, Signal, Tasks


@dataclass
class _Send:
    fn: Callable[[], None]
    done: Signal


class FairShares:
    """Runs each user's sends on ``tasks`` (a pool of ``threads``), at most a share at a time."""

    def __init__(self, tasks: Tasks, clock: Clock, threads: int) -> None:
        self._tasks = tasks
        self._clock = clock
        self._threads = threads
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[_Send]] = {}

    def share(self, active: int) -> int:
        """How many sends one user may run while ``active`` users (themselves included) send."""
        return max(1, self._threads // (active + 1))

    def _active(self) -> int:
        return len(set(self._running) | set(self._waiting))

    def submit(self, user_id: str, fn: Callable[[], None]) -> Signal:
        """Run ``fn`` (which never raises) for ``user_id`` now or after their earlier sends; the
        signal is set when it has run."""
        send = _Send(fn, self._clock.signal())
        with self._lock:
            running = self._running.get(user_id, 0)
            self._running.setdefault(user_id, 0)  # counted as active before the share is read
            if running < self.share(self._active()):
                self._running[user_id] = running + 1
                start = True
            else:
                self._waiting.setdefault(user_id, deque()).append(send)
                start = False
        if start:
            self._tasks.submit(self._run, user_id, send)
        return send.done

    def _run(self, user_id: str, send: _Send) -> None:
        while True:
            try:
                send.fn()
            finally:
                send.done.set()
            with self._lock:
                queue = self._waiting.get(user_id)
                if queue and self._running[user_id] <= self.share(self._active()):
                    send = queue.popleft()  # the user's next send takes this thread
                    if not queue:
                        del self._waiting[user_id]
                    continue
                self._running[user_id] -= 1
                if not self._running[user_id] and not queue:
                    del self._running[user_id]
            return

    def in_flight(self, user_id: str) -> int:
        with self._lock:
            return self._running.get(user_id, 0)
