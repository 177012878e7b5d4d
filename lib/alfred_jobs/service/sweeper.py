"""The sweeper: nothing stays pending or running forever (guarantee 9).

It finds active jobs whose deadline passed — pending past the grace period (the queue message was
lost) or running past the lease (the worker died) — and sends their message again. Re-enqueueing
a healthy job is harmless: the worker drops a delivery whose job holds a live lease, or is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alfred_jobs.domain.models import now_ts
from alfred_jobs.exceptions import StoreError
from alfred_jobs.observability import count, get_logger
from alfred_jobs.ports import Deps

log = get_logger()


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    errors: int = 0


class Sweeper:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def sweep(self, limit: int = 200) -> SweepReport:
        """Re-enqueue every stranded job found (at most ``limit`` per shard)."""
        s = self.deps.settings
        now = now_ts()
        report = SweepReport()
        for job in self.deps.jobs.find_due(now, limit):
            try:
                self.deps.queue.send(job.job_id)
                # Not again before a worker had the time to take it.
                self.deps.jobs.postpone(job.job_id, now + max(s.lease_seconds, s.pending_grace_seconds))
                report.requeued.append(job.job_id)
            except StoreError as exc:
                report.errors += 1
                log.warning("sweeper could not requeue", extra={"job_id": job.job_id, "error": str(exc)})
        count("StuckJobs", len(report.requeued))
        if report.requeued:
            log.info("sweeper requeued jobs", extra={"count": len(report.requeued)})
        return report
