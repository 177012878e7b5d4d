"""Typed event payloads and the one reader of the log (``alfred_jobs.domain.events``).

- every payload gives back exactly the JSON it was parsed from, and writes the shapes the docs show;
- ``replay``/``LogState`` gives the job projection the old ``models.fold`` gave, and what a
  resuming attempt needs as the runner's old ``_replay`` did, on representative logs (both old
  readers are kept below, verbatim, as the reference);
- ``apply_delta`` is the replace rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from alfred_jobs.adapters.memory import MemoryEventLog, memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.agent import AgentContext, Plan, PlanStep
from alfred_jobs.domain.events import (
    PAYLOAD_TYPES,
    CancelledPayload,
    CompletePayload,
    DeltaPayload,
    ErrorInfo,
    FailedPayload,
    LogState,
    PhasePayload,
    PlanPayload,
    ResumedPayload,
    StatusPayload,
    StepPayload,
    apply_delta,
    parse_payload,
    replay,
)
from alfred_jobs.domain.models import (
    TERMINAL_EVENT_TYPES,
    TERMINAL_STATUS_OF_EVENT,
    ChatRequest,
    Event,
    EventType,
    Job,
    JobStatus,
    Progress,
    fold,
)
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.exceptions import RetryableAgentError
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings

# ---- the shapes, as the writers write them (docs/architecture.md, docs/streaming.md) ---------

ERROR = {"code": "recipe_unavailable", "message": "the recipe service is unavailable"}
SHAPES: list[tuple[EventType, dict[str, Any]]] = [
    (EventType.STATUS, {"status": "running"}),
    (EventType.STATUS, {"status": "pending", "retry_in": 2, "error": ERROR}),
    (EventType.PHASE, {"phase": "think"}),
    (EventType.PHASE, {"phase": "act"}),
    (EventType.PHASE, {"phase": "reply"}),
    (EventType.PLAN, {"steps": [{"index": 1, "label": "Search"}, {"index": 2, "label": "Cook"}],
                      "total_steps": 2}),
    (EventType.PLAN, {"steps": [{"index": 1, "label": "Search"}], "total_steps": 1,
                      "specs": {"1": {"tool": "search_recipes", "input": {"q": "rice"}}}}),
    (EventType.PLAN, {"steps": [], "total_steps": 0}),
    (EventType.STEP, {"index": 1, "total": 2, "label": "Search", "status": "started"}),
    (EventType.STEP, {"index": 1, "total": 2, "label": "Search", "status": "completed",
                      "output": {"recipes": ["a", "b"], "runs": 1, "nested": [{"x": None}, 1.5, True]}}),
    (EventType.STEP, {"index": 2, "total": 2, "label": "Cook", "status": "completed", "output": None}),
    (EventType.STEP, {"index": 2, "total": 2, "label": "Cook", "status": "completed", "output": "text"}),
    (EventType.DELTA, {"text": "Hello"}),
    (EventType.DELTA, {"text": "Goodbye", "replace": True}),
    (EventType.DELTA, {"text": ""}),
    (EventType.RESUMED, {"attempt": 2, "from_seq": 7}),
    (EventType.COMPLETE, {"output": {"reply": "Make a frittata."}}),
    (EventType.COMPLETE, {"output": {"reply": "Soup.", "usage": {"input_tokens": 10, "output_tokens": 3}}}),
    (EventType.FAILED, {"error": ERROR}),
    (EventType.CANCELLED, {}),
]


@pytest.mark.parametrize(("type", "data"), SHAPES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(SHAPES)])
def test_every_payload_round_trips_its_json_exactly(type: EventType, data: dict[str, Any]) -> None:
    payload = parse_payload(type, data)
    assert isinstance(payload, PAYLOAD_TYPES[type]) and payload.event_type is type
    assert payload.to_data() == data
    assert json.dumps(payload.to_data()) == json.dumps(data), "same keys, same order, same values"
    ev = Event(seq=3, type=type, at="2025-01-01T12:00:00.000Z", attempt=1, data=data)
    assert ev.payload == payload
    again = Event.of(3, payload, attempt=1, writer="w", at=time.time())
    assert again.type is type and json.dumps(again.data) == json.dumps(data)


def test_every_event_type_has_a_payload() -> None:
    assert set(PAYLOAD_TYPES) == set(EventType)


def test_payloads_built_by_writers_have_the_documented_shapes() -> None:
    plan = Plan([PlanStep(1, "Search", {"tool": "search"}), PlanStep(2, "Cook")])
    built = [
        StatusPayload(status=JobStatus.RUNNING),
        StatusPayload(status=JobStatus.PENDING, retry_in=2, error=ErrorInfo(**ERROR)),
        PhasePayload(phase="think"),
        PlanPayload.of(plan),
        PlanPayload.of(Plan([PlanStep(1, "Search")])),
        StepPayload(index=1, total=2, label="Search", status="started"),
        StepPayload(index=1, total=2, label="Search", status="completed", output=None),
        DeltaPayload(text="Hel"),
        DeltaPayload(text="Bye", replace=True),
        ResumedPayload(attempt=2, from_seq=7),
        CompletePayload(output={"reply": "ok"}),
        FailedPayload(error=ErrorInfo(**ERROR)),
        CancelledPayload(),
    ]
    assert [p.to_data() for p in built] == [
        {"status": "running"},
        {"status": "pending", "retry_in": 2, "error": ERROR},
        {"phase": "think"},
        {"steps": [{"index": 1, "label": "Search"}, {"index": 2, "label": "Cook"}], "total_steps": 2,
         "specs": {"1": {"tool": "search"}}},
        {"steps": [{"index": 1, "label": "Search"}], "total_steps": 1},  # no specs key when none
        {"index": 1, "total": 2, "label": "Search", "status": "started"},  # no output key
        {"index": 1, "total": 2, "label": "Search", "status": "completed", "output": None},
        {"text": "Hel"},  # no replace key
        {"text": "Bye", "replace": True},
        {"attempt": 2, "from_seq": 7},
        {"output": {"reply": "ok"}},
        {"error": ERROR},
        {},
    ]
    assert PlanPayload.of(plan).plan() == plan, "the recorded plan is the agent's, specs included"


def test_public_json_of_a_plan_leaves_specs_out_and_parses_back() -> None:
    ev = Event.of(4, PlanPayload.of(Plan([PlanStep(1, "Search", {"tool": "t"})])), attempt=1, writer="w",
                  at=time.time())
    public = ev.public()
    assert public["data"] == {"steps": [{"index": 1, "label": "Search"}], "total_steps": 1}
    assert set(public) == {"seq", "type", "at", "attempt", "data"}
    parsed = parse_payload(public["type"], public["data"])
    assert isinstance(parsed, PlanPayload) and parsed.specs is None and parsed.to_data() == public["data"]


def test_unknown_keys_are_kept_and_missing_ones_refused() -> None:
    data = {"text": "x", "replace": True, "lang": "en"}  # a newer writer's additive field
    assert parse_payload("delta", data).to_data() == data
    with pytest.raises(ValidationError):
        parse_payload(EventType.STEP, {"index": 1, "status": "completed"})
    with pytest.raises(ValidationError):
        parse_payload(EventType.DELTA, {"replace": True})


def test_payloads_are_immutable() -> None:
    d = DeltaPayload(text="x")
    with pytest.raises(ValidationError):
        d.text = "y"


# ---- apply_delta ------------------------------------------------------------------------------


@pytest.mark.parametrize(("shown", "data", "after"), [
    ("", {"text": "Hel"}, "Hel"),
    ("Hel", {"text": "lo"}, "Hello"),
    ("Hello", {"text": ""}, "Hello"),
    ("Hello wor", {"text": "Goodbye", "replace": True}, "Goodbye"),
    ("Hello", {"text": "", "replace": True}, ""),
    ("", {"text": "Hi", "replace": True}, "Hi"),
    ("Hello", {"text": " world", "replace": False}, "Hello world"),
])
def test_apply_delta(shown: str, data: dict[str, Any], after: str) -> None:
    assert apply_delta(shown, DeltaPayload.model_validate(data)) == after


def test_deltas_add_up_through_replay() -> None:
    deltas: list[dict[str, Any]] = [{"text": "Hel"}, {"text": "lo wor"}, {"text": "Good", "replace": True},
                                    {"text": "bye"}]
    log = [ev(i + 1, EventType.DELTA, d) for i, d in enumerate(deltas)]
    assert replay(log).shown == "Goodbye"


# ---- the old readers, verbatim, as the reference ---------------------------------------------


def legacy_fold(job: Job, events: list[Event]) -> Job:
    """``models.fold`` before the one reader, with the two rules of issue 16 (the runner writes no
    ``phase`` event for think and act): ``status: running`` before a plan opens thinking, a step
    event the act phase."""
    p = job.progress
    planned = False
    status, started, completed = job.status, job.started_at, job.completed_at
    output, error, last_seq = job.output, job.error, job.last_seq
    for ev in events:
        if ev.seq <= last_seq:
            continue
        last_seq = ev.seq
        ts = _parse_iso(ev.at)
        if ev.type is EventType.STATUS:
            status = JobStatus(ev.data.get("status", "running"))
            if status is JobStatus.RUNNING:
                started = started or ts
                if not planned:
                    p = replace(p, phase="think", label="Thinking")
        elif ev.type is EventType.RESUMED:
            status = JobStatus.RUNNING
        elif ev.type is EventType.PHASE:
            p = replace(p, phase=ev.data.get("phase"),
                        label={"think": "Thinking", "reply": "Writing the reply"}.get(
                            ev.data.get("phase", ""), p.label))
        elif ev.type is EventType.PLAN:
            planned = True
            p = replace(p, total_steps=int(ev.data.get("total_steps", 0)))
        elif ev.type is EventType.STEP:
            done = ev.data.get("status") == "completed"
            idx = int(ev.data.get("index", 0))
            p = replace(p, phase="act", total_steps=int(ev.data.get("total", p.total_steps or 0)),
                        label=ev.data.get("label"),
                        completed_steps=max(p.completed_steps, idx if done else idx - 1))
        elif ev.type in TERMINAL_EVENT_TYPES:
            status = TERMINAL_STATUS_OF_EVENT[ev.type]
            completed = ts
            if ev.type is EventType.COMPLETE:
                output = ev.data.get("output")
                p = replace(p, label="Done")
            elif ev.type is EventType.FAILED:
                error = ev.data.get("error")
                p = replace(p, label="Failed")
            else:
                p = replace(p, label="Cancelled")
    return replace(job, status=status, started_at=started, completed_at=completed, output=output,
                   error=error, last_seq=last_seq, progress=p)


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def legacy_replay(events: list[Event]) -> tuple[Plan | None, dict[int, Any], set[int], set[str], str]:
    """The runner's ``_replay`` before the one reader."""
    plan: Plan | None = None
    outputs: dict[int, Any] = {}
    started: set[int] = set()
    phases: set[str] = set()
    shown = ""
    for ev in events:
        if ev.type is EventType.PLAN:
            specs = ev.data.get("specs") or {}
            plan = Plan([PlanStep(int(st["index"]), str(st["label"]), specs.get(str(st["index"]), {}))
                         for st in ev.data.get("steps", [])])
        elif ev.type is EventType.STEP:
            idx = int(ev.data["index"])
            if ev.data.get("status") == "completed":
                outputs[idx] = ev.data.get("output")
            else:
                started.add(idx)
        elif ev.type is EventType.PHASE:
            phases.add(str(ev.data.get("phase")))
        elif ev.type is EventType.DELTA:
            shown = ev.data["text"] if ev.data.get("replace") else shown + ev.data["text"]
    return plan, outputs, started, phases, shown


