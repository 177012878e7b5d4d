"""Regressions of issue 12 on the in-memory fakes: what AWS does and moto does not.

Each test names the bug it pins. The same behaviours are proven end to end, through the faithful
proxy in front of moto server, in tests/integration/test_faithful.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from alfred_jobs.adapters.memory import MemoryEventLog, MemoryJobStore, memory_deps
from alfred_jobs.domain.models import ChatRequest, Job, JobStatus, Progress
from alfred_jobs.durability.lease import LeaseKeeper
from alfred_jobs.exceptions import ConditionFailed
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import STREAM_SECRETS, SUBMIT_SECRETS, Settings


@pytest.fixture
def deps() -> Deps:
    return memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, cancel_poll_seconds=0.01))


def expire(deps: Deps, job: Job) -> None:
    """Retention is over for ``job``: its record and events are past ``expires_at`` (still stored,
    as DynamoDB keeps expired items until TTL gets round to them)."""
    store, log = deps.jobs, deps.log
    assert isinstance(store, MemoryJobStore) and isinstance(log, MemoryEventLog)
    past = int(time.time()) - 1
    store.items[job.job_id] = replace(store.items[job.job_id], expires_at=past)
    for key in list(log.expiry):
        if key[0] == job.job_id:
            log.expiry[key] = past


# ---- bug 3: an Idempotency-Key reused after retention -------------------------------------------


def test_a_key_reused_after_retention_makes_a_new_job_with_a_fresh_log(deps: Deps) -> None:
    svc = JobService(deps)
    first = svc.submit("u", ChatRequest(message="soup"), "key-1").job
    svc.cancel("u", first.job_id)  # writes event 1 (cancelled)
    expire(deps, svc.get("u", first.job_id))
    again = svc.submit("u", ChatRequest(message="stew"), "key-1")
    assert again.created, "the key is free again once retention is over (guarantee 11)"
    assert again.job.job_id == first.job_id and again.job.message == "stew"
    job = svc.get("u", again.job.job_id)
    assert job.status is JobStatus.PENDING and job.last_seq == 0
    assert svc.journal.read_after(job.job_id, 0) == [], "none of the old job's events"


def test_a_create_whose_answer_was_lost_is_reported_as_created(deps: Deps) -> None:
    """The put landed, the SDK retried it and hit our own record: still our new job (202)."""

    class AmbiguousCreate(MemoryJobStore):
        def create(self, job: Job) -> None:
            super().create(job)
            raise ConditionFailed(job.job_id)  # the retry of our own landed put

    store = AmbiguousCreate()
    deps = replace(deps, jobs=store)
    out = JobService(deps).submit("u", ChatRequest(message="soup"), "key-2")
    assert out.created


# ---- bug 4: a stale read taken for a cancellation -----------------------------------------------


class MissingJobStore(MemoryJobStore):
    """A store whose reads answer "no item" (what an eventually consistent read just after the
    record was written can answer, and what the cancel poll used to take for a cancel)."""

    def __init__(self) -> None:
        super().__init__()
        self.polled = threading.Event()

    def get(self, job_id: str, consistent: bool = True) -> Job | None:
        self.polled.set()
        return None


def test_the_cancel_poll_does_not_take_no_item_for_a_cancel(deps: Deps) -> None:
    """Bug 4. The poll is strongly consistent now (a stale one let a cancel land a step or two late),
    but "no item" is still not a cancel: a record that is really gone fails the next renewal."""
    store = MissingJobStore()
    deps = replace(deps, jobs=store)
    job = JobService(replace(deps, jobs=MemoryJobStore())).submit("u", ChatRequest(message="soup"), None).job
    store.items[job.job_id] = job
    taken = store.acquire_lease(job.job_id, "me", time.time(), 5)

    def state() -> tuple[int, JobStatus, Progress]:
        return 0, JobStatus.RUNNING, Progress()

    keeper = LeaseKeeper(deps, job.job_id, "me", taken.lease_expires, None, state, False)
    keeper.start()
    try:
        for _ in range(4):  # several polls, each answered "no item"
            store.polled.clear()
            assert store.polled.wait(5), "the keeper polled for a cancel"
    finally:
        keeper.stop()
    assert not keeper.cancel_requested, "nobody cancelled this job"


# ---- bug 6: each function needs only the secrets it uses -----------------------------------------


def test_in_apigw_mode_each_function_checks_only_its_own_secrets() -> None:
    bare = Settings(auth_mode="apigw")
    bare.check_deployable(())  # worker, sweeper: no secrets at all
    with pytest.raises(RuntimeError, match="STREAM_TOKEN_SECRET"):
        bare.check_deployable(STREAM_SECRETS)
    stream = Settings(auth_mode="apigw", stream_token_secret="s" * 40)
    stream.check_deployable(STREAM_SECRETS)
    with pytest.raises(RuntimeError, match="CURSOR_SECRET"):
        stream.check_deployable(SUBMIT_SECRETS)
    Settings(auth_mode="apigw", stream_token_secret="s" * 40, cursor_secret="c" * 40).check_deployable(
        SUBMIT_SECRETS)


def test_the_development_secrets_are_refused_outside_local_deployments(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 17, finding 4: whatever the auth mode, a deployment refuses the public secrets; only
    ALFRED_DEPLOYMENT=local runs on them, and says so loudly."""
    with pytest.raises(RuntimeError, match="ALFRED_JWT_SECRET"):
        Settings(auth_mode="local").check_deployable(STREAM_SECRETS)
    configured = Settings(auth_mode="local", jwt_secret="j" * 40, stream_token_secret="s" * 40)
    configured.check_deployable(STREAM_SECRETS)
    with caplog.at_level("WARNING", logger="alfred_jobs"):
        Settings(auth_mode="local", deployment="local").check_deployable(SUBMIT_SECRETS)
    assert "LOCAL MODE" in caplog.text
