"""The lease keeper: the heartbeat that keeps a running job's lease, and notices cancel and takeover."""

from __future__ import annotations

from collections.abc import Callable

from alfred_jobs.clock import Handle
from alfred_jobs.domain.models import JobStatus, Progress, Steer
from alfred_jobs.exceptions import Fenced, StoreError
from alfred_jobs.observability import get_logger
from alfred_jobs.ports import Deps

log = get_logger()


class LeaseKeeper:
    """Renews the lease every third of its length and polls for cancel, in a background task.

    Why a task of its own and not a renewal per checkpoint: a checkpoint then costs exactly one
    PutItem, and a step that runs for longer than the lease still keeps its lease. The task, its
    stop flag and every time it reads are ``deps.tasks``' and ``deps.clock``'s.
    """

    def __init__(self, deps: Deps, job_id: str, owner: str, lease_expires: float,
                 receipt_handle: str | None, state: Callable[[], tuple[int, JobStatus, Progress]],
                 cancel_requested: bool, cancel_by: str | None = None, steers: tuple[Steer, ...] = (),
                 read_at: float | None = None) -> None:
        self.deps = deps
        self.clock = deps.clock
        self.job_id = job_id
        self.owner = owner
        self.expires = lease_expires
        self.receipt = receipt_handle
        self.state = state
        self.cancel_requested = cancel_requested
        self.cancel_by = cancel_by  # the job that interrupts this one, if that is why it is cancelled
        # The messages steered into the job, as the newest read of the record said (they only grow):
        # the runner records the new ones at its next step boundary.
        self.steers = steers
        self.fenced = False
        self._stop = self.clock.signal()
        self._last_renew = self.clock.monotonic()
        # When the newest read of the record that has come back was sent (the acquisition's, to
        # begin with: ``read_at``, the take's send time): what it says was true then. See
        # ``cancel_seen``. Not the keeper's construction, after the take's answer came back: a
        # cancel landing while that answer travelled would go unread a leg too long (sim seed 1740:
        # a reply went on 1.10 s after its cancel).
        self._read_at = self.clock.monotonic() if read_at is None else read_at
        self._asked_at = 0.0  # when ``cancel_seen`` last read the record itself
        self._task: Handle | None = None

    @property
    def lost(self) -> bool:
        """True once the lease is gone or past its expiry by our own clock (paused, partitioned)."""
        return self.fenced or self.clock.now() >= self.expires

    def start(self) -> None:
        if self._task is None:
            self._task = self.deps.tasks.start(self._loop, f"lease-{self.job_id[:8]}")

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None and self._task.is_alive():
            self._task.join(timeout=5)  # at once when the keeper stops itself (``Handle.join``)

    def _loop(self) -> None:
        s = self.deps.settings
        renew_every = s.lease_seconds / 3
        while not self._stop.wait(min(s.cancel_poll_seconds, renew_every)):
            try:
                if self.clock.monotonic() - self._last_renew >= renew_every:
                    self._renew()
                else:
                    # Strongly consistent: cancel takes effect at the next step boundary (guarantee
                    # 7), and an eventually consistent answer can be up to a second old, i.e. a
                    # step or two late on AWS (the faithful proxy showed it). It costs one read
                    # unit per poll instead of half, off the job's critical path. "No item" is not
                    # news: a record that is really gone fails the next renewal and the fence
                    # stops us then.
                    self._poll()
            except Fenced:
                self.fenced = True
                return
            except StoreError as exc:
                log.warning("lease keeper: store error", extra={"job_id": self.job_id, "error": str(exc)})

    def _poll(self) -> None:
        sent = self.clock.monotonic()
        job = self.deps.jobs.get(self.job_id)
        if job is not None:
            self._saw(job.steers)
        if job is not None and (job.terminal or job.cancel_requested):
            self.cancel_by = self.cancel_by or job.cancel_by
            self.cancel_requested = True  # cancelled or ended elsewhere: stop at the boundary
        self._read_at = max(self._read_at, sent)

    def _saw(self, steers: tuple[Steer, ...]) -> None:
        if len(steers) > len(self.steers):
            self.steers = steers

    def cancel_seen(self) -> bool:
        """Whether the job is to stop (at a step boundary, in the reply): always True for a cancel
        recorded more than two poll periods ago, however late the keeper's thread runs.

        Why: the thread can fall behind (a renewal's SQS call that takes a second, a CPU shared
        with other work), and a step or two then ran past a cancel (seen on a busy CI machine).
        When the newest read is older than two periods, the boundary reads the record itself; on
        time, it costs nothing. Two periods, not one: a poll that is merely due is not late.
        """
        now, late = self.clock.monotonic(), 2 * self.deps.settings.cancel_poll_seconds
        if not self.cancel_requested and now - max(self._read_at, self._asked_at) > late:
            self._asked_at = now  # a store that fails is asked again two periods later, not per call
            try:
                self._poll()
            except StoreError as exc:  # the keeper's next poll tries again; the fence is not ours
                log.warning("step boundary: cancel check failed", extra={"job_id": self.job_id, "error": str(exc)})
        return self.cancel_requested

    def _renew(self) -> None:
        s = self.deps.settings
        last_seq, status, progress = self.state()
        if status.terminal:
            return
        now = self.clock.now()
        if now >= self.expires:
            # Our lease ran out while we were not looking (a long GC pause, SIGSTOP): another
            # worker may own the job now. Renewing would be a lie; let the fence decide.
            self.fenced = True
            return
        sent = self.clock.monotonic()
        try:
            job = self.deps.jobs.renew_lease(self.job_id, self.owner, now, s.lease_seconds, last_seq, status,
                                             progress)
        except Fenced:
            # The condition also refuses a renewal whose state is older than the record's, and our
            # own attempt may have projected a newer one between our read of the state and the
            # renewal's landing (a write behind; seen in the simulator, seed 1174). That is no
            # fence: read the record (strongly consistent) and renew over it if it is still ours.
            rec = self.deps.jobs.get(self.job_id)
            if rec is None or rec.lease_owner != self.owner or rec.terminal or rec.last_seq <= last_seq:
                raise
            job = self.deps.jobs.renew_lease(self.job_id, self.owner, now, s.lease_seconds, rec.last_seq,
                                             rec.status, rec.progress)
        self.expires = now + s.lease_seconds
        self._last_renew = self.clock.monotonic()
        self.cancel_by = self.cancel_by or job.cancel_by
        self.cancel_requested = self.cancel_requested or job.cancel_requested
        self._saw(job.steers)
        self._read_at = max(self._read_at, sent)  # the renewal returns the record as it now is
        if self.receipt:
            try:
                self.deps.queue.change_visibility(self.receipt, int(s.lease_seconds * 2) + 5)
            except StoreError:
                pass  # the lease, not the message, is what protects the job
