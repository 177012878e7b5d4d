"""The two back-ends of the contract suite and small builders shared by its tests.

A ``Backend`` is a ``Deps`` plus what the tests need to tell the two apart where they are meant to
differ: every such place in the suite branches on ``backend.is_aws`` with a comment saying why, so
no difference between a fake and its adapter is silent.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from alfred_jobs.adapters.memory import MemoryJobQueue, memory_deps
from alfred_jobs.domain.models import Event, EventType, Job, JobStatus, Progress
from alfred_jobs.ports import AgentDataStore, ConversationStore, Deps, EventLog, JobQueue, JobStore
from alfred_jobs.settings import Settings
from tests.support.stack import Stack

# Both back-ends get the same pending grace (the jobs table's due_at of a new job).
PENDING_GRACE = 30.0
HOUR = 3600


@dataclass
class Backend:
    name: str  # "memory" or "aws"
    deps: Deps
    stack: Stack | None = None  # the AWS leg's tables and queues

    @property
    def is_aws(self) -> bool:
        return self.stack is not None

    @property
    def jobs(self) -> JobStore:
        return self.deps.jobs

    @property
    def log(self) -> EventLog:
        return self.deps.log

    @property
    def conversations(self) -> ConversationStore:
        return self.deps.conversations

    @property
    def queue(self) -> JobQueue:
        return self.deps.queue

    @property
    def agent_data(self) -> AgentDataStore:
        return self.deps.agent_data

    @property
    def memory_queue(self) -> MemoryJobQueue:
        assert isinstance(self.deps.queue, MemoryJobQueue)
        return self.deps.queue

    @property
    def aws(self) -> Stack:
        assert self.stack is not None
        return self.stack


def memory_backend() -> Backend:
    return Backend("memory", memory_deps(Settings(pending_grace_seconds=PENDING_GRACE)))


def uid(prefix: str) -> str:
    """Ids unique to one test: the AWS leg shares its tables across the tests of a session."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def live() -> int:
    """An ``expires_at`` an hour ahead."""
    return int(time.time()) + HOUR


def past() -> int:
    """An ``expires_at`` already passed (retention over; the store still holds the item)."""
    return int(time.time()) - 60


def new_job(*, user_id: str | None = None, created_at: float | None = None, expires_at: int | None = None,
            message: str = "chicken and rice", **fields: Any) -> Job:
    return Job(job_id=uid("job"), user_id=user_id or uid("user"), message=message, conversation_id=uid("conv"),
               created_at=time.time() if created_at is None else created_at,
               expires_at=live() if expires_at is None else expires_at, body_hash="h", **fields)


def event(seq: int, type: EventType = EventType.PHASE, data: dict[str, Any] | None = None) -> Event:
    return Event.new(seq, type, {"phase": "think"} if data is None else data, attempt=1, writer="w1", at=time.time())


def terminal(job: Job, last_seq: int, status: JobStatus = JobStatus.COMPLETE) -> Job:
    """``job`` folded to a terminal state at ``last_seq`` (what the runner's finalize saves)."""
    now = time.time()
    return replace(job, status=status, last_seq=last_seq, completed_at=now, started_at=job.started_at or now - 1,
                   output={"reply": "done"}, progress=Progress(phase="reply", completed_steps=2, total_steps=2))

