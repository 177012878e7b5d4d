"""A job's timeline folded from hand-built logs (service/timeline.py, SPEC "A job's timeline")."""

from __future__ import annotations

from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.events import EventType, iso
from alfred_jobs.domain.models import ChatRequest, Event, Job, JobStatus
from alfred_jobs.durability.runner import Delivery, JobRunner
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.timeline import cost_usd, timeline
from alfred_jobs.settings import DEFAULT_MODEL_PRICES, Settings

T0 = 1_800_000_000.0
HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
W1, W2, API = "w1", "w2", "api"


class Log:
    """A log written by hand: ``add(t, type, data, attempt, writer)``; ``t`` seconds after T0."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, t: float, type: str, data: dict[str, Any], attempt: int = 1, writer: str = W1) -> Log:
        # A type the fold does not know (``steered``, from a newer writer) is kept as its string.
        kind = EventType(type) if type in {str(e) for e in EventType} else cast(EventType, type)
        self.events.append(Event(seq=len(self.events) + 1, type=kind, at=iso(T0 + t), attempt=attempt,
                                 data=data, writer=writer, id=f"e{len(self.events) + 1}"))
        return self

    def job(self, status: JobStatus, end: float | None = None) -> Job:
        return Job(job_id="j" * 32, user_id="u", message="m", conversation_id="c", created_at=T0,
                   expires_at=int(T0) + 10**6, status=status, completed_at=T0 + end if end is not None else None,
                   last_seq=len(self.events))


def use(inp: int, out: int, model: str = HAIKU, cache_read: int = 0, cache_write: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "output_tokens": out, "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write, "model": model}


def fold(log: Log, status: JobStatus, end: float | None = None, now: float = 1000.0) -> dict[str, Any]:
    return timeline(log.job(status, end), log.events, DEFAULT_MODEL_PRICES, T0 + now)


def spans(tl: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(kind, index, attempt, from, to) in seconds after T0."""
    from alfred_jobs.domain.events import parse_iso
    return [(s["kind"], s.get("index"), s["attempt"], round(parse_iso(s["started_at"]) - T0, 3),
             None if s["ended_at"] is None else round(parse_iso(s["ended_at"]) - T0, 3)) for s in tl["spans"]]


def ended(tl: dict[str, Any]) -> list[tuple[int, str]]:
    return [(a["attempt"], a["ended"]) for a in tl["attempts"]]


PLAN = {"steps": [{"index": 1, "label": "Check"}, {"index": 2, "label": "Cook"}], "total_steps": 2}


def step(i: int, status: str = "completed", nxt: int | None = None, **extra: Any) -> dict[str, Any]:
    labels = {1: "Check", 2: "Cook"}
    data: dict[str, Any] = {"index": i, "total": 2, "label": labels[i], "status": status, **extra}
    if nxt is not None:
        data["next"] = {"index": nxt, "label": labels[nxt]}
    return data


def test_a_crash_then_a_retry_reads_as_two_attempts_and_the_cut_off_step_runs_to_the_takeover() -> None:
    log = (Log().add(1, "status", {"status": "running"})
           .add(2, "plan", {**PLAN, "next": {"index": 1, "label": "Check"}, "usage": use(1000, 100)})
           .add(4, "step", step(1, nxt=2))
           # the worker dies in step 2; its lease runs out; another takes over at t=10
           .add(10, "resumed", {"attempt": 2, "from_seq": 3}, attempt=2, writer=W2)
           .add(12, "step", step(2, usage=use(200, 50)), attempt=2, writer=W2)
           .add(12.5, "phase", {"phase": "reply"}, attempt=2, writer=W2)
           .add(13, "delta", {"text": "Done."}, attempt=2, writer=W2)
           .add(14, "complete", {"output": {"reply": "Done."}, "usage": use(300, 80, cache_read=1000)},
                attempt=2, writer=W2))
    tl = fold(log, JobStatus.COMPLETE, end=14)
    assert ended(tl) == [(1, "crashed"), (2, "completed")]
    assert tl["attempts"][0]["ended_at"] == iso(T0 + 10) and tl["attempts"][0]["last_event_at"] == iso(T0 + 4)
    assert spans(tl) == [("queued", None, 1, 0, 1), ("think", None, 1, 1, 2), ("step", 1, 1, 2, 4),
                         ("step", 2, 1, 4, 10), ("step", 2, 2, 10, 12), ("reply", None, 2, 12.5, 14)]
    totals = tl["totals"]
    assert totals["wall_s"] == 14 and totals["queued_s"] == 1 and totals["waiting_s"] == 0
    assert totals["usage"] == use(1500, 230, cache_read=1000)
    # Haiku 4.5: $1 in, $5 out, $0.10 cache read per million
    assert totals["cost_usd"] == pytest.approx((1500 * 1 + 230 * 5 + 1000 * 0.1) / 1e6)
    assert sum(s.get("cost_usd", 0) for s in tl["spans"]) == pytest.approx(totals["cost_usd"])
    assert "cancel" not in tl


