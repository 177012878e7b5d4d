"""Guarantee 13 with real processes on AWS's semantics (moto server behind the faithful proxy): a job
waiting for the user's answer holds no worker, survives every worker dying, and one answer from
any client continues it exactly once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import httpx
import pytest

from alfred_jobs.domain.models import EventType, JobStatus
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.service.auth import issue_local_token
from alfred_tools.fidelity import FidelityProxy
from tests.chaos.support import assert_effects_once_per_completed_step, on_the_faithful_proxy
from tests.integration.helpers import assert_contiguous_single_terminal, log_of, wait_terminal
from tests.support.servers import serve
from tests.support.stack import Stack, wait_until

Faithful = tuple[dict[str, str], FidelityProxy]


@pytest.fixture
def stack(faithful: Faithful) -> Iterator[Stack]:
    with on_the_faithful_proxy(faithful, ALFRED_DEMO_STEP_SECONDS="0.1") as s:
        yield s


def waiting(stack: Stack, job_id: str) -> bool:
    events = log_of(stack, job_id)
    record = stack.deps.jobs.get(job_id)
    return bool(events) and events[-1].type is EventType.INPUT_REQUIRED and record is not None \
        and record.status is JobStatus.WAITING and record.lease_owner is None


def test_a_question_survives_every_worker_dying_and_one_answer_continues_the_job_once(stack: Stack) -> None:
    token = issue_local_token(stack.settings, "alice")
    with serve(create_app(stack.deps)) as api, \
            httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30) as phone, \
            httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30) as laptop:
        workers = [stack.start_worker(), stack.start_worker()]
        stack.start_sweeper()
        # GIVEN a job that asks before it changes the pantry, sent from the phone
        job_id = phone.post("/api/chat", json={"message": "chicken from my pantry [steps=3]"}).json()["job_id"]
        wait_until(lambda: waiting(stack, job_id), what="the job to ask and wait")
        question = log_of(stack, job_id)[-1].data
        assert question["kind"] == "confirm" and question["input_id"] == "s1q1"
        # WHEN every worker dies while it waits (it holds none of them) and the sweeper keeps sweeping
        for w in workers:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait()
        wait_until(lambda: phone.get(f"/api/jobs/{job_id}").json()["status"] == "waiting",
                   what="the job to read as waiting")
        # AND the laptop answers (twice: a double tap), then the phone answers otherwise
        first = laptop.post(f"/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": True})
        again = laptop.post(f"/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": True})
        other = phone.post(f"/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": False})
        assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409), other.text
        assert other.json()["error"]["code"] == "input_answered"
        # AND a worker comes back
        stack.start_worker()
        # THEN the job resumes from its checkpoint and completes once, with the answer taken
        events = wait_terminal(stack, job_id)
        assert_contiguous_single_terminal(events)
        assert events[-1].type is EventType.COMPLETE
        assert "I used the 2 lb of chicken" in events[-1].data["output"]["reply"]
        assert [e.type for e in events].count(EventType.INPUT_RECEIVED) == 1
        assert [e.type for e in events].count(EventType.INPUT_REQUIRED) == 1
        assert_effects_once_per_completed_step(stack, job_id, events)
        assert stack.deps.gates.read("alice").entries == ()


def test_an_answer_that_does_not_fit_is_a_400_and_cancel_works_while_waiting(stack: Stack) -> None:
    token = issue_local_token(stack.settings, "alice")
    with serve(create_app(stack.deps)) as api, \
            httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        stack.start_worker()
        job_id = client.post("/api/chat", json={"message": "what is in my pantry [steps=1]",
                                                "conversation_id": "kitchen"}).json()["job_id"]
        wait_until(lambda: waiting(stack, job_id), what="the job to ask")
        bad = client.post(f"/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": "yes"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_answer"
        stale = client.post(f"/api/jobs/{job_id}/input", json={"input_id": "nope", "answer": True})
        assert stale.status_code == 409
        mallory = issue_local_token(stack.settings, "mallory")
        assert client.post(f"/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": True},
                           headers={"Authorization": f"Bearer {mallory}"}).status_code == 404
        # the next message of the conversation waits behind the question
        nxt = client.post("/api/chat", json={"message": "then soup [steps=1]", "conversation_id": "kitchen"})
        assert nxt.status_code == 202
        cancelled = client.post(f"/api/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        late = client.post(f"/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": True})
        assert late.status_code == 409
        # and the conversation goes on
        assert wait_terminal(stack, nxt.json()["job_id"])[-1].type is EventType.COMPLETE
