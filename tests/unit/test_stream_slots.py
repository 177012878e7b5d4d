"""The per-user stream cap across processes (issue 26): two stream apps (two processes, as far as
the cap can tell: a hub each) on one slot store stop one user's streams at the cap together, a
stream's heartbeat renews its slot, a slot lost for good ends its stream, an ended stream gives
its slot back. Real processes and SIGKILL: tests/integration/test_stream_slots.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from alfred_jobs.adapters.memory import MemoryStreamSlots, memory_deps
from alfred_jobs.domain.models import ChatRequest
from alfred_jobs.entry.http.stream_api import create_stream_app
from alfred_jobs.exceptions import StoreError, TooManyRequests
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.stream_slots import StreamCap
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock
from tests.support.stack import wait_until

SETTINGS = Settings(max_streams_per_user=3, max_streams_per_token=3, max_wait_seconds=5,
                    stream_slot_lease_seconds=0.6)


def bearer(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_local_token(SETTINGS, user)}"}


@pytest.fixture
def deps() -> Deps:
    return memory_deps(SETTINGS)


@pytest.fixture
def two(deps: Deps) -> Iterator[tuple[TestClient, TestClient]]:
    """Two stream apps on one store: a hub each, so only the slots count across them."""
    with TestClient(create_stream_app(deps, heartbeat_seconds=30)) as a, \
            TestClient(create_stream_app(deps, heartbeat_seconds=30)) as b:
        yield a, b


def slots(deps: Deps) -> MemoryStreamSlots:
    assert isinstance(deps.stream_slots, MemoryStreamSlots)
    return deps.stream_slots


def a_job(deps: Deps, user: str = "alice") -> str:
    return JobService(deps).submit(user, ChatRequest(message="soup"), None).job.job_id  # stays pending


def open_stream(stack: ExitStack, client: TestClient, job_id: str, user: str = "alice") -> Stream:
    """An SSE request held open (the response, and its lines to read on)."""
    resp = stack.enter_context(client.stream("GET", f"/api/jobs/{job_id}/stream", headers=bearer(user)))
    lines = resp.iter_lines()
    if resp.status_code == 200:
        assert next(lines).startswith("retry:")  # admitted and streaming
    return Stream(resp.status_code, lines)


@dataclass
class Stream:
    status_code: int
    lines: Iterator[str]


def test_streams_across_two_processes_stop_at_the_users_cap(two: tuple[TestClient, TestClient], deps: Deps) -> None:
    a, b = two
    job = a_job(deps)
    with ExitStack() as stack:
        opened = [open_stream(stack, c, job) for c in (a, b, a)]
        assert [r.status_code for r in opened] == [200, 200, 200]
        for c in (a, b):  # each hub holds 2 or 1: under its own cap; the user's slots are full
            for path in ("stream", "events?wait=1"):
                resp = c.get(f"/api/jobs/{job}/{path}", headers=bearer())
                assert resp.status_code == 429, resp.text
                assert resp.json()["error"]["code"] == "too_many_streams"
                assert int(resp.headers["retry-after"]) >= 1
        assert open_stream(stack, b, a_job(deps, "bob"), "bob").status_code == 200, "bob has slots of his own"
        # A long-poll that answers at once (wait=0) holds no process: it takes no slot.
        assert a.get(f"/api/jobs/{job}/events", headers=bearer()).status_code == 200
        assert len(slots(deps).holders("alice")) == 3
    # Every stream closed: the slots come back (given back in the background).
    wait_until(lambda: slots(deps).holders("alice") == {}, timeout=10, what="slots given back")
    assert a.get(f"/api/jobs/{job}/events?wait=0.1", headers=bearer()).status_code == 200
    wait_until(lambda: slots(deps).holders("alice") == {}, timeout=10, what="the long-poll's slot given back")


def test_a_streams_heartbeat_renews_its_slot(two: tuple[TestClient, TestClient], deps: Deps) -> None:
    a, _ = two
    job = a_job(deps)
    with ExitStack() as stack:
        resp = open_stream(stack, a, job)
        ((holder, first),) = slots(deps).holders("alice").items()
        # Renewed every third of the 0.6 s lease (each renewal after a keepalive, which the client
        # reads: a stream nobody reads renews nothing); without it the slot would read as free.
        for n, _ in enumerate(resp.lines):
            if slots(deps).holders("alice").get(holder, 0) > first + 1.2 or n > 200:
                break
        assert slots(deps).holders("alice").get(holder, 0) > first + 1.2, "renewed twice past its first end"


def test_a_stream_that_lost_its_slot_for_good_ends(two: tuple[TestClient, TestClient], deps: Deps) -> None:
    a, _ = two
    job = a_job(deps)
    with ExitStack() as stack:
        resp = open_stream(stack, a, job)
        ((holder, _),) = slots(deps).holders("alice").items()
        # Its lease ran out (a long stall) and another process cleared it and filled the cap.
        slots(deps).release("alice", holder)
        for i in range(3):
            assert slots(deps).take("alice", f"elsewhere{i}", 3, deps.clock.now() + 60)
        lines = list(resp.lines)  # the stream ends at its next renewal
        assert ": stream slot lost" in lines
    assert set(slots(deps).holders("alice")) == {"elsewhere0", "elsewhere1", "elsewhere2"}


# ---- StreamCap itself ----------------------------------------------------------------------------


class FailingSlots(MemoryStreamSlots):
    """A store whose takes land and then fail (an ambiguous write whose every retry failed)."""

    def take(self, user_id: str, holder: str, cap: int, until: float) -> bool:
        super().take(user_id, holder, cap, until)
        raise StoreError("timeout after the write landed")


def test_a_take_that_failed_after_landing_is_given_back() -> None:
    clock = ShiftedClock()
    store = FailingSlots(clock)
    cap = StreamCap(store, 2, 30, clock, iter(["h1", "h2"]).__next__)
    with pytest.raises(StoreError):
        cap.take("alice")
    assert store.holders("alice") == {}, "no slot left behind by a failed request"


def test_a_lease_renews_on_time_keeps_going_through_store_failures_and_takes_a_lost_slot_again() -> None:
    clock = ShiftedClock()
    store = MemoryStreamSlots(clock)
    ids = iter(f"h{i}" for i in range(10))
    cap = StreamCap(store, 1, 30, clock, ids.__next__)
    lease = cap.take("alice")
    assert not lease.due and lease.seconds_to_renewal() == pytest.approx(10, abs=1)
    with pytest.raises(TooManyRequests):
        cap.take("alice")
    clock.offset += 10
    assert lease.due and lease.renew() and store.holders("alice")["h0"] == pytest.approx(clock.now() + 30, abs=1)
    # Lost (cleared after its lease ran out) while there is room: it holds a slot again.
    store.release("alice", "h0")
    clock.offset += 10
    assert lease.renew() and "h0" in store.holders("alice")
    # Lost while the cap is full: the stream must end.
    store.release("alice", "h0")
    assert store.take("alice", "other", 1, clock.now() + 30)
    clock.offset += 10
    assert not lease.renew() and lease.lost
    lease.release()
    lease.release()
    assert set(store.holders("alice")) == {"other"}


def test_a_renewal_a_rounding_error_away_is_due() -> None:
    """Sim seed 198: the renewal was 1.8e-15 s ahead; the stream waited that long, which on a
    float clock ends where it began, and was never due: the loop spun at one instant for ever."""
    clock = StoppedClock()
    cap = StreamCap(MemoryStreamSlots(clock), 3, 30.0, clock, lambda: "h1")
    lease = cap.take("u1")
    lease.next_renewal = clock.monotonic() + 1.7763568394002505e-15
    assert lease.seconds_to_renewal() == 0.0 and lease.due


class StoppedClock(ShiftedClock):
    """Time stands still unless moved (as virtual time between two switch points)."""

    def now(self) -> float:
        return 1_800_000_000.0 + self.offset

    def monotonic(self) -> float:
        return 14.990160875615786 + self.offset


class SlowSlots(MemoryStreamSlots):
    """A renewal whose request stalls ``stall`` seconds before it goes (GC, a busy CPU): the lease
    it writes ends one lease period after it was sent, and it answers ``stall`` seconds later."""

    def __init__(self, clock: StoppedClock, stall: float) -> None:
        super().__init__(clock)
        self.stopped = clock
        self.stall = stall

    def renew(self, user_id: str, holder: str, until: float) -> bool:
        held = super().renew(user_id, holder, until)
        self.stopped.offset += self.stall
        return held


def test_a_slow_renewal_dates_the_next_one_from_its_send() -> None:
    """Sim seed 237600: a renewal that stalled 1.6 s (lease 10 s) dated the next one from its
    answer, so that one went with 5 s of the lease in hand instead of 6.7, stalled 2.9 s in turn,
    and the stream was left with under a third of a lease: renewing every third of a lease lets two
    renewals fail only if each is due a third after the previous one was sent, as its lease was."""
    clock = StoppedClock()
    store = SlowSlots(clock, stall=1.6)
    lease = StreamCap(store, 3, 10.0, clock, lambda: "h1").take("u1")
    clock.offset += lease.seconds_to_renewal()
    sent = clock.now()
    assert lease.due and lease.renew()
    assert store.holders("u1")["h1"] == pytest.approx(sent + 10.0)
    # The next renewal is due a third of a lease after this one went, 1.6 s before its answer.
    assert lease.seconds_to_renewal() == pytest.approx(10.0 / 3 - 1.6)
    clock.offset += lease.seconds_to_renewal()
    assert lease.due and store.holders("u1")["h1"] - clock.now() == pytest.approx(2 * 10.0 / 3)
