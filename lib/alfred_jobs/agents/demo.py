"""The demo agent: a deterministic recipe assistant.

Each step takes ``ALFRED_DEMO_STEP_SECONDS`` and first writes a real side-effect item keyed by
job id + step index (an atomic counter), so "a completed step never runs twice" can be checked
by counting. Directives in the message steer it, for demos and tests:

- ``[steps=N]``: plan N steps (1-20, default 5)
- ``[fail]``: every attempt fails in step 2 with a retryable error (a poison job)
- ``[fatal]``: step 1 fails with a terminal error
- ``[flaky=K]``: step K fails on the first attempt only
- ``[flaky-reply]``: the reply fails on the first attempt, after its text has started

A message that mentions the pantry makes step 1 ("Check the pantry") ask ``confirm`` before it
changes the pantry (``PANTRY_QUESTION``): yes, it uses the chicken; no, it leaves the pantry be and
the reply says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from alfred_jobs.agents.demo_text import reply_text
from alfred_jobs.agents.steering import MEAT_FREE, steer_note, with_steers
from alfred_jobs.clock import Clock, SystemClock
from alfred_jobs.domain.agent import AgentContext, Plan, PlanStep
from alfred_jobs.domain.retention import expiry
from alfred_jobs.exceptions import RetryableAgentError, TerminalAgentError
from alfred_jobs.ports import AgentDataStore
from alfred_jobs.settings import Settings

LABELS = [
    "Check the pantry", "Search recipes", "Compare recipes", "Build the shopping list",
    "Plan the cooking steps", "Estimate nutrition", "Check cooking times", "Suggest wine pairings",
    "Find substitutions", "Scale the portions", "Check for allergens", "Sort the shopping list by aisle",
    "Time the prep", "Pick side dishes", "Check the oven plan", "Suggest leftovers",
    "Write storage tips", "Check seasonality", "Estimate the cost", "Plan the plating",
]
PANTRY_QUESTION = "Use the 2 lb of chicken from your pantry?"
STOP_WORDS = {"a", "an", "the", "with", "for", "me", "some", "find", "using", "please", "and", "to", "of",
              "make", "i", "what", "can", "recipes", "recipe", "give", "show", "my"}


def _directive(message: str, name: str) -> str | None:
    m = re.search(rf"\[{name}(?:=(\d+))?\]", message)
    if m is None:
        return None
    return m.group(1) or ""


class DemoAgent:
    """Deterministic Think → Act → Reply for demos and tests, paced by ``clock`` (``build_agent``
    passes the process's, ``deps.clock``: under the simulator a step takes virtual time)."""

    def __init__(self, data: AgentDataStore, settings: Settings, clock: Clock | None = None) -> None:
        self.data = data
        self.settings = settings
        self.step_seconds = settings.demo_step_seconds
        self.clock = clock or SystemClock()

    def _sleep(self, seconds: float, ctx: AgentContext) -> None:
        """Sleep, waking early on cancel (so cancel stops a long step's wait, not its side effect)."""
        deadline = self.clock.monotonic() + seconds
        while (left := deadline - self.clock.monotonic()) > 0:
            if ctx.cancelled():
                return
            self.clock.sleep(min(left, 0.05))

    def _pace(self, ctx: AgentContext) -> float:
        """Seconds per step: ``[pace=N]`` in the message overrides the setting for that job (a test
        that must act while a job runs makes it slow enough, whatever the machine's load)."""
        pace = _directive(ctx.message, "pace")
        return float(pace) if pace else self.step_seconds

    def think(self, ctx: AgentContext) -> Plan:
        self._sleep(self.step_seconds / 2, ctx)
        raw = _directive(ctx.message, "steps")
        n = max(1, min(20, int(raw))) if raw else 5
        # A job's own pace goes with its plan (kept in the log): ``expected_seconds`` reads it.
        spec = {"seconds": self._pace(ctx)} if _directive(ctx.message, "pace") else {}
        return Plan([PlanStep(i, LABELS[i - 1], dict(spec)) for i in range(1, n + 1)])

    def expected_seconds(self, part: str, step: PlanStep | None) -> float:
        """How long a part takes (the runner's time budget, ``durability/budget.py``): a step its
        pace, thinking and the reply half a step each (a second more for the writes between)."""
        if part == "step":
            pace = step.spec.get("seconds") if step is not None else None
            return float(pace) if pace is not None else self.step_seconds
        return self.step_seconds / 2 + 1.0

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        pantry: str | None = None
        if step.index == 1 and "pantry" in ctx.message.lower():
            # Asked before the step's side effect: after the answer the step runs from its start.
            pantry = "used" if ctx.ask(PANTRY_QUESTION, "confirm") else "kept"
        runs = self.data.record_step_effect(ctx.job_id, step.index, ctx.attempt,
                                            {"label": step.label, "key": ctx.idempotency_key(step.index)},
                                            ctx.expires_at or expiry(self.clock.now(), self.settings.retention_seconds))
        if _directive(ctx.message, "fatal") is not None and step.index == 1:
            raise TerminalAgentError("the recipe service refused this request", code="recipe_refused")
        if _directive(ctx.message, "fail") is not None and step.index == min(2, len(LABELS)):
            raise RetryableAgentError("the recipe service is not answering", code="recipe_unavailable")
        flaky = _directive(ctx.message, "flaky")
        if flaky and int(flaky) == step.index and ctx.attempt == 1:
            raise RetryableAgentError("the recipe service timed out", code="recipe_timeout")
        self._sleep(self._pace(ctx), ctx)
        out: dict[str, Any] = {"step": step.index, "label": step.label,
                               "ingredients": _ingredients(with_steers(ctx.message, ctx.steers)), "runs": runs}
        if ctx.steers:
            out["steers"] = len(ctx.steers)  # the step was re-planned with what the user added
        if pantry is not None:
            out["pantry"] = pantry
        return out

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        first = ctx.step_outputs.get(1)
        pantry = first.get("pantry") if isinstance(first, dict) else None
        note = {"used": "I used the 2 lb of chicken from your pantry.",
                "kept": "I left your pantry as it was: the chicken is still there."}.get(pantry or "", "")
        if ctx.steers:  # re-planned with the steers: a meat-free request names no meat
            meat_free = any(MEAT_FREE.search(s) for s in ctx.steers)
            note = " ".join(n for n in ("" if meat_free else note, steer_note(ctx.steers)) if n)
        text = reply_text(with_steers(ctx.message, ctx.steers), note)
        # Streamed a few words at a time; a chunk never ends mid-word.
        words = re.split(r"(?<=[ \n])", text)
        pause = (self.step_seconds / 2) / max(1, len(words))
        for i, word in enumerate(words):
            if ctx.cancelled():
                return
            if (_directive(ctx.message, "flaky-reply") is not None and ctx.attempt == 1
                    and i == len(words) // 2):
                raise RetryableAgentError("the connection to the writer dropped", code="reply_interrupted")
            yield word
            if pause:
                self._sleep(pause, ctx)


def _ingredients(message: str) -> list[str]:
    words = re.findall(r"[a-zA-Z]+", re.sub(r"\[[^\]]*\]", " ", message).lower())
    return [w for w in words if w not in STOP_WORDS and len(w) > 2][:3]
