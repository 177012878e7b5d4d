"""The guarantees with real processes on a real moto server: kills, pauses, duplicates, purges.

They run on AWS's semantics: moto server behind the faithful proxy (stale eventually consistent
reads, late TTL, ambiguous writes, throttles, duplicate deliveries, lost deletes), so none of them
can pass on a kindness of the emulator.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from alfred_jobs.domain.events import replay, step_started_by
from alfred_jobs.domain.models import EventType, JobStatus
from alfred_jobs.service.jobs import JobService
from tests.integration.helpers import (
    assert_contiguous_single_terminal,
    completed_steps,
    log_of,
    submit,
    wait_terminal,
)
from tests.support.stack import Stack, wait_until


@pytest.fixture
def stack(faithful_stack: Stack) -> Stack:
    """The faithful stack of conftest.py (leases of 20 s, lost deletes back in 3 s)."""
    return faithful_stack


def step_started(stack: Stack, job_id: str, index: int) -> bool:
    return any(step_started_by(e) == index for e in log_of(stack, job_id))


def test_worker_sigkilled_mid_step_resumes_without_rerunning_completed_steps(stack: Stack) -> None:
    # GIVEN a job whose steps take long enough to be killed in the middle of one
    # The killed worker's lease is 6 s (its lapse is what lets the job be taken over; a 2 s one
    # could lapse on a busy machine before the kill), the new worker's the stack's 20 s: the kill
    # is the one takeover this test is about.
    first = stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.5", ALFRED_LEASE_SECONDS="6")
    stack.start_sweeper()
    job = submit(stack, "chicken [steps=5]")
    wait_until(lambda: step_started(stack, job.job_id, 3), what="step 3 to start")
    # WHEN the worker is SIGKILLed during step 3 and a new worker comes up
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.05")
    # THEN the job finishes, each completed step recorded once, and only step 3 may have run twice
    events = wait_terminal(stack, job.job_id)
    assert_contiguous_single_terminal(events)
    assert events[-1].type is EventType.COMPLETE
    assert completed_steps(events) == [1, 2, 3, 4, 5]
    resumed = [e for e in events if e.type is EventType.RESUMED]
    assert len(resumed) == 1 and resumed[0].data["attempt"] == 2
    effects = stack.deps.agent_data.step_effects(job.job_id)
    assert {k: v for k, v in effects.items() if k != 3} == {1: 1, 2: 1, 4: 1, 5: 1}
    assert effects[3] in (1, 2), "the step cut off mid-way may run again, once"


def test_duplicate_deliveries_and_racing_workers_run_each_step_once(stack: Stack) -> None:
    stack.start_worker(concurrency=2, ALFRED_DEMO_STEP_SECONDS="0.2")
    stack.start_worker(concurrency=2, ALFRED_DEMO_STEP_SECONDS="0.2")
    job = submit(stack, "soup [steps=4]")
    for _ in range(3):  # the same message delivered again, racing the first
        stack.deps.queue.send(job.job_id)
    events = wait_terminal(stack, job.job_id)
    assert_contiguous_single_terminal(events)
    assert completed_steps(events) == [1, 2, 3, 4]
    assert stack.deps.agent_data.step_effects(job.job_id) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert not any(e.type is EventType.RESUMED for e in events), "duplicates never start a second attempt"
    wait_until(lambda: stack.queue_depth() == 0, what="every duplicate to be acked")


def test_paused_worker_past_its_lease_writes_nothing_after_takeover(stack: Stack) -> None:
    zombie = stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.6", ALFRED_LEASE_SECONDS="2")
    job = submit(stack, "pasta [steps=5]")
    wait_until(lambda: step_started(stack, job.job_id, 2), what="step 2 to start")
    zombie_writer = log_of(stack, job.job_id)[0].writer
    # WHEN the first worker is paused past its lease (2 s) and another takes the job over
    os.killpg(zombie.pid, signal.SIGSTOP)
    stack.start_sweeper()
    stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.05")
    events = wait_terminal(stack, job.job_id)
    resumed = next(e for e in events if e.type is EventType.RESUMED)
    # ... and the paused one wakes up and finishes its delivery (its message is gone from the queue)
    os.killpg(zombie.pid, signal.SIGCONT)
    wait_until(lambda: stack.queue_depth() == 0, timeout=90, what="the woken worker to finish its delivery")
    # THEN it wrote nothing after the takeover, and the log is unchanged and whole
    after = log_of(stack, job.job_id)
    assert after == events
    assert_contiguous_single_terminal(after)
    assert all(e.writer != zombie_writer for e in after if e.seq > resumed.seq)
    assert completed_steps(after) == [1, 2, 3, 4, 5]


def test_cancel_running_job_stops_at_next_step_boundary(stack: Stack) -> None:
    stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.4")
    job = submit(stack, "stew [steps=8]")
    wait_until(lambda: step_started(stack, job.job_id, 2), what="step 2 to start")
    cancelled, done = JobService(stack.deps).cancel("alice", job.job_id)
    # Running: the flag is set and the worker stops at its next boundary. (If an injected fault
    # had just sent the attempt back to pending, the API cancels at once, which is stronger.)
    assert (not done and cancelled.cancel_requested) or (done and cancelled.status is JobStatus.CANCELLED), (
        [(e.seq, str(e.type), e.data.get("status"), (e.data.get("error") or {}).get("code"))
         for e in log_of(stack, job.job_id)])
    # Counted from when the request is recorded: on AWS's semantics the call itself may take a
    # throttled retry or two. The step running then may finish; the next boundary stops the job
    # (one poll of slack, as when this counted from "step 2 started": at most 1 + 2 = 3).
    at_cancel = len(completed_steps(log_of(stack, job.job_id)))
    events = wait_terminal(stack, job.job_id)
    assert_contiguous_single_terminal(events)
    assert events[-1].type is EventType.CANCELLED
    assert len(completed_steps(events)) <= at_cancel + 2
    record = stack.deps.jobs.get(job.job_id)
    assert record is not None and record.status is JobStatus.CANCELLED


def test_cancel_pending_job_then_a_worker_never_runs_it(stack: Stack) -> None:
    job = submit(stack, "salad [steps=2]")
    cancelled, done = JobService(stack.deps).cancel("alice", job.job_id)
    assert done and cancelled.status is JobStatus.CANCELLED
    stack.start_worker()
    wait_until(lambda: stack.queue_depth() == 0, what="the message to be acked")
    assert [e.type for e in log_of(stack, job.job_id)] == [EventType.CANCELLED]
    assert stack.deps.agent_data.step_effects(job.job_id) == {}


def test_poison_job_fails_after_bounded_attempts_and_lands_in_dlq(stack: Stack) -> None:
    stack.start_worker()
    job = submit(stack, "curry [fail]")
    events = wait_terminal(stack, job.job_id, timeout=60)
    assert_contiguous_single_terminal(events)
    assert events[-1].type is EventType.FAILED
    assert events[-1].data["error"]["code"] == "recipe_unavailable"
    retries = [e for e in events if e.type is EventType.STATUS and e.data["status"] == "pending"]
    assert [e.data["retry_in"] for e in retries] == [1, 2], "exponential backoff between attempts"
    record = stack.deps.jobs.get(job.job_id)
    assert record is not None and record.status is JobStatus.FAILED and record.attempts == 3
    assert record.error is not None and "3 attempts" in record.error["message"]
    parked = wait_until(stack.dlq_messages, what="the message in the DLQ")
    assert parked[0]["MessageAttributes"]["job_id"]["StringValue"] == job.job_id


def test_purged_queue_is_recovered_by_the_sweeper(stack: Stack) -> None:
    job = submit(stack, "tacos [steps=2]")
    stack.clients.sqs.purge_queue(QueueUrl=stack.clients.queue_url)
    assert stack.queue_depth() == 0
    stack.start_worker()
    stack.start_sweeper()
    events = wait_terminal(stack, job.job_id, timeout=30)
    assert events[-1].type is EventType.COMPLETE


def test_conversation_committed_once_when_last_step_and_reply_are_retried(stack: Stack) -> None:
    stack.start_worker()
    job = submit(stack, "rice [steps=3] [flaky=3]")
    events = wait_terminal(stack, job.job_id)
    assert events[-1].type is EventType.COMPLETE
    assert any(e.type is EventType.RESUMED for e in events)
    job2 = JobService(stack.deps).submit(
        "alice", __import__("alfred_jobs.domain.models", fromlist=["ChatRequest"]).ChatRequest(
            message="beans [steps=1] [flaky-reply]", conversation_id=job.conversation_id), None).job
    events2 = wait_terminal(stack, job2.job_id)
    assert events2[-1].type is EventType.COMPLETE
    msgs = stack.deps.conversations.messages("alice", job.conversation_id, 50)
    assert [(m["role"], m["job_id"]) for m in msgs] == [
        ("user", job.job_id), ("assistant", job.job_id), ("user", job2.job_id), ("assistant", job2.job_id)]
    assert msgs[3]["text"] == events2[-1].data["output"]["reply"]
    assert replay(events2).shown == msgs[3]["text"], "the streamed deltas add up to the committed reply"


def test_idempotent_submit_on_the_real_store(stack: Stack) -> None:
    a = submit(stack, "pie", key="k-1")
    b = submit(stack, "pie", key="k-1")
    c = submit(stack, "pie", user="bob", key="k-1")
    assert a.job_id == b.job_id != c.job_id


def test_expired_items_read_as_gone(stack: Stack) -> None:
    job = submit(stack, "old")
    jobs = stack.deps.jobs
    # Make it expire: the store (like DynamoDB for up to ~2 days, moto forever) still holds it.
    stack.clients.dynamodb.update_item(
        TableName=stack.settings.jobs_table, Key={"job_id": {"S": job.job_id}},
        UpdateExpression="SET expires_at = :e", ExpressionAttributeValues={":e": {"N": str(int(time.time()) - 1)}})
    assert jobs.get(job.job_id) is None
    assert JobService(stack.deps).list_jobs("alice", None, 10, None)[0] == []
