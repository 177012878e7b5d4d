"""The disruptions on the real thing: one smoke test with real processes, on AWS's semantics.

Chaos at scale (thousands of histories of crashes, pauses, duplicate deliveries, store faults,
cancels, questions and watchers) is the simulator's (``alfred_tools.sim``, ``alfred-jobs sim``,
tests/sim): in virtual time, replayable from a seed, and indifferent to how busy the machine is.
What the simulator cannot show is that the real processes behave as its model of them: a worker
process SIGKILLed in the middle of a step, one SIGSTOPped past its lease and woken up after another
took its job over, a message delivered twice to two processes, through real boto3 clients, a real
moto server and the faithful proxy (stale reads, throttles, ambiguous writes, duplicate deliveries,
lost deletes). That is this file's smoke test: a handful of jobs, each disruption once.

Nothing here is paced by the clock. Each disruption is triggered by what a job's log shows (a step
started), and every wait polls the store until an event with a deadline (``DEADLINE``) that only
bounds a failure, so a machine whose CPU is shared makes the test slower, not red. The assertions
are invariants, which hold however the processes were scheduled (a lease that lapsed under load is
one more takeover, which they allow), plus what each disruption must have caused.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import datetime
from typing import Any

import pytest

from alfred_jobs.domain.events import step_started_by
from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job, JobStatus
from alfred_jobs.service.jobs import JobService
from alfred_tools import bootstrap
from alfred_tools.fidelity import FidelityProxy
from tests.chaos.support import (
    allow_receives,
    assert_conversation_once,
    assert_effects_once_per_completed_step,
    terminal_log,
)
from tests.integration.helpers import assert_contiguous_single_terminal, completed_steps, log_of, wait_terminal
from tests.support.stack import Stack, make_stack, wait_until

Faithful = tuple[dict[str, str], FidelityProxy]

# A bound on a failure, never a pace: the test waits on events and is done long before (~15 s idle).
DEADLINE = 120.0
# The workers that are not disrupted hold their leases for 20 s: a busy machine (a renewal late by
# seconds) must not cost them a lease, which would be a takeover the test does not mean to make.
SMOKE_ENV = {"ALFRED_LEASE_SECONDS": "20", "ALFRED_DEMO_STEP_SECONDS": "0.3", "ALFRED_MAX_ATTEMPTS": "5",
             "ALFRED_RETRY_MAX_SECONDS": "2"}
# The two victims: short leases (4 s), so that their jobs are taken over soon after the kill and
# the pause (how soon matters to no assertion), and slow steps (1 s, 8 of them), so that a job
# seen at its step 2 is seconds from its end when the signal comes, however late the test
# process gets to see it.
VICTIM_ENV = {"ALFRED_LEASE_SECONDS": "4", "ALFRED_DEMO_STEP_SECONDS": "1"}
# A lost delete (the proxy's at-least-once) brings a message back after the visibility timeout:
# 720 s in the template, 5 s here, so that such no-op redeliveries end within the test.
VISIBILITY = 5


def victim_queue(stack: Stack, name: str) -> JobService:
    """A queue of the template's shape (``<prefix>-<name>``, the stack's DLQ) read by one victim
    worker only, and a job service that sends to it: the victim is then, for sure, the process
    running the job submitted there. Takeovers go the normal way: the sweeper sends the job to the
    stack's queue, where the other workers take it."""
    settings = stack.settings.model_copy(update={"queue_name": f"{stack.settings.queue_name}-{name}"})
    clients = stack.make_clients(settings)
    bootstrap.create_resources(settings, clients.dynamodb, clients.sqs)
    url = stack.clients.sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    stack.clients.sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(VISIBILITY)})
    return JobService(stack.make_deps(settings))


def queue_depth(stack: Stack, queue_name: str) -> int:
    url = stack.clients.sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    attrs = stack.clients.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def step_started(stack: Stack, job_id: str, index: int) -> Event | None:
    return next((e for e in log_of(stack, job_id) if step_started_by(e) == index), None)


def resumed(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type is EventType.RESUMED]


