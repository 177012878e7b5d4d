"""Issue 12's bugs, each proven on AWS's real semantics: real processes on moto server behind the
faithful proxy (stale eventually consistent reads, late TTL, ambiguous writes), with the proxy's
scripted faults aimed at exactly the call that used to go wrong.

Every test here failed before its fix (the test names the bug); they pass only because the code
no longer leans on a kindness of the emulator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from alfred_jobs.domain.models import EventType
from alfred_jobs.entry.http.stream_api import create_stream_app
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.jobs import JobService
from tests.integration.helpers import (
    assert_contiguous_single_terminal,
    completed_steps,
    log_of,
    submit,
    wait_terminal,
)
from tests.support.fidelity import FidelityProxy
from tests.support.servers import serve
from tests.support.stack import Stack, make_stack, wait_until

pytestmark = pytest.mark.integration
Faithful = tuple[dict[str, str], FidelityProxy]
WORKER = "worker"  # the access key id of the worker processes: the proxy's scripts aim at it


# Leases of 20 s, not the suite's 2 s (docs/testing.md: "Leases long unless the lease is the
# subject"), as conftest's ``faithful_stack``, which this fixture shadows, gives them. These tests
# assert one attempt, and a 2 s lease lapses when a renewal is late by about a second: one random
# throttle on a keeper's call backs off up to a second, a loaded machine adds the rest. The attempt
# then stops, fenced by its own clock, and the job resumes in a second attempt, as the guarantees
# allow: a take-over no test here means to make (CI: {1, 2} == {1} in the ambiguous append's test).
LEASE = "20"


@pytest.fixture
def faithful_stack(faithful: Faithful) -> Iterator[tuple[Stack, FidelityProxy]]:
    env, proxy = faithful
    with make_stack(env, ALFRED_LEASE_SECONDS=LEASE) as stack:
        try:
            yield stack, proxy
        finally:
            proxy.clear_script()


def start_worker(stack: Stack, **env: str) -> None:
    stack.start_worker(AWS_ACCESS_KEY_ID=WORKER, **env)


def test_an_ambiguous_lease_takeover_runs_the_job_at_once(faithful_stack: tuple[Stack, FidelityProxy]) -> None:
    """Bug 2: the worker's lease UpdateItem lands, its answer is lost, botocore's retry fails the
    condition on the worker's own lease. It used to read that as "held by another worker", drop
    the message and leave the job under a ghost lease until the sweeper (30-90 s)."""
    stack, proxy = faithful_stack
    proxy.script([{"action": "UpdateItem", "table": stack.settings.jobs_table, "principal": WORKER,
                   "fault": "ambiguous", "times": 1}])
    job = submit(stack, "soup [steps=2]")
    # No sweeper: only the first delivery can run it. The module's 20 s lease: a lease that lapsed
    # on a busy machine is not what this test is about (a ghost lease never ends).
    start_worker(stack)
    events = wait_terminal(stack, job.job_id, timeout=60)
    assert_contiguous_single_terminal(events)
    assert events[-1].type is EventType.COMPLETE
    assert not any(e.type is EventType.RESUMED for e in events), "one attempt, no takeover"
    record = stack.deps.jobs.get(job.job_id)
    assert record is not None and record.attempts == 1
    assert proxy.stats()["injected"].get("ambiguous/UpdateItem", 0) >= 1


def test_an_append_that_landed_behind_every_error_is_the_workers_own(
        faithful_stack: tuple[Stack, FidelityProxy]) -> None:
    """Bug 2, second half: one event put lands and every answer to it (botocore's 4 tries, four
    times over) is lost, so the journal gives up although the event is stored. The runner then
    met its own event in the slot, took it for another writer's, dropped the job and left it
    under its lease. Now the journal looks before giving up, and finds its own event by its id."""
    stack, proxy = faithful_stack
    proxy.script([{"action": "PutItem", "table": stack.settings.events_table, "principal": WORKER,
                   "fault": "ambiguous", "times": 20, "skip": 2}])
    job = submit(stack, "stew [steps=3]")
    # No sweeper: a dropped delivery would never come back. The module's 20 s lease: a lease that
    # lapsed on a busy machine is a second attempt the guarantees allow, not the bug.
    start_worker(stack)
    events = wait_terminal(stack, job.job_id, timeout=120)
    assert_contiguous_single_terminal(events)
    assert events[-1].type is EventType.COMPLETE
    assert completed_steps(events) == [1, 2, 3]
    assert {e.attempt for e in events} == {1}, "one attempt: nothing was dropped"
    assert stack.deps.agent_data.step_effects(job.job_id) == {1: 1, 2: 1, 3: 1}
    assert proxy.stats()["injected"].get("ambiguous/PutItem", 0) >= 20  # the script (and the profile)


def test_a_stale_read_is_never_taken_for_a_cancel(faithful_stack: tuple[Stack, FidelityProxy]) -> None:
    """Bug 4: the cancel poll read eventually consistent, and right after the record was written
    such a read can answer "no item", which cancelled a job nobody cancelled. (The poll is strongly
    consistent now, and "no item" is not a cancel either way.)"""
    stack, proxy = faithful_stack
    proxy.configure(stale_ms=4000)  # every eventually consistent read sees the world 0-4 s ago
    try:
        before = proxy.stats()["stale_answers"]
        job = submit(stack, "curry [steps=4]")
        start_worker(stack, ALFRED_DEMO_STEP_SECONDS="0.2")
        # The window is real: an eventually consistent read of the new record may not see it yet
        # (one more such read per try, until the proxy has served a stale answer).
        wait_until(lambda: not stack.clients.dynamodb.get_item(
            TableName=stack.settings.jobs_table, Key={"job_id": {"S": job.job_id}}).get("Item")
            or proxy.stats()["stale_answers"] > before, timeout=10, what="a stale answer")
        events = wait_terminal(stack, job.job_id, timeout=60)
    finally:
        proxy.configure(stale_ms=None)
    assert events[-1].type is EventType.COMPLETE, [str(e.type) for e in events]
    assert proxy.stats()["stale_answers"] > before, "the proxy did serve stale reads meanwhile"


def test_a_key_reused_after_retention_makes_a_new_job_with_a_fresh_log(faithful: Faithful) -> None:
    """Bug 3: once retention is over the key is free again (guarantee 11). It used to be a 409
    while the old record was still stored, and once TTL had deleted the record but not all of its
    events, the new job's puts landed on old items and it never ran."""
    env, proxy = faithful
    # 8 s of retention: long enough for the first job to run on a busy machine (it must end before
    # it expires), short enough to wait out.
    with make_stack(env, ALFRED_RETENTION_SECONDS="8", ALFRED_LEASE_SECONDS=LEASE) as stack:
        svc = JobService(stack.deps)
        start_worker(stack)
        first = submit(stack, "soup [steps=3]", key="reused")
        old = wait_terminal(stack, first.job_id)
        assert old[-1].type is EventType.COMPLETE
        # Retention ends; TTL deletes the old items late and in any order meanwhile.
        wait_until(lambda: stack.deps.jobs.get(first.job_id) is None, timeout=40, what="retention to end")
        again = submit(stack, "stew [steps=2]", key="reused")
        assert again.job_id == first.job_id and again.message == "stew [steps=2]"
        events = wait_terminal(stack, again.job_id)
        assert_contiguous_single_terminal(events)
        assert events[-1].type is EventType.COMPLETE
        assert completed_steps(events) == [1, 2], "the new job's own plan, not the old one's"
        assert {e.attempt for e in events} == {1}
        reply = svc.get("alice", again.job_id).output or {}
        assert "stew" in str(reply.get("reply", "")).lower() or reply
        assert stack.deps.agent_data.step_effects(again.job_id) == {1: 1, 2: 1}
        # AND once TTL has deleted what the old job left (it is late: 0-3 s here, up to two days on
        # AWS; the new job may have ended before or after), the new job's log is still whole: TTL
        # deleted expired leftovers only, never an item the new job wrote
        wait_until(lambda: proxy.stats()["ttl_deletions"] > 0, timeout=60,
                   what="TTL to delete the old job's expired items")
        assert wait_terminal(stack, again.job_id) == events