def test_a_question_ends_the_attempt_waiting_and_the_answer_queues_the_next() -> None:
    log = (Log().add(1, "status", {"status": "running"})
           .add(2, "plan", {**PLAN, "next": {"index": 1, "label": "Check"}})
           .add(3, "input_required", {"input_id": "s1q1", "prompt": "Use it?", "kind": "confirm",
                                      "expires_at": iso(T0 + 86400)})
           .add(60, "input_received", {"input_id": "s1q1", "answer": True}, writer=API)
           .add(61, "resumed", {"attempt": 2, "from_seq": 4}, attempt=2, writer=W2)
           # the step that asked runs again from its start, with no new ``started`` event
           .add(63, "step", step(1, nxt=2), attempt=2, writer=W2))
    tl = fold(log, JobStatus.RUNNING, now=64)
    assert ended(tl) == [(1, "waiting"), (2, None)]
    assert spans(tl) == [("queued", None, 1, 0, 1), ("think", None, 1, 1, 2), ("step", 1, 1, 2, 3),
                         ("waiting", None, 1, 3, 60), ("queued", None, 2, 60, 61), ("step", 1, 2, 61, 63),
                         ("step", 2, 2, 63, None)]
    # an active job: the open span runs to now
    assert tl["totals"]["waiting_s"] == 57 and tl["totals"]["queued_s"] == 2 and tl["totals"]["wall_s"] == 64
    assert tl["spans"][-1]["duration_s"] == 1


def test_a_hand_off_and_a_backoff_are_told_apart() -> None:
    log = (Log().add(1, "status", {"status": "running"})
           .add(2, "plan", {**PLAN, "next": {"index": 1, "label": "Check"}})
           .add(4, "step", step(1))
           .add(4.1, "status", {"status": "pending"})  # out of invocation time: handed on
           .add(5, "resumed", {"attempt": 2, "from_seq": 4}, attempt=2, writer=W2)
           .add(5.1, "step", step(2, status="started"), attempt=2, writer=W2)
           .add(6, "status", {"status": "pending", "retry_in": 2,
                              "error": {"code": "recipe_timeout", "message": "timed out"}}, attempt=2, writer=W2)
           .add(8, "resumed", {"attempt": 3, "from_seq": 7}, attempt=3, writer="w3")
           .add(9, "failed", {"error": {"code": "recipe_refused", "message": "no"}}, attempt=3, writer="w3"))
    tl = fold(log, JobStatus.FAILED, end=9)
    assert ended(tl) == [(1, "handed_on"), (2, "failed"), (3, "failed")]
    assert spans(tl) == [("queued", None, 1, 0, 1), ("think", None, 1, 1, 2), ("step", 1, 1, 2, 4),
                         ("queued", None, 2, 4.1, 5), ("step", 2, 2, 5.1, 6), ("backoff", None, 2, 6, 8),
                         ("step", 2, 3, 8, 9)]
    assert tl["totals"]["queued_s"] == pytest.approx(1.9)


def test_a_cancel_during_the_reply_gives_the_reason_and_the_reply_its_usage() -> None:
    log = (Log().add(1, "status", {"status": "running"})
           .add(2, "plan", {"steps": [], "total_steps": 0})
           .add(2.1, "phase", {"phase": "reply"})
           .add(3, "delta", {"text": "Roast "})
           .add(4, "cancelled", {"reason": "interrupted", "by": "k" * 32, "partial_reply": "Roast ",
                                 "usage": use(100, 2048)}))
    tl = fold(log, JobStatus.CANCELLED, end=4)
    assert ended(tl) == [(1, "cancelled")]
    assert tl["cancel"] == {"reason": "interrupted", "by": "k" * 32}
    reply = tl["spans"][-1]
    assert (reply["kind"], reply["usage"]) == ("reply", use(100, 2048))
    assert reply["cost_usd"] == pytest.approx((100 + 2048 * 5) / 1e6)


def test_a_plain_cancel_of_a_waiting_job_reads_as_requested_and_ends_the_wait() -> None:
    log = (Log().add(1, "status", {"status": "running"})
           .add(2, "input_required", {"input_id": "s0q1", "prompt": "?", "kind": "text",
                                      "expires_at": iso(T0 + 86400)})
           .add(30, "cancelled", {}, writer=API))
    tl = fold(log, JobStatus.CANCELLED, end=30)
    assert ended(tl) == [(1, "waiting")]
    assert tl["cancel"] == {"reason": "requested"}
    assert spans(tl)[-1] == ("waiting", None, 1, 2, 30)


