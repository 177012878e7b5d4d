"""The journal's fenced appends and contiguous reads; the sweeper's choice of stranded jobs."""

from __future__ import annotations

import time

import pytest

from alfred_jobs.adapters.memory import MemoryEventLog, MemoryJobQueue, memory_deps
from alfred_jobs.domain.models import ChatRequest, Event, EventType
from alfred_jobs.durability.admission import Admission, Verdict
from alfred_jobs.durability.journal import Journal
from alfred_jobs.exceptions import SlotTaken, TransientStoreError
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.sweeper import Sweeper
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock

EXP = 2_000_000_000  # far in the future


def ev(seq: int, writer: str = "w1", type: EventType = EventType.PHASE) -> Event:
    return Event.new(seq, type, {"phase": "act"}, attempt=1, writer=writer, at=time.time())


def test_append_refuses_a_taken_seq_and_says_by_whom() -> None:
    j = Journal(MemoryEventLog(), 3600)
    j.append("job", ev(1, "old"), EXP)
    with pytest.raises(SlotTaken) as taken:
        j.append("job", ev(1, "new"), EXP)
    assert taken.value.existing.writer == "old"


class AmbiguousLog(MemoryEventLog):
    """The put lands, then the caller sees a timeout (the case a retry must recognise)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = True

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        super().append(job_id, event, expires_at)
        if self.fail_next:
            self.fail_next = False
            raise TransientStoreError("read timeout")


def test_ambiguous_write_is_recognised_as_our_own() -> None:
    log = AmbiguousLog()
    Journal(log, 3600).append("job", ev(1, "me"), EXP)
    assert [e.writer for e in log.all("job")] == ["me"]


def test_the_same_writer_and_type_is_not_the_same_event() -> None:
    """Only the event's own id proves a landed write is ours: two events of one writer differ."""
    j = Journal(MemoryEventLog(), 3600)
    j.append("job", ev(1, "me", EventType.DELTA), EXP)
    with pytest.raises(SlotTaken):
        j.append("job", ev(1, "me", EventType.DELTA), EXP)


class LandsButAlwaysErrs(MemoryEventLog):
    """Every put lands and every answer is an error: the SDK gave up although the write is there."""

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        if self._live((job_id, event.seq)) is None:
            super().append(job_id, event, expires_at)
        raise TransientStoreError("InternalServerError")


def test_an_append_that_landed_behind_errors_is_a_success() -> None:
    log = LandsButAlwaysErrs()
    Journal(log, 3600).append("job", ev(1, "me"), EXP)
    assert [e.writer for e in log.all("job")] == ["me"]


def test_expired_events_read_as_gone_and_their_slots_are_free() -> None:
    log = MemoryEventLog()
    j = Journal(log, 3600)
    j.append("job", ev(1, "old"), int(time.time()) - 1)
    assert j.read_after("job", 0) == []
    j.append("job", ev(1, "new"), EXP)  # no SlotTaken: the old one is gone for us
    assert [e.writer for e in j.read_after("job", 0)] == ["new"]


def test_read_after_is_contiguous_and_probes_past_the_known_head() -> None:
    log = MemoryEventLog()
    j = Journal(log, 3600)
    for s in range(1, 8):
        j.append("job", ev(s), EXP)
    assert [e.seq for e in j.read_after("job", 0, known_head=3)] == list(range(1, 8))
    assert [e.seq for e in j.read_after("job", 5)] == [6, 7]
    assert j.read_after("job", 7) == []
    assert [e.seq for e in j.read_after("job", 2, limit=3)] == [3, 4, 5]


def test_sweeper_requeues_only_stranded_jobs_and_postpones_them() -> None:
    deps = memory_deps(Settings(pending_grace_seconds=30, lease_seconds=10))
    svc = JobService(deps)
    # three users, so that each job may start (the gate is tests/unit/test_gate.py's subject)
    fresh = svc.submit("u1", ChatRequest(message="fresh"), None).job
    lost = svc.submit("u2", ChatRequest(message="lost"), None).job
    dead = svc.submit("u3", ChatRequest(message="dead"), None).job
    jobs = deps.jobs
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue)
    queue.sent.clear()
    # the lost message's job is pending past its grace; the dead worker took its slot and its
    # lease, which expired
    jobs.due[lost.job_id] = time.time() - 1  # type: ignore[attr-defined]
    jobs.acquire_lease(dead.job_id, "w", time.time() - 20, 10)
    assert Admission(deps).take(dead) is Verdict.RUN
    report = Sweeper(deps).sweep()
    assert sorted(report.requeued) == sorted([lost.job_id, dead.job_id])
    assert fresh.job_id not in report.requeued
    assert sorted(m.job_id for m in queue.sent) == sorted([lost.job_id, dead.job_id])
    assert Sweeper(deps).sweep().requeued == [], "postponed: not re-sent on every sweep"


def test_sweeper_ignores_finished_jobs() -> None:
    # GIVEN a finished job and a stranded one, both created long before the sweep's "now"
    clock = ShiftedClock()
    deps = memory_deps(Settings(pending_grace_seconds=30), clock=clock)
    svc = JobService(deps)
    finished = svc.submit("u", ChatRequest(message="x"), None).job
    stranded = svc.submit("u", ChatRequest(message="y"), None).job
    svc.cancel("u", finished.job_id)
    clock.offset = 3600  # an hour later: both are past their grace period by then
    # WHEN the sweeper runs, THEN it re-sends the stranded job only: the finished one left the index
    assert Sweeper(deps).sweep().requeued == [stranded.job_id]


class BusyQueue(MemoryJobQueue):
    """A queue shared with other traffic: its approximate backlog is never zero."""

    def backlog(self) -> int:
        return 7


def test_a_job_whose_message_was_lost_is_presumed_queued_once_then_sent_again_in_a_busy_queue() -> None:
    # GIVEN a queue whose backlog is never zero, and a job whose message was lost (its submit
    # died between the gate's write and the send)
    clock = ShiftedClock()
    deps = memory_deps(Settings(pending_grace_seconds=30, lease_seconds=10, max_queue_wait_seconds=900),
                       clock=clock)
    queue = deps.queue = BusyQueue()
    job = JobService(deps).submit("u", ChatRequest(message="lost"), None).job
    queue.sent.clear()

    def sent() -> list[str]:
        return [m.job_id for m in queue.sent]

    # WHEN the sweeper finds it due and never started, it presumes it queued (it may be in the backlog)
    clock.offset += 31
    report = Sweeper(deps).sweep()
    assert report.queued == [job.job_id] and sent() == []
    # ... but finds it due again a grace period later, still never started: THEN it sends it
    # again (a duplicate would be harmless), instead of presuming it queued for 15 minutes; not
    # counted as stuck (it may have been in the backlog all along)
    clock.offset += 31
    report = Sweeper(deps).sweep()
    assert sent() == [job.job_id]
    assert report.queued == [] and report.requeued == []
    # ... and that message, its own, is in the queue: presumed queued while the backlog lasts,
    # not sent once per sweep, until 15 minutes have passed since the job was created
    for _ in range(5):
        clock.offset += 31
        assert Sweeper(deps).sweep().queued == [job.job_id]
    assert sent() == [job.job_id]
    clock.offset = 901
    assert Sweeper(deps).sweep().requeued == [job.job_id]
    assert sent() == [job.job_id] * 2
