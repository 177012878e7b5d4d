"""The sweeper: nothing stays pending or running forever (guarantee 9), and a backlog is not a fault.

It reads the active jobs whose deadline passed and tells four cases apart:

- **stranded**: running past its lease (the worker died), or admitted to run (it holds a slot,
  or nothing stops it) with no message under way: its message is sent again. Only these count
  as ``StuckJobs``, the metric behind the stuck-jobs alarm.
- **queued**: it may start and was sent, but never picked up, while the queue holds a backlog:
  its message is presumed still queued, and it is checked again a grace period later. At most
  once per send, though: a sender that writes before it sends (the submit, a hand-off, a resume)
  may have died in between, and on a queue shared with other traffic the backlog is never zero.
  So a job found due again, still never started, after one presumption since its last send, is
  sent again (``resent``: its message was lost, or this one is a duplicate, which the lease drops).
  That send is the sweeper's own, made before its write, so a message of the job is known to be
  in the queue: it is presumed queued until ``max_queue_wait_seconds`` after the job's creation,
  and sent again at most once per job in a long backlog. The mark lives on the job record and
  every decision on it is its conditional write (``JobStore.presume_queued``), never the index
  read that found the job: a stale read cannot make the sweeper presume twice.
- **waiting**: its user's gate says it must wait (an earlier job of its conversation, or the
  user's run slots all held). It holds nothing; whoever frees its way sends it. Left alone. So is
  a job never admitted to its gate (no entry, never started) while the gate is full: it is
  admitted under the active limit only, and sent once there is room.
- **finished**: its terminal event is there but not its projection: sent, so that a worker
  finalizes it (hand-off included).
- **asking the user**: left alone until its question expires (``ALFRED_INPUT_TIMEOUT_SECONDS``),
  then ended ``failed`` with ``input_timeout``; an answered one whose resume was lost is sent.
- **cancelled, not ended**: nobody holds it and its cancel flag is set (its worker let the lease
  go and died before it looked at the flag again): ended ``cancelled``, as the API would have.
- **ended, behind others**: its gate says wait, but its log holds its end (the API cancelled it,
  and its gate removal or projection failed): finished here (``finish_ended``), since a worker
  would find it not its turn and give it back unread.

Sending a healthy job again is harmless (the worker drops a delivery whose job holds a live
lease, or is done), so every mistake here costs a message, never a second run. The reads that
can be stale (the due index, the queue's approximate backlog) only decide *when* a job is sent
again.

The sweeper also repairs gates: for a due job that waits, every entry that keeps it waiting (in
its conversation, or holding or claiming the user's run slots in any other) is looked at, and an
entry whose job record is gone (past the grace period: its submit died between the two writes,
or its undo failed) or has ended is removed, and its place handed on. A job whose only blockers
were such leftovers is sent then.

And it checks gates themselves (``_check_gate``): a leftover in nobody's way (its user has no due
job, or no live job at all) is never met by the repairs above. Every gate that holds an entry is
on the gate store's check index (the enroll that adds an entry lists its gate in the same write),
due ``gate_check_seconds`` after it was listed or last checked. A due gate is read, each entry's
job record read strongly consistently (once per sweep), the leftovers removed and their places
handed on; a gate left with entries is checked again ``gate_check_seconds`` later, an empty one is
taken off the index (a write whose condition is that it is empty: an enroll that landed since
keeps it listed). The index read is eventually consistent: it only decides *when* a gate is
looked at, and what is removed is decided from strongly consistent reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from alfred_jobs.domain.events import ErrorInfo, EventType, FailedPayload, parse_iso, replay
from alfred_jobs.domain.gate import Gate
from alfred_jobs.domain.models import Job, fold
from alfred_jobs.durability.admission import Admission
from alfred_jobs.durability.ending import end_if_cancelled, end_unheld, finish_ended
from alfred_jobs.durability.journal import Journal
from alfred_jobs.exceptions import StoreError
from alfred_jobs.observability import count, get_logger
from alfred_jobs.ports import Deps

log = get_logger()
SWEEPER_WRITER = "sweeper"


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)  # stranded: sent again
    waiting: list[str] = field(default_factory=list)   # waiting their turn in their gate
    queued: list[str] = field(default_factory=list)    # sent, presumed still in the queue's backlog
    resent: list[str] = field(default_factory=list)    # presumed queued once since its last send: sent again
    repaired: list[str] = field(default_factory=list)  # gate entries of jobs gone or ended, removed
    handed_on: list[str] = field(default_factory=list)  # sent because a repair freed their way
    timed_out: list[str] = field(default_factory=list)  # questions unanswered past their expiry: failed
    cancelled: list[str] = field(default_factory=list)  # cancel flags nobody acted on: ended cancelled
    finished: list[str] = field(default_factory=list)  # ended by their log, waiting by their record: finished
    gates_checked: list[str] = field(default_factory=list)  # users whose gate's entries were checked
    errors: int = 0


class Sweeper:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.admission = Admission(deps)

    def sweep(self, limit: int = 200) -> SweepReport:
        """Look at every active job past its deadline (at most ``limit`` per shard)."""
        now = self.deps.clock.now()
        report = SweepReport()
        gates: dict[str, Gate] = {}
        live: set[str] = set()  # gate entries found to belong to a live job, in this sweep
        backlog: list[int] = []

        def queue_backlog() -> int:  # asked once per sweep, and only if needed
            if not backlog:
                backlog.append(self.deps.queue.backlog())
            return backlog[0]

        for job in self.deps.jobs.find_due(now, limit):
            try:
                self._sweep_one(job, now, gates, live, queue_backlog, report)
            except StoreError as exc:
                report.errors += 1
                log.warning("sweeper could not handle a job", extra={"job_id": job.job_id, "error": str(exc)})
        for user in self.deps.gates.due_for_check(now, limit):
            try:
                self._check_gate(user, now, live, report)
            except StoreError as exc:
                # Still listed, still due: the next sweep checks it again.
                report.errors += 1
                log.warning("sweeper could not check a gate", extra={"user": user, "error": str(exc)})
        count("StuckJobs", len(report.requeued))
        count("JobsWaiting", len(report.waiting))
        count("JobsQueued", len(report.queued))
        count("QueuedJobsResent", len(report.resent))
        if report.requeued or report.resent or report.repaired:
            log.info("sweeper requeued jobs", extra={"count": len(report.requeued), "resent": len(report.resent),
                                                      "repaired": len(report.repaired)})
        return report

    def _sweep_one(self, job: Job, now: float, gates: dict[str, Gate], live: set[str],
                   queue_backlog: Callable[[], int], report: SweepReport) -> None:
        s = self.deps.settings
        later = now + max(s.lease_seconds, s.pending_grace_seconds)
        next_up = resent = False
        if job.lease_owner is None or not job.lease_live(now):
            if job.cancel_requested and end_if_cancelled(self.deps, job.job_id, SWEEPER_WRITER) is not None:
                # A flag set while a worker held the job, which let the lease go before it saw it
                # and died before it looked again (a waiting job would otherwise wait a day).
                report.cancelled.append(job.job_id)
                return
            gate = gates.get(job.user_id)
            if gate is None:
                gate = gates[job.user_id] = self.deps.gates.read(job.user_id)
            gate = gates[job.user_id] = self._repaired(gate, job, live, report)
            if job.job_id in report.handed_on:
                return  # a repair just sent it
            entry = gate.entry(job.job_id)
            if entry is None and job.attempts == 0 and self._waits_for_room(job, gate, gates, live, report):
                self.deps.jobs.postpone(job.job_id, now + s.pending_grace_seconds)
                report.waiting.append(job.job_id)
                return
            if entry is not None and entry.asking:
                self._asking(job, now, report)
                return
            if entry is not None and not entry.running:
                if not gate.next_up(job.job_id, s.max_running_per_user):
                    if self._finished(job, gates, report):
                        return
                    self.deps.jobs.postpone(job.job_id, now + s.pending_grace_seconds)
                    report.waiting.append(job.job_id)
                    return
                if (job.attempts == 0 and now - job.created_at < s.max_queue_wait_seconds
                        and job.job_id not in report.requeued and queue_backlog() > 0):
                    # Presumed queued, once per send (the record's mark, under the write's own
                    # condition): presumed once already, it is sent again (lost, or a duplicate).
                    if self.deps.jobs.presume_queued(job.job_id, now + s.pending_grace_seconds):
                        report.queued.append(job.job_id)
                        return
                    resent = True
                next_up = True
        # Stranded: a dead worker's job, an admitted job without a message, a job its submit
        # never enrolled (its first delivery enrolls it), or one whose finalize did not finish.
        self.deps.queue.send(job.job_id, next_up=next_up)
        # Not again before a worker had the time to take it; and this send, made before the
        # write, is known to be in the queue (``sent``): presumed queued while the backlog lasts.
        self.deps.jobs.postpone(job.job_id, later, sent=True)
        (report.resent if resent else report.requeued).append(job.job_id)

    def _finished(self, job: Job, gates: dict[str, Gate], report: SweepReport) -> bool:
        """Whether ``job``, which must wait its turn, has in fact ended: its log holds its terminal
        event (an API cancel, or the sweeper's own ending, whose gate removal or projection failed).
        Then it is finished here (``finish_ended``): a worker sent it would give it back unread,
        not its turn, and its entry would hold its place until its turn came, a day behind a
        question (sim seed 3171 at 36d5f5e). One strongly consistent read of the log's next key per
        waiting job found due (once per grace period); more only for a job that has ended."""
        journal = Journal(self.deps.log, self.deps.settings.retention_seconds)
        if not fold(job, journal.read_after(job.job_id, job.last_seq)).terminal:
            return False
        if finish_ended(self.deps, job.job_id) is None:
            return False  # held (its holder finalizes), or finished meanwhile: looked at again later
        gates.pop(job.user_id, None)  # its entry went: read the gate afresh for the next job
        report.finished.append(job.job_id)
        return True

    def _check_gate(self, user_id: str, now: float, live: set[str], report: SweepReport) -> None:
        """Remove the leftovers of a gate whose check is due (any entry, in anyone's way or not)
        and hand their places on; then check it again later, or take it off the index if empty.

        An entry with no record younger than the grace period is not removed yet (its record may
        be on its way); the next check, ``gate_check_seconds`` later, decides it."""
        s = self.deps.settings
        gate = self.deps.gates.read(user_id)
        if gate.entries:
            handoff = self.admission.remove_leftovers(user_id, gate, gate.entries, live)
            report.repaired += handoff.repaired
            report.handed_on += handoff.sent
            gate = handoff.gate
        if gate.entries:
            self.deps.gates.check_later(user_id, now + s.gate_check_seconds)
        else:
            self.deps.gates.unlist_if_empty(user_id)  # False: an enroll landed since; it stays due
        report.gates_checked.append(user_id)

    def _waits_for_room(self, job: Job, gate: Gate, gates: dict[str, Gate], live: set[str],
                        report: SweepReport) -> bool:
        """Whether ``job``, never admitted (no entry: its submit died before its enroll, or was
        refused and could not delete its record), must wait for room under the active limit: its
        first delivery enrolls it under the limit only. Leftovers filling the gate are removed
        first; a job whose log holds its end (the API ended it, then died) is not waiting: it is
        sent, and a worker finalizes it."""
        s = self.deps.settings
        if len(gate.entries) < s.max_active_per_user:
            return False
        journal = Journal(self.deps.log, s.retention_seconds)
        if fold(job, journal.read_after(job.job_id, job.last_seq)).terminal:
            return False
        handoff = self.admission.remove_leftovers(job.user_id, gate, gate.entries, live)
        gates[job.user_id] = handoff.gate
        report.repaired += handoff.repaired
        report.handed_on += handoff.sent
        return len(handoff.gate.entries) >= s.max_active_per_user

    def _asking(self, job: Job, now: float, report: SweepReport) -> None:
        """A job that asked the user: wait for the answer until the question expires, then fail
        it (``input_timeout``); resume it if the answer is there but the job was not sent."""
        s = self.deps.settings
        journal = Journal(self.deps.log, s.retention_seconds)
        events = journal.read_all(job.job_id, known_head=job.last_seq)
        job = fold(job, events)  # the events after the record's projection
        question = replay(events).question
        if job.terminal:  # ended, not finalized: a worker finishes it
            self.deps.queue.send(job.job_id)
            self.deps.jobs.postpone(job.job_id, now + max(s.lease_seconds, s.pending_grace_seconds))
            report.requeued.append(job.job_id)
        elif question is None:  # answered, and its resume was lost
            self._resume(job, now, report)
        elif parse_iso(question.expires_at) <= now:
            timeout = FailedPayload(error=ErrorInfo(
                code="input_timeout", message="no answer came in time; the job was given up"))
            if end_unheld(self.deps, job, timeout, SWEEPER_WRITER) is not None:
                report.timed_out.append(job.job_id)
                count("QuestionsTimedOut")
        elif end_if_cancelled(self.deps, job.job_id, SWEEPER_WRITER) is not None:
            # Its flag, read strongly: the index read that found the job may not show it yet, and
            # the deadline below is a day away (its asker died after letting the lease go).
            report.cancelled.append(job.job_id)
        elif self.deps.jobs.postpone_waiting(job.job_id, parse_iso(question.expires_at), now):
            # The user has until the question expires, unless the answer landed after our read:
            # its request may have failed to resume the job, and its last word (a deadline of
            # now) may have landed before ours. Read again, after our write: an answer landing
            # after this read moves the deadline after ours (sim seed 62469).
            tail = journal.read_after(job.job_id, job.last_seq)
            if any(e.type is EventType.INPUT_RECEIVED for e in tail):
                self._resume(job, now, report)
            else:
                report.waiting.append(job.job_id)
        else:  # answered (the record says so) or taken meanwhile
            report.waiting.append(job.job_id)

    def _resume(self, job: Job, now: float, report: SweepReport) -> None:
        """An answered job whose resume was lost: resume it, as the answer would."""
        self.admission.resume(job)
        self.deps.jobs.postpone(job.job_id, now + self.deps.settings.pending_grace_seconds)
        report.requeued.append(job.job_id)

    def _repaired(self, gate: Gate, due: Job, live: set[str], report: SweepReport) -> Gate:
        """``gate`` without the leftovers that keep ``due`` waiting: entries whose job record is
        gone (a submit that died between its two writes, or whose undo failed: only once the
        entry is older than the grace period, since the record may still be on its way) or has
        ended (a resend of a finished job whose release failed). Every blocker counts, of any
        conversation (``Gate.blockers``): two leftovers claiming the user's two slots lock out
        every other conversation. Each entry is read at most once per sweep (``live``); each
        removal hands on, which sends ``due`` once nothing but leftovers stood before it."""
        s = self.deps.settings
        for _ in range(2 * len(gate.entries) + 1):  # each round finds an entry live or removes one
            suspects = [e for e in gate.blockers(due.job_id, s.max_running_per_user) if e.job_id not in live]
            if not suspects:
                break
            handoff = self.admission.remove_leftovers(due.user_id, gate, suspects, live)
            gate = handoff.gate
            report.repaired += handoff.repaired
            report.handed_on += handoff.sent
        return gate
