"""The runner: runs one delivery of a job through the agent, owning every durability concern.

One attempt, in order:
1. Take the job's lease (conditional update; a live lease elsewhere means this delivery is a
   duplicate and is dropped). A ``LeaseKeeper`` task renews it, extends the message's
   visibility, refreshes the job record's projection and watches for a cancel request.
2. Read the whole log. A terminal event means an earlier attempt finished: only finalize.
3. Put ``status: running`` (first attempt) or ``resumed`` (later ones) at the head of the log.
   From that moment any older owner is fenced out (see journal.py).
4. Think (unless a plan is recorded), act on every step not recorded as completed (recorded
   outputs are handed back to the agent), stream the reply as coalesced deltas, put ``complete``.
5. Finalize: commit the conversation turn from the stored terminal event, then project the job
   record as terminal (which takes it off the sweeper's index, so a crash in between is repaired).

Failures: a retryable error puts ``status: pending`` with the backoff, releases the lease and
asks for redelivery after the backoff; the last allowed attempt, or a terminal error, puts
``failed`` and parks the message in the dead-letter queue.

The invocation's time (``Delivery.deadline``, see budget.py): before a step (or the reply) it
could not finish with a margin, the attempt ends at the boundary and hands the job on at once
(``_hand_on``): ``status: pending`` with no error (the hand-off's mark in the log), the lease
released, a new message sent, this one deleted. A hand-off is no failure: ``max_attempts``
bounds the attempts that were not handed on (``LogState.handed_on`` counts the marks), so a
long job may take any number of invocations. Every attempt still counts in ``attempts``: the
attempt number is the fence of the gate's slot and of every event, and must only grow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, cast

from alfred_jobs.clock import Pending
from alfred_jobs.domain.agent import Agent, AgentContext, Plan, PlanStep
from alfred_jobs.domain.events import (
    CancelledPayload,
    CompletePayload,
    DeltaPayload,
    ErrorInfo,
    FailedPayload,
    InputKind,
    InputRequiredPayload,
    NextStep,
    Payload,
    PhasePayload,
    PlanPayload,
    ResumedPayload,
    StatusPayload,
    SteeredPayload,
    StepPayload,
    Usage,
    apply_delta,
    parse_iso,
    replay,
)
from alfred_jobs.domain.models import (
    Event,
    EventType,
    Job,
    JobStatus,
    Progress,
    Steer,
    conversation_title,
    fold,
    iso,
    refold,
)
from alfred_jobs.domain.push import PushMessage, preview
from alfred_jobs.durability.admission import Admission, Verdict
from alfred_jobs.durability.budget import Part, expected_seconds, fits
from alfred_jobs.durability.ending import end_if_cancelled
from alfred_jobs.durability.journal import Journal
from alfred_jobs.durability.lease import LeaseKeeper
from alfred_jobs.exceptions import (
    AgentError,
    ConditionFailed,
    Fenced,
    GateFull,
    LeaseHeld,
    SlotTaken,
    StoreError,
    TerminalAgentError,
    TransientStoreError,
)
from alfred_jobs.observability import bind_job, clear_job, count, get_logger
from alfred_jobs.ports import Deps

log = get_logger()


@dataclass(frozen=True)
class Delivery:
    """One queue message asking for a job to run."""

    job_id: str
    receipt_handle: str | None = None
    receive_count: int = 1
    body: str = ""
    # Its sender found it the next to start in its conversation (see ``Admission.take``); a
    # message without it (a stray, a hand-made one) is checked against the gate first.
    next_up: bool = False
    # When the invocation's time is up, on ``deps.clock.monotonic()`` (None: no budget).
    deadline: float | None = None


class Outcome(StrEnum):
    DONE = "done"          # the job is terminal: delete the message
    DROPPED = "dropped"    # someone else owns the job (duplicate or fenced): delete the message
    HANDED_ON = "handed_on"  # out of time: a new message carries the job on; delete this one
    RETRY = "retry"        # try again after ``retry_after`` seconds: keep the message


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    reason: str = ""
    retry_after: int = 0
    status: JobStatus | None = None


class _AskUser(BaseException):  # not an Exception: no agent's ``except Exception`` may eat it
    """Internal: the agent asked the user; the attempt ends with the job waiting for the answer."""


class _Ended(Exception):
    """Internal: the job turned out to be ended already (by the API) before this attempt began."""


class _HandOn(Exception):
    """Internal: the invocation's time is nearly up; end the attempt here and hand the job on."""


class _Stop(Exception):
    """Internal: leave the attempt with this result."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.reason)
        self.result = result


def finished_message(job: Job, term: Event) -> PushMessage:
    """The push for a job's end: what the user would want on a locked screen."""
    p = term.payload
    if isinstance(p, CompletePayload):
        title, body = "Alfred finished", p.reply
    elif isinstance(p, FailedPayload):
        title, body = "Alfred could not finish", p.error.message
    else:
        title, body = "Alfred stopped", "Cancelled."
    body = body if len(body) <= 160 else body[:157].rstrip() + "…"
    return PushMessage(job_id=job.job_id, status=str(job.status), seq=term.seq, title=title, body=body)


class JobRunner:
    """Runs deliveries of jobs with one agent."""

    def __init__(self, deps: Deps, agent: Agent) -> None:
        self.deps = deps
        self.agent = agent
        self.settings = deps.settings
        self.journal = Journal(deps.log, deps.settings.retention_seconds)
        self.admission = Admission(deps)

    def run(self, delivery: Delivery) -> RunResult:
        """Run (or resume, or finish) the job of one delivery; tells the caller what to do with it."""
        bind_job(job_id=delivery.job_id)
        try:
            return self._run(delivery)
        finally:
            clear_job()

    def _run(self, delivery: Delivery) -> RunResult:
        s = self.settings
        owner = self.deps.new_id()
        sent = self.deps.clock.monotonic()  # what the take reads was true from then on
        try:
            # The conditional update is also the read: a finished, expired or unknown job fails it.
            job = self.deps.jobs.acquire_lease(delivery.job_id, owner, self.deps.clock.now(), s.lease_seconds)
        except LeaseHeld:
            count("DuplicateDeliveries")
            return RunResult(Outcome.DROPPED, "held by a live worker")
        except ConditionFailed:
            return RunResult(Outcome.DONE, "finished, expired or unknown")
        except TransientStoreError:
            return self._not_taken(delivery.job_id, owner)
        bind_job(job_id=job.job_id, attempt=job.attempts, user=job.user_id)
        attempt = _Attempt(self, job, owner, delivery, taken_at=sent)
        try:
            return attempt.run()
        finally:
            attempt.settle_behind()
            attempt.keeper.stop()


    def _not_taken(self, job_id: str, owner: str) -> RunResult:
        """The store did not answer the lease's take: it may have landed (its answer lost) or not.
        Let a lease of ours go, if there is one (the release is conditional on its owner), and let
        the message come back in a second. Raised out of here, the delivery would fail and its
        message come back only after the queue's visibility timeout, 12 minutes, while a busy
        queue's backlog lets the sweeper presume it queued (sim seed 62986 at 8f2ca27). Should the
        release fail too, a lease of ours may be live: the message comes back once it ran out."""
        s = self.settings
        try:
            self.deps.jobs.release_lease(job_id, owner, self.deps.clock.now() + s.pending_grace_seconds,
                                         undo_attempt=True)
        except StoreError:
            return RunResult(Outcome.RETRY, "store_unavailable", retry_after=int(s.lease_seconds) + 1)
        return RunResult(Outcome.RETRY, "store_unavailable", retry_after=1)