# ---- representative logs ---------------------------------------------------------------------


def ev(seq: int, type: EventType, data: dict[str, Any], attempt: int = 1) -> Event:
    return Event(seq=seq, type=type, at=f"2025-01-01T12:00:{seq:02d}.500Z", attempt=attempt, data=data,
                 writer=f"w{attempt}", id=f"e{seq}")


def log_of(*entries: tuple[EventType, dict[str, Any]] | tuple[EventType, dict[str, Any], int]) -> list[Event]:
    out = []
    for i, entry in enumerate(entries):
        attempt = entry[2] if len(entry) == 3 else 1
        out.append(ev(i + 1, entry[0], entry[1], attempt))
    return out


S, PH, PL, ST, D, R = (EventType.STATUS, EventType.PHASE, EventType.PLAN, EventType.STEP, EventType.DELTA,
                       EventType.RESUMED)
PLAN2 = {"steps": [{"index": 1, "label": "Search"}, {"index": 2, "label": "Cook"}], "total_steps": 2,
         "specs": {"2": {"tool": "cook"}}}


def step(i: int, status: str, output: Any = None) -> dict[str, Any]:
    d: dict[str, Any] = {"index": i, "total": 2, "label": ["Search", "Cook"][i - 1], "status": status}
    return {**d, "output": output} if status == "completed" else d