def test_a_steered_event_is_passed_over() -> None:
    log = (Log().add(1, "status", {"status": "running"})
           .add(2, "plan", {**PLAN, "next": {"index": 1, "label": "Check"}})
           .add(3, "steered", {"message_id": "m1", "text": "make it vegetarian"})
           .add(4, "step", step(1, nxt=2)))
    tl = fold(log, JobStatus.RUNNING, now=5)
    assert spans(tl)[-2:] == [("step", 1, 1, 2, 4), ("step", 2, 1, 4, None)]


def test_a_job_cancelled_before_it_ran_has_no_attempt_and_one_queued_span() -> None:
    tl = fold(Log().add(5, "cancelled", {}, writer=API), JobStatus.CANCELLED, end=5)
    assert tl["attempts"] == [] and spans(tl) == [("queued", None, 1, 0, 5)]
    assert tl["totals"]["queued_s"] == 5 and tl["totals"]["cost_usd"] == 0


def test_prices_by_model_id_or_without_its_geographic_prefix_and_none_for_an_unknown_model() -> None:
    from alfred_jobs.domain.events import Usage
    haiku = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=2000, cache_write_tokens=100,
                  model=HAIKU)
    assert cost_usd(haiku, DEFAULT_MODEL_PRICES) == pytest.approx(0.003825)
    eu = haiku.model_copy(update={"model": "eu.anthropic.claude-haiku-4-5-20251001-v1:0"})
    assert cost_usd(eu, DEFAULT_MODEL_PRICES) == pytest.approx(0.003825)
    sonnet = haiku.model_copy(update={"model": "global.anthropic.claude-sonnet-4-5-20250929-v1:0"})
    assert cost_usd(sonnet, DEFAULT_MODEL_PRICES) == pytest.approx(3 * 0.003825)
    assert cost_usd(haiku.model_copy(update={"model": "acme.unknown"}), DEFAULT_MODEL_PRICES) is None


# ---- the endpoint ------------------------------------------------------------------------------


def test_the_endpoint_folds_a_real_run_for_its_owner_and_is_404_for_anyone_else() -> None:
    settings = Settings(demo_step_seconds=0)
    deps = memory_deps(settings)
    job = JobService(deps).submit("alice", ChatRequest(message="soup [steps=2]"), None).job
    JobRunner(deps, DemoAgent(deps.agent_data, settings)).run(Delivery(job.job_id))
    with TestClient(create_app(deps), raise_server_exceptions=False) as client:
        def get(user: str) -> Any:
            return client.get(f"/api/jobs/{job.job_id}/timeline",
                              headers={"Authorization": f"Bearer {issue_local_token(settings, user)}"})
        r = get("alice")
        assert r.status_code == 200, r.text
        tl = r.json()
        assert tl["status"] == "complete" and ended(tl) == [(1, "completed")]
        assert [s["kind"] for s in tl["spans"]] == ["queued", "think", "step", "step", "reply"]
        assert tl["totals"]["usage"]["model"] == "demo" and tl["totals"]["cost_usd"] > 0
        assert get("bob").status_code == 404
        assert client.get(f"/api/jobs/{'0' * 32}/timeline", headers={
            "Authorization": f"Bearer {issue_local_token(settings, 'alice')}"}).status_code == 404


def test_the_cli_prints_each_span_with_a_bar_to_scale_and_the_totals() -> None:
    from alfred_tools.timeline_text import render
    log = (Log().add(2, "status", {"status": "running"})
           .add(4, "plan", {**PLAN, "next": {"index": 1, "label": "Check"}, "usage": use(1000, 100)})
           .add(20, "input_required", {"input_id": "s1q1", "prompt": "?", "kind": "confirm",
                                       "expires_at": iso(T0 + 86400)})
           .add(40, "cancelled", {}, writer=API))
    text = render(fold(log, JobStatus.CANCELLED, end=40), width=20, fill="#")
    lines = text.splitlines()
    assert lines[0].endswith("40.0 s in all, 2.0 s queued, 20.0 s waiting for you")
    assert "attempt 1: asked you, and waited" in lines
    bars = {line.split("|")[0].strip(): line.split("|")[1] for line in lines if "|" in line}
    # 40 s on 20 cells: 2 s a cell
    assert bars["queued (#1)"] == "#".ljust(20)
    assert bars["step 1 Check (#1)"] == "  ########".ljust(20)
    assert bars["waiting for you (#1)"] == " " * 10 + "#" * 10
    assert "1,000 in · 100 out  $0.0015" in text and "cancelled: you asked" in text