class _Attempt:
    """One attempt at one job: owns the in-memory copy of the log and the lease keeper."""

    def __init__(self, runner: JobRunner, job: Job, owner: str, delivery: Delivery,
                 taken_at: float | None = None) -> None:
        self.r = runner
        self.deps = runner.deps
        self.clock = runner.deps.clock
        self.s = runner.settings
        self.agent = runner.agent
        self.journal = runner.journal
        self.job = job
        self.owner = owner
        self.delivery = delivery
        self.attempt = job.attempts
        self.events: list[Event] = []
        self.view = job  # job record folded with every event we know of
        self._step = 0  # where the agent is: 0 thinking, a step's index while acting, past them replying
        self._asks: dict[int, int] = {}  # questions asked so far in each step (their input ids)
        self._history: Pending[list[dict[str, Any]]] | None = None
        self._projection: Pending[None] | None = None
        self._behind: Pending[Event] | None = None  # the one write still in flight (append_behind)
        self._worked = False  # whether this attempt has done a part (think, a step): see ``_fits``
        self._usage: Usage | None = None  # the current part's model calls (``_meter``), not yet recorded
        self._reply_so_far = ""  # the reply text the agent gave this attempt (a cancel keeps it)
        self.keeper = LeaseKeeper(self.deps, job.job_id, owner, job.lease_expires, delivery.receipt_handle,
                                  self._state, job.cancel_requested, job.cancel_by, job.steers,
                                  read_at=taken_at)
        self._ctx: AgentContext | None = None  # the agent's context, once it has one (steers go in it)
        self._sealed = False  # this attempt closed the reply door (``_seal``): it stays closed

    # ---- plumbing -----------------------------------------------------------------------

    def _state(self) -> tuple[int, JobStatus, Progress]:
        v = self.view
        return v.last_seq, v.status, v.progress

    @property
    def head(self) -> int:
        return self.events[-1].seq if self.events else 0

    def _load(self) -> None:
        self.settle_behind()
        self.events = self.journal.read_all(self.job.job_id, known_head=self.job.last_seq)
        self._within_retention()
        self.view = refold(self.job, self.events)

    def _within_retention(self) -> None:
        """Stop if the job's retention is over: the job and its events are gone.

        The lease can be taken a moment before retention ends (the condition compares our own
        clock's time), and every read after it then finds the log empty: an attempt that took that
        for a fresh job would run completed steps again (sim seed 9620). Checked after the history
        read (a read answered before this instant saw the whole log) and at every boundary. The
        job's place in the user's gate is handed on, as at any end.
        """
        if self.clock.now() < self.job.expires_at:
            return
        count("JobsPastRetention")
        log.warning("retention is over: the job is gone", extra={"job_id": self.job.job_id})
        self.keeper.stop()
        try:
            self.r.admission.release(self.view, attempt=self.attempt)
        except (Fenced, StoreError):
            pass  # a later attempt holds it, or the store fails: the gate's own expiry frees it
        raise _Stop(RunResult(Outcome.DONE, "past its retention"))

    def _first_load(self) -> None:
        """The log as this attempt starts. A first attempt (``attempts`` is 1: no attempt before it
        took the lease, and one that gave its delivery back undid its count before any event) of a
        job whose record projects no event finds an empty log, and does not read it. The one writer
        of a job's log without its lease, the API ending a job nobody holds, projects its terminal
        event; if it died before that projection, our first event's put meets its event in slot 1
        (``SlotTaken``, terminal) and we finalize it then."""
        if self.attempt == 1 and self.job.last_seq == 0:
            self.events, self.view = [], refold(self.job, [])
            return
        self._load()

    def _in_background(self, fn: Callable[..., Any], *args: Any) -> Pending[Any]:
        """Reads and projections the attempt does not wait for (the conversation's history while
        the slot is taken, the first projection while the agent thinks, the write behind), on the
        process's tasks (``deps.tasks``)."""
        return self.deps.tasks.submit(fn, *args)

    def _project(self, job: Job) -> None:
        self.deps.jobs.save_projection(job, owner=self.owner)

    def _settle_projection(self) -> None:
        """Wait for the first projection (running in the background) before a later one is
        written: projections only move forward, and a stale one failing its condition is fine."""
        future, self._projection = self._projection, None
        if future is not None:
            try:
                future.result()
            except (Fenced, StoreError) as exc:
                # A later projection (the keeper's renewal) is there, or the store failed: the
                # keeper's next renewal projects the same state; the fence is the log, not this.
                log.info("first projection not written", extra={"job_id": self.job.job_id, "error": str(exc)})

    def append(self, payload: Payload) -> Event:
        """Checkpoint: one conditional PutItem at the head of the log, after the write still
        behind (``append_behind``), if any. A terminal event closes the reply door first."""
        self._drain()
        if payload.event_type in (EventType.COMPLETE, EventType.FAILED, EventType.CANCELLED):
            self._seal()
        return self._put(payload)

    def append_behind(self, payload: Payload) -> None:
        """The same put, written while the agent goes on: for events that fence nothing (the reply
        phase and the reply's deltas: no side effect follows them). At most one is in flight, and
        every later append waits for it first, so the log is written in order; its failure is
        raised there, as the put's own would have been. A put that failed added nothing to
        ``events``, so the next one takes its seq: no gap."""
        self._drain()
        self._behind = self._in_background(self._put, payload)

    def _drain(self) -> None:
        pending, self._behind = self._behind, None
        if pending is not None:
            pending.result()

    def settle_behind(self) -> None:
        """Wait for the write behind, whatever became of it: before the log is read afresh (the
        read supersedes it), and before the attempt returns (nothing of it may land later)."""
        pending, self._behind = self._behind, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # its failure is already what the caller is handling
                log.info("a write behind failed", extra={"job_id": self.job.job_id})

    def _put(self, payload: Payload) -> Event:
        if self.keeper.lost:
            raise Fenced(self.job.job_id)
        if self.events and self.events[-1].terminal:
            raise AssertionError("nothing may follow a terminal event")  # guarantee 2, by construction
        ev = Event.of(self.head + 1, payload, attempt=self.attempt, writer=self.owner, at=self.clock.now())
        self.journal.append(self.job.job_id, ev, self.job.expires_at)
        self.events.append(ev)
        self.view = fold(self.view, [ev])
        return ev

    def boundary(self) -> None:
        """A step boundary: record the new steers, then stop here if fenced, past retention or
        cancelled. The steers first: their writes can take any time (a paused process), and the
        checks must be the last thing before the agent goes on (sim seed 1183, when they came
        before: a worker frozen for two minutes in a ``steered`` put woke and started thinking,
        its lease long gone and its job cancelled)."""
        self._record_steers(self.keeper.steers)  # its puts are fenced like every other write
        if self.keeper.lost:
            raise Fenced(self.job.job_id)
        self._within_retention()
        if self.keeper.cancel_seen():
            self.finish(self._cancelled())

    # ---- steering: the reply door (docs/architecture.md, "Steering") ---------------------------

    def _steered_ids(self) -> set[str]:
        return {e.data["message_id"] for e in self.events if e.type is EventType.STEERED}

    def _record_steers(self, steers: tuple[Steer, ...]) -> None:
        """Put a ``steered`` event for each steer on the record not yet in the log, in the order
        they landed, and show them to the agent (``ctx.steers``)."""
        recorded = self._steered_ids()
        new = [st for st in steers if st.message_id not in recorded]
        if not new:
            return
        self._drain()
        for st in new:
            self._put(SteeredPayload(message_id=st.message_id, text=st.text))
            if self._ctx is not None:
                self._ctx.steers.append(st.text)
        count("SteersRecorded", len(new))

    def _seal(self) -> None:
        """Close the job's reply door before ``phase: reply`` or a terminal event: from then on no
        steer can join the job (``JobStore.steer`` refuses it, and it becomes a new job).

        The close is conditional on the number of steers the record holds: "closed, having seen
        these". If a steer slipped in since the keeper last read the record, it fails; the record
        is read (strongly consistent), the new steers recorded as ``steered`` events (the agent
        sees them), and the close tried again. So every steer that landed precedes the reply in
        the log. Only the lease's owner closes it: a fenced attempt cannot close the door for the
        new owner (nor record steers: the log's slots fence those). A door closed already (a
        resumed attempt, the SDK's retry of our own close) closes again with the same count.

        Once this attempt has closed it (or seen it closed, its steers recorded), the terminal
        event's seal is not written again: a door never opens again and no steer lands past it, so
        the second close would find the same count and change nothing. One write less on the path
        from the reply to the terminal event (issue 28); the terminal put stays fenced by its slot
        and by ``keeper.lost``, as every put is."""
        if self._sealed:
            return
        known = self.keeper.steers
        for _ in range(self.s.max_steers_per_job + 3):
            self._record_steers(known)
            if self.deps.jobs.close_door(self.job.job_id, len(known), owner=self.owner) is not None:
                self._sealed = True
                return
            rec = self.deps.jobs.get(self.job.job_id)  # strongly consistent
            if rec is None or rec.lease_owner != self.owner:
                raise Fenced(self.job.job_id)
            known = rec.steers
            if rec.door_closed:  # closed by an ender that then lost the log's slot to us
                self._record_steers(known)
                self._sealed = True
                return
        raise TransientStoreError(f"could not close the reply door of {self.job.job_id}")

    def _fits(self, part: Part, step: PlanStep | None = None) -> bool:
        """Whether ``part`` can finish, with the margin to hand on, in the invocation's time.

        An attempt that has done nothing yet always goes on: its invocation has all the time it
        will ever have (a record is not started late in a batch, ``entry/worker.py``), and a part
        longer than a whole invocation must still run somewhere, or the job would be handed on for
        ever. Such a part risks the timeout, as every part did before there was a budget."""
        if not self._worked:
            return True
        return fits(self.clock, self.delivery.deadline,
                    expected_seconds(self.agent, self.s, part, step), self.s.handoff_margin_seconds)

    def _within_budget(self, part: Part, step: PlanStep | None = None) -> None:
        if not self._fits(part, step):
            raise _HandOn()

    def _tries(self) -> int:
        """This attempt's number among those not handed on: what ``max_attempts`` bounds."""
        return self.attempt - replay(self.events).handed_on

    def _to_stop(self) -> bool:
        """Whether the agent is to stop what it is doing (``ctx.cancelled()``, the reply's check
        before each chunk): a cancel is seen, or this attempt's lease is lost.

        The lost lease too, not only the cancel: a process paused past its lease wakes with its
        keeper's read long old, and the check then reads the record itself; a record gone past its
        retention reads as no record, and its cancel with it (sim seed 153439: a step went on 27 s
        after its cancel landed). An attempt whose lease is lost cannot record anything more (its
        writes are fenced), so nothing it does from here is the job's."""
        return self.keeper.lost or self.keeper.cancel_seen()

    def _cancelled(self) -> CancelledPayload:
        """The cancel, keeping the reply so far (this attempt's, or the one the log shows) and what
        the reply's calls were billed."""
        partial = self._reply_so_far or replay(self.events).partial_reply
        payload = CancelledPayload.interrupted_by(self.keeper.cancel_by, partial)
        usage = self._take_usage()
        if not usage:
            return payload
        return CancelledPayload.model_validate({**payload.to_data(), **usage})

    # ---- usage ----------------------------------------------------------------------------

    def _meter(self, call: dict[str, Any]) -> None:
        """``AgentContext.report_usage``: add one call to the current part's sum."""
        used = Usage.model_validate(call)
        self._usage = used if self._usage is None else self._usage.plus(used)

    def _new_part(self) -> None:
        """A part (think, a step, the reply) begins: calls reported before it are not its own."""
        self._usage = None

    def _take_usage(self) -> dict[str, Any]:
        """The current part's usage as an event's ``usage`` key (none if it made no model call)."""
        used, self._usage = self._usage, None
        return {"usage": used.full()} if used is not None else {}

    def finish(self, payload: Payload) -> None:
        self.append(payload)
        self.finalize()
        raise _Stop(RunResult(Outcome.DONE, str(payload.event_type), status=self.view.status))

    def finalize(self) -> None:
        """From the stored terminal event: commit the conversation turn (complete) or park the message
        in the dead-letter queue (failed); then project the record as terminal.

        Why parking is here, before the projection: if it fails, the record is still active, so the
        next delivery (or the sweeper's) finalizes again and parks again. Parked after the
        projection, a lost SendMessage would leave a failed job that is never parked (guarantee 8).
        """
        self.keeper.stop()
        self._settle_projection()
        term = self.events[-1]
        job = self.view
        outcome = term.payload
        if isinstance(outcome, CompletePayload):
            expires_at = self.journal.expires_at(self.clock.now())
            steered = tuple(replay(self.events).steered.values())  # both user turns, in order
            self.deps.conversations.commit_turn(job.user_id, job.conversation_id, job.job_id, job.message,
                                                outcome.reply, term.at, expires_at, steered)
            # Its place on the user's list (again: a submit's touch is best effort).
            self.deps.conversations.touch(job.user_id, job.conversation_id, term.at,
                                          conversation_title(job.message), expires_at)
        elif isinstance(outcome, CancelledPayload) and outcome.partial_reply:
            # Stop keeps the words: the reply so far is the turn's answer, marked stopped.
            expires_at = self.journal.expires_at(self.clock.now())
            steered = tuple(replay(self.events).steered.values())
            self.deps.conversations.commit_turn(job.user_id, job.conversation_id, job.job_id, job.message,
                                                outcome.partial_reply, term.at, expires_at, steered,
                                                stopped=True)
            self.deps.conversations.touch(job.user_id, job.conversation_id, term.at,
                                          conversation_title(job.message), expires_at)
        elif isinstance(outcome, FailedPayload):
            self.deps.queue.dead_letter(job.job_id, self.delivery.body or job.job_id, outcome.error.code)
        # Hand the job's place on before the terminal projection takes it off the sweeper's
        # index: a crash in between finalizes (and hands on) again (docs/architecture.md).
        try:
            self.r.admission.release(job, attempt=self.attempt)
        except Fenced:
            # A later attempt took the job over (and its slot): it meets the terminal event at its
            # next write and finalizes, or, dead, leaves the job on the index for the next one.
            count("Fenced")
            log.warning("fenced at finalize: a later attempt holds the job", extra={"job_id": job.job_id})
            return
        self.deps.jobs.save_projection(job, owner=None)
        self._notify(finished_message(job, term))
        count({EventType.COMPLETE: "JobsCompleted", EventType.FAILED: "JobsFailed",
               EventType.CANCELLED: "JobsCancelled"}.get(term.type, "JobsFinished"))
        log.info("job finished", extra={"job_id": job.job_id, "status": str(job.status),
                                        "attempt": self.attempt})

    # ---- the attempt ------------------------------------------------------------------------

    def run(self) -> RunResult:
        try:
            try:
                self._first_load()
            except TransientStoreError:
                # Without the log nothing can be written in its right place (a failure recorded
                # at seq 1 would meet the job's own first event and look fenced, leaving our
                # lease on a job nobody runs): the attempt has not started; give it back.
                return self._give_back("store_unavailable", retry_after=1)
            if self.events and self.events[-1].terminal:
                self.finalize()
                return RunResult(Outcome.DONE, "finalized an earlier attempt", status=self.view.status)
            if self.view.status is JobStatus.WAITING:
                # A delivery while it waits (a duplicate, the sweeper's, or its asker died
                # leaving): it starts nothing, so it gives back the attempt its lease counted.
                return self._wait_for_answer(undo_attempt=True)
            # The agent plans from the conversation's history: read it while the slot is taken and
            # the attempt's first event written, not after.
            job = self.job
            self._history = self._in_background(self.deps.conversations.messages, job.user_id,
                                                job.conversation_id, 50)
            # The keeper renews the lease from here on: taking a slot costs a read and a write,
            # which a busy store can stretch past a short lease.
            self.keeper.start()
            last = next((e for e in reversed(self.events) if e.type is not EventType.STEERED), None)
            if last is None or last.type is EventType.INPUT_RECEIVED:
                # A first attempt, or the first after an answer (asking gave the slot back). The
                # ``steered`` events an ender put before it died hold no slot: they do not count.
                try:
                    admitted = self._admitted()
                except _Ended:
                    self.keeper.stop()
                    self.finalize()
                    return RunResult(Outcome.DONE, "ended elsewhere", status=self.view.status)
                except StoreError:
                    return self._give_back("store_unavailable", retry_after=1)
                if not admitted:
                    return self._give_back("waiting its turn")
            self._open()
            self._execute()
            raise AssertionError("unreachable: _execute always finishes")  # pragma: no cover
        except _Stop as stop:
            return stop.result
        except _AskUser:
            return self._wait_for_answer()
        except _HandOn:
            return self._hand_on()
        except SlotTaken as taken:
            if not self._fenced_by(taken.existing):
                # Our own write is in the slot (it landed while we saw errors), or an older
                # attempt's late one: not fenced.
                return self._failure("store_unavailable", "storage answered with errors", True)
            return self._lost_slot(taken)
        except Fenced:
            count("Fenced")
            log.warning("fenced: another worker owns the job", extra={"job_id": self.job.job_id})
            return self._stopped_fenced()
        except AgentError as err:
            return self._failure(err.code, err.message, err.retryable)
        except TransientStoreError as err:
            return self._failure("store_unavailable", f"storage was unavailable: {err}", True)
        except Exception as err:  # a bug in an agent: retry, bounded like any retryable error
            log.exception("agent raised", extra={"job_id": self.job.job_id})
            return self._failure("agent_crashed", f"{type(err).__name__} in the agent", True)

    def _stopped_fenced(self) -> RunResult:
        """The attempt stopped fenced: another worker took the job, or our lease ran out by our
        own clock (``keeper.lost``), which need not mean anybody took it. Then a renewal the keeper
        sent before a freeze can land after it, making the lease ours and live again (sim seed
        1430): dropped so, the job would be held a lease period with nobody running it. So once the
        keeper has stopped (its write in flight has landed), a lease still ours is let go, and the
        message kept to resume the job at once."""
        self.settle_behind()
        self.keeper.stop()
        try:
            rec = self.deps.jobs.get(self.job.job_id)
            if rec is None or rec.lease_owner != self.owner:
                return RunResult(Outcome.DROPPED, "fenced")
            self.deps.jobs.release_lease(self.job.job_id, self.owner,
                                         self.clock.now() + self.s.pending_grace_seconds)
        except StoreError:
            # Keep the message past the lease, as a retry does: it comes back to a free job.
            return RunResult(Outcome.RETRY, "fenced, store_unavailable", retry_after=int(self.s.lease_seconds) + 1)
        return RunResult(Outcome.RETRY, "lease ran out unclaimed", retry_after=1)

    def _admitted(self) -> bool:
        """Take a run slot in the user's gate before the first event (a job with events took one
        before: it keeps it until it ends, retries included)."""
        verdict = self.r.admission.take(self.job, next_up=self.delivery.next_up)
        if verdict is Verdict.NOT_ENROLLED:
            # Either the job's entry is gone because the job ended meanwhile (the API cancelled it
            # while nobody held it, racing this delivery: it puts the terminal event first, then
            # removes the entry), or its submit died between its put and its enroll. The log tells
            # which: never enroll an ended job again (its entry would block its conversation).
            self._load()
            if self.events and self.events[-1].terminal:
                raise _Ended()
            # Never enrolled: its submit died before its enroll, or was refused (the gate full, or
            # ``reject``) and could not delete the record; either way its client saw an error.
            # Enroll it now under the active limit, never past it: with the gate full it waits for
            # room, holding nothing (given back; the sweeper counts it waiting and sends it again
            # once there is room).
            try:
                self.r.admission.enroll(self.job)
            except GateFull:
                return False
            verdict = self.r.admission.take(self.job)
        return verdict is Verdict.RUN

    def _give_back(self, reason: str, retry_after: int = 0) -> RunResult:
        """The job did not start: give the delivery back as if it never came (no attempt counted).
        Not its turn: drop the message (whoever frees its way sends a new one; the sweeper checks on
        it meanwhile). The gate could not be reached: let the message come back (``retry_after``).

        Whoever frees its way while we hold the lease sends a message that meets our lease and is
        dropped as a duplicate: so, once the lease is gone, the gate is read again and the job
        sent if it has become next up (``_sent_if_next_up``).
        """
        self.keeper.stop()
        try:
            self.deps.jobs.release_lease(self.job.job_id, self.owner,
                                         self.clock.now() + self.s.pending_grace_seconds, undo_attempt=True)
        except StoreError:
            # Our lease stays live until it runs out: a message sent meanwhile (the hand-off's)
            # would be dropped as a duplicate. Keep this one, to come back once the lease is gone.
            retry_after = max(retry_after, int(self.s.lease_seconds) + 1)
        else:
            try:
                if self._cancelled_after_release():
                    return RunResult(Outcome.DONE, "cancelled", status=JobStatus.CANCELLED)
                if not retry_after:
                    self._sent_if_next_up()
            except StoreError:
                retry_after = max(retry_after, 1)  # keep the message: it comes back and looks again
        if retry_after:
            return RunResult(Outcome.RETRY, reason, retry_after=retry_after, status=JobStatus.PENDING)
        count("DeliveriesWaiting")
        return RunResult(Outcome.DROPPED, reason, status=JobStatus.PENDING)

    def _sent_if_next_up(self) -> None:
        """After a give-back released the lease: send the job if the gate now lets it start.

        Why: the job's way may have been freed after our gate read and before our release (its
        predecessor ended, a slot came free). The hand-off then sent its message, which met our
        live lease and was dropped as a duplicate; we drop ours: nobody would send it but the
        sweeper, which would presume it queued first (any backlog of other users' messages would
        do): two grace periods lost. Read after the release, the gate shows any hand-off whose
        message our lease can have met, so one of the two messages always survives. (The other
        way, a delivery that meets a live lease keeping its message for a retry after the lease,
        would delay every true duplicate by a lease and needs the record to tell them apart.) One
        strongly consistent read per give-back: stray and duplicate deliveries only."""
        gate = self.deps.gates.read(self.job.user_id)
        if gate.next_up(self.job.job_id, self.s.max_running_per_user):
            self.deps.queue.send(self.job.job_id, next_up=True)
            count("GiveBacksResent")
            log.info("given back, and next up meanwhile: sent again", extra={"job_id": self.job.job_id})

    def _cancelled_after_release(self) -> bool:
        """Called right after this attempt let the lease go: whether the job was cancelled here.

        A cancel the API sent while our lease was live is only a flag, and our keeper may not
        have read it yet (it polls every ``cancel_poll_seconds``; the last boundary trusted its
        cache). Nobody would act on it before the job runs again: a day for a question. So the
        flag is read again now, strongly consistent, after the release, and a set flag ends the
        job (``end_if_cancelled``); the API, for its part, looks at the lease in what its flag's
        write returned, so whichever of the two came second sees the other."""
        ended = end_if_cancelled(self.deps, self.job.job_id, self.owner)
        if ended is None:
            return False
        self.view = ended
        count("JobsCancelled")
        log.info("cancelled as its lease went", extra={"job_id": self.job.job_id})
        return True

    # ---- asking the user ---------------------------------------------------------------------

    def _ask(self, prompt: str, kind: str, options: list[str] | None) -> Any:
        """``AgentContext.ask``: the recorded answer, or record the question and end the attempt.

        Questions are numbered within the step that asks them (``s<step>q<n>``): a step runs again
        from its start after an answer, asking in the same order, so each question finds its own
        answer; completed steps are not run again, so their questions are never asked again.
        """
        if kind not in ("confirm", "choice", "text") or (kind == "choice" and not options):
            raise TerminalAgentError(f"the agent asked a malformed question ({kind})", code="bad_question")
        n = self._asks.get(self._step, 0) + 1
        self._asks[self._step] = n
        input_id = f"s{self._step}q{n}"
        state = replay(self.events)
        if input_id in state.answers:
            return state.answers[input_id]
        self.boundary()  # cancelled meanwhile: stop here rather than ask
        if input_id not in state.asked:
            # ``options`` only on a choice: the field is absent otherwise, as SPEC writes it.
            extra = {"options": list(options)} if kind == "choice" and options else {}
            self.append(InputRequiredPayload(
                input_id=input_id, prompt=prompt[:2000], kind=cast(InputKind, kind),
                expires_at=iso(self.clock.now() + self.s.input_timeout_seconds), **extra))
            count("QuestionsAsked")
        raise _AskUser()

    def _wait_for_answer(self, *, undo_attempt: bool = False) -> RunResult:
        """End the attempt with the job waiting: it holds no lease, no slot, no message.

        In order: the projection says ``waiting``; the lease goes, its sweep deadline set to a
        grace period from now; the cancel flag is read again; the slot is handed on; the user is
        notified; the sweep deadline moves to the question's expiry (the sweeper fails it then:
        ``input_timeout``). Then the log is read once more: an answer that arrived while we were
        leaving is seen here, or its sender saw us gone (``Admission.resume`` is idempotent).

        Why the deadline moves twice: should this process die once the lease is gone (SIGKILL, a
        Lambda timeout), the flag's check, the pause or the hand-off would otherwise wait for the
        question's expiry, a day, or for the message's visibility timeout (12 minutes): a cancel
        answered 202 left the job waiting all that time (sim seed 286 at 36d5f5e). The short
        deadline makes the sweeper look within a grace period: it ends a flagged job
        (``end_if_cancelled``), sends one that still holds its slot (a worker leaves again), and
        moves an asking one's deadline to its expiry. One more write per question asked.

        ``undo_attempt``: this delivery found the job already waiting and started nothing (a
        duplicate message, the sweeper's send, the redelivery of an asker that died leaving), so
        the release takes back the attempt its lease counted, as a give-back does. Otherwise a few
        strays while the question is open would use up ``max_attempts``, and the attempt after
        the answer would fail ``attempts_exhausted``. The attempt that asked did run: it counts.

        The pause and the resume carry our attempt: once a later attempt has taken the job over
        (we were frozen past our lease, or slow after releasing it, and the answer came), the gate
        refuses them and we stop (``Fenced``): a pause landing then would give away the slot the
        later attempt runs in, and its hand-off would start another job beside it. Having given
        our attempt back (``undo_attempt``), we carry the one before it: the next attempt to take
        the job is numbered as ours was, and the fence must tell it from us (sim seed 918).
        """
        self.keeper.stop()
        question = replay(self.events).question
        expires = parse_iso(question.expires_at) if question else self.clock.now() + self.s.input_timeout_seconds
        released = False
        fence = self.attempt - 1 if undo_attempt else self.attempt
        self._settle_projection()
        try:
            try:
                self.deps.jobs.save_projection(self.view, owner=self.owner)
            except Fenced:
                pass  # a newer projection is there (the answer's): it says more than ours
            self.deps.jobs.release_lease(self.job.job_id, self.owner,
                                         self.clock.now() + self.s.pending_grace_seconds, undo_attempt=undo_attempt)
            released = True
            if self._cancelled_after_release():
                return RunResult(Outcome.DONE, "cancelled", status=JobStatus.CANCELLED)
            self.r.admission.pause(self.view, attempt=fence)
            if question is not None:
                self._notify(PushMessage(job_id=self.job.job_id, status=str(JobStatus.WAITING),
                                         seq=self.head, title="Alfred needs your answer",
                                         body=question.prompt[:160]))
            # Before the tail's read: an answer landing after it postpones after us, and one landing
            # before it is seen there and resumed (which postpones again, if the job may start).
            # Only while the job still waits and nobody holds it: frozen with this write in flight,
            # we may land it after the answer and a next attempt's lease (sim seed 47480).
            self.deps.jobs.postpone_waiting(self.job.job_id, expires, self.clock.now())
            tail = self.journal.read_after(self.job.job_id, self.head)
            if any(e.type is EventType.INPUT_RECEIVED for e in tail):
                self.r.admission.resume(self.view, attempt=fence)
        except Fenced:
            # A later attempt took the job over (the answer came, and it runs): its slot is not
            # ours to give back, nor its conversation to free. Nothing else is ours to write.
            count("Fenced")
            log.warning("fenced while leaving: a later attempt holds the job", extra={"job_id": self.job.job_id})
            return RunResult(Outcome.DROPPED, "fenced")
        except StoreError:
            # Let the message come back and leave again (every step above is idempotent); past
            # our lease if we still hold it, or the redelivery would be dropped as a duplicate.
            wait = 1 if released else int(self.s.lease_seconds) + 1
            return RunResult(Outcome.RETRY, "store_unavailable", retry_after=wait, status=JobStatus.WAITING)
        count("JobsWaitingForInput")
        log.info("waiting for the user's answer", extra={"job_id": self.job.job_id})
        return RunResult(Outcome.DONE, "waiting for the user's answer", status=JobStatus.WAITING)

    def _notify(self, message: PushMessage) -> None:
        """Web Push, best effort: a push never delays a job for long nor fails it."""
        notifier = self.deps.notifier
        if notifier is None:
            return
        try:
            notifier.notify(self.job.user_id, preview(message, self.s.push_preview))
        except Exception:  # the notifier promises not to raise; a bug there must not fail a job
            log.exception("notifier raised", extra={"job_id": self.job.job_id})

    def _fenced_by(self, existing: Event) -> bool:
        """Whether ``existing``, found in the slot we put to, says a later attempt holds the job.

        Neither our own write (it landed while we saw errors) nor an older attempt's does. An
        older owner frozen with a put in flight past its lease lands it in the one slot it could,
        the head it knew: our first put's, or, when our read after meeting it failed, the put
        that records that failure (sim seed 11564: taken for a fence, the delivery was dropped
        with our lease live on a job nobody ran). Its event counts, as in ``_open``; we write
        after it. A later attempt took our lease first, so its events carry a higher attempt; an
        ending by the API is terminal, which ``_lost_slot`` finalizes whoever wrote it."""
        if existing.writer == self.owner:
            return False
        return existing.terminal or existing.attempt >= self.attempt

    def _lost_slot(self, taken: SlotTaken) -> RunResult:
        if taken.existing.terminal:
            # Someone else (a cancel, a newer attempt) ended the job: make sure it is finalized.
            self._load()
            self.finalize()
            return RunResult(Outcome.DONE, "ended elsewhere", status=self.view.status)
        if taken.existing.attempt < self.attempt and not self.keeper.lost:
            # An older attempt's late write (a process paused with it in flight), not a newer
            # owner: we are not fenced, and our lease is live. Dropping the delivery would leave
            # the job held by that lease, with nobody running it, for a lease period (sim seed 2287:
            # a reload after such a write was throttled, and the failure's put met it). Let the
            # lease go and the message come back: the next attempt reads the whole log.
            self.keeper.stop()
            try:
                self.deps.jobs.release_lease(self.job.job_id, self.owner,
                                             self.clock.now() + self.s.pending_grace_seconds)
            except StoreError:
                return RunResult(Outcome.RETRY, "an older attempt wrote", retry_after=int(self.s.lease_seconds) + 1)
            return RunResult(Outcome.RETRY, "an older attempt wrote", retry_after=1, status=self.view.status)
        count("Fenced")
        return RunResult(Outcome.DROPPED, "fenced")

    def _open(self) -> None:
        """Put this attempt's first event at the head, retrying over a racing older owner."""
        for _ in range(20):
            try:
                if self.events and self.events[-1].terminal:
                    self.finalize()  # ended by someone else while we read: never write past it
                    raise _Stop(RunResult(Outcome.DONE, "ended elsewhere", status=self.view.status))
                if self.keeper.cancel_requested:
                    self.finish(self._cancelled())
                if self._tries() > self.s.max_attempts:
                    self.finish(FailedPayload(error=ErrorInfo(
                        code="attempts_exhausted",
                        message=f"the job was interrupted {self._tries() - 1} times and was given up")))
                if not self.events:
                    self.append(StatusPayload(status=JobStatus.RUNNING))
                    count("JobsStarted")
                    count("QueueToStartSeconds", self.clock.now() - self.job.created_at, "Seconds")
                else:
                    self.append(ResumedPayload(attempt=self.attempt, from_seq=self.head))
                    count("JobsResumed")
                projection = replace(self.view, attempts=self.attempt)
                if len(self.events) == 1:
                    # A first attempt's projection (running, started_at) is for readers: nothing
                    # waits for it, so it is written while the agent thinks. A resumed attempt's is
                    # written before it goes on (it moves the record off an earlier attempt's state).
                    self._projection = self._in_background(self._project, projection)
                else:
                    self.deps.jobs.save_projection(projection, owner=self.owner)
                return
            except SlotTaken as taken:
                if taken.existing.terminal:
                    raise
                self._load()  # an older owner got an event in first: it counts; read and retry
                if self.view.status is JobStatus.WAITING:
                    # ... and that event asked the user (the older owner was past its lease, its
                    # pause anywhere after its last check). The question stands, as if we had
                    # found it at our first read (``run``): leave the job waiting for its answer.
                    # A ``resumed`` after it would hide it (replay: no open question), every
                    # answer a 409, and the job would cycle through the input timeout.
                    raise _AskUser() from None
        raise Fenced(self.job.job_id)

    def _execute(self) -> None:
        job = self.view
        done = replay(self.events)  # what the log says was done: plan, step outputs, phases, reply shown
        plan, outputs = done.plan, done.outputs
        if self._history is not None:
            history = self._history.result()
        else:
            history = self.deps.conversations.messages(job.user_id, job.conversation_id, 50)
        ctx = AgentContext(job_id=job.job_id, user_id=job.user_id, conversation_id=job.conversation_id,
                           message=job.message, history=history, attempt=self.attempt,
                           step_outputs=outputs, cancelled=self._to_stop,
                           created_at=job.created_at, expires_at=job.expires_at, asker=self._ask,
                           meter=self._meter, steers=list(done.steered.values()))
        self._ctx = ctx
        self._step = 0
        # No ``phase`` event for think and act: the attempt's first event (``status: running``,
        # ``resumed``) opens thinking, and the first step event the act phase. One write each less.
        started = set(done.started)
        if plan is None:
            self.boundary()
            self._new_part()
            plan = self.agent.think(ctx)
            self._worked = True
            # The first step starts with the plan (``next``), unless a cancel came meanwhile or
            # the invocation has no time left for it (then it is handed on at the step's boundary).
            start_first = (bool(plan.steps) and not self.keeper.cancel_seen()
                           and self._fits("step", plan.steps[0]))
            self.append(PlanPayload.of(plan, start_first=start_first, **self._take_usage()))
            if start_first:
                started.add(plan.steps[0].index)
        total = len(plan.steps)
        todo = [step for step in plan.steps if step.index not in outputs]  # completed: never again (guarantee 4)
        for n, step in enumerate(todo):
            if step.index not in started:
                self.boundary()
                self._within_budget("step", step)
                self.append(StepPayload(index=step.index, total=total, label=step.label, status="started"))
            self._step = step.index
            # The boundary again, after the write that started the step: a ``next`` (on the plan,
            # on the step before) was decided before its write, and a write can take seconds (a
            # paused process, a slow store). A cancel that landed meanwhile stops the job here,
            # before the step acts (guarantee 7), leaving the step ``started`` and never run: a
            # log every reader takes (a cut-off step, then the end). On time, it costs nothing.
            self.boundary()
            t0 = self.clock.monotonic()
            self._new_part()
            step_output = self.agent.act(step, ctx)
            count("StepDuration", self.clock.monotonic() - t0, "Seconds")
            self._worked = True
            # The next step starts in the same write (``next``), unless the job stops here: the
            # boundary between them (and the budget) is checked before it, as before a ``started``.
            following = todo[n + 1] if n + 1 < len(todo) else None
            if following is not None and (following.index in started or self.keeper.cancel_seen()
                                          or not self._fits("step", following)):
                following = None
            self.append(StepPayload(index=step.index, total=total, label=step.label, status="completed",
                                    output=step_output, **self._take_usage(),
                                    **({"next": NextStep(index=following.index, label=following.label)}
                                       if following is not None else {})))
            outputs[step.index] = step_output
            if following is not None:
                started.add(following.index)
        self.boundary()
        self._within_budget("reply")
        self._step = total + 1
        if "reply" not in done.phases:
            self._drain()
            self._seal()  # before the reply: every steer that got in is seen by it
            # The close can take any time (a paused process): the boundary's checks come after it,
            # the last thing before the agent replies (sim seed 4508: a worker frozen two minutes
            # in the close woke and started replying, its lease long gone and its job cancelled).
            self.boundary()
            self.append_behind(PhasePayload(phase="reply"))  # the agent starts replying meanwhile
        reply = self._stream_reply(plan, ctx, done.shown)
        self.boundary()
        output: dict[str, Any] = {"reply": reply}
        usage = getattr(self.agent, "usage", None)
        if callable(usage):
            used = usage(ctx)
            if used:
                output["usage"] = used
        self.finish(CompletePayload(output=output, **self._take_usage()))

    def _stream_reply(self, plan: Plan, ctx: AgentContext, shown: str) -> str:
        """Consume the agent's reply, writing coalesced ``delta`` events.

        On a resumed attempt the log already shows ``shown``: a reply that starts the same way only
        adds what is new; one that differs sends ``{"text": full, "replace": true}`` once. What a
        delta shows is ``apply_delta``'s to say, as for every reader.
        """
        full = ""
        last_flush = self.clock.monotonic()
        # The first delta of this attempt goes out the moment the agent starts replying, not at
        # the first coalescing tick: the first word is what the user waits for (issue 28). The
        # ones after it are coalesced (one write per tick or per ``delta_flush_chars``).
        wrote = False

        def put(delta: DeltaPayload) -> None:
            nonlocal shown, wrote
            self.append_behind(delta)  # the agent goes on generating while it is written
            shown = apply_delta(shown, delta)
            wrote = True

        def flush() -> None:
            nonlocal last_flush
            last_flush = self.clock.monotonic()
            if full.startswith(shown):
                if len(full) > len(shown):
                    put(DeltaPayload(text=full[len(shown):]))
            elif not shown.startswith(full):
                put(DeltaPayload(text=full, replace=True))

        self._new_part()
        chunks = self.agent.reply(plan, ctx)
        try:
            for chunk in chunks:
                if self._to_stop():
                    break
                full += chunk
                self._reply_so_far = full
                if (not wrote or self.clock.monotonic() - last_flush >= self.s.delta_flush_seconds
                        or len(full) - len(shown) >= self.s.delta_flush_chars):
                    flush()
        finally:
            # Closed now, not when collected: an agent counts a call it stops at its close (the
            # Bedrock agent records a cancelled stream's usage then), before a cancel records it.
            close = getattr(chunks, "close", None)
            if callable(close):
                close()
        self.boundary()
        flush()
        if shown != full:
            put(DeltaPayload(text=full, replace=True))
        return full

    def _failure(self, code: str, message: str, retryable: bool) -> RunResult:
        count("AttemptFailures")
        for _ in range(3):
            try:
                return self._record_failure(code, message, retryable)
            except SlotTaken as taken:
                if self._fenced_by(taken.existing):
                    return self._lost_slot(taken)
                # Our own earlier write landed although we saw it fail (the error that brought us
                # here may be that very write), or an older attempt's late write landed at the
                # head we knew (our read after it failed): we still own the job. Read the log
                # again and record the failure after what is really there.
                try:
                    self._load()
                except StoreError:
                    break
                if self.view.status is JobStatus.WAITING:
                    # ... unless that write asked the user (the question's put landed, its answer
                    # lost): then the attempt did what asking does, and the question stands. End
                    # the attempt as asking does, never writing past an open question: a
                    # ``pending`` or ``resumed`` after it would hide it (replay: no open
                    # question), every answer a 409, and the job would cycle. (This is also where
                    # ``run``'s ``SlotTaken`` of our own writer comes: its failure's put meets
                    # the landed write first.)
                    return self._wait_for_answer()
        return RunResult(Outcome.RETRY, "store_unavailable", retry_after=int(self.s.lease_seconds))

    def _record_failure(self, code: str, message: str, retryable: bool) -> RunResult:
        error = ErrorInfo(code=code, message=message)
        if self.events and self.events[-1].terminal:
            return self._retry_finalize(code)
        tries = self._tries()
        try:
            if retryable and tries < self.s.max_attempts:
                backoff = self.s.retry_base_seconds * 2 ** (tries - 1)
                delay = int(min(self.s.retry_max_seconds, backoff))
                self.keeper.stop()
                self.append(StatusPayload(status=JobStatus.PENDING, retry_in=delay, error=error))
                self._settle_projection()
                self.deps.jobs.save_projection(self.view, owner=self.owner)
                self.deps.jobs.release_lease(self.job.job_id, self.owner,
                                             self.clock.now() + delay + self.s.pending_grace_seconds)
                try:
                    if self._cancelled_after_release():
                        return RunResult(Outcome.DONE, "cancelled", status=JobStatus.CANCELLED)
                except StoreError:
                    pass  # the next attempt, after the backoff, reads the flag as it takes the lease
                log.warning("attempt failed, will retry", extra={"job_id": self.job.job_id, "code": code,
                                                                  "retry_in": delay})
                return RunResult(Outcome.RETRY, code, retry_after=delay, status=JobStatus.PENDING)
            if retryable:
                error = ErrorInfo(code=code, message=f"gave up after {tries} attempts: {message}")
            self.append(FailedPayload(error=error))
            self.finalize()  # parks the message in the dead-letter queue
            return RunResult(Outcome.DONE, code, status=JobStatus.FAILED)
        except SlotTaken:
            raise  # _failure tells our own landed write from another writer's
        except Fenced:
            return RunResult(Outcome.DROPPED, "fenced")
        except StoreError:
            if self.events and self.events[-1].terminal:
                return self._retry_finalize("store_unavailable")  # recorded; finalizing (parking) failed
            # Could not even record the failure: let the message come back; the lease expires and
            # the next attempt (or the sweeper) picks the job up.
            return RunResult(Outcome.RETRY, "store_unavailable", retry_after=int(self.s.lease_seconds))

    def _hand_on(self) -> RunResult:
        """The invocation has no time for the next part: end the attempt at this boundary and hand
        the job on at once, as a failure's retry does but with no backoff and no failure counted.

        In order: ``status: pending`` with no error (the mark ``_tries`` counts; the job is
        between invocations), its projection, the lease released (not undone: the attempt ran and
        its number fences it), the cancel flag read again (``_cancelled_after_release``), then a
        new message for the job. Sent after the release, never before: a message delivered while
        our lease is live is dropped as a duplicate. The message we hold is deleted, not made
        visible again: a fresh one starts its receive count at 0, so a job of many invocations
        never reaches the queue's ``maxReceiveCount``. Should the process die after the release,
        the sweeper sends the job a grace period later (the release's sweep deadline).
        """
        count("AttemptsHandedOn")
        try:
            self.keeper.stop()
            self.append(StatusPayload(status=JobStatus.PENDING))
            self._settle_projection()
            self.deps.jobs.save_projection(self.view, owner=self.owner)
            self.deps.jobs.release_lease(self.job.job_id, self.owner,
                                         self.clock.now() + self.s.pending_grace_seconds)
        except SlotTaken as taken:
            if not self._fenced_by(taken.existing):
                return self._failure("store_unavailable", "storage answered with errors", True)
            return self._lost_slot(taken)
        except Fenced:
            count("Fenced")
            return RunResult(Outcome.DROPPED, "fenced")
        except StoreError as err:
            return self._failure("store_unavailable", f"storage was unavailable: {err}", True)
        try:
            if self._cancelled_after_release():
                return RunResult(Outcome.DONE, "cancelled", status=JobStatus.CANCELLED)
            self.deps.queue.send(self.job.job_id)
        except StoreError:
            # Keep the message we hold instead: it comes back in a second (the lease is gone, so
            # it is not dropped as a duplicate) and runs the job on.
            return RunResult(Outcome.RETRY, "handed on, send failed", retry_after=1, status=JobStatus.PENDING)
        log.info("out of invocation time: handed on", extra={"job_id": self.job.job_id, "attempt": self.attempt})
        return RunResult(Outcome.HANDED_ON, "out of invocation time", status=JobStatus.PENDING)

    def _retry_finalize(self, code: str) -> RunResult:
        """The job has ended; only finalizing failed. Let the message come back to finish it, and
        free the lease so that delivery is not dropped as a duplicate."""
        self.keeper.stop()
        try:
            self.deps.jobs.release_lease(self.job.job_id, self.owner,
                                         self.clock.now() + self.s.pending_grace_seconds)
        except StoreError:
            pass  # then the sweeper finds it once the lease expires
        return RunResult(Outcome.RETRY, f"finalize failed: {code}", retry_after=1, status=self.view.status)

