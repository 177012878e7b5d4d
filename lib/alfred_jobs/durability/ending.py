"""Ending a job no worker holds: a cancel from the API, an unanswered question past its expiry, a
cancel flag nobody acted on (``end_if_cancelled``).

The same order as a worker's finalize: the terminal event at the head of the log (the fence: if a
worker got an event in first, nothing is ended here), the job's place in its gate handed on, then
the terminal projection, which takes the job off the sweeper's index. A crash before the
projection leaves the job on the index: the sweeper finds it and finishes it (``finish_ended``),
or sends it to a worker that finalizes it. For that to happen soon, the job's sweep deadline moves
to a grace period from now *before* the terminal event: a job waiting on a question has it at the
question's expiry (a day by default), and its gate entry, still there, would hold its
conversation until then.
"""

from __future__ import annotations

from alfred_jobs.domain.events import (
    CancelledPayload,
    CompletePayload,
    EventType,
    FailedPayload,
    Payload,
    SteeredPayload,
    replay,
)
from alfred_jobs.domain.models import Event, Job, JobStatus, conversation_title, fold
from alfred_jobs.durability.admission import Admission
from alfred_jobs.durability.journal import Journal
from alfred_jobs.exceptions import SlotTaken, StoreError
from alfred_jobs.observability import get_logger
from alfred_jobs.ports import Deps

log = get_logger()


def end_unheld(deps: Deps, job: Job, payload: Payload, writer: str) -> Job | None:
    """Put ``payload`` (terminal) after ``job.last_seq`` and finish the job; the ended job, or None
    if the slot was taken (a worker, or another ender, wrote first: the caller reads again)."""
    journal = Journal(deps.log, deps.settings.retention_seconds)
    sealed = _seal_unheld(deps, journal, job, writer)
    if sealed is None:
        return None
    job = sealed
    # Before the terminal event, as ``JobService.answer`` before its own: should the finalizing
    # below fail (or this process die), the sweeper finds the job a grace period from now and
    # finishes it (``Sweeper._sweep_one``: an asking entry goes through ``_asking``, which sends an
    # ended job to a worker; one that may start is sent; one that must wait is finished there, by
    # ``finish_ended``). Not its question's expiry, a day away. After the door's close: an asker
    # (or a sweeper) moving the deadline to the expiry as we end the job writes only while the
    # door is open (``postpone_waiting``), so its move lands before the close, and this one
    # after it, or it is refused (sim seed 195980 at 5290c41: the move landed between this
    # write and the terminal event, the gate removal after it was throttled, and the ended job's
    # entry held its conversation for the question's day).
    deps.jobs.postpone(job.job_id, deps.clock.now() + deps.settings.pending_grace_seconds)
    ev = Event.of(job.last_seq + 1, payload, attempt=job.attempts, writer=writer, at=deps.clock.now())
    try:
        journal.append(job.job_id, ev, job.expires_at)
    except SlotTaken:
        return None
    done = fold(job, [ev])
    try:
        _finish(deps, done, ev)
    except StoreError as exc:
        log.warning("ended; finalizing is left to the sweeper", extra={"job_id": job.job_id, "error": str(exc)})
    return done


def finish_ended(deps: Deps, job_id: str) -> Job | None:
    """Finish a job whose log ends in its terminal event but whose record does not say so, and
    that nobody holds: what ``end_unheld`` does after its event, when that failed (a timed-out gate
    removal, a crash). The finished job, or None (not ended by its log, already finished, or held:
    its holder meets the terminal event at its next write and finalizes).

    Why here and not by a worker: the sweeper sends a job a worker would finalize only once it may
    start, and a job waiting behind an earlier one of its conversation may not start for a day (that
    one asks the user): a worker sent it reads the gate, finds it not its turn, and gives it back
    without reading its log. Meanwhile its entry holds a place in the gate (sim seed 3171 at
    36d5f5e). Strongly consistent reads: the record, then the log after its projection."""
    job = deps.jobs.get(job_id)
    if job is None or job.terminal or job.lease_live(deps.clock.now()):
        return None
    events = Journal(deps.log, deps.settings.retention_seconds).read_after(job_id, job.last_seq)
    if not events or not events[-1].terminal:
        return None
    done = fold(job, events)
    _finish(deps, done, events[-1])
    return done


