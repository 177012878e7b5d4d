"""Ending a job no worker holds: a cancel from the API, an unanswered question past its expiry, a
cancel flag nobody acted on (``end_if_cancelled``).

The same order as a worker's finalize: the terminal event at the head of the log (the fence: if a
worker got an event in first, nothing is ended here), the job's place in its gate handed on, then
the terminal projection, which takes the job off the sweeper's index. A crash before the
projection leaves the job on the index: the sweeper sends it, and a worker finalizes it. For that
to happen soon, the job's sweep deadline moves to a grace period from now *before* the terminal
event: a job waiting on a question has it at the question's expiry (a day by default), and its
gate entry, still there, would hold its conversation until then.
"""

from __future__ import annotations

from alfred_jobs.domain.events import CancelledPayload, EventType, FailedPayload, Payload, SteeredPayload
from alfred_jobs.domain.models import Event, Job, JobStatus, fold
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
    # Before the terminal event, as ``JobService.answer`` before its own: should the finalizing
    # below fail (or this process die), the sweeper finds the job a grace period from now and
    # sends it to a worker, which finalizes it (``Sweeper._sweep_one``: an asking entry goes
    # through ``_asking``, which sends an ended job; any other is sent once it may start, or by
    # the hand-off that frees its way). Not its question's expiry, a day away.
    deps.jobs.postpone(job.job_id, deps.clock.now() + deps.settings.pending_grace_seconds)
    sealed = _seal_unheld(deps, journal, job, writer)
    if sealed is None:
        return None
    job = sealed
    ev = Event.of(job.last_seq + 1, payload, attempt=job.attempts, writer=writer, at=deps.clock.now())
    try:
        journal.append(job.job_id, ev, job.expires_at)
    except SlotTaken:
        return None
    done = fold(job, [ev])
    try:
        Admission(deps).release(done)
        if isinstance(payload, FailedPayload):
            deps.queue.dead_letter(job.job_id, job.job_id, payload.error.code)  # guarantee 8
        deps.jobs.save_projection(done, owner=None)
    except StoreError as exc:
        log.warning("ended; finalizing is left to a worker", extra={"job_id": job.job_id, "error": str(exc)})
    return done


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
    return end_unheld(deps, job, CancelledPayload.interrupted_by(job.cancel_by), writer)
