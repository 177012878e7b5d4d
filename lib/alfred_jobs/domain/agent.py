"""The agent interface: think (plan), act (one step), reply (text, optionally streamed).

The runner owns durability (checkpoints, resume, cancel, fencing, retries); an agent only does
the work. What the runner promises an agent:

- ``think`` runs until a plan is recorded; after that the recorded plan is reused on every attempt.
- ``act`` runs once per step; a step recorded as completed is never run again (its recorded
  output is in ``ctx.step_outputs``). A step cut off mid-way may run again: ``ctx.idempotency_key``
  (job + step index) is stable across attempts, use it for side effects.
- ``reply`` yields text chunks; the runner coalesces them into ``delta`` events and stops
  consuming within about a second of a cancel.

- ``ctx.steers`` lists the messages the user added to the job while it ran (``multitask:
  steer``), in order; each appears from the step boundary after it arrived, and always before
  the reply. An agent re-plans what is left with them (the reply must answer them too).

- ``ask`` (in ``think`` or ``act``) asks the user and returns the answer. The first time, the
  question is recorded and the attempt ends there (the job is ``waiting``, holding no worker); once
  answered, the job resumes from its checkpoint and the same ``ask`` returns the recorded answer.
  A step that asks runs again from its start after the answer: ask before its side effects.

- ``report_usage`` (any part) tells the runner what a model call was billed; the runner sums a
  part's calls onto the event that records the part (``plan``, a completed ``step``, ``complete``,
  or ``cancelled`` during the reply). Calls of a part that is not recorded (cut off, asking) are
  left out of the log.

What an agent promises: side effects only inside ``act``; raise ``RetryableAgentError`` when
another attempt could help and ``TerminalAgentError`` when it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class PlanStep:
    index: int  # from 1
    label: str
    spec: dict[str, Any] = field(default_factory=dict)  # agent-private detail of the step


@dataclass(frozen=True)
class Plan:
    steps: list[PlanStep]  # recorded as a ``plan`` event by ``events.PlanPayload.of(plan)``


@dataclass(frozen=True)
class AgentContext:
    job_id: str
    user_id: str
    conversation_id: str
    message: str
    history: list[dict[str, Any]]  # committed messages of the conversation, oldest first
    attempt: int
    step_outputs: dict[int, Any]  # outputs of completed steps, by index
    cancelled: Callable[[], bool]  # True once the job is to stop: a cancel was requested, or the lease lost
    # The job's creation time and expiry. A job id can come back after retention (a reused
    # Idempotency-Key): the creation time tells the two jobs apart, and data an agent keeps for a
    # job should expire with it.
    created_at: float = 0.0
    expires_at: int = 0
    # The runner's durable question (see ``ask``); None where a job cannot ask.
    asker: Callable[[str, str, list[str] | None], Any] | None = None
    # The runner's meter (see ``report_usage``); None where nobody counts.
    meter: Callable[[dict[str, Any]], None] | None = None
    # Messages the user steered into this job (``multitask: steer``), oldest first. The runner
    # adds to it at step boundaries: the next ``think``, ``act`` or ``reply`` sees each new one.
    steers: list[str] = field(default_factory=list)

    def ask(self, prompt: str, kind: str = "confirm", options: list[str] | None = None) -> Any:
        """Ask the user; returns ``True``/``False`` (confirm), one of ``options`` (choice) or text.

        Never returns before the user answered: the first call ends the attempt (the job waits,
        for a day by default), and the resumed attempt's call returns the answer at once.
        """
        if self.asker is None:
            raise RuntimeError("this job cannot ask the user")
        return self.asker(prompt, kind, options)

    def report_usage(self, model: str, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
                     cache_write_tokens: int = 0) -> None:
        """Report one model call's billed tokens (summed onto the event of the part that made it)."""
        if self.meter is not None:
            self.meter({"model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
                        "cache_read_tokens": cache_read_tokens, "cache_write_tokens": cache_write_tokens})

    def idempotency_key(self, step_index: int) -> str:
        """The stable key for side effects of one step (job id + step index, and the job's
        creation time: a job id reused after retention is a new job with new side effects)."""
        if self.created_at:
            return f"{self.job_id}.{int(self.created_at * 1000)}:{step_index}"
        return f"{self.job_id}:{step_index}"


class Agent(Protocol):
    def think(self, ctx: AgentContext) -> Plan:
        """Make the plan of steps."""

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        """Run one step; return its JSON-serialisable output (what gets checkpointed)."""

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        """Yield the reply text in chunks."""
