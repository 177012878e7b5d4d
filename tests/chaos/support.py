"""Shared by the chaos tests: processes with faults, an HTTP server in a thread, watchers, invariants."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from alfred_jobs.domain.events import step_started_by
from alfred_jobs.domain.models import Event, EventType
from alfred_jobs.exceptions import TransientStoreError
from tests.integration.helpers import TERMINAL, log_of
from tests.support.stack import Stack

T = TypeVar("T")


def start_sweeper(stack: Stack, **extra_env: str) -> subprocess.Popen[bytes]:
    """A sweeper process with extra environment."""
    return stack.start_sweeper(**extra_env)


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


def dlq_job_ids(stack: Stack) -> set[str]:
    """Job ids of the messages in the DLQ now: parked by the runner (``job_id`` attribute) or moved
    there by the queue's own redrive (the body only)."""
    ids = set()
    for m in stack.dlq_messages():
        attr = (m.get("MessageAttributes") or {}).get("job_id")
        ids.add(attr["StringValue"] if attr else f"redriven:{json.loads(m['Body']).get('job_id')}")
    return ids


def retry_transient(call: Callable[[], T], attempts: int = 30) -> T:
    """What a client does with a 5xx: try again (with the same idempotency key), a bounded number of times."""
    for n in range(attempts):
        try:
            return call()
        except TransientStoreError:
            if n == attempts - 1:
                raise
            time.sleep(0.02)
    raise AssertionError("unreachable")


@dataclass
class WatchRecord:
    """What one watcher saw: every event it received, in order, across reconnects."""

    job_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def cursor(self) -> int:
        return int(self.events[-1]["seq"]) if self.events else 0


def sse_session(client: httpx.Client, url: str, rec: WatchRecord, cut_after: int | None,
                token: str) -> bool:
    """One SSE connection from ``rec.cursor`` (Last-Event-ID); stops after ``cut_after`` frames.

    Returns True when the server closed the stream after the terminal event.
    """
    headers = {"Last-Event-ID": str(rec.cursor)} if rec.events else {}
    got = 0
    data: str | None = None
    with client.stream("GET", f"{url}?token={token}", headers=headers) as resp:
        if resp.status_code != 200:
            rec.errors.append(f"{resp.status_code} {resp.read()[:200]!r}")
            if resp.status_code < 500:
                raise AssertionError(f"watcher refused: {rec.errors[-1]}")
            return False
        for line in resp.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data is not None:
                ev = json.loads(data)
                data = None
                rec.events.append(ev)
                got += 1
                if ev["type"] in {t.value for t in TERMINAL}:
                    rec.done = True
                if cut_after is not None and got >= cut_after:
                    return False  # a dropped connection (the phone locked)
    return rec.done


def long_poll_session(client: httpx.Client, url: str, rec: WatchRecord, token: str) -> bool:
    """One long-poll round from ``rec.cursor``; returns True once the job is done."""
    try:
        resp = client.get(url, params={"after": rec.cursor, "wait": 2, "token": token})
    except httpx.TransportError as exc:  # a dropped connection: poll again from the same cursor
        rec.errors.append(f"{type(exc).__name__}: {exc}")
        return False
    if resp.status_code != 200:
        rec.errors.append(f"{resp.status_code} {resp.text[:200]}")
        if resp.status_code < 500:
            raise AssertionError(f"watcher refused: {rec.errors[-1]}")
        return False
    body = resp.json()
    rec.events.extend(body["events"])
    rec.done = bool(body["done"])
    return rec.done


def assert_watcher_saw_the_log(rec: WatchRecord, stored: list[Event]) -> None:
    """The watcher's sequence is exactly the stored log (no gap, no duplicate, same content)."""
    assert [e["seq"] for e in rec.events] == [e.seq for e in stored], (
        f"watcher of {rec.job_id} saw seqs {[e['seq'] for e in rec.events]}, log has 1..{len(stored)}")
    assert rec.events == [e.public() for e in stored]


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
