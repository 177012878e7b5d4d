"""The per-user cap on open streams and long-polls that holds across processes (issue 26).

``WatchHub.admit`` counts in one process; on Lambda every stream is an execution environment of
its own, so that count never reaches the cap. Here each stream (and each long-poll that waits)
holds a slot in the stream slots table (``ports.StreamSlots``): a lease of its own id, taken by
one conditional write, renewed by the stream's heartbeat every third of a lease period, given
back when it ends. Past ``max_streams_per_user`` live slots the take is refused: 429
``too_many_streams`` with ``Retry-After``, whatever process the request lands on. A process that
dies holding slots (SIGKILL, a Lambda timeout, a frozen container) renews them no more: they
read as free once their lease runs out, within ``stream_slot_lease_seconds``.

Blocking calls (a store round trip each): the stream app runs them in its executor.
"""

from __future__ import annotations

from collections.abc import Callable

from alfred_jobs.clock import Clock
from alfred_jobs.exceptions import StoreError, TooManyRequests
from alfred_jobs.observability import get_logger
from alfred_jobs.ports import StreamSlots

log = get_logger()

RETRY_AFTER_SECONDS = 5  # a slot frees when a stream ends (or, for a dead process's, its lease)
RENEWALS_PER_LEASE = 3  # a renewal may fail twice (a throttle, a blip) before the lease runs out
RETRY_RENEWAL_SECONDS = 1.0  # after a renewal failed on the store, try again this soon


class StreamLease:
    """One slot held by one stream or long-poll. ``renew`` while it lives (when ``due``), ``release``
    when it ends (idempotent, best effort: a slot that could not be given back frees itself when
    its lease runs out)."""

    def __init__(self, cap: StreamCap, user: str, holder: str, lease_seconds: float) -> None:
        self._cap = cap
        self.user = user
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.next_renewal = cap.clock.monotonic() + lease_seconds / RENEWALS_PER_LEASE
        self.released = False
        self.lost = False

    def seconds_to_renewal(self) -> float:
        # Under a millisecond counts as due: a wait of 1e-15 s ends where it began (a float clock
        # plus it is the same float), and a loop waiting on it would never see the renewal due
        # (the simulator's seed 198 spun so at one virtual instant).
        left = self.next_renewal - self._cap.clock.monotonic()
        return left if left > 1e-3 else 0.0

    @property
    def due(self) -> bool:
        return not self.released and self.seconds_to_renewal() <= 0

    def renew(self) -> bool:
        """Extend the lease; False if the slot is lost for good (its lease ran out, a take cleared
        it and the user is at the cap now): the stream must end. A store failure keeps the stream
        (its lease still runs) and tries again soon."""
        c = self._cap
        # The next renewal is dated from this one's send, as the lease it writes is: dated from its
        # answer, a renewal that stalled (GC, a busy CPU) would leave the next one less than two
        # thirds of a lease in hand, and two slow renewals could see the lease run out (seed 237600).
        sent = c.clock.monotonic()
        until = c.clock.now() + self.lease_seconds
        try:
            held = c.slots.renew(self.user, self.holder, until) or c.slots.take(
                self.user, self.holder, c.max_per_user, until)  # lost it, but there is room: hold one again
        except StoreError:
            log.warning("stream slot renewal failed", exc_info=True, extra={"user_id": self.user})
            self.next_renewal = c.clock.monotonic() + min(RETRY_RENEWAL_SECONDS, self.lease_seconds / 6)
            return True
        self.next_renewal = sent + self.lease_seconds / RENEWALS_PER_LEASE
        self.lost = not held
        return held

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            self._cap.slots.release(self.user, self.holder)
        except StoreError:
            # Left to its lease: free within one lease period, as a dead process's slots are.
            log.warning("stream slot release failed", exc_info=True, extra={"user_id": self.user})


class StreamCap:
    """Takes slots for ``max_per_user`` streams and long-polls of each user, across processes."""

    def __init__(self, slots: StreamSlots, max_per_user: int, lease_seconds: float, clock: Clock,
                 new_id: Callable[[], str]) -> None:
        self.slots = slots
        self.max_per_user = max_per_user
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.new_id = new_id

    def take(self, user: str, *, extra_seconds: float = 0.0) -> StreamLease:
        """A slot of ``user`` for one stream (or a long-poll: ``extra_seconds``, its wait, is added
        to the lease, so it needs no renewal); ``TooManyRequests`` past the cap."""
        lease = StreamLease(self, user, self.new_id(), self.lease_seconds + extra_seconds)
        try:
            held = self.slots.take(user, lease.holder, self.max_per_user, self.clock.now() + lease.lease_seconds)
        except StoreError:
            # The take may have landed with its answer lost: give it back rather than leave it
            # to its lease (best effort), then fail the request (503: retry).
            lease.release()
            raise
        if not held:
            lease.released = True
            raise TooManyRequests(f"too many open streams and long-polls for this user (at most "
                                  f"{self.max_per_user}); close one or retry later",
                                  code="too_many_streams", retry_after=RETRY_AFTER_SECONDS)
        return lease