def test_a_watcher_joining_low_on_fresh_events_misses_none(faithful_stack: tuple[Stack, FidelityProxy]) -> None:
    """Bug 1: two watchers of one running job in one stream process; the second joins from seq 0
    while the events are under a second old. Its backfill read eventually consistent, stopped at
    a stale hole and skipped to the buffer's base."""
    stack, proxy = faithful_stack
    proxy.configure(stale_ms=1500)
    try:
        start_worker(stack, ALFRED_DEMO_STEP_SECONDS="0.3")
        job = submit(stack, "pie [steps=8]")
        token = issue_local_token(stack.settings, "alice")
        headers = {"Authorization": f"Bearer {token}"}
        seen: dict[str, list[int]] = {"head": [], "low": []}
        head_ready = threading.Event()

        def sse(name: str, after: int, client: httpx.Client) -> None:
            hdrs = {**headers, "Last-Event-ID": str(after)}
            with client.stream("GET", f"/api/jobs/{job.job_id}/stream", headers=hdrs) as resp:
                assert resp.status_code == 200
                head_ready.set()
                for line in resp.iter_lines():
                    if line.startswith("id: "):
                        seen[name].append(int(line[4:]))

        with serve(create_stream_app(stack.deps, heartbeat_seconds=1)) as base, \
                httpx.Client(base_url=base, timeout=httpx.Timeout(60)) as client:
            wait_until(lambda: len(log_of(stack, job.job_id)) >= 6, what="a few events")
            head_at = len(log_of(stack, job.job_id))
            head = threading.Thread(target=sse, args=("head", head_at, client))
            head.start()
            assert head_ready.wait(30)
            wait_until(lambda: len(log_of(stack, job.job_id)) > head_at + 1, what="fresh events")
            sse("low", 0, client)
            head.join(60)
        final = log_of(stack, job.job_id)
    finally:
        proxy.configure(stale_ms=None)
    assert seen["low"] == [e.seq for e in final], "the low watcher got every event, in order"
    assert seen["head"] == [e.seq for e in final if e.seq > head_at]
