"""Ending a job no worker holds: a cancel from the API, an unanswered question past its expiry.

The same order as a worker's finalize: the terminal event at the head of the log (the fence: if a
worker got an event in first, nothing is ended here), the job's place in its gate handed on, then
the terminal projection, which takes the job off the sweeper's index. A crash before the
projection leaves the job on the index: the sweeper sends it, and a worker finalizes it.
"""

from __future__ import annotations

from alfred_jobs.domain.events import FailedPayload, Payload
from alfred_jobs.domain.models import Event, Job, fold
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
