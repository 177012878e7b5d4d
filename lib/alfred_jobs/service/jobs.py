"""Job API use cases: submit, read, list, cancel, events, conversations."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from alfred_jobs.domain.events import (
    InputReceivedPayload,
    InputRequiredPayload,
    parse_iso,
    replay,
)
from alfred_jobs.domain.gate import Gate, GateEntry
from alfred_jobs.domain.ids import is_conversation_id, is_idempotency_key, is_job_id
from alfred_jobs.domain.models import (
    ACTIVE_STATUSES,
    ChatRequest,
    Event,
    Job,
    JobStatus,
    Steer,
    SteerClaim,
    conversation_title,
    fold,
    iso,
    refold,
)
from alfred_jobs.domain.retention import expiry
from alfred_jobs.durability.admission import Admission
from alfred_jobs.durability.ending import cancel_of, end_unheld
from alfred_jobs.durability.journal import Journal
from alfred_jobs.exceptions import (
    ClientError,
    ConditionFailed,
    Conflict,
    ConversationBusy,
    GateFull,
    InvalidInput,
    NotFound,
    SlotTaken,
    StoreError,
    TooManyRequests,
    TransientStoreError,
)
from alfred_jobs.observability import count, get_logger
from alfred_jobs.ports import Deps
from alfred_jobs.service.cursor import decode_cursor, encode_cursor
from alfred_jobs.service.timeline import timeline as fold_timeline

STATUS_FILTERS = {s.value: frozenset({s}) for s in JobStatus} | {"active": ACTIVE_STATUSES}
API_WRITER = "api"
CONVERSATIONS_PAGE = 20  # the conversation list's page without a ``limit``
log = get_logger()


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool
    steered: bool = False  # ``multitask: steer``: the message joined ``job`` (an active job)


def validate_job_id(job_id: str) -> str:
    """A job id as the API accepts it; malformed ids are a 400, unknown ones a 404."""
    if not is_job_id(job_id):
        raise InvalidInput("malformed job id", code="invalid_job_id")
    return job_id


def body_hash(req: ChatRequest) -> str:
    # ``multitask`` is part of what was asked (steer or interrupt or wait): the same key with
    # another strategy is another request (409), not a silent replay of the first one. The default
    # (``enqueue``) hashes as before ``multitask`` counted, so a resend of a job created before
    # still finds its job rather than a 409.
    body = req.model_dump(exclude={"multitask"} if req.multitask == "enqueue" else None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def keyed_id(user_id: str, idempotency_key: str) -> str:
    """The id a request with this Idempotency-Key gets: its job's, or its steer's message id."""
    return hashlib.sha256(f"{user_id}\0{idempotency_key}".encode()).hexdigest()[:32]


def steered_job_id(message_id: str) -> str:
    """The job a keyed steer becomes when it cannot join: a second id of the same key (the first
    holds the steer's claim), so every repeat of the request meets that job."""
    return hashlib.sha256(f"{message_id}\0job".encode()).hexdigest()[:32]


def _answer_hint(question: InputRequiredPayload) -> str:
    if question.kind == "confirm":
        return "this question takes true or false"
    if question.kind == "choice":
        return f"this question takes one of: {', '.join(question.options or [])}"
    return "this question takes some text"


class _RefusedMeanwhile(Exception):
    """Internal: the job of a resend's key was refused (deleted) by another resend meanwhile."""


class JobService:
    """The job API's use cases over the ports."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.journal = Journal(deps.log, deps.settings.retention_seconds)
        self.admission = Admission(deps)

    # ---- submit -----------------------------------------------------------------------

    def submit(self, user_id: str, req: ChatRequest, idempotency_key: str | None) -> Submitted:
        """Create a job (see ``_submit``), or steer the message into the conversation's active job
        (``steer``); a resend that finds its job refused meanwhile by another resend of its key
        (the record deleted) is this key's first submit again: once."""
        self._check(req, idempotency_key)
        if req.multitask == "steer":
            return self.steer(user_id, req, idempotency_key)
        return self._submit_once(user_id, req, idempotency_key)

    def _submit_once(self, user_id: str, req: ChatRequest, idempotency_key: str | None,
                     job_id: str | None = None) -> Submitted:
        try:
            return self._submit(user_id, req, idempotency_key, job_id)
        except _RefusedMeanwhile:
            try:
                return self._submit(user_id, req, idempotency_key, job_id)
            except _RefusedMeanwhile as again:
                raise TransientStoreError(f"job {again} was refused meanwhile; send it again") from None

    def _check(self, req: ChatRequest, idempotency_key: str | None) -> None:
        if len(req.message) > self.settings.max_message_chars:
            raise InvalidInput(f"message is longer than {self.settings.max_message_chars} characters",
                               code="message_too_long")
        if idempotency_key is not None and not is_idempotency_key(idempotency_key):
            raise InvalidInput("Idempotency-Key must be 1-128 printable ASCII characters",
                               code="invalid_idempotency_key")

    # ---- steering ---------------------------------------------------------------------------

    def steer(self, user_id: str, req: ChatRequest, idempotency_key: str | None) -> Submitted:
        """``multitask: steer``: join the conversation's active job if its door is open (it has not
        begun its reply), else become a new job as ``enqueue`` would; never both, never neither.

        The decision is one conditional write on the active job's record (``JobStore.steer``): it
        lands only while the door is open, and the runner closes the door, having seen every steer
        on the record, before it writes ``phase: reply`` or any terminal event (``_Attempt._seal``). So a
        steer that landed is recorded as a ``steered`` event before the reply; one refused can
        never land later (a door never opens again) and becomes its own job.

        With an Idempotency-Key the message id is the key's id, and the decision is kept there
        first (``claim_steer``: which job to join, or none): every repeat, concurrent or late,
        follows the same claim to the same job, whose steer write is idempotent on the message id,
        and a refused one to the same new job (``steered_job_id``). The claim costs one write.
        """
        digest = body_hash(req)
        now = self.deps.clock.now()
        if idempotency_key is None:
            message_id = self.deps.new_id()
            target = self._active_job(user_id, req.conversation_id)
        else:
            message_id = keyed_id(user_id, idempotency_key)
            if self.deps.jobs.get(message_id) is not None:
                # The key made a job (another strategy: its body differs): its own replay says 409.
                return self._submit_once(user_id, req, idempotency_key)
            claim = self.deps.jobs.steer_claim(message_id)
            if claim is None:
                claim = self.deps.jobs.claim_steer(SteerClaim(
                    message_id=message_id, user_id=user_id,
                    target=self._active_job(user_id, req.conversation_id), body_hash=digest,
                    created_at=now, expires_at=expiry(now, self.settings.retention_seconds)))
                if claim is None:  # a job of this key went in meanwhile
                    return self._submit_once(user_id, req, idempotency_key)
            if claim.user_id != user_id or claim.body_hash != digest:
                raise Conflict("this Idempotency-Key was already used with a different request",
                               code="idempotency_key_reused")
            target = claim.target
        if target is not None and self.deps.jobs.steer(target, Steer(message_id=message_id, text=req.message),
                                                       now, self.settings.max_steers_per_job):
            count("MessagesSteered")
            log.info("message steered into the active job", extra={"job_id": target, "user": user_id})
            return Submitted(self.get(user_id, target), created=False, steered=True)
        if idempotency_key is None:
            return self._submit_once(user_id, req, None)
        return self._submit_once(user_id, req, idempotency_key, job_id=steered_job_id(message_id))

    def _active_job(self, user_id: str, conversation_id: str | None) -> str | None:
        """The conversation's active job a steer would join: the one that holds the conversation
        (running, or asking the user), else the first waiting its turn. From the gate, read
        strongly consistent; its entries may outlive their jobs a moment, which is no harm: the
        steer's own write is what decides (an ended job's door is closed)."""
        if conversation_id is None:
            return None
        entries = self.deps.gates.read(user_id).conversation(conversation_id)
        holding = [e for e in entries if e.holds_conversation]
        first = holding[0] if holding else (entries[0] if entries else None)
        return first.job_id if first is not None else None

    # ---- submitting a job -----------------------------------------------------------------

    def _submit(self, user_id: str, req: ChatRequest, idempotency_key: str | None,
                job_id: str | None = None) -> Submitted:
        """Create a job, enroll it in its user's gate, and send it if it may start now; returns
        before any agent work starts (guarantee 1).

        With an idempotency key the job id is derived from (user, key), so the job record itself
        is the idempotency record: a second submit hits the conditional put and finds the first
        job (guarantee 5) at the cost of one PutItem, not a transaction.

        The record and the gate entry are two items, written one after the other: a submit costs
        two writes and a send. Every way the two can part (a crash between them, a refusal after
        the put) is repaired: a job without an entry is enrolled by its first delivery, an entry
        without a job (a refusal whose removal failed) is dropped by the sweeper or the hand-off
        once it is in anyone's way (docs/architecture.md, "The gate").
        """
        digest = body_hash(req)
        if job_id is None:
            job_id = keyed_id(user_id, idempotency_key) if idempotency_key is not None else self.deps.new_id()
        now = self.deps.clock.now()
        job = Job(job_id=job_id, user_id=user_id, message=req.message,
                  conversation_id=req.conversation_id or self.deps.new_id(),
                  created_at=now, expires_at=expiry(now, self.settings.retention_seconds),
                  body_hash=digest)
        # The record first, then the entry: a submit that dies between the two leaves a job
        # without an entry, which its first delivery enrolls (under the limit), never an entry
        # without a job, which nothing would ever visit once its user has no live job left (the
        # simulator found such leftovers, seed 1418 before this). One write's latency more.
        existing = self._create(job)
        gate, full = self._enroll(existing or job)  # a store error here leaves the job to the repairs
        if existing is not None:
            return self._replayed(existing, user_id, digest, gate, full, reject=req.multitask == "reject")
        if full:
            self._refuse(job, self._too_many())
        ahead = gate.ahead_of(job.job_id)
        if ahead and req.multitask == "reject":
            gate = self._reject_behind(job, ahead)
        if ahead and req.multitask == "interrupt":
            for earlier in ahead:
                self._interrupt(user_id, earlier.job_id, by=job.job_id)
            gate = self.deps.gates.read(user_id)  # ending a waiting job may have handed its place on
        # The list's touch goes beside the send, not before it: it is best effort and ordered by
        # its own condition (the latest ``at`` stands), and neither the job's start nor the answer
        # should wait for a view's write in turn (issue 28: one write less on the path from the
        # POST to the worker, and on the POST's own). The answer waits for both: nothing of a
        # submit is left running once it has answered (a Lambda is frozen after it answers). A
        # submit that dies before the touch lands lists its conversation at the job's commit, as
        # one whose touch failed does.
        touched = self.deps.tasks.submit(self._touch_conversation, job)
        try:
            if gate.next_up(job.job_id, self.settings.max_running_per_user):
                self.deps.queue.send(job_id, next_up=True)
        finally:
            touched.result()
        count("JobsSubmitted")
        log.info("job submitted", extra={"job_id": job_id, "user": user_id, "queued_behind": len(ahead)})
        return Submitted(job, created=True)

    def _touch_conversation(self, job: Job) -> None:
        """Move the job's conversation to the top of its user's list, once the job is accepted.
        Best effort: the list is a view, and the job's commit touches it again (so a submit that
        fails here, or dies before it, still lists its conversation once the reply is in)."""
        try:
            self.deps.conversations.touch(job.user_id, job.conversation_id, iso(job.created_at),
                                          conversation_title(job.message), job.expires_at)
        except StoreError as exc:
            log.warning("the conversation list was not updated", extra={"job_id": job.job_id, "error": str(exc)})

    def _enroll(self, job: Job) -> tuple[Gate, bool]:
        """The gate after the job's entry went in, and whether it was full (no entry then)."""
        try:
            return self.admission.enroll(job), False
        except GateFull as full:
            return full.gate, True

    def _undo_enroll(self, job: Job) -> bool:
        """Take a refused job's entry out again (handing on to the next job of its conversation if
        that one may start now); False if a worker took it meanwhile (it runs, or has asked the
        user since: its entry, slot given back, still holds its conversation, and removing it would
        open the conversation to the next job with nobody to send that one). A store error is
        raised: the job is then not refused (it keeps its record and its entry)."""
        return self.admission.withdraw(job)
        # A StoreError goes up (a 503): the record stays with its entry, so the job runs as if
        # enqueued, and a resend with its key finds it. Deleting the record while its entry stays
        # would leave an entry with no job (seed 840 before this).

    def _too_many(self) -> TooManyRequests:
        return TooManyRequests(f"you have {self.settings.max_active_per_user} jobs under way; wait for one to end",
                               code="too_many_jobs", retry_after=10)

    def _reject_behind(self, job: Job, ahead: list[GateEntry]) -> Gate:
        """Refuse a `reject` job with jobs of its conversation ahead (409, naming the running one),
        its entry taken out first; the gate, if a worker took the job meanwhile: it runs after all."""
        busy = next((e for e in ahead if e.running), ahead[0])
        if self._undo_enroll(job):
            self._refuse(job, ConversationBusy("this conversation has a job under way", job_id=busy.job_id))
        return self.deps.gates.read(job.user_id)

    def _refuse(self, job: Job, error: ClientError) -> None:
        """Raise ``error`` for a job whose record was put, after deleting that record. A worker
        can only have taken it if its way was clear (then it runs and the submit says 202)."""
        try:
            self.deps.jobs.delete_unstarted(job.job_id, job.created_at)
        except ConditionFailed:
            return
        raise error

    def _replayed(self, existing: Job, user_id: str, digest: str, gate: Gate, full: bool,
                  reject: bool = False) -> Submitted:
        """The answer to a submit whose job id (an Idempotency-Key) was taken."""
        existing = self.fold_tail(existing)
        if existing.terminal:
            # Our enroll may have put an ended job back in the gate: take it out (and hand on).
            self.admission.release(existing)
        if existing.user_id != user_id or existing.body_hash != digest:
            raise Conflict("this Idempotency-Key was already used with a different request",
                           code="idempotency_key_reused")
        if full and not existing.terminal and existing.attempts == 0:
            # Our enroll of its id met a full gate, so it has no entry: it was never admitted (its
            # submit was refused and could not delete its record, or died before its enroll), and
            # the first answer was an error. Answer as that submit should have: a 429, and the
            # record goes; a 202 would let the job run past the limit. Still one job per key: a
            # later resend with room finds no record and creates it (guarantee 5). If a worker took
            # it meanwhile (admitted under the limit after all), it runs: 202.
            self._refuse(existing, self._too_many())
        unstarted = existing.status is JobStatus.PENDING and existing.last_seq == 0
        if unstarted and self.deps.jobs.get(existing.job_id) is None:
            # A resend of this key was refused meanwhile (a 429, a reject) and deleted the record,
            # then took its entry out; our enroll, which ran beside our put, may have landed after
            # that and left an entry with no job (a user with no live job and a non-empty gate). Read
            # after our enroll landed: either the refusal's removal came later and took our entry
            # too, or we see the record gone here and take it out ourselves. The client sends again.
            self.admission.withdraw(existing)  # (no worker takes a job without a record)
            raise _RefusedMeanwhile(existing.job_id)
        ahead = gate.ahead_of(existing.job_id) if unstarted else []
        if reject and ahead:
            # A `reject` with a job of its conversation ahead was refused by its first submit, or
            # is being refused now: that submit's undo may be in flight (its process frozen, its
            # answer lost, so the client sent again). Repeat its outcome, a 409 after the same
            # undo: a 202 here would be undone by the late removal and delete (the job gone, or
            # its record left without an entry and enrolled behind later messages: sim seed
            # 232214). No entry is ever placed ahead of an existing one (an enroll goes last), so
            # a first submit that found nothing ahead, accepted, is never refused here. If a
            # worker took the job meanwhile, it runs after all: 202, as the first submit says.
            gate = self._reject_behind(existing, ahead)
        if (existing.status is JobStatus.PENDING and existing.last_seq == 0
                and gate.next_up(existing.job_id, self.settings.max_running_per_user)):
            # The first submit may have died between its put and its send: send again. A
            # duplicate message is harmless (the worker drops messages of held jobs).
            self.deps.queue.send(existing.job_id, next_up=True)
        return Submitted(existing, created=False)

    def _create(self, job: Job) -> Job | None:
        """Put the new record; returns the live job that already has this id, or None if ours
        went in.

        An expired record is no obstacle: the store's condition treats it as gone (guarantee 11,
        a key is free again after retention). A ConditionFailed whose record is our own (same
        creation time) is an ambiguous write: the put landed, its answer was lost, and the SDK's
        retry hit our own record.
        """
        for _ in range(3):
            try:
                self.deps.jobs.create(job)
                return None
            except ConditionFailed:
                existing = self.deps.jobs.get(job.job_id)  # strongly consistent
                if existing is None:
                    if self.deps.jobs.steer_claim(job.job_id) is not None:
                        # The key was used for a steer (``multitask`` is part of the request).
                        raise Conflict("this Idempotency-Key was already used with a different request",
                                       code="idempotency_key_reused") from None
                    continue  # it expired between the put and the read: the id is free now
                if existing.created_at == job.created_at and existing.body_hash == job.body_hash:
                    return None
                return existing
        raise TransientStoreError(f"could not create job {job.job_id}")

    # ---- read ---------------------------------------------------------------------------

    def fold_tail(self, job: Job) -> Job:
        """The job record with any events written after its projection folded in (exact status)."""
        tail = self.journal.read_after(job.job_id, job.last_seq)
        return fold(job, tail) if tail else job

    def owned(self, user_id: str, job_id: str) -> Job:
        """The caller's job, or ``NotFound`` (another user's job is indistinguishable from none)."""
        validate_job_id(job_id)
        job = self.deps.jobs.get(job_id)
        if job is None or job.user_id != user_id:
            raise NotFound("job not found")
        return job

    def get(self, user_id: str, job_id: str) -> Job:
        return self.fold_tail(self.owned(user_id, job_id))

    def list_jobs(self, user_id: str, status: str | None, limit: int, cursor: str | None,
                  conversation_id: str | None = None) -> tuple[list[Job], str | None]:
        """The caller's jobs, newest first (a page, with an opaque cursor for the next one); with
        ``conversation_id``, only that conversation's (its cursor is bound to it). A listing, read
        from the user index: eventually consistent, so a job created a moment ago may be missing
        and a status may lag; what decides reads the job itself (``get``)."""
        if conversation_id is not None and not is_conversation_id(conversation_id):
            raise InvalidInput("malformed conversation id", code="invalid_conversation_id")
        statuses = None
        if status is not None:
            if status not in STATUS_FILTERS:
                raise InvalidInput(f"status must be one of {', '.join(sorted(STATUS_FILTERS))}",
                                   code="invalid_status")
            statuses = STATUS_FILTERS[status]
        if not 1 <= limit <= self.settings.max_list_limit:
            raise InvalidInput(f"limit must be 1..{self.settings.max_list_limit}", code="invalid_limit")
        start = decode_cursor(self.settings.cursor_secret, user_id, cursor) if cursor else None
        # A cursor of one conversation's list goes on that list only (and an unfiltered cursor,
        # which has no conversation, the unfiltered list only).
        if start is not None and (
                start.pop("conversation_id", None) != conversation_id or start.get("user_id") != user_id
                or not isinstance(start.get("job_id"), str) or not isinstance(start.get("created_sk"), str)):
            raise InvalidInput("malformed cursor", code="invalid_cursor")
        page = self.deps.jobs.list_for_user(user_id, statuses, limit, start, conversation_id)
        nxt = None
        if page.next_key:
            bound = {**page.next_key, "conversation_id": conversation_id} if conversation_id else page.next_key
            nxt = encode_cursor(self.settings.cursor_secret, user_id, bound)
        return page.jobs, nxt

    def timeline(self, user_id: str, job_id: str) -> dict[str, Any]:
        """The caller's job's timeline (``service/timeline.py``), folded from its whole log, read
        strongly consistent as the events endpoint reads it: a stale read would leave out its end."""
        job = self.owned(user_id, job_id)
        events = self.journal.read_all(job_id, known_head=job.last_seq)
        return fold_timeline(refold(job, events), events, self.settings.model_prices, self.deps.clock.now())

    # ---- cancel ---------------------------------------------------------------------------

    def cancel(self, user_id: str, job_id: str) -> tuple[Job, bool]:
        """Request cancellation. Returns (job, done): done once the job is cancelled."""
        return self._cancel(self.get(user_id, job_id), by=None)

    def _interrupt(self, user_id: str, job_id: str, by: str) -> None:
        """``multitask: interrupt``: end an earlier job of the conversation, as cancelled by ``by``."""
        try:
            self._cancel(self.get(user_id, job_id), by=by)
        except (NotFound, Conflict):
            pass  # it ended meanwhile (or expired): nothing to interrupt
        count("JobsInterrupted")

    def _cancel(self, job: Job, by: str | None) -> tuple[Job, bool]:
        """A job no worker holds (not started yet, waiting its turn, or waiting for a retry) is
        cancelled here at once, by putting the terminal event at the head of its log (the same
        fence workers use), then handing its place in the gate on, then projecting it. A running
        job gets a flag its worker reads at the next step boundary, or within a second while the
        reply streams."""
        job_id = job.job_id
        if job.status is JobStatus.CANCELLED:
            return job, True
        if job.terminal:
            raise Conflict(f"job is already {job.status}", code="job_finished")
        unheld = not job.lease_live(self.deps.clock.now())
        if job.status in (JobStatus.PENDING, JobStatus.WAITING) and unheld:
            done = end_unheld(self.deps, job, cancel_of(self.deps, job, by), API_WRITER)
            if done is not None:
                count("JobsCancelled")
                return done, True
            # a worker started it meanwhile: fall through to the flag
        try:
            # The update returns the record: fold its tail instead of reading it again.
            job = self.fold_tail(self.deps.jobs.request_cancel(job_id, by=by))
        except ConditionFailed:
            job = self.get(job.user_id, job_id)  # it ended meanwhile; report what it is now
        if job.status in (JobStatus.PENDING, JobStatus.WAITING) and not job.lease_live(self.deps.clock.now()):
            # Its worker let the lease go since we read it (it asked the user, gave a stray
            # delivery back, backs off before a retry), and may have looked at the flag for the
            # last time before we set it: end the job here. (The worker reads the flag again after
            # its release: whichever of us comes second sees the other; see ``end_if_cancelled``.)
            done = end_unheld(self.deps, job, cancel_of(self.deps, job, job.cancel_by), API_WRITER)
            if done is not None:
                count("JobsCancelled")
                return done, True
            job = self.get(job.user_id, job_id)  # someone else wrote first: report what it is now
        if job.status is JobStatus.CANCELLED:
            return job, True
        if job.terminal:
            raise Conflict(f"job is already {job.status}", code="job_finished")
        return replace(job, cancel_requested=True), False

    # ---- answering a question -----------------------------------------------------------------

    def answer(self, user_id: str, job_id: str, input_id: str, answer: object) -> tuple[Job, bool]:
        """Answer the job's question. Returns (job, taken): taken for the answer that continues
        the job (202); the same answer again is not taken twice (200).

        The answer is an event at the head of the log, so it is fenced like every write: two
        answers at once (two devices), an answer and a cancel, an answer and the sweeper's
        timeout: one of them lands, the others find it there. Before it the sweep deadline moves
        to a grace period from now, after it the job is projected and resumed: a crash in between
        leaves a job the sweeper resumes (docs/architecture.md, "Asking the user").
        """
        job = self.owned(user_id, job_id)
        for _ in range(3):
            events = self.journal.read_all(job_id, known_head=job.last_seq)
            state = replay(events)
            question = state.asked.get(input_id)
            if question is None:
                raise Conflict("no such question for this job", code="stale_input")
            if input_id in state.answers:
                if state.answers[input_id] == answer and type(state.answers[input_id]) is type(answer):
                    answered = refold(job, events)
                    if job.status is JobStatus.WAITING and state.question is None and not state.status.terminal:
                        # The record (read strongly) still says waiting on an answered question:
                        # the first request's projection or resume failed (or is under way; both
                        # steps are idempotent). A client's retry finishes what it left undone.
                        self._continue(answered)
                    return answered, False
                raise Conflict("this question was already answered otherwise", code="input_answered")
            if state.status.terminal:
                raise Conflict(f"job is already {state.status}", code="job_finished")
            if not question.fits(answer):
                raise InvalidInput(_answer_hint(question), code="invalid_answer")
            current = state.question
            if current is None or current.input_id != input_id:
                raise Conflict("this is not the question the job waits on", code="stale_input")
            now = self.deps.clock.now()
            if parse_iso(question.expires_at) <= now:
                raise Conflict("this question has expired", code="input_expired")
            self.deps.jobs.postpone(job_id, now + self.settings.pending_grace_seconds)
            received = InputReceivedPayload(input_id=input_id, answer=answer)
            ev = Event.of(state.last_seq + 1, received, attempt=job.attempts, writer=API_WRITER,
                          at=self.deps.clock.now())
            try:
                self.journal.append(job_id, ev, job.expires_at)
            except SlotTaken:
                continue  # another answer, a cancel or the timeout got there first: read and say so
            answered = refold(job, [*events, ev])
            self._continue(answered)
            count("QuestionsAnswered")
            return answered, True
        raise TransientStoreError(f"could not answer {job_id}")

    def _continue(self, answered: Job) -> None:
        """Project the answered job and resume it (both idempotent). Should either fail, its sweep
        deadline moves to now: the sweeper then finds the answer and resumes the job.

        Why now, after the answer landed, and not only the grace period set before it: a sweeper
        that read the log before the answer landed may move the deadline to the question's expiry
        (``postpone_waiting``, the record still saying ``waiting``) after that first postpone. This
        one, written after the answer, either lands after the sweeper's, or before it, and then
        the sweeper's read of the log that follows its write finds the answer (sim seed 62469)."""
        job_id = answered.job_id
        try:
            self.deps.jobs.save_projection(answered, owner=None)
            self.admission.resume(answered)
        except StoreError as exc:
            log.warning("answered; resuming is left to the sweeper", extra={"job_id": job_id, "error": str(exc)})
            try:
                self.deps.jobs.postpone(job_id, self.deps.clock.now())
            except StoreError:
                pass  # the grace period's deadline stands; the client's retry of the answer repairs

    # ---- conversations ------------------------------------------------------------------------

    def conversations(self, user_id: str, limit: int | None, cursor: str | None,
                      ) -> tuple[list[dict[str, str]], str | None]:
        """The caller's conversations, most recently active first (a page, with an opaque cursor
        for the next one). A view, read from an index: it may lag a submit by a moment; an
        expired conversation is never listed. Titles are the first user message, shortened."""
        limit = min(CONVERSATIONS_PAGE, self.settings.max_list_limit) if limit is None else limit
        if not 1 <= limit <= self.settings.max_list_limit:
            raise InvalidInput(f"limit must be 1..{self.settings.max_list_limit}", code="invalid_limit")
        before: str | None = None
        if cursor is not None:
            before = decode_cursor(self.settings.cursor_secret, user_id, cursor).get("conversations_before")
            if not isinstance(before, str) or not before:
                raise InvalidInput("malformed cursor", code="invalid_cursor")
        page = self.deps.conversations.recent(user_id, limit, before)
        nxt = (encode_cursor(self.settings.cursor_secret, user_id, {"conversations_before": page.before})
               if page.before else None)
        return [{"conversation_id": h.conversation_id, "updated_at": h.updated_at, "title": h.title}
                for h in page.conversations], nxt

    def conversation(self, user_id: str, conversation_id: str, limit: int | None = None,
                     cursor: str | None = None) -> tuple[list[dict[str, object]], str | None]:
        """A page of the caller's conversation: the newest ``limit`` messages before ``cursor``
        (the latest, without one), oldest first, and a cursor for the older page if there is one.

        One bounded, strongly consistent read (``ConversationStore.page``): its cost is the page,
        never the conversation's length. The cursor is signed and bound to the user and the
        conversation, like the job list's.
        """
        if not is_conversation_id(conversation_id):
            raise InvalidInput("malformed conversation id", code="invalid_conversation_id")
        limit = self.settings.max_list_limit if limit is None else limit
        if not 1 <= limit <= self.settings.max_list_limit:
            raise InvalidInput(f"limit must be 1..{self.settings.max_list_limit}", code="invalid_limit")
        before: str | None = None
        if cursor is not None:
            key = decode_cursor(self.settings.cursor_secret, user_id, cursor)
            before = key.get("before")
            if key.get("conversation_id") != conversation_id or not isinstance(before, str) or not before:
                raise InvalidInput("malformed cursor", code="invalid_cursor")
        page = self.deps.conversations.page(user_id, conversation_id, limit, before)
        nxt = (encode_cursor(self.settings.cursor_secret, user_id,
                             {"conversation_id": conversation_id, "before": page.before})
               if page.before else None)
        return page.messages, nxt
