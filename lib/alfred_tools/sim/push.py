"""Web Push in the simulator (issue 26): browsers whose endpoint moves between users, and a
notifier that addresses each push as the real one does (the user's subscriptions, read from the
store through the wire), recording whose each endpoint was at that moment.

``push_only_to_the_owner`` (invariants.py) then checks every push went to the job's owner, and
to an endpoint that was that user's when the push was addressed (the store's truth, not the
reply of a read). What happens on the network after that (a subscribe landing while the push
is in flight) is out of any sender's hands and is not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alfred_jobs.adapters.push_memory import MemoryPushStore, RecordingNotifier
from alfred_jobs.domain.push import PushMessage, PushSubscription
from alfred_jobs.exceptions import StoreError
from alfred_tools.sim.kernel import Kernel
from alfred_tools.sim.store import Wire

DEVICES = 2  # browsers shared by the users (each one endpoint)
KEYS = ("BP" + "A" * 85, "A" * 22)


def device(n: int) -> PushSubscription:
    return PushSubscription(f"https://push.example.com/device{n}", *KEYS)


@dataclass
class Sent:
    user: str
    endpoint: str
    owner: str | None  # whose the endpoint was when the push was addressed
    message: PushMessage


@dataclass
class SimNotifier(RecordingNotifier):
    """``RecordingNotifier`` that also addresses each event's push once (the claim), to the
    subscriptions the store lists for the user, recording ``sent``."""

    wire: Wire | None = None
    store: MemoryPushStore | None = None
    sent: list[Sent] = field(default_factory=list)

    def notify(self, user_id: str, message: PushMessage) -> None:
        before = len(self.messages)
        super().notify(user_id, message)
        if len(self.messages) == before or self.wire is None or self.store is None:
            return  # not the first call for this event: the claim is taken
        store = self.store

        def addressed() -> list[tuple[str, str | None]]:
            return [(s.endpoint, store.owner(s.endpoint)) for s in store.list(user_id)]

        try:
            about = self.wire.about(user_id, message) if self.wire.labels else None
            for endpoint, owner in self.wire.call("push.list", False, addressed, about=about):
                self.sent.append(Sent(user_id, endpoint, owner, message))
        except StoreError:
            pass  # the notifier never raises: no push this time


def shared_devices(k: Kernel, push: Any, users: int, active: Callable[[], bool]) -> None:
    """A user signs in on one of the shared browsers now and then (subscribing its endpoint: it
    moves to them), or turns notifications off there, while ``active()``."""
    r = k.rng
    while active():
        k.sleep(r.uniform(5.0, 40.0))
        sub = device(r.randrange(DEVICES))
        user = f"user{r.randrange(users)}"
        try:
            if r.random() < 0.85:
                push.add(user, sub)
            else:
                push.remove(user, sub.endpoint)
        except StoreError:
            pass  # the page tries again on its next visit
