"""A job's event log: the events, one typed payload per event type, and the one reader of the log.

Stored and public JSON: an event's ``data`` is exactly its payload's ``to_data()``. A payload
writes the keys that were set on it, no more (``StepPayload`` without ``output`` has no
``output`` key, ``DeltaPayload(text=...)`` has no ``replace`` key), and parsing then writing
gives back the very same JSON. Unknown keys are kept, not refused: a newer writer's additive
field must not break an older reader while a deploy rolls out.

The reader: ``replay(events)`` folds events into a ``LogState``, which holds both what the job
record projects (status, progress, output, error, times, ``last_seq``) and what a resuming
attempt needs (the plan, completed step outputs, started steps, phases, the reply text shown so
far). ``models.fold`` (the projection) and the runner (resume) both read the log through it, and
the delta rule (replace, else append) is ``apply_delta``, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict

from alfred_jobs.domain.agent import Plan, PlanStep

# ---- statuses, event types, time --------------------------------------------------------


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"  # for the user's answer: active, holding no worker, lease or run slot
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.WAITING})


class EventType(StrEnum):
    STATUS = "status"
    PHASE = "phase"
    PLAN = "plan"
    STEP = "step"
    DELTA = "delta"
    RESUMED = "resumed"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INPUT_REQUIRED = "input_required"
    INPUT_RECEIVED = "input_received"
    STEERED = "steered"


TERMINAL_EVENT_TYPES = frozenset({EventType.COMPLETE, EventType.FAILED, EventType.CANCELLED})
TERMINAL_STATUS_OF_EVENT = {
    EventType.COMPLETE: JobStatus.COMPLETE,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}


def iso(ts: float) -> str:
    """An ISO-8601 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> float:
    """The inverse of ``iso``: seconds since the epoch."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# ---- payloads ---------------------------------------------------------------------------


class _Data(BaseModel):
    """A JSON object with declared keys; writes back exactly the keys it was given."""

    model_config = ConfigDict(frozen=True, extra="allow")

    def to_data(self) -> dict[str, Any]:
        """The JSON object: the keys that were set (parsed or passed), in declaration order."""
        return self.model_dump(mode="json", exclude_unset=True)


class ErrorInfo(_Data):
    """``{code, message}``: a failure as the job, its events and the API show it."""

    code: str
    message: str


class Payload(_Data):
    """The ``data`` of one event type (``event_type``)."""

    event_type: ClassVar[EventType]


class StatusPayload(Payload):
    """``running`` opens a first attempt; ``pending`` (with ``retry_in`` and the error) waits for a
    retry; ``pending`` with neither ends an attempt that ran out of invocation time and handed
    the job on at once (runner.py, ``_hand_on``)."""

    event_type = EventType.STATUS
    status: JobStatus
    retry_in: int | None = None
    error: ErrorInfo | None = None


Phase = Literal["think", "act", "reply"]


class PhasePayload(Payload):
    event_type = EventType.PHASE
    phase: Phase


class PlanStepRef(_Data):
    """A step as the plan event lists it."""

    index: int
    label: str


class NextStep(_Data):
    """The step that starts in the same write as the event that carries it (``plan``, a completed
    ``step``): one write instead of two, and that write is the fence before the step acts, as a
    ``started`` event would be. A reader takes it as that step's ``started`` event."""

    index: int
    label: str


class PlanPayload(Payload):
    """The plan; ``specs`` (agent-private step detail by str(index)) never leaves the service.
    ``next``: the first step starts with it."""

    event_type = EventType.PLAN
    steps: list[PlanStepRef]
    total_steps: int
    specs: dict[str, dict[str, Any]] | None = None
    next: NextStep | None = None

    @classmethod
    def of(cls, plan: Plan, *, start_first: bool = False) -> PlanPayload:
        """The payload recording ``plan`` (``specs`` only when some step has one); with
        ``start_first``, its first step starts with it (``next``)."""
        steps = [PlanStepRef(index=st.index, label=st.label) for st in plan.steps]
        specs = {str(st.index): st.spec for st in plan.steps if st.spec}
        extra: dict[str, Any] = {"specs": specs} if specs else {}
        if start_first and plan.steps:
            extra["next"] = NextStep(index=plan.steps[0].index, label=plan.steps[0].label)
        return cls(steps=steps, total_steps=len(steps), **extra)

    def plan(self) -> Plan:
        """The recorded plan, specs included, as the agent made it."""
        specs = self.specs or {}
        return Plan([PlanStep(st.index, st.label, specs.get(str(st.index), {})) for st in self.steps])