def _finish(deps: Deps, done: Job, term: Event) -> None:
    """From the terminal event ``term`` of ``done``, a job nobody holds, as a worker's finalize:
    its conversation turn (a reply, or the words a stop kept), a failure's message parked, its place
    in the gate handed on, then its terminal projection (off the sweeper's index, so a failure
    before it leaves the job to the sweeper, which finishes it again: each write is idempotent)."""
    payload = term.payload
    journal = Journal(deps.log, deps.settings.retention_seconds)
    expires_at = journal.expires_at(deps.clock.now())
    reply = payload.reply if isinstance(payload, CompletePayload) else (
        payload.partial_reply if isinstance(payload, CancelledPayload) else None)
    if reply:
        # The messages steered into the job are its turn's too, between its message and the reply
        # (a rare path: a reply this process did not write, so the log is read for them).
        steered = tuple(replay(journal.read_all(done.job_id, known_head=term.seq)).steered.values())
        deps.conversations.commit_turn(done.user_id, done.conversation_id, done.job_id, done.message,
                                       reply, term.at, expires_at, steered,
                                       stopped=isinstance(payload, CancelledPayload))
        deps.conversations.touch(done.user_id, done.conversation_id, term.at,
                                 conversation_title(done.message), expires_at)
    Admission(deps).release(done)
    if isinstance(payload, FailedPayload):
        deps.queue.dead_letter(done.job_id, done.job_id, payload.error.code)  # guarantee 8
    deps.jobs.save_projection(done, owner=None)


def cancel_of(deps: Deps, job: Job, by: str | None) -> CancelledPayload:
    """The cancel of a job nobody holds; one whose log has begun its reply (its worker died while
    replying) keeps the reply shown so far. The log is read only then (one strongly consistent
    read): a job not replying has nothing to keep."""
    partial = None
    if job.progress.phase == "reply":
        events = Journal(deps.log, deps.settings.retention_seconds).read_all(job.job_id, known_head=job.last_seq)
        partial = replay(events).partial_reply
    return CancelledPayload.interrupted_by(by, partial)


def _seal_unheld(deps: Deps, journal: Journal, job: Job, writer: str) -> Job | None:
    """Close the job's reply door before its terminal event, as a worker does (``_Attempt._seal``):
    each steer on the record gets its ``steered`` event first, so none is left unanswered. The job
    with those events, or None if another writer got into the log first (the caller reads again).
    Without a lease, the close is conditional only on the steers seen; should the terminal event
    then lose its slot to a worker, the door stays closed: later steers become new jobs."""
    for _ in range(deps.settings.max_steers_per_job + 3):
        rec = deps.jobs.get(job.job_id)  # strongly consistent
        steers = rec.steers if rec is not None else ()
        if steers:
            events = journal.read_all(job.job_id, known_head=job.last_seq)
            if events and events[-1].seq > job.last_seq:
                return None  # written meanwhile: the caller's view is stale
            recorded = {e.data["message_id"] for e in events if e.type is EventType.STEERED}
            for st in steers:
                if st.message_id in recorded:
                    continue
                ev = Event.of(job.last_seq + 1, SteeredPayload(message_id=st.message_id, text=st.text),
                              attempt=job.attempts, writer=writer, at=deps.clock.now())
                try:
                    journal.append(job.job_id, ev, job.expires_at)
                except SlotTaken:
                    return None
                job = fold(job, [ev])
        if rec is None or deps.jobs.close_door(job.job_id, len(steers), owner=None) is not None:
            return job
    return None


def end_if_cancelled(deps: Deps, job_id: str, writer: str) -> Job | None:
    """End the job cancelled if its cancel flag is set and nobody holds it; the ended job, or None
    (no flag, held, running by its log, ended already, or another writer got in first).

    Why: the API's cancel of a job whose lease it sees live only sets the flag, for the worker to
    act on at a step boundary, and the worker's keeper may not have read it yet when the worker
    lets the lease go (it asks the user, gives a stray delivery back, backs off before a retry).
    So whoever lets a lease go calls this *after* the release (a strongly consistent read), and
    the API looks at the lease in the record its flag's write returns (``JobService._cancel``):
    of the release and the flag, whichever lands second is seen by its writer, who ends the job.
    Both may try: the log's slot lets one in. The sweeper calls it too, for a due job nobody holds.
    """
    job = deps.jobs.get(job_id)  # strongly consistent
    if job is None or not job.cancel_requested or job.terminal or job.lease_live(deps.clock.now()):
        return None
    job = fold(job, Journal(deps.log, deps.settings.retention_seconds).read_after(job_id, job.last_seq))
    if job.status not in (JobStatus.PENDING, JobStatus.WAITING):
        return None  # ended (a worker finalizes it), or running by its log: its next attempt stops at once
    return end_unheld(deps, job, cancel_of(deps, job, job.cancel_by), writer)
