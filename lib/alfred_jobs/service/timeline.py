"""A job's timeline (SPEC "A job's timeline"): its log folded into attempts, spans and totals.

A pure function of the job record and its whole log (read strongly consistent by the caller), the
model prices and the time now: the same log gives the same timeline.

The spans tile the job's life, one after the other: ``queued`` (created, not yet picked up; and
between an answer or a hand-off and the attempt that goes on), ``think`` (from an attempt's first
event to the plan), ``step`` (from its start, a ``started`` event or the ``next`` of the event
before, to its ``completed`` event), ``waiting`` (a question to its answer), ``backoff`` (a
retryable failure to the next attempt) and ``reply`` (``phase: reply`` to the end). A span still
open has ``ended_at`` null (the job is active) and is counted up to ``now`` in the totals.

How an attempt ended, read from the log alone:

- ``completed`` / ``failed`` / ``cancelled``: its terminal event, or (``failed``) its ``status:
  pending`` carrying the error of a retry, after which a ``backoff`` span runs;
- ``handed_on``: its ``status: pending`` with no error (out of invocation time, runner.py);
- ``waiting``: its ``input_required`` (the attempt ends there; the job waits holding nothing);
- ``crashed``: a ``resumed`` opened the next attempt while this one had written no end. Its worker
  died, or was paused or cut off past its lease: a worker fenced out writes nothing more (the log is
  the fence), so the log cannot tell it from a dead one, and both read ``crashed``. It ends, and
  its unfinished span with it, where the next attempt took over (its last write is
  ``last_event_at``): the time between is what the crash cost.
- ``fenced``: an attempt still open (no end of its own) when another writer put the job's terminal
  event (the API or the sweeper ending a job whose lease had run out). Rare by construction: they
  end only jobs whose log says pending or waiting, so this reads a log that a racing ender left.

Events of a type the fold does not know (a newer writer's, e.g. ``steered``) are passed over.
Usage: the ``usage`` of a ``plan``, completed ``step``, ``complete`` or ``cancelled`` event is its
span's, priced at ``prices`` (by model id, or the id without its geographic prefix); a model with
no price has no ``cost_usd``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alfred_jobs.domain.events import (
    CancelledPayload,
    CompletePayload,
    EventType,
    FailedPayload,
    InputReceivedPayload,
    InputRequiredPayload,
    PhasePayload,
    PlanPayload,
    ResumedPayload,
    StatusPayload,
    StepPayload,
    Usage,
    iso,
)
from alfred_jobs.domain.models import Event, Job, JobStatus
from alfred_jobs.settings import ModelPrice

KNOWN_TYPES = frozenset(str(t) for t in EventType)
GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.")
CANCEL_REQUESTED = "requested"  # the reason of a cancel the owner asked for (Stop, ``cancel``)


def price_of(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model``: listed as it is, or without its geographic inference-profile prefix."""
    if model in prices:
        return prices[model]
    bare = _bare(model)
    return next((p for m, p in prices.items() if _bare(m) == bare), None)


def _bare(model: str) -> str:
    return next((model[len(g):] for g in GEO_PREFIXES if model.startswith(g)), model)


def cost_usd(usage: Usage, prices: Mapping[str, ModelPrice]) -> float | None:
    """What ``usage`` cost at ``prices`` (None if its model has no price)."""
    price = price_of(usage.model, prices)
    if price is None:
        return None
    return (usage.input_tokens * price.input + usage.output_tokens * price.output
            + usage.cache_read_tokens * price.cache_read + usage.cache_write_tokens * price.cache_write) / 1e6


@dataclass
class _Span:
    kind: str
    attempt: int
    started_at: float
    index: int | None = None
    label: str | None = None
    ended_at: float | None = None
    usage: Usage | None = None


@dataclass
class _Attempt:
    attempt: int
    started_at: float
    ended_at: float | None = None
    ended: str | None = None
    last_event_at: float | None = None
    writer: str = ""  # who wrote its first event (its lease token)