NORMAL = log_of(
    (S, {"status": "running"}), (PH, {"phase": "think"}), (PL, PLAN2), (PH, {"phase": "act"}),
    (ST, step(1, "started")), (ST, step(1, "completed", {"found": 3})),
    (ST, step(2, "started")), (ST, step(2, "completed", None)),
    (PH, {"phase": "reply"}), (D, {"text": "Make "}), (D, {"text": "soup."}),
    (EventType.COMPLETE, {"output": {"reply": "Make soup."}}),
)
RESUMED = log_of(
    (S, {"status": "running"}), (PH, {"phase": "think"}), (PL, PLAN2), (PH, {"phase": "act"}),
    (ST, step(1, "started")), (ST, step(1, "completed", {"found": 3})), (ST, step(2, "started")),
    (R, {"attempt": 2, "from_seq": 7}, 2), (ST, step(2, "started"), 2), (ST, step(2, "completed", "ok"), 2),
    (PH, {"phase": "reply"}, 2), (D, {"text": "Soup."}, 2),
    (EventType.COMPLETE, {"output": {"reply": "Soup.", "usage": {"input_tokens": 4}}}, 2),
)
RETRIED_THEN_FAILED = log_of(
    (S, {"status": "running"}), (PH, {"phase": "think"}),
    (S, {"status": "pending", "retry_in": 2, "error": ERROR}),
    (R, {"attempt": 2, "from_seq": 3}, 2), (PL, PLAN2, 2), (PH, {"phase": "act"}, 2),
    (ST, step(1, "started"), 2),
    (S, {"status": "pending", "retry_in": 4, "error": ERROR}, 2),
    (R, {"attempt": 3, "from_seq": 8}, 3), (ST, step(1, "started"), 3),
    (EventType.FAILED, {"error": {"code": "recipe_unavailable", "message": "gave up after 3 attempts"}}, 3),
)
CANCELLED = log_of(
    (S, {"status": "running"}), (PH, {"phase": "think"}), (PL, PLAN2), (PH, {"phase": "act"}),
    (ST, step(1, "started")), (ST, step(1, "completed", [1, 2])), (EventType.CANCELLED, {}),
)
REPLACED = log_of(
    (S, {"status": "running"}), (PH, {"phase": "think"}), (PL, {"steps": [], "total_steps": 0}),
    (PH, {"phase": "reply"}), (D, {"text": "Hello "}), (D, {"text": "wor"}),
    (R, {"attempt": 2, "from_seq": 6}, 2), (D, {"text": "Goodbye", "replace": True}, 2), (D, {"text": "!"}, 2),
    (EventType.COMPLETE, {"output": {"reply": "Goodbye!"}}, 2),
)
LOGS = {"normal": NORMAL, "resumed": RESUMED, "retried_then_failed": RETRIED_THEN_FAILED,
        "cancelled": CANCELLED, "replaced": REPLACED}


