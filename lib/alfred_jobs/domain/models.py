"""Wire and domain models: the job record and the HTTP bodies. Each shape exists once here.

The events, their payloads, statuses and progress live in ``events``; they are re-exported here,
so ``from alfred_jobs.domain.models import Event`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from alfred_jobs.domain.events import (
    ACTIVE_STATUSES,
    TERMINAL_EVENT_TYPES,
    TERMINAL_STATUS_OF_EVENT,
    TERMINAL_STATUSES,
    Event,
    EventType,
    JobStatus,
    LogState,
    Progress,
    iso,
    replay,
)
from alfred_jobs.domain.ids import CONVERSATION_ID_PATTERN
from alfred_jobs.domain.retention import expired

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_EVENT_TYPES",
    "TERMINAL_STATUSES",
    "TERMINAL_STATUS_OF_EVENT",
    "ChatRequest",
    "ErrorBody",
    "ErrorResponse",
    "Event",
    "EventType",
    "Job",
    "JobStatus",
    "Progress",
    "Steer",
    "SteerClaim",
    "fold",
    "iso",
    "refold",
    "turn_messages",
]


@dataclass(frozen=True)
class Steer:
    """A message steered into a job (``multitask: steer``), as its record holds it."""

    message_id: str
    text: str


@dataclass(frozen=True)
class SteerClaim:
    """What a steer with an Idempotency-Key decided, kept under its message id (the id a job of
    that key would have) so a repeat decides the same: join ``target`` (None: there was no active
    job to join). See ``JobService.steer``."""

    message_id: str
    user_id: str
    target: str | None
    body_hash: str
    created_at: float
    expires_at: int


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
    cancel_by: str | None = None  # the job that interrupts this one (multitask "interrupt")
    lease_owner: str | None = None
    lease_expires: float = 0.0
    # Steering (docs/architecture.md, "Steering: the reply door"): the messages steered into the
    # job, in the order they landed, and whether its door is closed (no steer gets in any more:
    # it is replying or ended). Only ``JobStore.steer`` adds to ``steers``, only while the door is
    # open; only ``JobStore.close_door`` closes it, having seen every steer.
    steers: tuple[Steer, ...] = ()
    door_closed: bool = False

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def lease_live(self, at: float) -> bool:
        """True while a worker holds the job at time ``at``: an owner whose lease has not run out."""
        return self.lease_owner is not None and self.lease_expires >= at

    def expired(self, at: float) -> bool:
        """True once retention has passed at ``at``: the item reads as gone even while the store holds it."""
        return expired(self.expires_at, at)

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


def turn_messages(message: str, steered: tuple[str, ...] | list[str], reply: str) -> list[tuple[str, str, str]]:
    """The messages one job commits to its conversation, as (key suffix, role, text): the user's
    message, the messages steered into the job in their order, then the one reply. The suffixes
    sort in that order after the job's ``at#job_id#`` (``0``, ``0.001``..., ``1``: a turn without
    steers keeps the two keys it always had)."""
    return [("0", "user", message), *((f"0.{n:03d}", "user", text) for n, text in enumerate(steered, 1)),
            ("1", "assistant", reply)]


def fold(job: Job, events: list[Event]) -> Job:
    """Apply events after ``job.last_seq`` to the job record: the log is the truth, the record a cache.

    The log is read by ``events.replay`` (the one reader), starting from the record's projection.
    """
    state = replay(events, LogState(status=job.status, started_at=job.started_at,
                                    completed_at=job.completed_at, output=job.output, error=job.error,
                                    last_seq=job.last_seq, progress=job.progress))
    return replace(job, status=state.status, started_at=state.started_at, completed_at=state.completed_at,
                   output=state.output, error=state.error, last_seq=state.last_seq, progress=state.progress)


def refold(job: Job, events: list[Event]) -> Job:
    """``job`` projected afresh from its whole log (``events`` from seq 1): the record may lag."""
    return fold(replace(job, last_seq=0, progress=Progress(), status=JobStatus.PENDING), events)


# ---- HTTP request bodies ---------------------------------------------------------------

TITLE_CHARS = 60


def conversation_title(message: str, limit: int = TITLE_CHARS) -> str:
    """A conversation's title on the user's list: its first user message, on one line, cut at a
    word boundary to at most ``limit`` characters (an ellipsis says it was cut)."""
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,.;:") + "…"



class ChatRequest(BaseModel):
    """Body of ``POST /api/chat``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    # No upper bound here: the limit is Settings.max_message_chars, checked by the service (400
    # message_too_long), so the configured value is the one that holds.
    message: str = Field(min_length=1)
    conversation_id: str | None = Field(default=None, pattern=CONVERSATION_ID_PATTERN)
    # What to do when the conversation already has an active job (docs/architecture.md, "The
    # gate"): wait behind it, refuse (409 conversation_busy), end it (cancelled, interrupted), or
    # join it if it has not begun its reply (steer; else it is enqueued).
    multitask: Literal["enqueue", "reject", "interrupt", "steer"] = "enqueue"

    @field_validator("message", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        """An empty message says so (not pydantic's "at least 1 character")."""
        if value == "":
            raise PydanticCustomError("string_too_short", "must not be empty: type what to ask Alfred")
        return value


class InputAnswer(BaseModel):
    """Body of ``POST /api/jobs/{id}/input``: the answer to the question ``input_id``."""

    model_config = ConfigDict(extra="forbid")

    input_id: str = Field(min_length=1, max_length=64)
    # StrictBool first: "true" stays text, true stays a bool (a confirm takes only a bool).
    answer: StrictBool | StrictStr = Field(union_mode="left_to_right")


class ErrorBody(BaseModel):
    code: str
    message: str
    job_id: str | None = None  # conversation_busy: the conversation's active job


class ErrorResponse(BaseModel):
    """The one error shape."""

    error: ErrorBody

