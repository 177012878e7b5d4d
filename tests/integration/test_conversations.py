"""Guarantee 12 and per-user fairness with real worker processes, on AWS's semantics (moto server
behind the faithful proxy): one job of a conversation at a time in submit order, the three
multitask policies, a burst beside a bystander, a backlog the sweeper leaves alone, and a worker
SIGKILLed at the hand-off."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job, JobStatus
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.exceptions import Conflict
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.sweeper import Sweeper
from alfred_tools.fidelity import FidelityProxy
from tests.chaos.support import allow_receives, assert_effects_once_per_completed_step
from tests.integration.helpers import assert_contiguous_single_terminal, log_of, wait_terminal
from tests.support.servers import serve
from tests.support.stack import Stack, make_stack, wait_until

Faithful = tuple[dict[str, str], FidelityProxy]


@pytest.fixture
def faithful_env(faithful: Faithful) -> Iterator[Faithful]:
    env, proxy = faithful
    try:
        yield env, proxy
    finally:
        proxy.clear_script()


def chat(stack: Stack, message: str, conv: str | None = None, user: str = "alice", **kw: Any) -> Job:
    return JobService(stack.deps).submit(user, ChatRequest(message=message, conversation_id=conv, **kw), None).job


def ts(event: Event) -> float:
    return datetime.fromisoformat(event.at.replace("Z", "+00:00")).timestamp()


def first_running(events: list[Event]) -> Event:
    return next(e for e in events if e.type is EventType.STATUS and e.data.get("status") == "running")


def turns(stack: Stack, user: str, conv: str) -> list[tuple[str, str]]:
    return [(m["job_id"], m["role"]) for m in stack.deps.conversations.messages(user, conv, 100)]


def test_a_conversation_runs_its_jobs_one_at_a_time_in_submit_order(faithful_env: Faithful) -> None:
    env, _ = faithful_env
    with make_stack(env, ALFRED_DEMO_STEP_SECONDS="0.1") as stack:
        for _ in range(2):
            stack.start_worker(concurrency=2)
        stack.start_sweeper()
        # GIVEN four messages sent back to back into one conversation (double-texting), and a
        # message of another conversation of the same user
        conv = "kitchen"
        jobs = [chat(stack, f"dinner idea {i} [steps=2]", conv) for i in range(4)]
        other = chat(stack, "a side conversation [steps=1]", "other")
        logs = {j.job_id: wait_terminal(stack, j.job_id, timeout=90) for j in [*jobs, other]}
        # THEN each started only after the one before it had ended, and all completed
        for before, after in itertools.pairwise(jobs):
            assert ts(first_running(logs[after.job_id])) >= ts(logs[before.job_id][-1]), (before, after)
        for events in logs.values():
            assert_contiguous_single_terminal(events)
            assert events[-1].type is EventType.COMPLETE
        # AND the turns are committed in submit order, never interleaved
        assert turns(stack, "alice", conv) == [(j.job_id, role) for j in jobs for role in ("user", "assistant")]


def test_reject_refuses_and_interrupt_ends_the_running_job(faithful_env: Faithful) -> None:
    env, _ = faithful_env
    with make_stack(env, ALFRED_DEMO_STEP_SECONDS="0.3") as stack, serve(create_app(stack.deps)) as api:
        stack.start_worker()
        auth = {"Authorization": f"Bearer {issue_local_token(stack.settings, 'alice')}"}
        with httpx.Client(base_url=api, headers=auth, timeout=30) as client:
            first = client.post("/api/chat", json={"message": "a long stew [steps=20]", "conversation_id": "c"})
            assert first.status_code == 202
            first_id = first.json()["job_id"]
            wait_until(lambda: any(e.type is EventType.STEP for e in log_of(stack, first_id)),
                       what="the first job to be at work")
            # WHEN a second message asks to be refused if the conversation is busy
            busy = client.post("/api/chat", json={"message": "soup", "conversation_id": "c", "multitask": "reject"})
            assert busy.status_code == 409
            assert busy.json()["error"]["code"] == "conversation_busy"
            assert busy.json()["error"]["job_id"] == first_id
            # AND a third interrupts it
            third = client.post("/api/chat", json={"message": "salad instead [steps=1]", "conversation_id": "c",
                                                   "multitask": "interrupt"})
            assert third.status_code == 202
            third_id = third.json()["job_id"]
        # THEN the first ends cancelled, saying why and by whom, and the third runs after it
        ended = wait_terminal(stack, first_id)
        assert ended[-1].type is EventType.CANCELLED
        assert ended[-1].data == {"reason": "interrupted", "by": third_id}
        last = wait_terminal(stack, third_id)
        assert last[-1].type is EventType.COMPLETE
        assert ts(first_running(last)) >= ts(ended[-1])
        assert turns(stack, "alice", "c") == [(third_id, "user"), (third_id, "assistant")]


def test_a_burst_of_one_user_does_not_hold_up_another_users_job(faithful_env: Faithful) -> None:
    env, _ = faithful_env
    with make_stack(env, ALFRED_MAX_RUNNING_PER_USER="1", ALFRED_DEMO_STEP_SECONDS="0.2") as stack:
        for _ in range(2):
            stack.start_worker()
        # GIVEN one user firing twenty messages (each its own conversation) at once
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda i: chat(stack, f"meal {i} [steps=1]", user="hungry"), range(20)))
        # WHEN another user sends one
        t0 = time.monotonic()
        bystander = chat(stack, "one quick question [steps=1]", user="patient")
        started = wait_until(lambda: next((e for e in log_of(stack, bystander.job_id)
                                           if e.type is EventType.STATUS), None),
                             what="the bystander's job to start")
        waited = time.monotonic() - t0
        # THEN it starts while the burst is still being worked through one at a time (a free
        # worker takes it: the waiting jobs hold no worker and no queue message)
        begun = [j for j in burst if log_of(stack, j.job_id)]
        assert len(begun) <= 3, f"{len(begun)} of the burst had started before the bystander"
        assert started.data["status"] == "running"
        print(f"bystander started after {waited:.2f}s with {len(begun)} of the burst begun")
        # AND the burst itself runs, one at a time, to the end
        try:
            wait_until(lambda: all((r := stack.deps.jobs.get(j.job_id)) and r.terminal for j in burst),
                       timeout=180, what="the burst to end")
        except AssertionError as exc:
            state = {j.job_id: (r.status, r.attempts) if (r := stack.deps.jobs.get(j.job_id)) else None
                     for j in burst}
            raise AssertionError(f"{exc}; gate {stack.deps.gates.read('hungry')}; jobs {state}; "
                                 f"queue {stack.queue_depth()}") from None
        assert all(log_of(stack, j.job_id)[-1].type is EventType.COMPLETE for j in burst)


def test_a_backlog_of_hundreds_is_left_alone_by_the_sweeper(faithful_env: Faithful) -> None:
    env, _ = faithful_env
    with make_stack(env, ALFRED_MAX_RUNNING_PER_USER="1", ALFRED_MAX_ACTIVE_PER_USER="300") as stack:
        svc = JobService(stack.deps)
        # GIVEN 200 jobs of one user in five conversations, one allowed to run at a time, and no
        # worker yet: the one job that may start has its message in the queue, the 199 others
        # wait their turn (no worker is running, so no lease can lapse and be rightly re-sent)
        with ThreadPoolExecutor(8) as pool:
            backlog = list(pool.map(lambda i: chat(stack, f"plan {i} [steps=1]", f"conv-{i % 5}"), range(200)))
        assert stack.queue_depth() == 1, "a waiting job has no message in the queue"
        # WHEN the sweeper looks, again and again, well past every job's grace period
        sweeper = Sweeper(stack.deps)
        reports = []

        def swept_all() -> bool:
            reports.append(sweeper.sweep(limit=500))
            return sum(len(r.waiting) for r in reports) >= 199 and any(r.queued for r in reports)

        wait_until(swept_all, timeout=90, what="the sweeper to have looked at the backlog")
        # THEN it re-sent none of them as stuck (no StuckJobs, no alarm): 199 waiting, and the one
        # that may start presumed queued (its message is in the queue's backlog). Presumed once
        # per send, it may have been sent once more if the sweeper looked two grace periods on
        # (it cannot tell a queued message from a lost one); then it is its own message, and
        # presumed queued while the backlog lasts. The queue holds that job's messages only.
        resent = [j for r in reports for j in r.requeued]
        assert resent == [], f"the sweeper re-sent {len(resent)} jobs of a plain backlog"
        assert len({j for r in reports for j in r.waiting}) == 199
        queued = {j for r in reports for j in r.queued}
        again = [j for r in reports for j in r.resent]
        assert queued <= {j.job_id for j in backlog} and len(queued) == 1
        assert len(again) <= 1 and set(again) <= queued
        assert stack.queue_depth() == 1 + len(again)
        # AND with a worker, the backlog runs; once the user cancels everything, it is gone at
        # once, and a new job runs
        stack.start_worker()
        wait_until(lambda: any(log_of(stack, j.job_id) for j in backlog), what="the backlog to start")

        def cancel(job: Job) -> None:
            try:
                svc.cancel("alice", job.job_id)
            except Conflict:
                pass  # one of the few that ran to the end meanwhile

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(cancel, backlog))
        wait_until(lambda: all((r := stack.deps.jobs.get(j.job_id)) and r.terminal for j in backlog),
                   timeout=90, what="every job of the backlog to end")
        after = chat(stack, "fresh start [steps=1]", "conv-0")
        assert wait_terminal(stack, after.job_id)[-1].type is EventType.COMPLETE


def test_a_worker_killed_at_the_hand_off_leaves_nothing_stuck_and_runs_nothing_twice(
        faithful_env: Faithful) -> None:
    env, proxy = faithful_env
    with make_stack(env, ALFRED_DEMO_STEP_SECONDS="0.1") as stack:
        allow_receives(stack, 10, visibility_timeout=3)
        # GIVEN two messages of one conversation, and the first job's hand-off (the removal of its
        # gate entry, after its terminal event and its committed turn) held at the proxy
        proxy.script([{"fault": "hold", "action": "UpdateItem", "table": stack.settings.jobs_table,
                       "expression_contains": "REMOVE m.#j", "times": 1}])
        first = chat(stack, "first [steps=2]", "c")
        second = chat(stack, "second [steps=2]", "c")
        worker = stack.start_worker()
        wait_until(lambda: proxy.held(), timeout=60, what="the first job to reach its hand-off")
        assert log_of(stack, first.job_id)[-1].type is EventType.COMPLETE
        # WHEN its worker is SIGKILLed there (the held call is then dropped, never applied)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        proxy.release_held()
        assert not log_of(stack, second.job_id), "the second job has not started"
        # AND a new worker and the sweeper come up
        stack.start_worker()
        stack.start_sweeper()
        # THEN the sweeper finds the first job unfinished, it is finalized again, hands on, and the
        # second job runs after it; nothing ran twice, the first turn is committed once
        events = {j.job_id: wait_terminal(stack, j.job_id, timeout=90) for j in (first, second)}
        for job in (first, second):
            assert_contiguous_single_terminal(events[job.job_id])
            assert events[job.job_id][-1].type is EventType.COMPLETE
            assert_effects_once_per_completed_step(stack, job.job_id, events[job.job_id])
        assert ts(first_running(events[second.job_id])) >= ts(events[first.job_id][-1])
        assert turns(stack, "alice", "c") == [(first.job_id, "user"), (first.job_id, "assistant"),
                                              (second.job_id, "user"), (second.job_id, "assistant")]
        record = stack.deps.jobs.get(first.job_id)
        assert record is not None and record.status is JobStatus.COMPLETE
        assert stack.deps.gates.read("alice").entries == ()


def test_past_the_active_limit_a_submit_is_a_429_with_retry_after(faithful_env: Faithful) -> None:
    env, _ = faithful_env
    with make_stack(env, ALFRED_MAX_ACTIVE_PER_USER="3") as stack, serve(create_app(stack.deps)) as api:
        auth = {"Authorization": f"Bearer {issue_local_token(stack.settings, 'alice')}"}
        with httpx.Client(base_url=api, headers=auth, timeout=30) as client:
            for i in range(3):
                assert client.post("/api/chat", json={"message": f"m{i}"}).status_code == 202
            refused = client.post("/api/chat", json={"message": "one too many"})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_jobs"
            assert int(refused.headers["Retry-After"]) >= 1
            # The list reads the by_user index, eventually consistent (the proxy answers it stale):
            # it settles on the three jobs, never on a fourth left behind by the refused submit.
            wait_until(lambda: len(client.get("/api/jobs", params={"status": "active"}).json()["jobs"]) == 3,
                       what="the active list to settle on the three jobs")
            assert client.post("/api/chat", json={"message": "mine"},
                               headers={"Authorization": f"Bearer {issue_local_token(stack.settings, 'bob')}"},
                               ).status_code == 202





def test_the_users_conversations_are_listed_newest_first_with_their_titles(faithful_env: Faithful) -> None:
    env, _ = faithful_env
    with make_stack(env, ALFRED_DEMO_STEP_SECONDS="0.05") as stack:
        stack.start_worker(concurrency=2)
        # GIVEN two conversations of alice's, the older one active again last, and one of bob's

        def done(message: str, conv: str | None = None, user: str = "alice") -> tuple[Job, str]:
            job = chat(stack, message, conv, user=user)
            events = wait_terminal(stack, job.job_id, timeout=60)
            assert events[-1].type is EventType.COMPLETE
            return job, events[-1].at

        tofu, _ = done("stir fry with the tofu from the fridge [steps=1]")
        risotto, _ = done("mushroom risotto [steps=1]")
        _, replied = done("and a salad [steps=1]", tofu.conversation_id)
        done("bob's pancakes [steps=1]", user="bob")
        # WHEN alice lists her conversations (the index the page's drawer and the CLI read: a view,
        # which may lag a write by the proxy's stale-read window)
        svc = JobService(stack.deps)
        want = [(tofu.conversation_id, "stir fry with the tofu from the fridge [steps=1]", replied),
                (risotto.conversation_id, "mushroom risotto [steps=1]")]

        def listed() -> list[tuple[str, ...]]:
            items, nxt = svc.conversations("alice", None, None)
            assert nxt is None
            return [(c["conversation_id"], c["title"], c["updated_at"])[:3 - i] for i, c in enumerate(items)]

        # THEN each is there once, most recently active first, titled by its first message, and
        # the latest at the time of its reply
        wait_until(lambda: listed() == want, timeout=10, what="the list to show the latest reply")
        page, nxt = svc.conversations("alice", 1, None)
        assert [c["conversation_id"] for c in page] == [tofu.conversation_id] and nxt
        assert [c["conversation_id"] for c in svc.conversations("alice", 1, nxt)[0]] == [risotto.conversation_id]