def fresh_job() -> Job:
    return Job(job_id="j1", user_id="u1", message="soup", conversation_id="c1", created_at=1.7e9,
               expires_at=2_000_000_000, attempts=1)


@pytest.mark.parametrize("name", list(LOGS))
def test_fold_gives_the_projection_it_gave_before(name: str) -> None:
    log = LOGS[name]
    job = fresh_job()
    assert fold(job, log) == legacy_fold(job, log)
    for n in range(len(log) + 1):  # every prefix: what a reader sees while the job runs
        assert fold(job, log[:n]) == legacy_fold(job, log[:n])
    # the record trails the log: folding the tail onto a stored projection gives the same job
    for cut in range(len(log) + 1):
        assert fold(fold(job, log[:cut]), log) == fold(job, log), "events at or below last_seq are skipped"
        assert fold(fold(job, log[:cut]), log[cut:]) == fold(job, log)


@pytest.mark.parametrize("name", list(LOGS))
def test_replay_gives_what_the_runner_resumed_from_before(name: str) -> None:
    log = LOGS[name]
    for n in range(len(log) + 1):
        state = replay(log[:n])
        assert (state.plan, state.outputs, state.started, state.phases, state.shown) == legacy_replay(log[:n])


def test_projection_of_a_normal_run() -> None:
    job = fold(fresh_job(), NORMAL)
    assert job.status is JobStatus.COMPLETE and job.last_seq == 12
    assert job.started_at == _parse_iso(NORMAL[0].at) and job.completed_at == _parse_iso(NORMAL[-1].at)
    assert job.progress == Progress(phase="reply", completed_steps=2, total_steps=2, label="Done")
    assert job.output == {"reply": "Make soup."} and job.error is None
    running = fold(fresh_job(), NORMAL[:7])
    assert running.status is JobStatus.RUNNING and running.completed_at is None
    assert running.progress == Progress(phase="act", completed_steps=1, total_steps=2, label="Cook")