@pytest.mark.chaos
def test_a_killed_a_paused_and_a_duplicated_job_each_complete_once(faithful: Faithful) -> None:
    env, proxy = faithful
    before = proxy.stats()
    with make_stack(env, **SMOKE_ENV) as stack:
        allow_receives(stack, 12, visibility_timeout=VISIBILITY)
        stack.start_sweeper()
        to_kill, to_pause = victim_queue(stack, "kill"), victim_queue(stack, "pause")
        killed = stack.start_worker(ALFRED_QUEUE_NAME=f"{stack.settings.queue_name}-kill", **VICTIM_ENV)
        paused = stack.start_worker(ALFRED_QUEUE_NAME=f"{stack.settings.queue_name}-pause", **VICTIM_ENV)
        # One user per job: no job waits on another's turn (the gate), each starts when sent.
        j_kill = to_kill.submit("kim", ChatRequest(message="chicken [steps=8]"), None).job
        j_pause = to_pause.submit("pat", ChatRequest(message="pasta [steps=8]"), None).job

        # WHEN the first victim is SIGKILLed once its job's step 2 has started ...
        wait_until(lambda: step_started(stack, j_kill.job_id, 2), timeout=DEADLINE, what="step 2 of the job to kill")
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        # ... and the second is SIGSTOPped once its job's step 2 has started (its writer noted) ...
        started = wait_until(lambda: step_started(stack, j_pause.job_id, 2), timeout=DEADLINE,
                             what="step 2 of the job to pause")
        paused_writer = started.writer
        os.killpg(paused.pid, signal.SIGSTOP)
        try:
            # ... while two healthy workers run the rest, one job of which is delivered twice ...
            for _ in range(2):
                stack.start_worker(concurrency=2)
            j_dup = submit(stack, "soup [steps=4]", "dee")
            others = [submit(stack, f"meal {i} [steps=3]", f"user{i}") for i in range(2)]
            wait_until(lambda: step_started(stack, j_dup.job_id, 1), timeout=DEADLINE, what="step 1 of the job to copy")
            stack.deps.queue.send(j_dup.job_id)  # a second copy of its message, racing the first
            # ... and the paused one is woken once its job has been taken over (past its lease)
            wait_until(lambda: resumed(log_of(stack, j_pause.job_id)), timeout=DEADLINE,
                       what="the paused worker's job to be taken over")
        finally:
            os.killpg(paused.pid, signal.SIGCONT)

        jobs = [j_kill, j_pause, j_dup, *others]
        logs = {j.job_id: wait_terminal(stack, j.job_id, timeout=DEADLINE) for j in jobs}
        # The woken worker ends the delivery it held (fenced: it writes nothing), and every
        # duplicate is acked without running anything.
        wait_until(lambda: queue_depth(stack, f"{stack.settings.queue_name}-pause") == 0, timeout=DEADLINE,
                   what="the woken worker to end its delivery")
        wait_until(lambda: stack.queue_depth() == 0, timeout=DEADLINE, what="every delivery to be acked")

        # THEN each job completed once: one terminal event, seqs 1..N, every step completed once,
        # no completed step run again, its turn committed once, and no older attempt writing after
        # a newer one started (the fence).
        for job in jobs:
            events = log_of(stack, job.job_id)
            assert events == logs[job.job_id], f"{job.message}: the log changed after its end"
            assert_contiguous_single_terminal(events)
            record = stack.deps.jobs.get(job.job_id)
            assert record is not None and record.status is JobStatus.COMPLETE, (job.message, record)
            assert completed_steps(events) == list(range(1, steps_of(job) + 1)), job.message
            attempts = [e.attempt for e in events]
            assert attempts == sorted(attempts), f"{job.message}: an older attempt wrote after a newer one"
            assert_effects_once_per_completed_step(stack, job.job_id, events)
            assert_conversation_once(stack, job.user_id, job.conversation_id, job.job_id, events)
        # The kill and the pause each forced a takeover; the paused worker wrote nothing after it.
        assert resumed(logs[j_kill.job_id]), "the killed worker's job was resumed by another"
        taken = resumed(logs[j_pause.job_id])[0].seq
        late = [e for e in logs[j_pause.job_id] if e.seq > taken and e.writer == paused_writer]
        assert not late, f"the paused worker wrote after the takeover: {late}"
        # Steps the killed worker completed before the kill ran once (the one it was in may run again).
        effects = stack.deps.agent_data.step_effects(j_kill.job_id)
        assert effects[1] == 1, effects
        # A duplicate delivery never starts a second attempt, nor runs a step again.
        assert not resumed(logs[j_dup.job_id]), "the duplicate started a second attempt"
        assert stack.deps.agent_data.step_effects(j_dup.job_id) == {1: 1, 2: 1, 3: 1, 4: 1}
    print(f"smoke: faults injected by the proxy: {injected_since(before, proxy.stats())}")


