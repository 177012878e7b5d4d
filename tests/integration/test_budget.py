"""The worker's time budget over a real moto server and a real worker process: a job longer than
one invocation (``ALFRED_WORKER_INVOCATION_SECONDS``) is handed on at step boundaries and runs on
across invocations, each step once, with no lease period between its attempts."""

from __future__ import annotations

import pytest

from alfred_jobs.domain.models import EventType, JobStatus
from tests.integration.helpers import assert_contiguous_single_terminal, completed_steps, submit, wait_terminal
from tests.support.stack import Stack

pytestmark = pytest.mark.queue


def test_a_job_longer_than_an_invocation_is_handed_on_without_a_lease_wait(stack: Stack) -> None:
    # GIVEN a worker whose invocations last 3 s (a lease is 30 s)
    stack.start_worker(ALFRED_WORKER_INVOCATION_SECONDS="3", ALFRED_HANDOFF_MARGIN_SECONDS="0.5",
                       ALFRED_LEASE_SECONDS="30")
    # WHEN a job of six 1 s steps is submitted
    job = submit(stack, "soup [steps=6] [pace=1]")
    # THEN it completes, each step once, over several invocations
    events = wait_terminal(stack, job.job_id, timeout=90)
    assert_contiguous_single_terminal(events)
    assert events[-1].type is EventType.COMPLETE
    assert completed_steps(events) == [1, 2, 3, 4, 5, 6]
    assert stack.deps.agent_data.step_effects(job.job_id) == {i: 1 for i in range(1, 7)}
    handoffs = [i for i, e in enumerate(events)
                if e.type is EventType.STATUS and e.data == {"status": "pending"}]
    assert len(handoffs) >= 2, [(e.type, e.data) for e in events]
    # ... each next attempt beginning within seconds of the hand-off, not a lease period later
    for i in handoffs:
        assert events[i + 1].type is EventType.RESUMED
        assert events[i + 1].ts - events[i].ts < 5.0, "resumed at once"
    record = stack.deps.jobs.get(job.job_id)
    assert record is not None and record.status is JobStatus.COMPLETE and record.attempts == len(handoffs) + 1
