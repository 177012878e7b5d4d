"""Every error alfred-jobs raises, under one base.

    AlfredError
    ├── ClientError (4xx: the caller sent something wrong)     .status, .code
    │   ├── InvalidInput          400 invalid_input
    │   ├── Unauthorized          401 unauthorized
    │   ├── Forbidden             403 forbidden (dev_token_local_only)
    │   ├── NotFound              404 not_found
    │   ├── Conflict              409 conflict
    │   │   └── ConversationBusy  409 conversation_busy                .job_id
    │   ├── Gone                  410 gone (events_expired)
    │   ├── PayloadTooLarge       413 payload_too_large
    │   └── TooManyRequests       429 too_many_requests (too_many_streams, too_many_jobs)   .retry_after
    ├── StoreError (storage and queue trouble)
    │   ├── ConditionFailed       a conditional write lost (adapters raise it, services decide)
    │   │   └── GateFull          a user's gate holds its limit of active jobs   .gate
    │   └── TransientStoreError   throttling, 5xx, timeouts: retry helps
    ├── ConfigurationError        the process cannot start as configured
    │   └── SecretUnavailable     a secret named by ARN cannot be read (retryable: IAM, throttling)
    ├── LeaseError
    │   ├── LeaseHeld             another live worker holds the job
    │   └── Fenced                another worker took the job over: stop writing at once
    │       └── SlotTaken         the seq we wrote holds another event (``.existing``)
    ├── RetryLater                a queue record to come back after its visibility timeout
    └── AgentError (raised by agents)                          .retryable
        ├── RetryableAgentError   try again later (throttled model, flaky tool)
        └── TerminalAgentError    retrying cannot help (bad plan, refused input)
            └── MalformedPlan     a plan that does not validate (the Bedrock agent asks again once)

Services raise these; the HTTP layer maps ``ClientError`` to its status, never by message text
(and a ``TooManyRequests`` to a ``Retry-After`` header too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alfred_jobs.domain.models import Event


class AlfredError(Exception):
    """Base of every alfred-jobs error."""

    retryable: bool = False


class ClientError(AlfredError):
    """Something the caller sent is wrong; maps to a 4xx."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(ClientError):
    status = 400
    code = "invalid_input"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    """Who is asking is known (or need not be), and the answer is still no."""

    status = 403
    code = "forbidden"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class ConversationBusy(Conflict):
    """``multitask: reject`` on a conversation with an active job; ``job_id`` names that job."""

    code = "conversation_busy"

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class Gone(ClientError):
    status = 410
    code = "gone"


class EventsExpired(Gone):
    """Events a watcher asked for are past retention: they cannot be replayed."""

    code = "events_expired"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(ClientError):
    """The caller is over a limit that frees up by itself; ``retry_after`` seconds is a fair wait."""

    status = 429
    code = "too_many_requests"
    retryable = True

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class StoreError(AlfredError):
    """Storage or queue trouble."""


class ConditionFailed(StoreError):
    """A conditional write found the item in another state."""


class GateFull(ConditionFailed):
    """A user's gate already holds ``max_active`` active jobs (the service answers 429)."""

    def __init__(self, gate: object) -> None:
        super().__init__("gate full")
        self.gate = gate


class TransientStoreError(StoreError):
    """Throttling, a 5xx or a timeout: the same call may succeed later."""

    retryable = True


class ConfigurationError(AlfredError):
    """The process cannot start as configured (a missing or unreadable secret, a bad setting)."""


class SecretUnavailable(ConfigurationError):
    """A configured secret could not be read (IAM, a wrong ARN, Secrets Manager down)."""

    retryable = True


class RetryLater(AlfredError):
    """Marks a queue record as failed so SQS redelivers it after its (already set) visibility timeout."""


class LeaseError(AlfredError):
    """The caller does not own the job."""


class LeaseHeld(LeaseError):
    """Another worker holds a live lease on the job."""


class Fenced(LeaseError):
    """Another worker has taken the job over; this one must write nothing more."""


class SlotTaken(Fenced):
    """The seq we tried to write is taken by another event (``existing``; it may be our own
    earlier write, which the caller tells by ``existing.writer``)."""

    def __init__(self, existing: Event) -> None:
        super().__init__(f"seq {existing.seq} taken by {existing.type}")
        self.existing = existing


class AgentError(AlfredError):
    """Raised by an agent; ``retryable`` tells the runner whether another attempt can help."""

    code: str = "agent_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RetryableAgentError(AgentError):
    retryable = True
    code = "agent_retryable"


class TerminalAgentError(AgentError):
    retryable = False
    code = "agent_failed"


class MalformedPlan(TerminalAgentError):
    """An agent's plan does not validate (the message says what is wrong, for a repair turn)."""

    code = "bad_plan"