class StepPayload(Payload):
    """A step started, or completed with its ``output`` (set, even when it is null).

    A completed step may say which step starts with it (``next``): the runner goes from one step
    to the next in one write, not two, and that write is the fence before the next step acts, as a
    ``started`` event would be. A reader takes it as that step's ``started`` event.
    """

    event_type = EventType.STEP
    index: int
    total: int
    label: str
    status: Literal["started", "completed"]
    output: Any = None
    next: NextStep | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


class DeltaPayload(Payload):
    """Reply text: appended to what is shown, or with ``replace`` the whole text shown from now."""

    event_type = EventType.DELTA
    text: str
    replace: bool = False


class ResumedPayload(Payload):
    event_type = EventType.RESUMED
    attempt: int
    from_seq: int


class CompletePayload(Payload):
    event_type = EventType.COMPLETE
    output: dict[str, Any]  # {"reply": str, "usage"?: {...}}

    @property
    def reply(self) -> str:
        return str(self.output.get("reply", ""))


class FailedPayload(Payload):
    event_type = EventType.FAILED
    error: ErrorInfo


class CancelledPayload(Payload):
    """``{}`` (a cancel: by a worker at a step boundary, or by the API on a job nobody holds), or
    ``{"reason": "interrupted", "by": <job id>}``: a later job of the conversation submitted with
    ``multitask: interrupt`` ended it."""

    event_type = EventType.CANCELLED
    reason: Literal["interrupted"] | None = None
    by: str | None = None

    @classmethod
    def interrupted_by(cls, job_id: str | None) -> CancelledPayload:
        return cls(reason="interrupted", by=job_id) if job_id else cls()


InputKind = Literal["confirm", "choice", "text"]


class InputRequiredPayload(Payload):
    """The agent asks the user (``AgentContext.ask``); the job is ``waiting`` until the answer."""

    event_type = EventType.INPUT_REQUIRED
    input_id: str
    prompt: str
    kind: InputKind
    options: list[str] | None = None
    expires_at: str  # iso8601: unanswered by then, the job fails with ``input_timeout``

    def fits(self, answer: Any) -> bool:
        """Whether ``answer`` answers this question: a bool for confirm, one of the options for
        choice, non-blank text for text."""
        if self.kind == "confirm":
            return isinstance(answer, bool)
        if not isinstance(answer, str) or isinstance(answer, bool):
            return False
        if self.kind == "choice":
            return answer in (self.options or [])
        return bool(answer.strip())


class InputReceivedPayload(Payload):
    event_type = EventType.INPUT_RECEIVED
    input_id: str
    answer: bool | str


class SteeredPayload(Payload):
    """A user message joined this job (``multitask: steer``); the agent sees it from here on."""

    event_type = EventType.STEERED
    message_id: str
    text: str


AnyPayload = (StatusPayload | PhasePayload | PlanPayload | StepPayload | DeltaPayload | ResumedPayload
              | CompletePayload | FailedPayload | CancelledPayload | InputRequiredPayload
              | InputReceivedPayload | SteeredPayload)

PAYLOAD_TYPES: dict[EventType, type[Payload]] = {
    cls.event_type: cls
    for cls in (StatusPayload, PhasePayload, PlanPayload, StepPayload, DeltaPayload, ResumedPayload,
                CompletePayload, FailedPayload, CancelledPayload, InputRequiredPayload, InputReceivedPayload,
                SteeredPayload)
}