def test_resume_state_of_a_resumed_run() -> None:
    state = replay(RESUMED[:8])  # what attempt 2 read before it wrote anything else
    assert state.plan == Plan([PlanStep(1, "Search"), PlanStep(2, "Cook", {"tool": "cook"})])
    assert state.outputs == {1: {"found": 3}} and state.started == {1, 2}
    assert state.phases == {"think", "act"} and state.shown == ""
    assert state.status is JobStatus.RUNNING and state.last_seq == 8
    done = fold(fresh_job(), RESUMED)
    assert done.output == {"reply": "Soup.", "usage": {"input_tokens": 4}}
    assert done.started_at == _parse_iso(RESUMED[0].at), "resumed does not move the start"


def test_projection_of_a_failure_with_retry() -> None:
    waiting = fold(fresh_job(), RETRIED_THEN_FAILED[:3])
    assert waiting.status is JobStatus.PENDING and waiting.error is None, "a retry's error is not the job's"
    assert waiting.progress.label == "Thinking"
    again = fold(waiting, RETRIED_THEN_FAILED[3:4])
    assert again.status is JobStatus.RUNNING
    failed = fold(fresh_job(), RETRIED_THEN_FAILED)
    assert failed.status is JobStatus.FAILED and failed.progress.label == "Failed"
    assert failed.error == {"code": "recipe_unavailable", "message": "gave up after 3 attempts"}
    assert failed.output is None and failed.progress.completed_steps == 0


def test_projection_of_a_cancel() -> None:
    job = fold(fresh_job(), CANCELLED)
    assert job.status is JobStatus.CANCELLED and job.completed_at == _parse_iso(CANCELLED[-1].at)
    assert job.progress == Progress(phase="act", completed_steps=1, total_steps=2, label="Cancelled")
    # a cancel of a job nobody holds: the log is only that event
    only = fold(fresh_job(), log_of((EventType.CANCELLED, {})))
    assert only.status is JobStatus.CANCELLED and only.started_at is None and only.last_seq == 1


def test_state_of_a_replace_delta() -> None:
    assert replay(REPLACED[:6]).shown == "Hello wor"
    assert replay(REPLACED).shown == "Goodbye!"
    assert fold(fresh_job(), REPLACED).output == {"reply": "Goodbye!"}


def test_a_state_from_a_record_reads_only_the_tail() -> None:
    state = LogState(last_seq=5, status=JobStatus.RUNNING)
    replay(NORMAL, state)
    assert state.last_seq == 12 and state.started == {2}, "seqs 1..5 were in the record already"
    assert state.outputs == {1: {"found": 3}, 2: None} and state.plan is None


