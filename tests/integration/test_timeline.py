"""Issue 27 with real processes on AWS's semantics (moto server behind the faithful proxy): a job
that waited for an answer, lost its worker to a SIGKILL and was stopped during its reply has a
timeline that tells all three, with sums that match its log, and keeps the words it had written."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from alfred_jobs.domain.events import Usage, parse_iso, step_started_by
from alfred_jobs.domain.models import EventType
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.timeline import cost_usd
from alfred_tools.timeline_text import render
from tests.integration.helpers import assert_contiguous_single_terminal, log_of, wait_terminal
from tests.support.servers import serve
from tests.support.stack import Stack, wait_until


@pytest.fixture
def stack(faithful_stack: Stack) -> Stack:
    """The faithful stack of conftest.py (leases of 20 s, lost deletes back in 3 s)."""
    return faithful_stack


def has(stack: Stack, job_id: str, kind: EventType, **data: object) -> bool:
    return any(e.type is kind and all(e.data.get(k) == v for k, v in data.items()) for e in log_of(stack, job_id))


def test_a_crashed_waited_and_stopped_job_shows_it_all_in_its_timeline_and_keeps_its_words(stack: Stack) -> None:
    token = issue_local_token(stack.settings, "alice")
    with serve(create_app(stack.deps)) as api, \
            httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30) as phone:
        # GIVEN a job that asks before changing the pantry, on a worker with a short lease (its
        # lapse after the kill is what lets the job be taken over)
        first = stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.4", ALFRED_LEASE_SECONDS="6")
        stack.start_sweeper()
        job_id = phone.post("/api/chat", json={"message": "chicken from my pantry [steps=3] [pace=2] [reply=4]"}
                            ).json()["job_id"]
        wait_until(lambda: has(stack, job_id, EventType.INPUT_REQUIRED), what="the job to ask")
        wait_until(lambda: phone.get(f"/api/jobs/{job_id}").json()["status"] == "waiting", what="it to wait")
        # WHEN the user answers, and the worker is SIGKILLed during step 2
        assert phone.post(f"/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": True}).status_code == 202
        wait_until(lambda: any(step_started_by(e) == 2 for e in log_of(stack, job_id)), what="step 2 to start")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        # AND a new worker takes the job over (its reply takes 4 s: time to stop it)
        stack.start_worker()
        wait_until(lambda: has(stack, job_id, EventType.DELTA), timeout=90, what="the reply to start")
        # AND the user presses Stop while it is replying
        assert phone.post(f"/api/jobs/{job_id}/cancel").status_code in (200, 202)
        events = wait_terminal(stack, job_id)

        # THEN the log ends cancelled, keeping the reply so far
        assert_contiguous_single_terminal(events)
        end = events[-1]
        assert end.type is EventType.CANCELLED
        partial = end.data["partial_reply"]
        shown = "".join(e.data["text"] for e in events if e.type is EventType.DELTA)
        assert partial and partial.startswith(shown.strip()[:10]) and "I used the 2 lb of chicken" not in partial
        # AND the conversation holds it as the turn's answer, marked stopped
        conv = phone.get(f"/api/jobs/{job_id}").json()["conversation_id"]
        messages = phone.get(f"/api/conversations/{conv}").json()["messages"]
        assert messages[-1] == {"role": "assistant", "text": partial, "job_id": job_id, "at": end.at,
                                "stopped": True}
        assert messages[-2]["role"] == "user" and "stopped" not in messages[-2]

        # AND the timeline shows two attempts before the one stopped, the wait, and the cancel
        tl = phone.get(f"/api/jobs/{job_id}/timeline").json()
        assert [(a["attempt"], a["ended"]) for a in tl["attempts"]] == [(1, "waiting"), (2, "crashed"),
                                                                       (3, "cancelled")]
        assert tl["cancel"] == {"reason": "requested"}
        kinds = [s["kind"] for s in tl["spans"]]
        assert kinds[:4] == ["queued", "think", "step", "waiting"] and kinds[-1] == "reply"
        assert [s.get("index") for s in tl["spans"] if s["kind"] == "step" and s["attempt"] == 2][:1] == [1]
        # AND its sums match the log
        asked = next(e for e in events if e.type is EventType.INPUT_REQUIRED)
        answered = next(e for e in events if e.type is EventType.INPUT_RECEIVED)
        assert tl["totals"]["waiting_s"] == pytest.approx(answered.ts - asked.ts, abs=0.002)
        job = stack.deps.jobs.get(job_id)
        assert job is not None and job.completed_at is not None
        assert tl["totals"]["wall_s"] == pytest.approx(job.completed_at - job.created_at, abs=0.002)
        billed = [Usage.model_validate(e.data["usage"]) for e in events if "usage" in e.data]
        total = billed[0]
        for u in billed[1:]:
            total = total.plus(u)
        assert tl["totals"]["usage"] == total.full()
        assert tl["totals"]["usage"]["output_tokens"] > 0 and "usage" in end.data  # the stopped reply's too
        assert tl["totals"]["cost_usd"] == pytest.approx(cost_usd(total, stack.settings.model_prices), abs=1e-6)
        # the spans tile the job from its creation to its end, but for the gaps between writes
        covered = sum(s["duration_s"] for s in tl["spans"])
        assert covered <= tl["totals"]["wall_s"] + 0.01
        assert parse_iso(tl["spans"][-1]["ended_at"]) == pytest.approx(job.completed_at, abs=0.002)
        # AND the CLI prints it
        text = render(tl, fill="#")
        assert "attempt 2: crashed" in text and "waiting for you" in text and "cancelled: you asked" in text