def parse_payload(type: EventType | str, data: dict[str, Any]) -> AnyPayload:
    """The typed payload of an event's ``data`` (stored, or public JSON as clients receive it)."""
    return cast(AnyPayload, PAYLOAD_TYPES[EventType(type)].model_validate(data))


def apply_delta(shown: str, delta: DeltaPayload) -> str:
    """The reply text shown after ``delta``: THE replace rule (every Python reader uses this)."""
    return delta.text if delta.replace else shown + delta.text


# ---- the event --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One entry of a job's ordered log.

    ``writer`` is the lease token of who wrote it; ``id`` is unique per event, so a writer whose
    put was answered with an error can tell its own landed event from any other (neither is sent
    out). ``data`` is the stored JSON object; ``payload`` is it parsed.
    """

    seq: int
    type: EventType
    at: str
    attempt: int
    data: dict[str, Any]
    writer: str = ""
    id: str = ""

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENT_TYPES

    @cached_property
    def payload(self) -> AnyPayload:
        """``data`` as its event type's payload (parsed once: every fold and replay reads it)."""
        return parse_payload(self.type, self.data)

    @property
    def ts(self) -> float:
        """``at`` in seconds since the epoch."""
        return parse_iso(self.at)

    def public(self) -> dict[str, Any]:
        """The event as clients see it (a plan's agent-private step specs stay inside)."""
        data = self.data
        if self.type is EventType.PLAN and "specs" in data:
            data = {k: v for k, v in data.items() if k != "specs"}
        return {"seq": self.seq, "type": str(self.type), "at": self.at, "attempt": self.attempt,
                "data": data}

    @classmethod
    def new(cls, seq: int, type: EventType, data: dict[str, Any], *, attempt: int, writer: str,
            at: float) -> Event:
        """A fresh event stamped ``at`` (epoch seconds: the writer's clock, ``deps.clock.now()``)."""
        return cls(seq=seq, type=type, at=iso(at), attempt=attempt, data=data, writer=writer,
                   id=uuid.uuid4().hex)

    @classmethod
    def of(cls, seq: int, payload: Payload, *, attempt: int, writer: str, at: float) -> Event:
        """A fresh event carrying ``payload`` (its type is the payload's), stamped ``at``."""
        return cls.new(seq, payload.event_type, payload.to_data(), attempt=attempt, writer=writer, at=at)

    def same_write(self, other: Event) -> bool:
        """True if ``other`` is this very event (not just one at the same seq)."""
        if self.id or other.id:
            return self.id == other.id
        return self.writer == other.writer and self.type is other.type  # events stored before ids


# ---- the one reader of the log ----------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    phase: str | None = None
    completed_steps: int = 0
    total_steps: int | None = None
    label: str | None = None

    def public(self) -> dict[str, Any]:
        return {"phase": self.phase, "completed_steps": self.completed_steps,
                "total_steps": self.total_steps, "label": self.label}


PHASE_LABELS = {"think": "Thinking", "reply": "Writing the reply"}
TERMINAL_LABELS = {EventType.COMPLETE: "Done", EventType.FAILED: "Failed", EventType.CANCELLED: "Cancelled"}