@dataclass
class _Fold:
    """The fold's state, event after event."""

    now: float
    spans: list[_Span] = field(default_factory=list)
    attempts: list[_Attempt] = field(default_factory=list)
    cancel: dict[str, Any] | None = None
    plan: list[tuple[int, str]] = field(default_factory=list)  # (index, label)
    started: set[int] = field(default_factory=set)
    completed: set[int] = field(default_factory=set)
    replying: bool = False

    @property
    def open_span(self) -> _Span | None:
        span = self.spans[-1] if self.spans else None
        return span if span is not None and span.ended_at is None else None

    @property
    def open_attempt(self) -> _Attempt | None:
        a = self.attempts[-1] if self.attempts else None
        return a if a is not None and a.ended is None else None

    def close_span(self, at: float, usage: Usage | None = None) -> None:
        span = self.open_span
        if span is not None:
            span.ended_at = at
            if usage is not None:
                span.usage = usage if span.usage is None else span.usage.plus(usage)

    def open(self, kind: str, attempt: int, at: float, index: int | None = None, label: str | None = None) -> None:
        self.close_span(at)
        self.spans.append(_Span(kind, attempt, at, index, label))

    def end_attempt(self, at: float, how: str) -> None:
        a = self.open_attempt
        if a is not None:
            a.ended_at, a.ended = at, how

    def label_of(self, index: int) -> str | None:
        return next((label for i, label in self.plan if i == index), None)

    def start_attempt(self, attempt: int, at: float, writer: str) -> None:
        """A new attempt: the one still open (no end in the log) crashed; a span opened for the
        attempt to come (queued, backoff) is now known to precede this one."""
        if self.open_attempt is not None:
            self.end_attempt(at, "crashed")
        span = self.open_span
        if span is not None and span.kind == "queued":
            span.attempt = attempt
        self.attempts.append(_Attempt(attempt, at, writer=writer))

    def resume_where_log_is(self, attempt: int, at: float) -> None:
        """After ``resumed``, the attempt goes on where the log is (runner.py, ``_execute``): it
        thinks if nothing is planned; a step started and not completed runs again with no new
        ``started`` event, and a reply begun goes on with no new ``phase`` event."""
        if not self.plan:
            self.open("think", attempt, at)
            return
        todo = [(i, label) for i, label in self.plan if i not in self.completed]
        if todo and todo[0][0] in self.started:
            self.open("step", attempt, at, todo[0][0], todo[0][1])
        elif not todo and self.replying:
            self.open("reply", attempt, at)
        else:
            self.close_span(at)  # the next step's ``started`` or ``phase: reply`` opens what comes

    def take(self, ev: Event) -> None:
        """Fold one event."""
        at = ev.ts
        a = self.open_attempt
        if a is not None and ev.attempt == a.attempt:
            a.last_event_at = at
        p = ev.payload
        if isinstance(p, StatusPayload):
            if p.status is JobStatus.RUNNING:
                self.start_attempt(ev.attempt, at, ev.writer)
                self.open("think", ev.attempt, at)
            elif p.status is JobStatus.PENDING:
                retry = p.error is not None
                self.end_attempt(at, "failed" if retry else "handed_on")
                self.open("backoff" if retry else "queued", ev.attempt if retry else ev.attempt + 1, at)
        elif isinstance(p, ResumedPayload):
            self.start_attempt(p.attempt, at, ev.writer)
            self.resume_where_log_is(p.attempt, at)
        elif isinstance(p, PlanPayload):
            self.plan = [(s.index, s.label) for s in p.steps]
            self.close_span(at, p.usage)
            if p.next is not None:
                self.started.add(p.next.index)
                self.open("step", ev.attempt, at, p.next.index, p.next.label)
        elif isinstance(p, StepPayload):
            if p.completed:
                self.completed.add(p.index)
                self.close_span(at, p.usage)
                if p.next is not None:
                    self.started.add(p.next.index)
                    self.open("step", ev.attempt, at, p.next.index, p.next.label)
            else:
                self.started.add(p.index)
                self.open("step", ev.attempt, at, p.index, p.label or self.label_of(p.index))
        elif isinstance(p, PhasePayload):
            if p.phase == "reply":
                self.replying = True
                self.open("reply", ev.attempt, at)
            elif p.phase == "think" and self.open_span is None:
                self.open("think", ev.attempt, at)
        elif isinstance(p, InputRequiredPayload):
            self.end_attempt(at, "waiting")
            self.open("waiting", ev.attempt, at)
        elif isinstance(p, InputReceivedPayload):
            self.open("queued", ev.attempt + 1, at)
        elif isinstance(p, (CompletePayload, FailedPayload, CancelledPayload)):
            usage = p.usage if isinstance(p, (CompletePayload, CancelledPayload)) else None
            self.close_span(at, usage)
            how = {EventType.COMPLETE: "completed", EventType.FAILED: "failed"}.get(ev.type, "cancelled")
            a = self.open_attempt
            if a is not None and a.writer and ev.writer and ev.writer != a.writer:
                how = "fenced"
            self.end_attempt(at, how)
            if isinstance(p, CancelledPayload):
                self.cancel = {"reason": p.reason or CANCEL_REQUESTED, **({"by": p.by} if p.by else {})}
        # delta: nothing to fold (the reply span runs on)


