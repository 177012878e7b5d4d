"""Wire and domain models: the job, its events and its progress. Each shape exists once here."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({JobStatus.PENDING, JobStatus.RUNNING})


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


TERMINAL_EVENT_TYPES = frozenset({EventType.COMPLETE, EventType.FAILED, EventType.CANCELLED})
TERMINAL_STATUS_OF_EVENT = {
    EventType.COMPLETE: JobStatus.COMPLETE,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}


def now_ts() -> float:
    """Seconds since the epoch (one place, so tests and the fault injector can reason about it)."""
    return time.time()


def iso(ts: float) -> str:
    """An ISO-8601 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One entry of a job's ordered log.

    ``writer`` is the lease token of who wrote it; ``id`` is unique per event, so a writer whose
    put was answered with an error can tell its own landed event from any other (neither is sent
    out).
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

    def public(self) -> dict[str, Any]:
        """The event as clients see it (a plan's agent-private step specs stay inside)."""
        data = self.data
        if self.type is EventType.PLAN and "specs" in data:
            data = {k: v for k, v in data.items() if k != "specs"}
        return {"seq": self.seq, "type": str(self.type), "at": self.at, "attempt": self.attempt,
                "data": data}

    @classmethod
    def new(cls, seq: int, type: EventType, data: dict[str, Any], *, attempt: int, writer: str) -> Event:
        """A fresh event stamped now."""
        return cls(seq=seq, type=type, at=iso(now_ts()), attempt=attempt, data=data, writer=writer,
                   id=uuid.uuid4().hex)

    def same_write(self, other: Event) -> bool:
        """True if ``other`` is this very event (not just one at the same seq)."""
        if self.id or other.id:
            return self.id == other.id
        return self.writer == other.writer and self.type is other.type  # events stored before ids


@dataclass(frozen=True)
class Progress:
    phase: str | None = None
    completed_steps: int = 0
    total_steps: int | None = None
    label: str | None = None

    def public(self) -> dict[str, Any]:
        return {"phase": self.phase, "completed_steps": self.completed_steps,
                "total_steps": self.total_steps, "label": self.label}


@dataclass(frozen=True)
class Job:
    """The job record: who asked what, and a projection of its event log up to ``last_seq``."""

    job_id: str
    user_id: str
    message: str
    conversation_id: str
    created_at: float
    expires_at: int
    status: JobStatus = JobStatus.PENDING
    body_hash: str = ""
    started_at: float | None = None
    completed_at: float | None = None
    attempts: int = 0
    last_seq: int = 0
    progress: Progress = field(default_factory=Progress)
    output: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_expires: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def expired(self, at: float | None = None) -> bool:
        """True once retention has passed: the item reads as gone even while the store holds it."""
        return self.expires_at <= (now_ts() if at is None else at)

    def public(self, links: dict[str, str] | None = None) -> dict[str, Any]:
        """The job object of the HTTP API."""
        body: dict[str, Any] = {
            "job_id": self.job_id,
            "status": str(self.status),
            "message": self.message,
            "conversation_id": self.conversation_id,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at) if self.started_at else None,
            "completed_at": iso(self.completed_at) if self.completed_at else None,
            "attempts": self.attempts,
            "last_seq": self.last_seq,
            "progress": self.progress.public(),
            "cancel_requested": self.cancel_requested,
        }
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        if links is not None:
            body["links"] = links
        return body


def fold(job: Job, events: list[Event]) -> Job:
    """Apply events after ``job.last_seq`` to the job record: the log is the truth, the record a cache."""
    p = job.progress
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
        elif ev.type is EventType.RESUMED:
            status = JobStatus.RUNNING
        elif ev.type is EventType.PHASE:
            p = replace(p, phase=ev.data.get("phase"),
                        label={"think": "Thinking", "reply": "Writing the reply"}.get(
                            ev.data.get("phase", ""), p.label))
        elif ev.type is EventType.PLAN:
            p = replace(p, total_steps=int(ev.data.get("total_steps", 0)))
        elif ev.type is EventType.STEP:
            done = ev.data.get("status") == "completed"
            idx = int(ev.data.get("index", 0))
            p = replace(p, total_steps=int(ev.data.get("total", p.total_steps or 0)),
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


# ---- HTTP request bodies ---------------------------------------------------------------


class ChatRequest(BaseModel):
    """Body of ``POST /api/chat``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    message: str = Field(min_length=1, max_length=8000)
    conversation_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """The one error shape."""

    error: ErrorBody

