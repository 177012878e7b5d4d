"""Issue 27: model usage on the events that made the calls, and Stop that keeps the words."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from alfred_jobs.adapters.memory import MemoryEventLog, memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.agent import AgentContext, Plan
from alfred_jobs.domain.models import ChatRequest, Event, EventType, JobStatus
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings


def make_deps() -> Deps:
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, max_attempts=3, cancel_poll_seconds=0.02))
    deps.settings.delta_flush_seconds = 0.0  # every chunk is a delta
    return deps


def submit(deps: Deps, message: str, conversation_id: str | None = None) -> str:
    req = ChatRequest(message=message, **({"conversation_id": conversation_id} if conversation_id else {}))
    return JobService(deps).submit("u1", req, None).job.job_id


def log_of(deps: Deps, job_id: str) -> list[Event]:
    assert isinstance(deps.log, MemoryEventLog)
    return deps.log.all(job_id)


def usage(inp: int, out: int, model: str = "demo", cache_read: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "output_tokens": out, "cache_read_tokens": cache_read, "cache_write_tokens": 0,
            "model": model}


# ---- usage on events ------------------------------------------------------------------------


def test_plan_steps_and_complete_carry_the_usage_of_their_own_calls() -> None:
    deps = make_deps()
    job_id = submit(deps, "soup [steps=2]")
    assert JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id)).status \
        is JobStatus.COMPLETE
    evs = log_of(deps, job_id)
    plan = next(e for e in evs if e.type is EventType.PLAN)
    # think: 200 + the message's tokens (4 characters each) in, 20 + 12 per step out, 150 cached
    assert plan.data["usage"] == usage(200 + 4, 20 + 24, cache_read=150)
    steps = [e.data["usage"] for e in evs if e.type is EventType.STEP and e.data["status"] == "completed"]
    assert steps == [usage(90, 40), usage(100, 40)]
    complete = evs[-1]
    assert complete.type is EventType.COMPLETE
    reply = complete.data["output"]["reply"]
    assert complete.data["usage"] == usage(300 + 100, -(-len(reply) // 4))
    assert all("usage" not in e.data for e in evs if e.type not in (EventType.PLAN, EventType.STEP,
                                                                     EventType.COMPLETE))


class TwoCallsAgent(DemoAgent):
    """A step that makes two model calls, and one reported before the step (not the step's)."""

    def act(self, step: Any, ctx: AgentContext) -> Any:
        ctx.report_usage("m", 10, 1, cache_write_tokens=5)
        ctx.report_usage("m", 20, 2, cache_read_tokens=7)
        return {"ok": step.index}

    def think(self, ctx: AgentContext) -> Plan:
        plan = super().think(ctx)
        return plan  # reports the demo's usage: the plan's, not step 1's


def test_a_parts_calls_are_summed_and_none_leaks_into_the_next_part() -> None:
    deps = make_deps()
    job_id = submit(deps, "x [steps=1]")
    JobRunner(deps, TwoCallsAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    step = next(e for e in log_of(deps, job_id) if e.type is EventType.STEP and e.data["status"] == "completed")
    assert step.data["usage"] == {"input_tokens": 30, "output_tokens": 3, "cache_read_tokens": 7,
                                  "cache_write_tokens": 5, "model": "m"}


# ---- Stop keeps the words --------------------------------------------------------------------


class StoppedWhileReplying(DemoAgent):
    """Writes two chunks, then the user presses Stop (a cancel the API can only flag: the lease is
    live); the reply goes on until the runner sees the cancel. Its calls are billed as it goes."""

    def __init__(self, deps: Deps) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.svc = JobService(deps)
        self.histories: list[list[dict[str, Any]]] = []

    def think(self, ctx: AgentContext) -> Plan:
        self.histories.append(list(ctx.history))
        return super().think(ctx)

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        written = 0
        try:
            yield "Roast the "
            yield "squash, then "
            written = 2
            assert self.svc.cancel(ctx.user_id, ctx.job_id)[1] is False  # flagged, not ended
            seen = threading.Event()
            for _ in range(500):  # the keeper polls the flag every 0.02 s
                if ctx.cancelled():
                    seen.set()
                    break
                seen.wait(0.01)
            yield "never shown"
            written = 3
        finally:
            ctx.report_usage("demo", 50, 5 * written)


def test_a_job_stopped_during_its_reply_keeps_it_in_the_event_and_the_conversation() -> None:
    deps = make_deps()
    job_id = submit(deps, "squash [steps=1]")
    agent = StoppedWhileReplying(deps)
    result = JobRunner(deps, agent).run(Delivery(job_id))
    assert (result.outcome, result.status) == (Outcome.DONE, JobStatus.CANCELLED)
    end = log_of(deps, job_id)[-1]
    assert end.type is EventType.CANCELLED
    # THEN the event keeps the reply so far, and what the reply's call was billed
    assert end.data["partial_reply"] == "Roast the squash, then "
    assert end.data["usage"] == usage(50, 10)
    # ... and the conversation commits it as the turn's answer, marked stopped
    job = deps.jobs.get(job_id)
    assert job is not None
    msgs = deps.conversations.messages("u1", job.conversation_id, 10)
    assert [(m["role"], m["text"], m.get("stopped")) for m in msgs] == [
        ("user", "squash [steps=1]", None), ("assistant", "Roast the squash, then ", True)]
    # ... and the next job of the conversation plans with it in its history
    nxt = submit(deps, "and a salad [steps=1]", job.conversation_id)
    JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(nxt))
    again = StoppedWhileReplying(deps)
    third = submit(deps, "thanks [steps=1]", job.conversation_id)
    JobRunner(deps, again).run(Delivery(third))
    assert {"role": "assistant", "text": "Roast the squash, then ", "job_id": job_id, "at": end.at,
            "stopped": True} in again.histories[0]


class DiesWhileReplying(DemoAgent):
    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        yield "Simmer the "
        yield "lentils "
        raise SystemExit("worker died")  # escapes the runner like a real crash


def test_a_cancel_of_a_job_whose_worker_died_while_replying_keeps_the_reply_the_log_shows() -> None:
    deps = make_deps()
    job_id = submit(deps, "lentils [steps=1]")
    try:
        JobRunner(deps, DiesWhileReplying(deps.agent_data, deps.settings)).run(Delivery(job_id))
    except SystemExit:
        pass
    job = deps.jobs.get(job_id)
    assert job is not None
    deps.jobs.items[job_id] = replace(job, lease_expires=0.0)  # type: ignore[attr-defined]
    svc = JobService(deps)
    assert svc.cancel("u1", job_id)[1] is False  # running by its log: a flag for its next attempt
    result = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    assert result.status is JobStatus.CANCELLED
    end = log_of(deps, job_id)[-1]
    assert end.type is EventType.CANCELLED and end.data["partial_reply"] == "Simmer the lentils "
    msgs = deps.conversations.messages("u1", job.conversation_id, 10)
    assert msgs[-1]["text"] == "Simmer the lentils " and msgs[-1]["stopped"] is True


def test_a_cancel_before_the_reply_keeps_nothing_and_commits_no_turn() -> None:
    deps = make_deps()
    job_id = submit(deps, "soup [steps=2]")
    done = JobService(deps).cancel("u1", job_id)
    assert done[1] is True
    end = log_of(deps, job_id)[-1]
    assert end.type is EventType.CANCELLED and end.data == {}
    assert deps.conversations.messages("u1", done[0].conversation_id, 10) == []
