"""Retention, in one place (guarantee 11).

A job and everything of it (its record, its events, its agent's step records) expire together,
at the job's creation plus ``retention_seconds``; a conversation turn lives that long from its
commit. DynamoDB's TTL deletes expired items late (up to about two days) and in any order, so an
expired item is gone as soon as it expires: for reads, and for conditional writes too (a job id
reused after retention writes over what TTL has not deleted yet).
"""

from __future__ import annotations


def expiry(start: float, retention_seconds: int) -> int:
    """The ``expires_at`` (epoch seconds) of something that starts at ``start``."""
    return int(start + retention_seconds)


def expired(expires_at: float, now: float) -> bool:
    """True once ``expires_at`` has passed at ``now``: the item reads as gone even while the store
    holds it. The time is the caller's (its injected clock): the domain reads no clock."""
    return expires_at <= now
