"""In-memory fakes of the Web Push ports, for unit tests and ``memory_deps``: the same rules as
``adapters/push.py`` (subscriptions keyed by endpoint, at most ``limit`` per user with the oldest
dropped; an endpoint belongs to the user who subscribed it last; at most one push per (job, seq))."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from alfred_jobs.clock import Clock, SystemClock
from alfred_jobs.domain.push import PushMessage, PushSubscription


class MemoryPushStore:
    def __init__(self, limit: int = 10, clock: Clock | None = None) -> None:
        self.limit = limit
        self.items: dict[str, dict[str, tuple[float, PushSubscription]]] = {}
        self.owners: dict[str, str] = {}  # endpoint -> the user it belongs to
        self.lock = threading.Lock()
        self._tick = 0.0
        self.clock = clock or SystemClock()

    def add(self, user_id: str, subscription: PushSubscription) -> None:
        with self.lock:
            # Strictly increasing times, so "oldest" is well defined within one clock tick too.
            self._tick = max(self.clock.now(), self._tick + 1e-6)
            # An endpoint is one browser: subscribed by another user, it is theirs now (a shared
            # device where someone else signed in), and leaves the previous owner's list.
            previous = self.owners.get(subscription.endpoint)
            if previous is not None and previous != user_id:
                self.items.get(previous, {}).pop(subscription.endpoint, None)
            self.owners[subscription.endpoint] = user_id
            subs = self.items.setdefault(user_id, {})
            subs[subscription.endpoint] = (self._tick, subscription)
            for endpoint, _ in sorted(subs.items(), key=lambda kv: kv[1][0])[: max(0, len(subs) - self.limit)]:
                del subs[endpoint]
                if self.owners.get(endpoint) == user_id:
                    del self.owners[endpoint]

    def remove(self, user_id: str, endpoint: str) -> None:
        with self.lock:
            self.items.get(user_id, {}).pop(endpoint, None)
            if self.owners.get(endpoint) == user_id:
                del self.owners[endpoint]

    def list(self, user_id: str) -> list[PushSubscription]:
        with self.lock:
            return [s for _, s in sorted(self.items.get(user_id, {}).values(), key=lambda ts: ts[0])
                    if self.owners.get(s.endpoint) == user_id]

    def owner(self, endpoint: str) -> str | None:
        """Whose the endpoint is now (the simulator's truth)."""
        with self.lock:
            return self.owners.get(endpoint)


class MemoryClaims:
    """``Claims`` in memory: each (job, seq) once."""

    def __init__(self) -> None:
        self.claimed: set[tuple[str, int]] = set()
        self.lock = threading.Lock()

    def claim(self, job_id: str, seq: int, expires_at: int) -> bool:
        with self.lock:
            if (job_id, seq) in self.claimed:
                return False
            self.claimed.add((job_id, seq))
            return True


@dataclass
class RecordingNotifier:
    """``Notifier`` that records: ``calls`` every call, ``messages`` what would be pushed (the
    first call per (job, seq), as the real notifier's claim allows)."""

    calls: list[tuple[str, PushMessage]] = field(default_factory=list)
    messages: list[tuple[str, PushMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def notify(self, user_id: str, message: PushMessage) -> None:
        with self.lock:
            self.calls.append((user_id, message))
            if all((m.job_id, m.seq) != (message.job_id, message.seq) for _, m in self.messages):
                self.messages.append((user_id, message))

    def for_job(self, job_id: str) -> list[PushMessage]:
        with self.lock:
            return [m for _, m in self.messages if m.job_id == job_id]
