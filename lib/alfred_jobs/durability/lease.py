"""The lease keeper: the heartbeat that keeps a running job's lease, and notices cancel and takeover."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from alfred_jobs.domain.models import JobStatus, Progress, now_ts
from alfred_jobs.exceptions import Fenced, StoreError
from alfred_jobs.observability import get_logger
from alfred_jobs.ports import Deps

log = get_logger()


class LeaseKeeper:
    """Renews the lease every third of its length and polls for cancel, on a background thread.

    Why a thread and not a renewal per checkpoint: a checkpoint then costs exactly one PutItem,
    and a step that runs for longer than the lease still keeps its lease.
    """

    def __init__(self, deps: Deps, job_id: str, owner: str, lease_expires: float,
                 receipt_handle: str | None, state: Callable[[], tuple[int, JobStatus, Progress]],
                 cancel_requested: bool, cancel_by: str | None = None) -> None:
        self.deps = deps
        self.job_id = job_id
        self.owner = owner
        self.expires = lease_expires
        self.receipt = receipt_handle
        self.state = state
        self.cancel_requested = cancel_requested
        self.cancel_by = cancel_by  # the job that interrupts this one, if that is why it is cancelled
        self.fenced = False
        self._stop = threading.Event()
        self._last_renew = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id[:8]}", daemon=True)

    @property
    def lost(self) -> bool:
        """True once the lease is gone or past its expiry by our own clock (paused, partitioned)."""
        return self.fenced or now_ts() >= self.expires

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        s = self.deps.settings
        renew_every = s.lease_seconds / 3
        while not self._stop.wait(min(s.cancel_poll_seconds, renew_every)):
            try:
                if time.monotonic() - self._last_renew >= renew_every:
                    self._renew()
                else:
                    # Strongly consistent: cancel takes effect at the next step boundary (guarantee
                    # 7), and an eventually consistent answer can be up to a second old, i.e. a
                    # step or two late on AWS (the faithful proxy showed it). It costs one read
                    # unit per poll instead of half, off the job's critical path. "No item" is not
                    # news: a record that is really gone fails the next renewal and the fence
                    # stops us then.
                    job = self.deps.jobs.get(self.job_id)
                    if job is not None and (job.terminal or job.cancel_requested):
                        self.cancel_by = self.cancel_by or job.cancel_by
                        self.cancel_requested = True  # cancelled or ended elsewhere: stop at the boundary
            except Fenced:
                self.fenced = True
                return
            except StoreError as exc:
                log.warning("lease keeper: store error", extra={"job_id": self.job_id, "error": str(exc)})

    def _renew(self) -> None:
        s = self.deps.settings
        last_seq, status, progress = self.state()
        if status.terminal:
            return
        now = now_ts()
        if now >= self.expires:
            # Our lease ran out while we were not looking (a long GC pause, SIGSTOP): another
            # worker may own the job now. Renewing would be a lie; let the fence decide.
            self.fenced = True
            return
        job = self.deps.jobs.renew_lease(self.job_id, self.owner, now, s.lease_seconds, last_seq, status,
                                         progress)
        self.expires = now + s.lease_seconds
        self._last_renew = time.monotonic()
        self.cancel_by = self.cancel_by or job.cancel_by
        self.cancel_requested = self.cancel_requested or job.cancel_requested
        if self.receipt:
            try:
                self.deps.queue.change_visibility(self.receipt, int(s.lease_seconds * 2) + 5)
            except StoreError:
                pass  # the lease, not the message, is what protects the job
