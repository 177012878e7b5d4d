"""Shared helpers for integration tests: submitting, reading logs, checking invariants."""

from __future__ import annotations

from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job
from alfred_jobs.durability.journal import Journal
from alfred_jobs.service.jobs import JobService
from tests.support.stack import Stack, wait_until

TERMINAL = {EventType.COMPLETE, EventType.FAILED, EventType.CANCELLED}


def submit(stack: Stack, message: str, user: str = "alice", key: str | None = None) -> Job:
    return JobService(stack.deps).submit(user, ChatRequest(message=message), key).job


def log_of(stack: Stack, job_id: str) -> list[Event]:
    return Journal(stack.deps.log, stack.settings.retention_seconds).read_all(job_id)


def wait_terminal(stack: Stack, job_id: str, timeout: float = 60.0) -> list[Event]:
    def done() -> list[Event] | None:
        evs = log_of(stack, job_id)
        return evs if evs and evs[-1].type in TERMINAL else None

    evs: list[Event] = wait_until(done, timeout=timeout, what=f"job {job_id} to end")
    # The record is projected right after the terminal event: wait for that too.
    wait_until(lambda: (j := stack.deps.jobs.get(job_id)) is not None and j.terminal, timeout=30,
               what="terminal projection")
    return evs


def assert_contiguous_single_terminal(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seqs must be 1..N"
    terminals = [e for e in events if e.type in TERMINAL]
    assert len(terminals) == 1 and events[-1] is terminals[0], "exactly one terminal event, last"


def completed_steps(events: list[Event]) -> list[int]:
    return [int(e.data["index"]) for e in events
            if e.type is EventType.STEP and e.data.get("status") == "completed"]
