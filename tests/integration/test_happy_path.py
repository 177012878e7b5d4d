"""Submit → worker process → complete, over a real moto server."""

from __future__ import annotations

import pytest

from alfred_jobs.domain.models import EventType, JobStatus
from tests.integration.helpers import (
    assert_contiguous_single_terminal,
    completed_steps,
    submit,
    wait_terminal,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.queue  # through the target's queue (the LocalStack leg runs it)


def test_submit_runs_to_complete_with_contiguous_events(stack: Stack) -> None:
    # GIVEN a worker process polling the queue
    stack.start_worker()
    # WHEN a job is submitted
    job = submit(stack, "chicken and rice [steps=3]")
    assert job.status is JobStatus.PENDING and job.last_seq == 0
    # THEN it completes with a contiguous log ending in one terminal event
    events = wait_terminal(stack, job.job_id)
    assert_contiguous_single_terminal(events)
    assert events[0].type is EventType.STATUS and events[0].data == {"status": "running"}
    assert completed_steps(events) == [1, 2, 3]
    assert events[-1].type is EventType.COMPLETE
    record = stack.deps.jobs.get(job.job_id)
    assert record is not None and record.status is JobStatus.COMPLETE
    assert record.last_seq == len(events)
    assert stack.deps.agent_data.step_effects(job.job_id) == {1: 1, 2: 1, 3: 1}
    msgs = stack.deps.conversations.messages("alice", job.conversation_id, 10)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[1]["text"] == events[-1].data["output"]["reply"]
