"""Admission through each user's gate (``domain/gate.py``): who may run now, and the hand-off.

- **Submit** enrolls the job (the 429 past ``max_active_per_user`` is the gate's condition) and
  sends its message only if the gate, as its own write left it, lets the job start.
- **A worker** takes a run slot before it opens the job (``take``); a job that may not start yet
  gives its delivery back without counting an attempt and without a message: it holds nothing.
  The slot is stamped with the attempt that took it, and a worker's later gate writes (its pause,
  its resume, its finalize's release) are refused once a later attempt has stamped it: a worker
  that lost its lease never gives away, or hands on, a slot its successor runs in.
- **A job that ends** (the runner's finalize, the API's cancel of a job nobody holds) removes its
  entry, then sends the message of every job its removal lets start (``release``), and only then
  writes its terminal projection. A crash anywhere before that projection leaves the job active
  on the sweeper's index, so the whole finalize runs again: the hand-off is never lost.
- **The sweeper** is the backstop: a due job that may start is sent again, one that must wait is
  left alone (``classify``).
- **Leftovers**: an entry whose job has ended or has no record (an enroll that landed after its
  job was refused or had ended, an undo that failed, a resend of a finished job whose release
  failed) must never hold a user's place, nor outlive its job. Whoever would hand it a slot
  (``hand_on``, which learns it from the postpone it writes anyway), the sweeper looking at what
  keeps a due job waiting, and a submit about to be refused for a full gate (``enroll``) take it
  out instead; and the sweeper checks every gate that holds entries (its check index, on which an
  enroll lists the gate), so one that is in nobody's way goes too.

Each decision is taken from the gate as a strongly consistent read or the caller's own
conditional write returned it; a duplicate message is harmless (the lease drops it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from alfred_jobs.domain.events import parse_iso
from alfred_jobs.domain.gate import Gate, GateEntry
from alfred_jobs.domain.models import Job, iso
from alfred_jobs.domain.retention import expiry
from alfred_jobs.exceptions import ConditionFailed, Fenced, GateFull
from alfred_jobs.observability import count, get_logger
from alfred_jobs.ports import Deps

log = get_logger()


class Verdict(StrEnum):
    RUN = "run"            # the job holds a slot: run it
    WAIT = "wait"          # it must wait for an earlier job of its conversation, or a free slot
    NOT_ENROLLED = "not_enrolled"


def gate_entry(job: Job) -> GateEntry:
    """The job's entry: its conversation, and its place in submit order (as ``created_sk``)."""
    return GateEntry(job.job_id, job.conversation_id, f"{iso(job.created_at)}#{job.job_id}",
                     created_at=job.created_at)


def entered_at(entry: GateEntry) -> float:
    """When the entry went in, or later (never earlier: the grace period is measured from it).
    Its order starts with its job's creation time, or, when that was not after the gate's
    ``last``, with the time of the entry it was placed after, which is later."""
    return parse_iso(entry.order.split("#", 1)[0])


@dataclass
class HandOff:
    """What a hand-off did: the gate it left, the jobs it sent, the leftovers it took out."""

    gate: Gate
    sent: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


