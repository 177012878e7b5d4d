"""Reading and appending a job's event log.

Why the log is its own fence: seqs are contiguous and every event is a conditional put on its
own (job_id, seq) key. A writer only ever writes right after the last event it has seen. A new
owner reads to the head and puts its ``resumed`` event there; from then on every slot the old
owner could write to is taken, so its next put fails and it stops. No transactions, and the
cost of an append does not depend on how long the log is.
"""

from __future__ import annotations

from alfred_jobs.domain.models import Event
from alfred_jobs.domain.retention import expiry
from alfred_jobs.exceptions import ConditionFailed, SlotTaken, TransientStoreError
from alfred_jobs.ports import EventLog

MAX_CHUNK = 100


class Journal:
    """Contiguous reads and fenced appends over an ``EventLog``."""

    def __init__(self, log: EventLog, retention_seconds: int) -> None:
        self.log = log
        self.retention_seconds = retention_seconds

    def expires_at(self, now: float) -> int:
        """Retention from ``now`` (conversation turns; a job's events expire with the job instead)."""
        return expiry(now, self.retention_seconds)

    def read_after(self, job_id: str, after: int, *, known_head: int = 0, limit: int = 1000,
                   consistent: bool = True) -> list[Event]:
        """Events after ``after``, contiguous from after+1, at most ``limit``.

        ``known_head`` (e.g. the job record's ``last_seq``) lets the first read fetch everything
        known in one batch. Past it the reader probes one key, and grows the batch only while
        reads keep finding events: a live tail (usually one new event) then costs one-key reads,
        not batches of misses. ``consistent=False`` suits watchers: a stale miss is found by the
        next poll, and a gap can never be served because reads stop at the first missing seq.
        """
        out: list[Event] = []
        nxt = after + 1
        chunk = max(1, min(MAX_CHUNK, known_head - after)) if known_head > after else 1
        streak = 0
        while len(out) < limit:
            last = nxt + min(chunk, limit - len(out)) - 1
            got = self.log.read_range(job_id, nxt, last, consistent)
            for ev in got:
                if ev.seq != nxt:
                    return out  # a hole: nothing past it can exist yet (writers append in order)
                out.append(ev)
                nxt += 1
            if nxt <= last:
                return out
            streak += 1
            chunk = 1 if streak < 2 else min(MAX_CHUNK, 4 ** (streak - 1))
        return out

    def read_all(self, job_id: str, known_head: int = 0) -> list[Event]:
        """The whole log."""
        return self.read_after(job_id, 0, known_head=known_head, limit=1_000_000)

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        """Put ``event`` at its seq. Raises ``SlotTaken`` when another event holds that seq.

        ``expires_at`` is the job's own expiry: a job's events live exactly as long as its record,
        so when retention ends the whole job goes at once and a reused id starts on free slots.

        An ambiguous write (the put landed, its answer was lost, and the SDK's retry found the
        slot taken) finds this very event in the slot (same ``id``): that is success, not a
        conflict. So is a put that landed although every try we saw failed.
        """
        for attempt in range(4):
            try:
                self.log.append(job_id, event, expires_at)
                return
            except ConditionFailed:
                existing = self.log.get(job_id, event.seq)  # strongly consistent
                if existing is None:
                    continue  # the holder expired meanwhile: the slot is free, try again
                if existing.same_write(event):
                    return
                raise SlotTaken(existing) from None
            except TransientStoreError:
                if attempt < 3:
                    continue
                # Before giving up, look: the last try may have landed although we saw an error.
                try:
                    existing = self.log.get(job_id, event.seq)
                except TransientStoreError:
                    raise
                if existing is not None and existing.same_write(event):
                    return
                if existing is not None:
                    raise SlotTaken(existing) from None
                raise
        raise TransientStoreError(f"append {job_id}#{event.seq} did not settle")
