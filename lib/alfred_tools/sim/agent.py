"""The simulated agent: Alfred's shape (think, steps, a streamed reply, a question) in virtual time.

Its message is its script (``steps=3 ask=2 flaky=1 think=2.0``), so a workload decides what each
job does. It reports what it does to the ``Observer``, which the invariants read: when each step
started (a completed step must never start again) and which jobs are inside the agent at once
(a user's running jobs never exceed ``max_running``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from alfred_jobs.clock import Clock
from alfred_jobs.domain.agent import AgentContext, Plan, PlanStep
from alfred_jobs.exceptions import RetryableAgentError


def script(message: str) -> dict[str, float]:
    """``"sim steps=3 ask=2"`` → ``{"steps": 3.0, "ask": 2.0}``."""
    out: dict[str, float] = {}
    for word in message.split():
        if "=" in word:
            key, value = word.split("=", 1)
            out[key] = float(value)
    return out


@dataclass
class Observer:
    """What the agents did, as the invariants need it."""

    step_starts: list[tuple[float, str, int, int]] = field(default_factory=list)  # (t, job, step, attempt)
    # (job, attempt) -> agent calls in progress. By attempt: a killed process's call never leaves
    # (its greenlet is dropped, not unwound), and only the current attempt's calls run in its slot.
    inside: dict[tuple[str, int], int] = field(default_factory=dict)
    first_start: dict[str, float] = field(default_factory=dict)  # job -> when the agent first ran


class SimAgent:
    """An ``Agent`` whose every call takes virtual time from its script."""

    def __init__(self, clock: Clock, observer: Observer, on_enter: Any, on_going: Any = None) -> None:
        self.clock = clock
        self.seen = observer
        # Called with (job_id, user_id, step index or 0, attempt) as a call starts: the invariants' hook.
        self.on_enter = on_enter
        # Called with (job_id, attempt, where, at) when the job went on at ``at`` with no cancel
        # seen: a step's ``ctx.cancelled()`` asked then answered False, or the runner took the reply
        # chunk yielded then (it checks the cancel before it takes each one, so after ``at``).
        self.on_going = on_going

    def _going(self, ctx: AgentContext, where: str, at: float) -> None:
        if self.on_going is not None:
            self.on_going(ctx.job_id, ctx.attempt, where, at)

    def _cancelled(self, ctx: AgentContext) -> bool:
        at = self.clock.monotonic()
        if ctx.cancelled():
            return True
        self._going(ctx, "a step", at)
        return False

    @staticmethod
    def expected_seconds(part: str, step: PlanStep | None) -> float:
        """The runner's time budget asks how long a part takes: a step its scripted length (the
        plan keeps it), thinking and the reply their longest (``World._message`` draws them)."""
        if part == "step":
            return float(step.spec.get("seconds", 4.0)) + 0.5 if step is not None else 4.5
        return 3.0 if part == "think" else 1.5

    def _enter(self, ctx: AgentContext, step: int = 0, *, start: bool = True) -> None:
        """A call into the agent begins (``start``: the runner's call, not the same step going on
        after its question was answered: only a start is held to the boundary checks)."""
        self.seen.first_start.setdefault(ctx.job_id, self.clock.monotonic())
        if start:
            self.on_enter(ctx.job_id, ctx.user_id, step, ctx.attempt)
        key = (ctx.job_id, ctx.attempt)
        self.seen.inside[key] = self.seen.inside.get(key, 0) + 1

    def _leave(self, ctx: AgentContext) -> None:
        self.seen.inside[(ctx.job_id, ctx.attempt)] -= 1

    def think(self, ctx: AgentContext) -> Plan:
        s = script(ctx.message)
        self._enter(ctx)
        try:
            self.clock.sleep(s.get("think", 1.0))
            n = int(s.get("steps", 2))
            return Plan([PlanStep(i, f"step {i}", {"seconds": s.get("step", 1.0)}) for i in range(1, n + 1)])
        finally:
            self._leave(ctx)

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        s = script(ctx.message)
        started = False
        if int(s.get("ask", 0)) == step.index:
            if s.get("ask_after", 0.0):
                self._enter(ctx, step.index)  # looks around first, then asks (before any side effect)
                started = True
                try:
                    self.clock.sleep(s["ask_after"])
                finally:
                    self._leave(ctx)
            ctx.ask(f"May I use the pantry for step {step.index}?", "confirm")
        self._enter(ctx, step.index, start=not started)
        try:
            self.seen.step_starts.append((self.clock.monotonic(), ctx.job_id, step.index, ctx.attempt))
            if int(s.get("flaky", 0)) == step.index and ctx.attempt == 1:
                self.clock.sleep(0.2)
                raise RetryableAgentError("the tool was busy", code="tool_busy")
            left = float(step.spec.get("seconds", 1.0))
            while left > 0 and not self._cancelled(ctx):
                self.clock.sleep(min(left, 0.5))
                left -= 0.5
            return {"step": step.index}
        finally:
            self._leave(ctx)

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        s = script(ctx.message)
        self._enter(ctx)
        try:
            for n in range(int(s.get("chunks", 6))):
                self.clock.sleep(0.15)
                at = self.clock.monotonic()
                yield f"part {n} of the answer. "
                self._going(ctx, "the reply", at)
        finally:
            self._leave(ctx)