# ---- what the runner writes -----------------------------------------------------------------


class DivergingAgent(DemoAgent):
    """Plans with a spec, and its reply differs between attempts (the first one breaks off)."""

    def think(self, ctx: AgentContext) -> Plan:
        plan = super().think(ctx)
        return Plan([replace(plan.steps[0], spec={"tool": "search"}), *plan.steps[1:]])

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        if ctx.attempt == 1:
            yield "Hello wor"
            raise RetryableAgentError("dropped")
        yield "Good"
        yield "bye"


def test_what_the_runner_writes_round_trips_and_folds_like_the_record() -> None:
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, max_attempts=3))
    deps.settings.delta_flush_seconds = 0.0  # every chunk is a delta
    job_id = JobService(deps).submit("u1", ChatRequest(message="x [steps=2]"), None).job.job_id
    runner = JobRunner(deps, DivergingAgent(deps.agent_data, deps.settings))
    assert runner.run(Delivery(job_id)).outcome is Outcome.RETRY
    assert runner.run(Delivery(job_id)).status is JobStatus.COMPLETE
    log = deps.log
    assert isinstance(log, MemoryEventLog)
    events = log.all(job_id)
    for e in events:
        assert json.dumps(e.payload.to_data()) == json.dumps(e.data)
    by_type = {t: [e.data for e in events if e.type is t] for t in EventType}
    assert by_type[EventType.STATUS] == [{"status": "running"}, {"status": "pending", "retry_in": 2, "error": {
        "code": "agent_retryable", "message": "dropped"}}]
    assert by_type[EventType.PHASE] == [{"phase": "reply"}]  # think and act are opened by their neighbours
    # step 1 starts with the plan, step 2 with step 1's completion: in the same writes
    assert by_type[EventType.PLAN][0]["next"] == {"index": 1, "label": "Check the pantry"}
    assert by_type[EventType.STEP][:1] == [
        {"index": 1, "total": 2, "label": "Check the pantry", "status": "completed",
         "output": {"step": 1, "label": "Check the pantry", "ingredients": [], "runs": 1},
         "next": {"index": 2, "label": "Search recipes"},
         # the demo agent's made-up usage for the step (its model calls' sum)
         "usage": {"input_tokens": 90, "output_tokens": 40, "cache_read_tokens": 0, "cache_write_tokens": 0,
                   "model": "demo"}}]
    assert by_type[EventType.PLAN][0]["specs"] == {"1": {"tool": "search"}}
    assert by_type[EventType.DELTA] == [{"text": "Hello wor"}, {"text": "Good", "replace": True}, {"text": "bye"}]
    assert by_type[EventType.RESUMED] == [{"attempt": 2, "from_seq": 7}]
    assert by_type[EventType.COMPLETE] == [{"output": {"reply": "Goodbye"}}]
    record = deps.jobs.get(job_id)
    assert record is not None
    assert fold(replace(record, last_seq=0, progress=Progress(), status=JobStatus.PENDING, started_at=None,
                        completed_at=None, output=None, error=None), events) == record
    assert replay(events).shown == "Goodbye" == (record.output or {})["reply"]


# ---- the CLI's renderer reads public JSON through the same payloads --------------------------


def test_the_cli_renderer_shows_the_reply_by_apply_delta() -> None:
    from io import StringIO

    from alfred_tools.api_client import Renderer, summarize

    public = [e.public() for e in REPLACED]
    for mode in ("tty", "plain", "json"):
        out = StringIO()
        r = Renderer(out, mode)
        for e in public:
            r.event(e)
        assert r.reply == "Goodbye!" and r.status == "complete"
    tty = StringIO()
    r = Renderer(tty, "tty")
    for e in public:
        r.event(e)
    assert "Hello wor\n" in tty.getvalue() and "\n[reply restarted]\nGoodbye!\n" in tty.getvalue()
    assert summarize("delta", {"text": "Goodbye", "replace": True}) == 'replace "Goodbye"'
    assert summarize("delta", {"text": "Hi"}) == '"Hi"'