def submit(stack: Stack, message: str, user: str) -> Job:
    return JobService(stack.deps).submit(user, ChatRequest(message=message), None).job


def steps_of(job: Job) -> int:
    return int(job.message.split("[steps=")[1].split("]")[0])


def injected_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Faults the proxy injected between two ``stats()`` snapshots, by kind/operation."""
    out = {k: n - before["injected"].get(k, 0) for k, n in after["injected"].items()}
    out["stale_answers"] = after["stale_answers"] - before["stale_answers"]
    out["ttl_deletions"] = after["ttl_deletions"] - before["ttl_deletions"]
    return {k: n for k, n in sorted(out.items()) if n}


# Ambiguous writes well above the profile's rate. The lease (10 s) only has to be long enough
# that a renewal late on a busy machine, or botocore's own backoff on a throttled one (up to
# ~3 s), never costs a lease: a job dropped under its own ghost lease waits for that lease to
# lapse whatever its length, so it still shows as an extra attempt and a pause of a lease.
NO_STALL_ENV = {"ALFRED_LEASE_SECONDS": "10", "ALFRED_MAX_ATTEMPTS": "5", "ALFRED_RETRY_MAX_SECONDS": "2",
                "ALFRED_DEMO_STEP_SECONDS": "0.1"}
USERS = ["alice", "bob", "carol", "dave"]


@pytest.mark.chaos
def test_no_job_stalls_for_a_lease_period_because_of_its_own_landed_write(faithful: Faithful) -> None:
    """Issue 12's "done when": under AWS's semantics with one write in ten landing unanswered and
    no process killed, every job runs in one attempt (or exactly as many as its planted retryable
    failures ask for), and no job's log pauses for a lease period. A job dropped under its own
    ghost lease would show both: an attempt without events and a stall until the sweeper."""
    env, proxy = faithful
    before = proxy.stats()
    proxy.configure(**{"ambiguous.PutItem": 0.1, "ambiguous.UpdateItem": 0.1})
    started = time.monotonic()
    try:
        with make_stack(env, **NO_STALL_ENV) as stack:
            for _ in range(2):
                stack.start_worker(concurrency=2)
            stack.start_sweeper()
            messages = [f"meal {i} [steps={1 + i % 4}]" + (" [flaky=1]" if i % 6 == 5 else "") for i in range(16)]
            svc_jobs = [JobService(stack.deps).submit(USERS[i % len(USERS)], ChatRequest(message=m),
                                                      f"no-stall-{i}").job
                        for i, m in enumerate(messages)]
            logs = {j.job_id: wait_until(lambda j=j: terminal_log(stack, j.job_id), timeout=DEADLINE,
                                         what=f"{j.job_id} to end") for j in svc_jobs}
            lease = stack.settings.lease_seconds
            stalls: dict[str, float] = {}
            for job in svc_jobs:
                events = logs[job.job_id]
                assert_contiguous_single_terminal(events)
                assert events[-1].type.value == "complete", (job.message, events[-1].data)
                record = wait_until(lambda j=job: (r := stack.deps.jobs.get(j.job_id)) and r.terminal and r,
                                    what="terminal projection")
                planned = 2 if "[flaky=1]" in job.message else 1
                assert record.attempts == planned, (
                    f"{job.message}: {record.attempts} attempts for {planned} planned; "
                    f"attempts in the log: {sorted({e.attempt for e in events})}")
                # Pauses while an attempt runs; the wait after a planted failure's `pending` is the
                # retry's backoff and redelivery (queue and sweeper timing), not a stall.
                gaps = [_ts(b.at) - _ts(a.at) for a, b in itertools.pairwise(events)
                        if a.data.get("status") != "pending"]
                stalls[job.job_id] = max(gaps)
                assert stalls[job.job_id] < lease, f"{job.message} paused {max(gaps):.1f}s (lease {lease}s)"
                assert_effects_once_per_completed_step(stack, job.job_id, events)
    finally:
        proxy.configure(**{"ambiguous.PutItem": None, "ambiguous.UpdateItem": None})
    print(f"no-stall run: {len(logs)} jobs complete in {time.monotonic() - started:.1f}s; longest pause "
          f"{max(stalls.values()):.2f}s (lease {lease}s); faults {injected_since(before, proxy.stats())}")


def _ts(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()
