"""StreamSlots: the contract of ``alfred_jobs.ports.StreamSlots``, on the fake and on DynamoDB."""

from __future__ import annotations

import time

from alfred_jobs.ports import StreamSlots
from tests.contract.support import Backend, uid

LEASE = 60.0


def slots_of(backend: Backend) -> StreamSlots:
    assert backend.deps.stream_slots is not None
    return backend.deps.stream_slots


def live() -> float:
    return time.time() + LEASE


def test_a_user_holds_at_most_cap_slots_and_another_user_has_its_own(backend: Backend) -> None:
    slots, user, other = slots_of(backend), uid("user"), uid("user")
    assert slots.holders(user) == {}
    assert all(slots.take(user, f"h{i}", 3, live()) for i in range(3))
    assert not slots.take(user, "h3", 3, live()), "the cap is reached"
    assert set(slots.holders(user)) == {"h0", "h1", "h2"}
    assert slots.take(other, "h3", 3, live()), "another user's slots are its own"


def test_a_take_that_meets_its_own_slot_holds_it_once(backend: Backend) -> None:
    """The SDK's retry of a take that landed (its answer lost) must neither count it twice nor
    refuse it, even at the cap."""
    slots, user = slots_of(backend), uid("user")
    assert slots.take(user, "a", 2, live())
    assert slots.take(user, "b", 2, live())
    later = live() + 5
    assert slots.take(user, "b", 2, later), "our own slot, taken again at the cap"
    assert slots.holders(user) == {"a": slots.holders(user)["a"], "b": later}


def test_release_frees_a_slot_and_is_idempotent(backend: Backend) -> None:
    slots, user = slots_of(backend), uid("user")
    assert slots.take(user, "a", 1, live())
    slots.release(user, "a")
    slots.release(user, "a")
    slots.release(uid("user"), "nobody")  # a user with no item: no error, nothing created
    assert slots.holders(user) == {}
    assert slots.take(user, "b", 1, live())


def test_an_expired_slot_reads_as_gone_and_its_room_is_taken(backend: Backend) -> None:
    """TTL deletes late: a lease that ran out is free whether or not its item is still there."""
    slots, user = slots_of(backend), uid("user")
    assert slots.take(user, "dead", 2, time.time() - 1)  # a process that died a lease period ago
    assert slots.take(user, "alive", 2, live())
    assert set(slots.holders(user)) == {"alive"}
    assert slots.take(user, "new", 2, live()), "the expired slot is cleared for the new one"
    assert not slots.take(user, "more", 2, live())
    assert set(slots.holders(user)) == {"alive", "new"}
    assert not slots.renew(user, "dead", live()), "the dead holder's slot is gone for good"


def test_renew_extends_a_held_slot_and_refuses_a_lost_one(backend: Backend) -> None:
    slots, user = slots_of(backend), uid("user")
    assert slots.take(user, "a", 2, time.time() - 1)
    # Expired but not cleared (nobody needed the room): still ours, and the renewal keeps it.
    later = live()
    assert slots.renew(user, "a", later)
    assert slots.holders(user) == {"a": later}
    slots.release(user, "a")
    assert not slots.renew(user, "a", live()), "released: nothing to renew"
    assert not slots.renew(uid("user"), "a", live()), "a user with no slots"
    assert slots.holders(user) == {}


def test_expired_slots_never_push_the_live_ones_past_the_cap(backend: Backend) -> None:
    slots, user = slots_of(backend), uid("user")
    for i in range(3):
        assert slots.take(user, f"old{i}", 3, time.time() - 1)
    assert all(slots.take(user, f"new{i}", 3, live()) for i in range(3))
    assert not slots.take(user, "one-more", 3, live())
    assert set(slots.holders(user)) == {"new0", "new1", "new2"}
