"""Retention, in one place (guarantee 11).

A job and everything of it (its record, its events, its agent's step records) expire together,
at the job's creation plus ``retention_seconds``; a conversation turn lives that long from its
commit. DynamoDB's TTL deletes expired items late (up to about two days) and in any order, so an
expired item is gone as soon as it expires: for reads, and for conditional writes too (a job id
reused after retention writes over what TTL has not deleted yet).
"""

from __future__ import annotations

from alfred_jobs.domain.events import now_ts


def expiry(start: float, retention_seconds: int) -> int:
    """The ``expires_at`` (epoch seconds) of something that starts at ``start``."""
    return int(start + retention_seconds)


def expired(expires_at: float, now: float | None = None) -> bool:
    """True once ``expires_at`` has passed: the item reads as gone even while the store holds it."""
    return expires_at <= (now_ts() if now is None else now)
