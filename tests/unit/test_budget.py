"""The worker's time budget: a job longer than one invocation is handed on at a step boundary and
runs on across invocations, and a batch does not start a record it cannot get through.

Time is virtual: the demo agent's steps sleep on the injected clock, which moves time on instead
(``VirtualSleepClock``), and the invocation's remaining time is a fake Lambda context's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryAgentDataStore, MemoryEventLog, MemoryJobQueue, memory_deps
from alfred_jobs.domain.events import StatusPayload
from alfred_jobs.domain.models import ChatRequest, Event, EventType, JobStatus
from alfred_jobs.durability.budget import deadline
from alfred_jobs.entry import worker
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock

INVOCATION = 70.0  # seconds: the fake context's remaining time at the start of each invocation


class VirtualSleepClock(ShiftedClock):
    """The real clock, whose ``sleep`` moves time on at once: a 30 s step takes no real time."""

    def sleep(self, seconds: float) -> None:
        self.offset += seconds


class Context:
    """A Lambda context whose invocation started at ``start`` (on ``clock``) and lasts ``seconds``."""

    function_name = "worker"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:worker"
    aws_request_id = "req"

    def __init__(self, clock: VirtualSleepClock, seconds: float = INVOCATION) -> None:
        self.clock = clock
        self.ends = clock.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends - self.clock.monotonic()) * 1000))


@pytest.fixture
def clock() -> VirtualSleepClock:
    return VirtualSleepClock()


@pytest.fixture
def deps(clock: VirtualSleepClock) -> Iterator[Deps]:
    # A long lease: the keeper renews on real time, and the steps take virtual time.
    d = memory_deps(Settings(demo_step_seconds=0, lease_seconds=600, max_attempts=3, cancel_poll_seconds=0.02,
                             handoff_margin_seconds=5.0), clock=clock)
    worker.use_deps(d)
    try:
        yield d
    finally:
        worker._runtime = None


def sqs_event(*bodies: str) -> dict[str, Any]:
    return {"Records": [{
        "messageId": f"m{i}", "receiptHandle": f"r{i}", "body": body, "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"}
        for i, body in enumerate(bodies)]}


def body(job_id: str) -> str:
    return json.dumps({"job_id": job_id, "next_up": True})


def log_of(deps: Deps, job_id: str) -> list[Event]:
    log = deps.log
    assert isinstance(log, MemoryEventLog)
    return log.all(job_id)


def test_a_job_longer_than_an_invocation_runs_on_across_invocations_each_step_once(
        deps: Deps, clock: VirtualSleepClock) -> None:
    # GIVEN a job of 8 steps of 30 s each, and invocations of 70 s: two steps fit in one
    job_id = JobService(deps).submit("u1", ChatRequest(message="soup [steps=8] [pace=30]"), None).job.job_id
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue)
    # WHEN each message for the job is delivered to a new invocation, as the event source would
    invocations: list[tuple[float, float]] = []
    for _ in range(10):
        pending = [m for m in queue.sent if m.job_id == job_id]
        assert pending, "every invocation that did not finish the job sent it on"
        queue.sent.clear()
        start = clock.monotonic()
        out = worker.handler(sqs_event(body(job_id)), Context(clock))
        invocations.append((start, clock.monotonic()))
        assert out["batchItemFailures"] == [], "a hand-off is no failure: its message is deleted"
        job = deps.jobs.get(job_id)
        assert job is not None
        if job.terminal:
            break
        # ... and each one that handed on let its lease go: the next message is not a duplicate
        assert job.lease_owner is None or not job.lease_live(clock.now()), "a hand-off releases its lease"
    # THEN it completed, over several invocations, none of them past its time
    assert job.status is JobStatus.COMPLETE
    assert len(invocations) == 4, f"8 steps of 30 s, 2 per 70 s invocation: {len(invocations)} invocations"
    assert all(end - start <= INVOCATION for start, end in invocations), invocations
    # ... each step run once (the demo agent counts each step's side effect)
    data = deps.agent_data
    assert isinstance(data, MemoryAgentDataStore)
    assert data.step_effects(job_id) == {i: 1 for i in range(1, 9)}
    # ... though it took 4 attempts with max_attempts 3: hand-offs are not failures
    assert job.attempts == 4
    # ... and each next attempt began as soon as the last one handed on: no lease-period wait
    events = log_of(deps, job_id)
    handoffs = [i for i, e in enumerate(events)
                if isinstance(e.payload, StatusPayload) and e.payload.status is JobStatus.PENDING]
    assert len(handoffs) == 3
    for i in handoffs:
        assert events[i].payload.error is None  # type: ignore[union-attr]
        nxt = events[i + 1]
        assert nxt.type is EventType.RESUMED
        assert nxt.ts - events[i].ts < 1.0, "the next attempt starts right after the hand-off"
    # ... and no step was left started by a hand-off: each attempt's steps start and complete in it
    for i in handoffs:
        prev = events[i - 1]
        assert prev.type is EventType.STEP and prev.data["status"] == "completed" and "next" not in prev.data


def test_a_retryable_failure_after_hand_offs_still_gives_up_after_max_attempts(
        deps: Deps, clock: VirtualSleepClock) -> None:
    # GIVEN a job whose step 2 always fails (retryable), handed on after its step 1
    job_id = JobService(deps).submit("u1", ChatRequest(message="soup [steps=3] [pace=40] [fail]"), None).job.job_id
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue)
    # WHEN it is delivered again and again (a retry's message comes back after its backoff)
    for _ in range(10):
        worker.handler(sqs_event(body(job_id)), Context(clock))
        job = deps.jobs.get(job_id)
        assert job is not None
        if job.terminal:
            break
    # THEN the hand-off cost nothing, and the failures were bounded by max_attempts
    assert job.status is JobStatus.FAILED
    pendings = [e.payload for e in log_of(deps, job_id) if isinstance(e.payload, StatusPayload)
                and e.payload.status is JobStatus.PENDING]
    assert [p.error is None for p in pendings] == [True, False, False], "one hand-off, then two retries"
    assert job.attempts == 4 and "after 3 attempts" in (job.error or {}).get("message", "")


def test_a_batch_does_not_start_the_records_it_cannot_get_through(clock: VirtualSleepClock) -> None:
    # GIVEN a batch of 10 records, each a one-step job (think 10 s, the step 20 s, the reply 10 s:
    # the demo agent's pace), and an invocation of 70 s
    deps = memory_deps(Settings(demo_step_seconds=20, lease_seconds=600, cancel_poll_seconds=0.02,
                                handoff_margin_seconds=5.0), clock=clock)
    worker.use_deps(deps)
    try:
        ids = [JobService(deps).submit(f"u{i}", ChatRequest(message="soup [steps=1]"), None).job.job_id
               for i in range(10)]
        queue = deps.queue
        assert isinstance(queue, MemoryJobQueue)
        queue.sent.clear()
        # WHEN one invocation gets them all
        out = worker.handler(sqs_event(*(body(j) for j in ids)), Context(clock))
    finally:
        worker._runtime = None
    # THEN the first job ran (0-40 s); the second started (at 40 s a step of 20 s and the margin
    # fit), thought, and was handed on before its step (at 50 s they no longer fit); the other
    # eight were not started: batch item failures, visible again at once
    failed = [f["itemIdentifier"] for f in out["batchItemFailures"]]
    assert failed == [f"m{i}" for i in range(2, 10)]
    assert all(queue.visibility.get(f"r{i}") == 0 for i in range(2, 10)), queue.visibility
    first, second = deps.jobs.get(ids[0]), deps.jobs.get(ids[1])
    assert first is not None and first.status is JobStatus.COMPLETE
    assert second is not None and second.status is JobStatus.PENDING and second.attempts == 1
    assert [m.job_id for m in queue.sent] == [ids[1]], "the handed-on job is sent on at once"
    for job_id in ids[2:]:  # never touched: no attempt counted, nothing in its log
        job = deps.jobs.get(job_id)
        assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
        assert not log_of(deps, job_id)


def test_an_invocation_shorter_than_a_step_still_makes_progress(deps: Deps, clock: VirtualSleepClock) -> None:
    # GIVEN invocations shorter than one step (a timeout below a step's expected length)
    job_id = JobService(deps).submit("u1", ChatRequest(message="soup [steps=2] [pace=30]"), None).job.job_id
    data = deps.agent_data
    assert isinstance(data, MemoryAgentDataStore)
    effects = []
    # WHEN it is delivered again and again: THEN each attempt does one part (the first record of
    # a batch always starts, and an attempt's first part always runs), or it would never end
    for _ in range(6):
        out = worker.handler(sqs_event(body(job_id)), Context(clock, seconds=10))
        assert out["batchItemFailures"] == []
        effects.append(data.step_effects(job_id))
        job = deps.jobs.get(job_id)
        assert job is not None
        if job.terminal:
            break
    # think; step 1; step 2; the reply
    assert effects == [{}, {1: 1}, {1: 1, 2: 1}, {1: 1, 2: 1}]
    assert job.status is JobStatus.COMPLETE


def test_the_budget_comes_from_the_context_or_the_local_setting() -> None:
    clock = VirtualSleepClock()
    plain = object()  # a local worker's context: no remaining time
    assert deadline(clock, Settings(), plain) is None, "a local worker has no budget unless set"
    local = deadline(clock, Settings(worker_invocation_seconds=30), plain)
    assert local is not None and abs(local - clock.monotonic() - 30) < 1
    lam = deadline(clock, Settings(), Context(clock, seconds=100))
    assert lam is not None and abs(lam - clock.monotonic() - 100) < 1
    both = deadline(clock, Settings(worker_invocation_seconds=30), Context(clock, seconds=100))
    assert both is not None and abs(both - clock.monotonic() - 30) < 1, "the tighter of the two"
