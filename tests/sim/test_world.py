"""The world's own judgement of a history: when it is quiet, so that the end checks look at a
history the protocol is done with."""

from __future__ import annotations

from alfred_jobs.domain.events import ErrorInfo, Event, FailedPayload
from alfred_jobs.domain.models import Job, fold
from alfred_tools.sim.kernel import Process
from alfred_tools.sim.world import World


def test_a_job_its_log_ended_is_not_quiet_until_its_record_is_finalized() -> None:
    """Sim seed 16182 at 2e09054: a sweeper ended a job whose question expired and froze after the
    gate removal, before its dead letter. The history was taken as quiet 30 s later (the job was
    ended by its log) and ``failed_jobs_are_parked`` failed, though the sweeper's next pass would
    have sent the job and a worker parked it. A job whose finalize is still owed is not quiet."""
    w = World(1)
    try:
        w.wire.faults_until = 0.0  # no faults: this checks the world's judgement, not the protocol
        now = w.k.now()
        job = Job("j1", "u1", "hello", "c1", created_at=now, expires_at=int(now + 3600), attempts=1)
        w.inner_jobs.create(job)
        failed = FailedPayload(error=ErrorInfo(code="input_timeout", message="no answer came in time"))
        ev = Event.of(1, failed, attempt=1, writer="sweeper", at=now)
        w.k.spawn(Process("ender"), "ender", lambda: w.log.append("j1", ev, job.expires_at))
        w.k.run(1.0)
        assert "j1" in w.log.terminal  # ended by its log; its record still says pending

        assert not w._quiet()  # its dead letter and terminal projection are still owed

        w.inner_jobs.save_projection(fold(job, [ev]), owner=None)
        assert w._quiet()
    finally:
        w.k.close()
