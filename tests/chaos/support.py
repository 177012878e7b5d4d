"""Shared by the chaos and guarantee tests: the queue's redrive for disruptions, and the invariants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from alfred_jobs.domain.events import step_started_by
from alfred_jobs.domain.models import Event, EventType
from alfred_tools.fidelity import FidelityProxy
from tests.integration.helpers import TERMINAL, log_of
from tests.support.stack import Stack, make_stack


def allow_receives(stack: Stack, max_receive_count: int, visibility_timeout: int | None = None) -> None:
    """Raise the jobs queue's redrive ``maxReceiveCount`` (and optionally shorten its visibility).

    The chaos runs kill workers and duplicate deliveries far more often than AWS does, so a job's
    message is received more often than ``max_attempts`` + the template's margin (5 receives for 3
    attempts) allows; SQS would then park a healthy job's message itself.
    """
    attrs = stack.clients.sqs.get_queue_attributes(QueueUrl=stack.clients.queue_url,
                                                   AttributeNames=["RedrivePolicy"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    redrive["maxReceiveCount"] = max_receive_count
    new = {"RedrivePolicy": json.dumps(redrive)}
    if visibility_timeout is not None:
        new["VisibilityTimeout"] = str(visibility_timeout)
    stack.clients.sqs.set_queue_attributes(QueueUrl=stack.clients.queue_url, Attributes=new)


def assert_effects_once_per_completed_step(stack: Stack, job_id: str, events: list[Event]) -> None:
    """No completed step ran again: a step ran at most once per attempt that was at work on it.

    For step k, the attempts "at work on it" are those with an event between its first ``started``
    and its ``completed`` (or the end of the log). A step cut off mid-way may run once more per
    such attempt; a re-run after completion would exceed the bound.
    """
    effects = stack.deps.agent_data.step_effects(job_id)
    for index, runs in effects.items():
        starts = [e.seq for e in events if step_started_by(e) == index]
        done = [e.seq for e in events if e.type is EventType.STEP and e.data["index"] == index
                and e.data["status"] == "completed"]
        assert starts, f"{job_id}: step {index} ran {runs}x but was never recorded as started"
        assert len(done) <= 1, f"{job_id}: step {index} completed {len(done)} times"
        end = done[0] if done else events[-1].seq
        attempts = {e.attempt for e in events if starts[0] <= e.seq <= end}
        assert runs <= len(attempts), (
            f"{job_id}: step {index} ran {runs}x over {len(attempts)} attempt(s) {sorted(attempts)}")


def assert_conversation_once(stack: Stack, user: str, conversation_id: str, job_id: str,
                             events: list[Event]) -> None:
    """A completed job's turn is committed exactly once; a job that did not complete commits nothing."""
    msgs = [m for m in stack.deps.conversations.messages(user, conversation_id, 500) if m["job_id"] == job_id]
    if events[-1].type is EventType.COMPLETE:
        assert [m["role"] for m in msgs] == ["user", "assistant"], f"{job_id}: turn committed as {msgs}"
        assert msgs[1]["text"] == events[-1].data["output"]["reply"]
    else:
        assert msgs == [], f"{job_id} ended {events[-1].type} but committed {msgs}"


def terminal_log(stack: Stack, job_id: str) -> list[Event] | None:
    evs = log_of(stack, job_id)
    return evs if evs and evs[-1].type in TERMINAL else None


@contextmanager
def on_the_faithful_proxy(faithful: tuple[dict[str, str], FidelityProxy], **env: str) -> Iterator[Stack]:
    """Fresh tables and queues on the faithful proxy (AWS's semantics), with ``env`` on top; the
    proxy's scripted faults are cleared after.

    A lost delete (AWS's at-least-once, which the proxy plays) brings a message back after the
    queue's visibility timeout: 720 s in the template, 3 s here so that the no-op redelivery (the
    job is over: acked again) happens within a test that waits for the queue to drain. Receives
    stay well under the raised maxReceiveCount.
    """
    base, proxy = faithful
    try:
        with make_stack(base, **env) as s:
            allow_receives(s, 10, visibility_timeout=3)
            yield s
    finally:
        proxy.clear_script()
