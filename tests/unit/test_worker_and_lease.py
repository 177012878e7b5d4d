"""The worker's SQS handler (malformed messages, start failures) and the lease keeper, directly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryJobQueue, memory_deps
from alfred_jobs.domain.models import ChatRequest, JobStatus, Progress
from alfred_jobs.durability.lease import LeaseKeeper
from alfred_jobs.entry import worker
from alfred_jobs.exceptions import Fenced
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings
from tests.support.stack import wait_until


@pytest.fixture
def deps() -> Iterator[Deps]:
    d = memory_deps(Settings(demo_step_seconds=0, lease_seconds=0.6, cancel_poll_seconds=0.02))
    worker.use_deps(d)
    try:
        yield d
    finally:
        worker._runtime = None  # the next test (or process) builds its own


def sqs_event(*bodies: str) -> dict[str, Any]:
    return {"Records": [{
        "messageId": f"m{i}", "receiptHandle": f"r{i}", "body": body, "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"}
        for i, body in enumerate(bodies)]}


class Context:
    function_name = "worker"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:worker"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.mark.parametrize("body", ["not json", "{}", '{"job_id": 7}', '{"job_id": "../../etc"}', "[]"])
def test_a_malformed_message_is_parked_in_the_dlq_and_acked(deps: Deps, body: str) -> None:
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue)
    good = JobService(deps).submit("u", ChatRequest(message="soup [steps=1]"), None).job
    out = worker.handler(sqs_event(body, json.dumps({"job_id": good.job_id})), Context())
    assert out["batchItemFailures"] == [], "neither record comes back: one is parked, one ran"
    assert queue.dead == [("-", "malformed_message")]
    job = deps.jobs.get(good.job_id)
    assert job is not None and job.status is JobStatus.COMPLETE


def test_a_worker_that_cannot_start_fails_the_invocation_not_its_records(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise RuntimeError("bad configuration")

    monkeypatch.setattr(worker, "runtime", broken)
    with pytest.raises(RuntimeError, match="bad configuration"):
        worker.handler(sqs_event('{"job_id": "' + "a" * 32 + '"}'), Context())


# ---- the lease keeper ------------------------------------------------------------------------


def running(deps: Deps, owner: str = "me") -> tuple[str, float]:
    job = JobService(deps).submit("u", ChatRequest(message="soup"), None).job
    taken = deps.jobs.acquire_lease(job.job_id, owner, time.time(), deps.settings.lease_seconds)
    return job.job_id, taken.lease_expires


def keeper_for(deps: Deps, job_id: str, expires: float, receipt: str | None = "rh") -> LeaseKeeper:
    return LeaseKeeper(deps, job_id, "me", expires, receipt, lambda: (0, JobStatus.RUNNING, Progress()), False)


def test_the_keeper_renews_the_lease_and_the_messages_visibility(deps: Deps) -> None:
    job_id, expires = running(deps)
    keeper = keeper_for(deps, job_id, expires)
    keeper.start()
    try:
        # THEN the lease is pushed past its first expiry while the job runs, and the message hidden
        wait_until(lambda: (j := deps.jobs.get(job_id)) is not None and j.lease_expires > expires + 0.1,
                   timeout=10, what="a renewal")
        assert not keeper.lost
        queue = deps.queue
        assert isinstance(queue, MemoryJobQueue)
        wait_until(lambda: queue.visibility.get("rh", 0) > 0, timeout=10, what="the visibility extension")
    finally:
        keeper.stop()


def test_the_keeper_learns_of_a_takeover_and_is_fenced(deps: Deps) -> None:
    job_id, expires = running(deps)
    keeper = keeper_for(deps, job_id, expires)
    # another worker takes the job (as after an expiry)
    deps.jobs.items[job_id] = deps.jobs.items[job_id].__class__(  # type: ignore[attr-defined]
        **{**deps.jobs.items[job_id].__dict__, "lease_owner": "other"})  # type: ignore[attr-defined]
    keeper.start()
    try:
        wait_until(lambda: keeper.lost, timeout=10, what="the keeper to be fenced")
        assert keeper.fenced
    finally:
        keeper.stop()


def test_the_keeper_sees_a_cancel_request(deps: Deps) -> None:
    job_id, expires = running(deps)
    keeper = keeper_for(deps, job_id, expires)
    keeper.start()
    try:
        assert not keeper.cancel_requested
        deps.jobs.request_cancel(job_id)
        wait_until(lambda: keeper.cancel_requested, timeout=10, what="the cancel to be seen")
    finally:
        keeper.stop()


def test_a_boundary_sees_a_cancel_the_stalled_keeper_has_not_read_yet(deps: Deps,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper's thread can fall behind (a slow renewal, a shared CPU): a cancel recorded more
    than two poll periods before a step boundary still stops the job there."""
    job_id, expires = running(deps)
    keeper = keeper_for(deps, job_id, expires)  # its thread never runs: as stalled as it gets
    reads: list[str] = []
    get = deps.jobs.get
    monkeypatch.setattr(deps.jobs, "get", lambda jid, consistent=True: reads.append(jid) or get(jid, consistent))
    deps.jobs.request_cancel(job_id)
    # On time (the acquisition's read is fresh), a boundary costs nothing and trusts the keeper...
    assert not keeper.cancel_seen() and reads == []
    # ... and once the newest read is two periods old, the boundary reads the record itself.
    time.sleep(2 * deps.settings.cancel_poll_seconds + 0.01)  # the passing of time is what is tested
    assert keeper.cancel_seen() and reads == [job_id]
    assert keeper.cancel_seen() and reads == [job_id], "seen once, never read again"


def test_a_keeper_past_its_own_expiry_does_not_renew(deps: Deps) -> None:
    """A paused process (SIGSTOP, a long GC pause) wakes up past its lease: by its own clock the
    lease is gone, and it must not renew what another worker may own by now."""
    job_id, _ = running(deps)
    keeper = keeper_for(deps, job_id, time.time() - 0.01)
    assert keeper.lost
    before = deps.jobs.get(job_id)
    keeper._renew()
    assert keeper.fenced and deps.jobs.get(job_id) == before


def test_a_renewal_behind_our_own_projection_is_not_a_fence() -> None:
    """Sim seed 1174 (``no_lease_left_behind``): the keeper took its state (last_seq 0), then the
    attempt's first event was projected (last_seq 1) before the renewal landed. The renewal's
    ``last_seq <= :ls`` condition failed and the keeper called the lease lost: the attempt dropped
    its job as fenced with its own lease still live, and nobody ran the job for a lease period.
    Our own newer projection is no fence: the lease is renewed over it."""
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=30))
    job = JobService(deps).submit("u1", ChatRequest(message="soup"), None).job
    taken = deps.jobs.acquire_lease(job.job_id, "me", time.time(), 30)
    deps.jobs.save_projection(replace(taken, last_seq=1, status=JobStatus.RUNNING), owner="me")

    def state() -> tuple[int, JobStatus, Progress]:
        return 0, JobStatus.RUNNING, Progress()  # read before the projection landed

    keeper = LeaseKeeper(deps, job.job_id, "me", taken.lease_expires, None, state, False)
    keeper._renew()
    assert not keeper.lost
    rec = deps.jobs.get(job.job_id)
    assert rec is not None and rec.last_seq == 1 and rec.lease_owner == "me"
    # AND a lease another worker holds is still a fence
    deps.jobs.items[job.job_id] = replace(rec, lease_owner="them")  # type: ignore[attr-defined]
    with pytest.raises(Fenced):
        keeper._renew()