class Admission:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.settings = deps.settings

    def _expires(self) -> int:
        return expiry(self.deps.clock.now(), self.settings.retention_seconds)

    def enroll(self, job: Job) -> Gate:
        """Add the job to its user's gate (``GateFull`` past the active limit: never past it, not
        even for a job its submit never enrolled); returns the gate after it.

        A full gate is looked at before it refuses: leftovers (entries whose job has ended or has
        no record) are taken out, and the enroll tried again: a 429 means "too many jobs under
        way", and a gate that leftovers fill while the user has no live job has nobody else to
        clear it. It costs one strongly consistent read per entry, on a refusal only.
        """
        cap = self.settings.max_active_per_user
        try:
            return self._enroll(job, cap)
        except GateFull as full:
            if not self.remove_leftovers(job.user_id, full.gate, full.gate.entries).repaired:
                raise
            return self._enroll(job, cap)

    def _enroll(self, job: Job, cap: int) -> Gate:
        # The gate is listed for the sweeper's check of its entries in the same write: an entry
        # whose enroll lands after its job ended or went (a submit frozen with it in flight, an
        # undo that failed) is found there, even once its user has no live job to lead to it.
        check_at = self.deps.clock.now() + self.settings.gate_check_seconds
        return self.deps.gates.enroll(job.user_id, gate_entry(job), cap, self._expires(), check_at=check_at)

    def leftover(self, entry: GateEntry, now: float) -> bool:
        """Whether ``entry`` belongs to no live job: its job has ended, or has no record and the
        entry is older than the grace period (a younger one's record may still be on its way).
        One strongly consistent read. (An ending job removes its own entry before its terminal
        projection, so an entry of a job its record calls ended is one nobody else removes.)"""
        job = self.deps.jobs.get(entry.job_id)
        if job is not None:
            return job.terminal
        return now - entered_at(entry) > self.settings.pending_grace_seconds

    def remove_leftovers(self, user_id: str, gate: Gate, entries: Iterable[GateEntry],
                         live: set[str] | None = None) -> HandOff:
        """Take those of ``entries`` that are leftovers out of ``gate``, then hand on what they
        held or claimed. The entries found live are added to ``live``, and those already in it
        are not read again."""
        live = set() if live is None else live
        now = self.deps.clock.now()
        removed: list[str] = []
        for entry in entries:
            if entry.job_id in live or gate.entry(entry.job_id) is None:
                continue
            if not self.leftover(entry, now):
                live.add(entry.job_id)
                continue
            gate = self.deps.gates.remove(user_id, entry.job_id)
            removed.append(entry.job_id)
            count("GateEntriesRepaired")
            log.warning("gate entry of a job gone or ended removed", extra={"job_id": entry.job_id, "user": user_id})
        if not removed:
            return HandOff(gate)
        handoff = self.hand_on_from(user_id, gate)
        handoff.repaired[:0] = removed
        return handoff

    def take(self, job: Job, *, next_up: bool = False) -> Verdict:
        """Take a run slot for ``job`` (the caller holds its lease; ``job`` is the record its lease
        returned, whose ``attempts`` stamps the slot: the gate's fence, ``ports.GateStore``).

        The gate is read first: only the oldest job of its conversation may start, and the store's
        condition cannot see order (it checks the slot count and that no job of the conversation
        runs). Being the oldest cannot be undone (an entry goes in only after every earlier one),
        so the read's answer still holds when the write lands. A message of a job that must wait
        (a duplicate, a stray) is thereby harmless too.

        An entry found running already holds the job's slot: ours if our own take landed
        unanswered; an earlier attempt's if that one took it and lost the job before it gave the
        slot back (it asked the user and was frozen before its pause, or died): we take it over,
        stamping it with our attempt (``retake``), so that the earlier attempt's late writes are
        refused. Stamped by a later attempt: we have lost the job ourselves (``Fenced``).
        """
        s = self.settings
        entry = gate_entry(job)
        attempt = job.attempts
        if next_up:
            # Its sender found it the oldest waiting job of its conversation (the submit's and the
            # sweeper's ``next_up``, a hand-off's ``startable``), which cannot be undone: the write
            # alone decides, its condition checking the rest. Only when it fails (no free slot, our
            # own earlier take, not enrolled) is the gate read to tell which. One read less per job.
            try:
                self.deps.gates.take(job.user_id, entry, s.max_running_per_user, self._expires(), attempt=attempt)
                return Verdict.RUN
            except ConditionFailed:
                pass
        for _ in range(3):
            gate = self.deps.gates.read(job.user_id)
            mine = gate.entry(job.job_id)
            if mine is None:
                return Verdict.NOT_ENROLLED
            if mine.running:
                if mine.stamped_by(job.created_at, attempt):
                    return Verdict.RUN  # ours already: our write landed unanswered
                if mine.fences(job.created_at, attempt):
                    raise Fenced(job.job_id)  # a later attempt (or a later job of the id) holds it
                try:
                    self.deps.gates.retake(job.user_id, job.job_id, attempt=attempt, created_at=job.created_at)
                    count("GateSlotsTakenOver")
                    return Verdict.RUN
                except ConditionFailed:
                    continue  # it moved between the read and the write: read again
            if not gate.may_start(job.job_id, s.max_running_per_user):
                return Verdict.WAIT
            try:
                self.deps.gates.take(job.user_id, entry, s.max_running_per_user, self._expires(), attempt=attempt)
                return Verdict.RUN
            except ConditionFailed:
                continue  # it moved between the read and the write: read again
        return Verdict.WAIT

    def release(self, job: Job, *, attempt: int | None = None) -> list[str]:
        """Remove the ending job from its gate and hand its place on; idempotent (call it again
        after a crash: the removal is done once, the hand-off again, which is harmless).

        ``attempt``: a worker's finalize, fenced like its other gate writes (``Fenced`` if a later
        attempt stamped the entry: that one finalizes). The API and the sweeper pass none: they end
        a job nobody holds, after their terminal event landed."""
        try:
            gate = self.deps.gates.remove(job.user_id, job.job_id, conversation_id=job.conversation_id,
                                          attempt=attempt, created_at=job.created_at)
        except ConditionFailed:
            raise Fenced(job.job_id) from None
        return self.hand_on(job.user_id, gate)

    def withdraw(self, job: Job) -> bool:
        """Take the entry of a refused submit's job out again, if no worker has taken it (False
        otherwise: it runs after all), and send the later job of its conversation if the removal
        let that one start: the job ahead may have ended meanwhile and handed on to this one, whose
        message will find no record; nobody else would send the next (sim seed 108223's family).
        Only later jobs of its conversation are looked at: the removal frees no slot, so it cleared
        no other way (and an earlier job that may start could already, and was sent)."""
        try:
            gate = self.deps.gates.remove(job.user_id, job.job_id, conversation_id=job.conversation_id,
                                          only_untaken=True, created_at=job.created_at)
        except ConditionFailed:
            return False
        if gate.entry(job.job_id) is not None:
            return True  # the entry of a later job of its id (its key's), left alone: nothing cleared
        # The entry's order is its creation's, or later if the gate's last was later: this is a floor.
        mine = gate_entry(job)
        cleared = [e for e in gate.startable(self.settings.max_running_per_user)
                   if e.conversation_id == job.conversation_id and e.order > mine.order]
        if cleared:
            self.hand_on(job.user_id, Gate(tuple(cleared), gate.running))
        return True

    def pause(self, job: Job, *, attempt: int) -> list[str]:
        """The job asks the user: its slot goes back (handed on to the user's other jobs), its
        conversation stays held until it ends. ``Fenced`` (and nothing written) if a later attempt
        than ``attempt`` took the job over: the slot is that one's now."""
        try:
            gate = self.deps.gates.pause(job.user_id, job.job_id, job.conversation_id, attempt=attempt,
                                         created_at=job.created_at)
        except ConditionFailed:
            raise Fenced(job.job_id) from None
        return self.hand_on(job.user_id, gate)

    def resume(self, job: Job, *, attempt: int | None = None) -> bool:
        """The user answered: the job waits to run again, and is sent if it may start now
        (otherwise whoever frees a slot sends it). Idempotent. ``attempt``: the asking worker's,
        which saw the answer as it left (``Fenced`` if a later attempt took the job over); the
        API and the sweeper pass none."""
        try:
            gate = self.deps.gates.unpause(job.user_id, job.job_id, attempt=attempt, created_at=job.created_at)
        except ConditionFailed:
            raise Fenced(job.job_id) from None
        if not gate.next_up(job.job_id, self.settings.max_running_per_user):
            return False
        self.deps.jobs.postpone(job.job_id, self.deps.clock.now() + self.settings.pending_grace_seconds)
        self.deps.queue.send(job.job_id, next_up=True)
        return True

    def hand_on(self, user_id: str, gate: Gate) -> list[str]:
        """Send every job ``gate`` lets start; the jobs sent (see ``hand_on_from``)."""
        return self.hand_on_from(user_id, gate).sent

    def hand_on_from(self, user_id: str, gate: Gate) -> HandOff:
        """Send every job ``gate`` lets start. Its sweep deadline moves first, so a message lost
        after this is found by the sweeper a grace period later, and one in flight is not sent
        twice by it.

        That postpone also says whether the job is active. An entry whose job is not (it has
        ended, or has no record past the grace period) is a leftover: it is taken out instead of
        sent, and the gate its removal leaves is handed on in turn, so a free slot never goes to a
        leftover and a user's last job to end leaves none behind. (Without a record but younger
        than the grace period, it may be a submit under way: it is sent, as it always was.)
        """
        s = self.settings
        handoff = HandOff(gate)
        while True:
            stale = None
            for entry in handoff.gate.startable(s.max_running_per_user):
                if entry.job_id in handoff.sent or entry.job_id in handoff.repaired:
                    continue
                now = self.deps.clock.now()
                if (not self.deps.jobs.postpone(entry.job_id, now + s.pending_grace_seconds)
                        and self.leftover(entry, now)):
                    stale = entry
                    break
                self.deps.queue.send(entry.job_id, next_up=True)
                handoff.sent.append(entry.job_id)
            if stale is None:
                break
            handoff.gate = self.deps.gates.remove(user_id, stale.job_id)
            handoff.repaired.append(stale.job_id)
            count("GateEntriesRepaired")
            log.warning("gate entry of a job gone or ended removed", extra={"job_id": stale.job_id, "user": user_id})
        if handoff.sent:
            count("JobsHandedOn", len(handoff.sent))
            log.info("handed on", extra={"user": user_id, "jobs": handoff.sent})
        return handoff