@dataclass
class LogState:
    """What a log says, read once, event after event (``apply``; ``replay`` for many).

    The first group is the job record's projection; a state may start from a record (its
    projection) and take only the events after ``last_seq``. The second group, what a resuming
    attempt needs, is only complete when the state was read from the start of the log.
    """

    # the projection (the job record)
    status: JobStatus = JobStatus.PENDING
    started_at: float | None = None
    completed_at: float | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    last_seq: int = 0
    progress: Progress = field(default_factory=Progress)
    # what a resuming attempt needs
    plan: Plan | None = None
    outputs: dict[int, Any] = field(default_factory=dict)  # completed steps' outputs, by index
    started: set[int] = field(default_factory=set)  # steps with a ``started`` event
    phases: set[str] = field(default_factory=set)  # phases with a ``phase`` event
    shown: str = ""  # the reply text the deltas show so far
    asked: dict[str, InputRequiredPayload] = field(default_factory=dict)  # questions, by input_id
    answers: dict[str, bool | str] = field(default_factory=dict)  # their answers, by input_id
    handed_on: int = 0  # attempts that ended out of invocation time (``status: pending``, no error)
    steered: dict[str, str] = field(default_factory=dict)  # steered messages, message_id -> text, in order

    @property
    def question(self) -> InputRequiredPayload | None:
        """The question the job waits on (asked, not answered), if it is ``waiting``."""
        if self.status is not JobStatus.WAITING:
            return None
        return next((q for i, q in reversed(self.asked.items()) if i not in self.answers), None)

    def apply(self, ev: Event) -> None:
        """Take one event; events at or below ``last_seq`` are already in and are skipped."""
        if ev.seq <= self.last_seq:
            return
        self.last_seq = ev.seq
        p = ev.payload
        progress = self.progress
        if isinstance(p, StatusPayload):
            self.status = p.status
            if p.status is JobStatus.PENDING and p.error is None:
                self.handed_on += 1
            if p.status is JobStatus.RUNNING:
                self.started_at = self.started_at or ev.ts
                if self.plan is None:  # a job starts by thinking: no ``phase`` event says so
                    self.progress = replace(progress, phase="think", label=PHASE_LABELS["think"])
        elif isinstance(p, ResumedPayload):
            self.status = JobStatus.RUNNING
        elif isinstance(p, PhasePayload):
            self.phases.add(p.phase)
            self.progress = replace(progress, phase=p.phase, label=PHASE_LABELS.get(p.phase, progress.label))
        elif isinstance(p, PlanPayload):
            self.plan = p.plan()
            self.progress = replace(progress, total_steps=p.total_steps)
            if p.next is not None:
                self.started.add(p.next.index)
                self.progress = replace(self.progress, phase="act", label=p.next.label)
        elif isinstance(p, StepPayload):
            if p.completed:
                self.outputs[p.index] = p.output
            else:
                self.started.add(p.index)
            done_before = p.index if p.completed else p.index - 1
            label = p.label
            if p.completed and p.next is not None:
                self.started.add(p.next.index)
                label = p.next.label
            # Steps are the act phase: no ``phase`` event opens it.
            self.progress = replace(progress, phase="act", total_steps=p.total, label=label,
                                    completed_steps=max(progress.completed_steps, done_before))
        elif isinstance(p, DeltaPayload):
            self.shown = apply_delta(self.shown, p)
        elif isinstance(p, InputRequiredPayload):
            self.asked[p.input_id] = p
            self.status = JobStatus.WAITING
            self.progress = replace(progress, label="Waiting for your answer")
        elif isinstance(p, InputReceivedPayload):
            self.answers[p.input_id] = p.answer
            self.status = JobStatus.PENDING  # until an attempt picks it up again (``resumed``)
        elif isinstance(p, SteeredPayload):
            self.steered.setdefault(p.message_id, p.text)
        else:  # terminal: complete, failed, cancelled
            self.status = TERMINAL_STATUS_OF_EVENT[ev.type]
            self.completed_at = ev.ts
            if isinstance(p, CompletePayload):
                self.output = p.output
            elif isinstance(p, FailedPayload):
                self.error = p.error.to_data()
            self.progress = replace(progress, label=TERMINAL_LABELS[ev.type])


def step_started_by(ev: Event) -> int | None:
    """The index of the step ``ev`` starts, if it starts one: a ``started`` step event, or the
    ``next`` of a plan or of a completed step."""
    p = ev.payload
    if isinstance(p, StepPayload):
        return p.next.index if p.completed and p.next is not None else (None if p.completed else p.index)
    if isinstance(p, PlanPayload) and p.next is not None:
        return p.next.index
    return None


def replay(events: Iterable[Event], state: LogState | None = None) -> LogState:
    """Read ``events`` into ``state`` (a fresh one: the log from its start) and return it."""
    out = LogState() if state is None else state
    for ev in events:
        out.apply(ev)
    return out