def timeline(job: Job, events: Sequence[Event], prices: Mapping[str, ModelPrice], now: float) -> dict[str, Any]:
    """The job's timeline (SPEC's object) from its record and its whole log, oldest event first."""
    f = _Fold(now=now)
    f.spans.append(_Span("queued", 1, job.created_at))
    for ev in events:
        if str(ev.type) in KNOWN_TYPES:
            f.take(ev)
    end = job.completed_at if job.status.terminal and job.completed_at else now
    if job.status.terminal:
        f.close_span(end)

    def seconds(span: _Span) -> float:
        return max(0.0, (span.ended_at if span.ended_at is not None else end) - span.started_at)

    total_usage: Usage | None = None
    total_cost = 0.0
    spans_out: list[dict[str, Any]] = []
    for span in f.spans:
        out: dict[str, Any] = {"kind": span.kind}
        if span.index is not None:
            out["index"] = span.index
            out["label"] = span.label
        out.update(attempt=span.attempt, started_at=iso(span.started_at),
                   ended_at=iso(span.ended_at) if span.ended_at is not None else None,
                   duration_s=round(seconds(span), 3))
        if span.usage is not None:
            out["usage"] = span.usage.full()
            cost = cost_usd(span.usage, prices)
            if cost is not None:
                out["cost_usd"] = round(cost, 6)
                total_cost += cost
            total_usage = span.usage if total_usage is None else total_usage.plus(span.usage)
        spans_out.append(out)
    result: dict[str, Any] = {
        "job_id": job.job_id,
        "status": str(job.status),
        "attempts": [{"attempt": a.attempt, "started_at": iso(a.started_at),
                      "ended_at": iso(a.ended_at) if a.ended_at is not None else None, "ended": a.ended,
                      **({"last_event_at": iso(a.last_event_at)} if a.ended == "crashed" and a.last_event_at
                         else {})}
                     for a in f.attempts],
        "spans": spans_out,
        "totals": {
            "wall_s": round(max(0.0, end - job.created_at), 3),
            "queued_s": round(sum(seconds(s) for s in f.spans if s.kind == "queued"), 3),
            "waiting_s": round(sum(seconds(s) for s in f.spans if s.kind == "waiting"), 3),
            "usage": (total_usage or Usage()).full(),
            "cost_usd": round(total_cost, 6),
        },
    }
    if f.cancel is not None:
        result["cancel"] = f.cancel
    return result
