"""An invocation's time budget: whether the next part of a job (think, a step, the reply) can
finish, with a margin to hand the job on, before the invocation's time is up.

Why: a Lambda timeout kills the attempt mid-step, and the job then waits a lease period before
anyone resumes it (and the batch's records not started wait out their visibility timeout). Ending
the attempt at a step boundary instead, and handing the job on at once, costs a few writes.

The deadline is a point on ``deps.clock.monotonic()``, taken once per invocation (``deadline``)
from the Lambda context's remaining time or, for a local worker, ``worker_invocation_seconds``.
"""

from __future__ import annotations

from typing import Any, Literal

from alfred_jobs.clock import Clock
from alfred_jobs.domain.agent import PlanStep
from alfred_jobs.settings import Settings

Part = Literal["think", "step", "reply"]


def deadline(clock: Clock, settings: Settings, context: Any) -> float | None:
    """When this invocation's time is up, on ``clock.monotonic()``; None: no budget (a local
    worker without ``worker_invocation_seconds``). The tighter of the context's remaining time
    (a Lambda context has ``get_remaining_time_in_millis``) and the setting."""
    now = clock.monotonic()
    limits = []
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        limits.append(now + int(remaining()) / 1000)
    if settings.worker_invocation_seconds is not None:
        limits.append(now + settings.worker_invocation_seconds)
    return min(limits) if limits else None


def expected_seconds(agent: Any, settings: Settings, part: Part, step: PlanStep | None = None) -> float:
    """How long ``part`` may take: the agent's hint (an optional ``expected_seconds(part, step)``,
    None for no opinion), else ``step_expected_seconds``."""
    hint = getattr(agent, "expected_seconds", None)
    if callable(hint):
        seconds = hint(part, step)
        if seconds is not None:
            return float(seconds)
    return settings.step_expected_seconds


def fits(clock: Clock, until: float | None, seconds: float, margin: float) -> bool:
    """Whether ``seconds`` of work, then ``margin`` to hand on, end before ``until`` (None: always)."""
    return until is None or clock.monotonic() + seconds + margin <= until
