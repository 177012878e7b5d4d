"""A user's gate: which of their active jobs may run now (guarantee 12 and per-user fairness).

Every active job of a user has an entry in the user's gate, from submit until it ends. An entry
is *waiting* or *running* (it holds one of the user's run slots). A waiting job may start when

- no other job of its conversation is running, and it is the oldest waiting job of its
  conversation (jobs of one conversation run one at a time, in submit order), and
- fewer than ``max_running`` of the user's jobs hold a slot (per-user fairness).

A waiting job holds nothing: no queue message, no worker, no lease. Whoever changes the gate
so that a job may start (the job that ends, the submit that finds the way clear, the sweeper as
the backstop) sends its message. The store applies every change as one conditional write and
returns the gate as it is after it, so each party decides from a state nobody else has moved.

A running entry records the attempt that took its slot (the job's ``attempts`` as its lease
returned it) and its job's creation time: the fence of the gate. An attempt's own gate writes
(pause, unpause, remove) are refused once a later attempt of the job has stamped the entry: an
attempt that lost its lease (paused past it, frozen with the write on the wire) can never give
away a slot its successor runs in, nor unpause a question its successor asked. The creation time
tells apart two jobs of one id (a reused Idempotency-Key makes a new job with the id of one whose
retention ran out): the new job's attempts are numbered from 1 again, so an attempt of the old
job waking late would otherwise pass the fence of the new job's entry (seed 1106).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateEntry:
    job_id: str
    conversation_id: str
    # Submit order: the job's ``created_sk`` (creation time, then job id). Ties between two
    # submits closer together than the API hosts' clock skew are concurrent: either order is one.
    order: str
    running: bool = False
    # Waiting for the user's answer: it gave its slot back but still holds its conversation
    # (the next message of the conversation waits for it), and is never sent until answered.
    asking: bool = False
    # The attempt that last took (or took over) the slot: the job's ``attempts`` as its lease
    # returned it, 0 while none has. Every attempt that takes a job over from another is numbered
    # above it, so a later attempt's stamp fences the earlier ones' gate writes (``GateStore``).
    attempt: int = 0
    # The creation time (``Job.created_at``) of the job that enrolled the entry or last took its
    # slot; 0 where unknown (an entry written before it was kept).
    created_at: float = 0.0

    @property
    def holds_conversation(self) -> bool:
        return self.running or self.asking

    def fences(self, created_at: float, attempt: int) -> bool:
        """Whether this entry refuses the gate writes of ``attempt`` of the job created at
        ``created_at``: it belongs to a later job of the same id, or a later attempt of the same
        job stamped it. (An entry of an earlier job of the id, a leftover, fences nothing.) A
        creation time of 0 on either side is unknown: the attempts alone are compared."""
        if self.created_at and created_at and self.created_at != created_at:
            return self.later_job(created_at)
        return self.attempt > attempt

    def later_job(self, created_at: float) -> bool:
        """Whether it belongs to a job of its id created after ``created_at`` (0: unknown, no)."""
        return bool(created_at) and self.created_at > created_at

    def of_another_job(self, created_at: float) -> bool:
        """Whether it is the entry of another job of its id than the one created at ``created_at``
        (0 on either side: unknown, no)."""
        return bool(self.created_at and created_at) and self.created_at != created_at

    def left_by_another_job(self, created_at: float) -> bool:
        """Whether it is an entry no worker took (never stamped) of another job of its id than the
        one created at ``created_at`` (0 on either side: unknown, no). The enroll of the job whose
        record holds the id takes it over (seed 139234): a resend's job, created later, enrolled
        the id and had its record deleted by a refusal, then the first submit's put, frozen in
        flight, created the job; kept as it was, the later creation time would refuse every take
        of that job."""
        return (bool(self.created_at and created_at) and self.created_at != created_at
                and not (self.running or self.asking or self.attempt))

    def stamped_by(self, created_at: float, attempt: int) -> bool:
        """Whether ``attempt`` of the job created at ``created_at`` is the one that stamped it."""
        same_job = not (self.created_at and created_at) or self.created_at == created_at
        return same_job and self.attempt == attempt


@dataclass(frozen=True)
class Gate:
    """A user's gate as one consistent read or one write returned it."""

    entries: tuple[GateEntry, ...] = ()
    running: int = 0  # slots held (the store keeps it with the entries, in the same writes)

    def entry(self, job_id: str) -> GateEntry | None:
        return next((e for e in self.entries if e.job_id == job_id), None)

    def in_order(self) -> list[GateEntry]:
        return sorted(self.entries, key=lambda e: e.order)

    def conversation(self, conversation_id: str) -> list[GateEntry]:
        """The active jobs of one conversation, in submit order."""
        return [e for e in self.in_order() if e.conversation_id == conversation_id]

    def ahead_of(self, job_id: str) -> list[GateEntry]:
        """The other active jobs of ``job_id``'s conversation that it must wait for: the one
        running, and every waiting one submitted before it."""
        me = self.entry(job_id)
        if me is None:
            return []
        return [e for e in self.conversation(me.conversation_id)
                if e.job_id != job_id and (e.holds_conversation or e.order < me.order)]

    def may_start(self, job_id: str, max_running: int) -> bool:
        """Whether ``job_id`` may take a slot now: the oldest of its conversation, none of which
        runs, and a slot free. (A worker holding its message takes it even if an older job of
        another conversation could have had the slot: that one's message may be lost.)"""
        me = self.entry(job_id)
        return (me is not None and not me.holds_conversation and not self.ahead_of(job_id)
                and self.running < max_running)

    def next_up(self, job_id: str, max_running: int) -> bool:
        """Whether ``job_id`` is among the jobs to send now (``startable``): it may start, and no
        older job that may start claims the last free slot before it."""
        return any(e.job_id == job_id for e in self.startable(max_running))

    def blockers(self, job_id: str, max_running: int) -> list[GateEntry]:
        """The entries that keep waiting ``job_id`` from being next up (none if it is, or is not
        waiting): in its conversation, the job holding it and the oldest before it; if nothing
        there, in any conversation, the jobs holding the user's run slots and the older jobs to
        start that claim the free ones. (A leftover entry, whose job is gone or has ended, can be
        any of them: the sweeper looks at exactly these.)"""
        me = self.entry(job_id)
        if me is None or me.holds_conversation or self.next_up(job_id, max_running):
            return []
        ahead = self.ahead_of(job_id)
        if ahead:
            return [e for e in ahead if e.holds_conversation] + [e for e in ahead if not e.holds_conversation][:1]
        return [e for e in self.in_order() if e.running] + self.startable(max_running)

    def startable(self, max_running: int) -> list[GateEntry]:
        """The jobs to send now, oldest first: each conversation's next job, while slots are free."""
        free = max_running - self.running
        chosen: list[GateEntry] = []
        seen: set[str] = set()
        for e in self.in_order():
            if free <= 0:
                break
            if e.conversation_id in seen:
                continue
            seen.add(e.conversation_id)
            if not any(o.holds_conversation for o in self.conversation(e.conversation_id)):
                chosen.append(e)
                free -= 1
        return chosen
