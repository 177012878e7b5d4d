"""JobStore: the contract of ``alfred_jobs.ports.JobStore``, on the fakes and on DynamoDB."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from alfred_jobs.adapters.aws import ACTIVE_SHARDS
from alfred_jobs.domain.models import TERMINAL_STATUSES, Job, JobStatus, Progress
from alfred_jobs.exceptions import ConditionFailed, Fenced, LeaseHeld
from tests.contract.support import PENDING_GRACE, Backend, new_job, past, terminal, uid

LEASE = 60.0


def created(backend: Backend, **fields: Any) -> Job:
    job = new_job(**fields)
    backend.jobs.create(job)
    return job


def leased(backend: Backend, owner: str = "w1", **fields: Any) -> Job:
    job = created(backend, **fields)
    return backend.jobs.acquire_lease(job.job_id, owner, time.time(), LEASE)


def stored(backend: Backend, job_id: str) -> Job:
    job = backend.jobs.get(job_id)
    assert job is not None
    return job


# ---- create / get ----------------------------------------------------------------------------


def test_create_then_get_returns_the_record_as_written(backend: Backend) -> None:
    job = new_job(progress=Progress(phase="think", total_steps=3, label="Thinking"))
    backend.jobs.create(job)
    assert backend.jobs.get(job.job_id) == job
    assert backend.jobs.get(job.job_id, consistent=False) == job


def test_get_of_an_unknown_job_is_none(backend: Backend) -> None:
    assert backend.jobs.get(uid("job")) is None


def test_create_refuses_a_live_duplicate_and_keeps_the_first(backend: Backend) -> None:
    job = created(backend, message="first")
    with pytest.raises(ConditionFailed):
        backend.jobs.create(replace(job, message="second"))
    assert stored(backend, job.job_id).message == "first"


def test_an_expired_record_reads_as_gone(backend: Backend) -> None:
    job = created(backend, expires_at=past())
    assert backend.jobs.get(job.job_id) is None
    assert backend.jobs.get(job.job_id, consistent=False) is None


def test_create_replaces_an_expired_record(backend: Backend) -> None:
    """A job id reused after retention (TTL deletes days late): the old record, ended, gives way."""
    old = created(backend, message="old", expires_at=past())
    backend.jobs.save_projection(terminal(old, 7), owner=None)
    new = replace(new_job(message="new"), job_id=old.job_id)
    backend.jobs.create(new)
    assert backend.jobs.get(old.job_id) == new, "nothing of the old record is left"
    assert backend.jobs.acquire_lease(new.job_id, "w1", time.time(), LEASE).attempts == 1


def test_a_late_projection_of_the_old_job_leaves_the_reused_ids_new_record_alone(backend: Backend) -> None:
    """Sim seed 11 (issue 27's branch): a worker's terminal projection of a job, held in flight past
    retention, landed on the record of the new job its reused Idempotency-Key had made meanwhile:
    the new job read as cancelled at seq 7 with an empty log, and a watcher was told its events
    had expired."""
    old = created(backend, message="old", expires_at=past())
    new = replace(new_job(message="new", created_at=old.created_at + 200), job_id=old.job_id)
    backend.jobs.create(new)
    for owner in (None, "w1"):
        backend.jobs.save_projection(terminal(old, 7, JobStatus.CANCELLED), owner=owner)
    with pytest.raises(Fenced):  # a running view of the old job: its holder lost it
        backend.jobs.save_projection(replace(old, status=JobStatus.RUNNING, last_seq=3), owner="w1")
    assert backend.jobs.get(new.job_id) == new


# ---- acquire_lease ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.RUNNING])
def test_acquire_takes_an_active_job_and_bumps_attempts(backend: Backend, status: JobStatus) -> None:
    job = created(backend, status=status)
    now = time.time()
    taken = backend.jobs.acquire_lease(job.job_id, "w1", now, LEASE)
    assert (taken.lease_owner, taken.lease_expires, taken.attempts) == ("w1", now + LEASE, 1)
    assert taken.status is status
    assert stored(backend, job.job_id) == taken


def test_acquire_raises_lease_held_while_another_owner_holds_a_live_lease(backend: Backend) -> None:
    job = leased(backend, "w1")
    with pytest.raises(LeaseHeld):
        backend.jobs.acquire_lease(job.job_id, "w2", time.time(), LEASE)
    assert stored(backend, job.job_id) == job, "the holder's lease and the attempts are untouched"


def test_acquire_returns_the_job_when_the_same_owner_already_holds_it(backend: Backend) -> None:
    """Our own update landed, its answer was lost and the SDK's retry failed the condition."""
    job = leased(backend, "w1")
    again = backend.jobs.acquire_lease(job.job_id, "w1", time.time(), LEASE)
    assert again == job, "returned as taken, attempts not bumped a second time, lease not moved"
    assert stored(backend, job.job_id).attempts == 1


@pytest.mark.parametrize("owner", ["w2", "w1"])
def test_acquire_takes_a_job_whose_lease_ran_out_as_a_new_attempt(backend: Backend, owner: str) -> None:
    """By another worker (take-over), or by the same owner again: either way a new attempt."""
    job = created(backend)
    backend.jobs.acquire_lease(job.job_id, "w1", time.time() - 2 * LEASE, LEASE)  # ran out a minute ago
    now = time.time()
    taken = backend.jobs.acquire_lease(job.job_id, owner, now, LEASE)
    assert (taken.lease_owner, taken.lease_expires, taken.attempts) == (owner, now + LEASE, 2)


@pytest.mark.parametrize("case", ["unknown", "expired", "complete", "cancelled", "ended_under_its_holder"])
def test_acquire_raises_condition_failed_for_a_job_that_is_gone_or_ended(backend: Backend, case: str) -> None:
    owner = "w2"
    if case == "unknown":
        job_id = uid("job")
    elif case == "expired":
        job_id = created(backend, expires_at=past()).job_id
    else:
        job = leased(backend, "w1")
        status = JobStatus.CANCELLED if case == "cancelled" else JobStatus.COMPLETE
        backend.jobs.save_projection(terminal(job, 3, status), owner=None)
        job_id = job.job_id
        if case == "ended_under_its_holder":
            owner = "w1"  # its lease had not run out: still not "returned as taken", the job ended
    with pytest.raises(ConditionFailed):
        backend.jobs.acquire_lease(job_id, owner, time.time(), LEASE)


# ---- renew_lease -----------------------------------------------------------------------------


def test_renew_extends_the_lease_and_refreshes_the_projection(backend: Backend) -> None:
    job = leased(backend, "w1")
    now = time.time() + 5
    progress = Progress(phase="act", completed_steps=1, total_steps=3, label="Chopping")
    renewed = backend.jobs.renew_lease(job.job_id, "w1", now, LEASE, 4, JobStatus.RUNNING, progress)
    assert (renewed.lease_owner, renewed.lease_expires) == ("w1", now + LEASE)
    assert (renewed.last_seq, renewed.status, renewed.progress) == (4, JobStatus.RUNNING, progress)
    assert renewed.attempts == 1
    assert stored(backend, job.job_id) == renewed


def test_renew_at_the_same_last_seq_is_allowed(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.renew_lease(job.job_id, "w1", time.time(), LEASE, 3, JobStatus.RUNNING, Progress())
    again = backend.jobs.renew_lease(job.job_id, "w1", time.time(), LEASE, 3, JobStatus.RUNNING, Progress())
    assert again.last_seq == 3


def test_renew_by_an_owner_whose_lease_ran_out_untaken_is_allowed(backend: Backend) -> None:
    """Fenced means the job was lost (taken over, ended), not that the heartbeat was late."""
    job = created(backend)
    backend.jobs.acquire_lease(job.job_id, "w1", time.time() - 2 * LEASE, LEASE)
    renewed = backend.jobs.renew_lease(job.job_id, "w1", time.time(), LEASE, 1, JobStatus.RUNNING, Progress())
    assert renewed.lease_owner == "w1"


def test_renew_is_fenced_for_another_owner(backend: Backend) -> None:
    job = leased(backend, "w1")
    with pytest.raises(Fenced):
        backend.jobs.renew_lease(job.job_id, "w2", time.time(), LEASE, 1, JobStatus.RUNNING, Progress())
    assert stored(backend, job.job_id) == job


def test_renew_is_fenced_after_a_take_over(backend: Backend) -> None:
    job = created(backend)
    backend.jobs.acquire_lease(job.job_id, "w1", time.time() - 2 * LEASE, LEASE)
    backend.jobs.acquire_lease(job.job_id, "w2", time.time(), LEASE)
    with pytest.raises(Fenced):
        backend.jobs.renew_lease(job.job_id, "w1", time.time(), LEASE, 1, JobStatus.RUNNING, Progress())


def test_renew_is_fenced_when_last_seq_would_go_back(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.renew_lease(job.job_id, "w1", time.time(), LEASE, 5, JobStatus.RUNNING, Progress())
    before = stored(backend, job.job_id)
    with pytest.raises(Fenced):
        backend.jobs.renew_lease(job.job_id, "w1", time.time(), LEASE, 4, JobStatus.RUNNING, Progress())
    assert stored(backend, job.job_id) == before


@pytest.mark.parametrize("case", ["unknown", "terminal"])
def test_renew_is_fenced_for_a_job_that_is_gone_or_ended(backend: Backend, case: str) -> None:
    if case == "unknown":
        job_id = uid("job")
    else:
        job = leased(backend, "w1")
        backend.jobs.save_projection(terminal(job, 3), owner=None)
        job_id = job.job_id
    with pytest.raises(Fenced):
        backend.jobs.renew_lease(job_id, "w1", time.time(), LEASE, 9, JobStatus.RUNNING, Progress())
    if case == "unknown":
        assert backend.jobs.get(job_id) is None, "a renew never creates a record"


# ---- release_lease ---------------------------------------------------------------------------


def test_release_gives_the_job_back(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.release_lease(job.job_id, "w1", time.time() + 10)
    released = stored(backend, job.job_id)
    assert (released.lease_owner, released.lease_expires) == (None, 0.0)
    assert released.attempts == 1 and released.status is job.status
    taken = backend.jobs.acquire_lease(job.job_id, "w2", time.time(), LEASE)
    assert (taken.lease_owner, taken.attempts) == ("w2", 2)


def test_release_is_idempotent(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.release_lease(job.job_id, "w1", time.time() + 10)
    after_first = stored(backend, job.job_id)
    backend.jobs.release_lease(job.job_id, "w1", time.time() + 99)  # an earlier try landed unanswered
    assert stored(backend, job.job_id) == after_first


def test_release_by_a_non_holder_leaves_the_holders_lease(backend: Backend) -> None:
    job = leased(backend, "w2")
    backend.jobs.release_lease(job.job_id, "w1", time.time() + 10)
    assert stored(backend, job.job_id) == job


def test_release_of_an_ended_or_unknown_job_is_silent(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.save_projection(terminal(job, 3), owner=None)
    ended = stored(backend, job.job_id)
    backend.jobs.release_lease(job.job_id, "w1", time.time() + 10)
    assert stored(backend, job.job_id) == ended
    unknown = uid("job")
    backend.jobs.release_lease(unknown, "w1", time.time() + 10)
    assert backend.jobs.get(unknown) is None, "a release never creates a record"


# ---- save_projection -------------------------------------------------------------------------


def running(job: Job, last_seq: int) -> Job:
    now = time.time()
    return replace(job, status=JobStatus.RUNNING, last_seq=last_seq, started_at=now,
                    progress=Progress(phase="act", completed_steps=1, total_steps=2, label="Stirring"))


def test_save_projection_by_the_lease_holder_is_written(backend: Backend) -> None:
    job = leased(backend, "w1")
    view = running(job, 3)
    backend.jobs.save_projection(view, owner="w1")
    got = stored(backend, job.job_id)
    assert (got.status, got.last_seq, got.progress, got.started_at) == (
        view.status, 3, view.progress, view.started_at)
    assert got.lease_owner == "w1", "the holder keeps its lease"


@pytest.mark.parametrize("case", ["another_owner", "unleased"])
def test_save_projection_with_an_owner_that_does_not_hold_the_lease_is_fenced(backend: Backend, case: str) -> None:
    job = leased(backend, "w2") if case == "another_owner" else created(backend)
    with pytest.raises(Fenced):
        backend.jobs.save_projection(running(job, 3), owner="w1")
    assert stored(backend, job.job_id) == job


def test_save_projection_with_an_owner_is_fenced_once_the_job_ended(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.save_projection(terminal(job, 3), owner=None)
    with pytest.raises(Fenced):
        backend.jobs.save_projection(running(job, 4), owner="w1")
    assert stored(backend, job.job_id).status is JobStatus.COMPLETE


def test_save_projection_only_moves_forward_in_last_seq(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.save_projection(running(job, 5), owner="w1")
    ahead = stored(backend, job.job_id)
    with pytest.raises(Fenced):  # the holder is told: its view is behind the record
        backend.jobs.save_projection(running(job, 4), owner="w1")
    backend.jobs.save_projection(running(job, 4), owner=None)  # a reader's older fold: ignored
    backend.jobs.save_projection(terminal(job, 4), owner=None)  # an older terminal view: ignored
    assert stored(backend, job.job_id) == ahead


def test_save_projection_without_an_owner_needs_no_lease(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.save_projection(running(job, 2), owner=None)
    got = stored(backend, job.job_id)
    assert (got.last_seq, got.lease_owner) == (2, "w1")


@pytest.mark.parametrize("owner", [None, "w1", "w2"])
@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_a_terminal_projection_is_written_by_anyone_and_drops_the_lease(
        backend: Backend, owner: str | None, status: JobStatus) -> None:
    job = leased(backend, "w1")
    view = terminal(job, 6, status)
    if status is not JobStatus.COMPLETE:
        view = replace(view, output=None, error={"code": "boom", "message": "it broke"})
    backend.jobs.save_projection(view, owner=owner)
    got = stored(backend, job.job_id)
    assert (got.status, got.last_seq, got.completed_at, got.output, got.error) == (
        status, 6, view.completed_at, view.output, view.error)
    assert got.lease_owner is None
    backend.jobs.save_projection(view, owner=None)  # a repeat (finalize runs again): harmless
    assert stored(backend, job.job_id) == got


def test_save_projection_does_not_erase_fields_it_does_not_carry(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.save_projection(running(job, 2), owner="w1")
    started = stored(backend, job.job_id).started_at
    backend.jobs.save_projection(replace(running(job, 3), started_at=None), owner="w1")
    assert stored(backend, job.job_id).started_at == started


def test_save_projection_never_moves_attempts_back(backend: Backend) -> None:
    """``attempts`` is the lease's: bumped by each acquisition, undone only by its holder. A fold
    read before a later acquisition (the answer's, held in flight while a redelivery took the job)
    must not write the older count back: two attempts would share a number, and the gate's fence
    could not tell the later from the earlier (sim seed 918, two of a user's jobs running at once
    with ``max_running_per_user`` 1)."""
    first = leased(backend, "w1")
    backend.jobs.release_lease(first.job_id, "w1", past())
    second = backend.jobs.acquire_lease(first.job_id, "w2", time.time(), LEASE)
    assert (first.attempts, second.attempts) == (1, 2)
    backend.jobs.save_projection(running(first, 2), owner=None)  # the answer's fold of attempt 1
    assert stored(backend, first.job_id).attempts == 2
    backend.jobs.save_projection(running(second, 3), owner="w2")
    assert stored(backend, first.job_id).attempts == 2


@pytest.mark.parametrize("owner", [None, "w1"])
def test_save_projection_of_an_unknown_job_creates_nothing(backend: Backend, owner: str | None) -> None:
    job = new_job()
    backend.jobs.save_projection(terminal(job, 3), owner=owner)
    if owner is not None:
        with pytest.raises(Fenced):
            backend.jobs.save_projection(running(job, 3), owner=owner)
    assert backend.jobs.get(job.job_id) is None


# ---- request_cancel --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.RUNNING])
def test_request_cancel_flags_an_active_job(backend: Backend, status: JobStatus) -> None:
    job = created(backend, status=status)
    flagged = backend.jobs.request_cancel(job.job_id)
    assert flagged == replace(job, cancel_requested=True)
    assert stored(backend, job.job_id).cancel_requested
    assert backend.jobs.request_cancel(job.job_id).cancel_requested, "asking twice is fine"


def test_request_cancel_raises_condition_failed_for_an_ended_or_unknown_job(backend: Backend) -> None:
    job = leased(backend, "w1")
    backend.jobs.save_projection(terminal(job, 3), owner=None)
    with pytest.raises(ConditionFailed):
        backend.jobs.request_cancel(job.job_id)
    assert not stored(backend, job.job_id).cancel_requested
    with pytest.raises(ConditionFailed):
        backend.jobs.request_cancel(uid("job"))


# ---- list_for_user ---------------------------------------------------------------------------


def user_jobs(backend: Backend, user: str, n: int, **fields: Any) -> list[Job]:
    """``n`` jobs of ``user``, a minute apart, oldest first."""
    base = time.time() - 3600
    jobs = [new_job(user_id=user, created_at=base + 60 * i, **fields) for i in range(n)]
    for job in jobs:
        backend.jobs.create(job)
    return jobs


def all_pages(backend: Backend, user: str, statuses: frozenset[JobStatus] | None,
              limit: int) -> list[list[Job]]:
    pages: list[list[Job]] = []
    key = None
    while True:
        page = backend.jobs.list_for_user(user, statuses, limit, key)
        assert len(page.jobs) <= limit
        pages.append(page.jobs)
        if page.next_key is None:
            return pages
        assert len(page.jobs) == limit, "a short page is the last one"
        key = page.next_key
        assert len(pages) < 20, "paging does not end"


def ids(jobs: list[Job]) -> list[str]:
    return [j.job_id for j in jobs]


def test_list_is_newest_first_and_only_the_users_own(backend: Backend) -> None:
    user = uid("user")
    mine = user_jobs(backend, user, 3)
    user_jobs(backend, uid("user"), 2)
    page = backend.jobs.list_for_user(user, None, 10, None)
    assert ids(page.jobs) == ids(mine[::-1]) and page.next_key is None
    assert page.jobs[0] == mine[-1], "whole records"
    assert backend.jobs.list_for_user(uid("user"), None, 10, None).jobs == []


def test_list_pages_through_every_job_once(backend: Backend) -> None:
    user = uid("user")
    jobs = user_jobs(backend, user, 5)
    pages = all_pages(backend, user, None, 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert ids([j for p in pages for j in p]) == ids(jobs[::-1])


def test_list_next_key_after_an_exactly_full_last_page(backend: Backend) -> None:
    """Deliberate difference. DynamoDB cannot tell a full page from the last one without reading
    on, so the adapter hands out a next_key whenever a page is full and the next page comes back
    empty; the fake knows and ends there. Callers must accept an empty last page (both do the
    same otherwise: every job once, newest first)."""
    user = uid("user")
    jobs = user_jobs(backend, user, 4)
    pages = all_pages(backend, user, None, 2)
    assert ids([j for p in pages for j in p]) == ids(jobs[::-1])
    if backend.is_aws:
        assert [len(p) for p in pages] == [2, 2, 0]
    else:
        assert [len(p) for p in pages] == [2, 2]


@pytest.mark.parametrize("wanted", ["active", "terminal", "running"])
def test_list_filters_by_status_across_pages(backend: Backend, wanted: str) -> None:
    user = uid("user")
    jobs = user_jobs(backend, user, 6)
    for i, job in enumerate(jobs):  # pending, running, complete, pending, running, complete
        if i % 3 == 1:
            jobs[i] = backend.jobs.acquire_lease(job.job_id, "w1", time.time(), LEASE)
            backend.jobs.save_projection(running(jobs[i], 1), owner="w1")
            jobs[i] = stored(backend, job.job_id)
        elif i % 3 == 2:
            backend.jobs.save_projection(terminal(job, 2), owner=None)
            jobs[i] = stored(backend, job.job_id)
    statuses = {"active": frozenset({JobStatus.PENDING, JobStatus.RUNNING}),
                "terminal": TERMINAL_STATUSES, "running": frozenset({JobStatus.RUNNING})}[wanted]
    expected = [j for j in reversed(jobs) if j.status in statuses]
    got = [j for p in all_pages(backend, user, statuses, 1) for j in p]
    assert ids(got) == ids(expected) and all(j.status in statuses for j in got)
    assert ids(backend.jobs.list_for_user(user, frozenset(), 10, None).jobs) == ids(jobs[::-1]), \
        "an empty filter is no filter"


def test_list_of_one_conversation_crosses_other_conversations_jobs(backend: Backend) -> None:
    """``conversation_id``: that conversation's live jobs only, newest first, every one once across
    pages, even behind more jobs of other conversations than one query reads; an expired one
    (TTL deletes late) is left out."""
    user, conv = uid("user"), uid("conv")
    base = time.time() - 3600
    ours: list[Job] = []
    for i in range(64):  # the conversation's jobs at 0, 1, 2 and 63; 60 others between
        mine = i in (0, 1, 2, 63)
        job = new_job(user_id=user, created_at=base + i,
                      **({"expires_at": past()} if i == 1 else {}))
        job = replace(job, conversation_id=conv if mine else job.conversation_id)
        backend.jobs.create(job)
        if mine and i != 1:
            ours.append(job)
    backend.jobs.create(replace(new_job(created_at=base + 10), conversation_id=conv))  # another user's
    pages: list[list[Job]] = []
    key = None
    while True:
        page = backend.jobs.list_for_user(user, None, 2, key, conv)
        pages.append(page.jobs)
        if page.next_key is None:
            break
        key = page.next_key
        assert len(pages) < 10
    assert ids([j for p in pages for j in p]) == ids(ours[::-1])
    assert [len(p) for p in pages][:2] == [2, 1]
    assert all(j.conversation_id == conv and j.user_id == user for p in pages for j in p)
    assert backend.jobs.list_for_user(user, None, 10, None, uid("conv")).jobs == []
    assert ids(backend.jobs.list_for_user(user, TERMINAL_STATUSES, 10, None, conv).jobs) == []


def test_list_hides_expired_jobs(backend: Backend) -> None:
    user = uid("user")
    old = user_jobs(backend, user, 2, expires_at=past())
    new = user_jobs(backend, user, 2)
    assert old and ids(backend.jobs.list_for_user(user, None, 10, None).jobs) == ids(new[::-1])
    got = [j for p in all_pages(backend, user, None, 1) for j in p]
    assert ids(got) == ids(new[::-1])


# ---- find_due / postpone ---------------------------------------------------------------------
# The due index spans the table: on the shared AWS stack other tests' jobs are due too, so each
# test looks only at its own jobs (``mine``); the limit test has a table of its own.


def due_ids(backend: Backend, now: float, *mine: Job, limit: int = 1000) -> set[str]:
    found = [j.job_id for j in backend.jobs.find_due(now, limit)]
    assert len(found) == len(set(found)), "no job twice"
    return set(found) & {j.job_id for j in mine}


def test_a_pending_job_is_due_once_its_grace_has_run_out(due_backend: Backend) -> None:
    b = due_backend
    job = created(b)
    assert due_ids(b, job.created_at + PENDING_GRACE - 1, job) == set()
    assert due_ids(b, job.created_at + PENDING_GRACE + 1, job) == {job.job_id}
    found = [j for j in b.jobs.find_due(job.created_at + PENDING_GRACE + 1, 1000) if j.job_id == job.job_id]
    assert found == [job], "whole records"


def test_a_leased_job_is_due_once_its_lease_has_run_out(due_backend: Backend) -> None:
    b = due_backend
    job = created(b)
    now = time.time()
    b.jobs.acquire_lease(job.job_id, "w1", now, LEASE)
    assert due_ids(b, now + LEASE - 1, job) == set()
    assert due_ids(b, now + LEASE + 1, job) == {job.job_id}
    b.jobs.renew_lease(job.job_id, "w1", now + 30, LEASE, 1, JobStatus.RUNNING, Progress())
    assert due_ids(b, now + LEASE + 1, job) == set(), "a renew moves the deadline"
    assert due_ids(b, now + 30 + LEASE + 1, job) == {job.job_id}


def test_a_released_job_is_due_at_the_time_given(due_backend: Backend) -> None:
    b = due_backend
    job = leased(b, "w1")
    now = time.time()
    b.jobs.release_lease(job.job_id, "w1", now + 5)
    assert due_ids(b, now + 4, job) == set()
    assert due_ids(b, now + 6, job) == {job.job_id}


def test_a_terminal_job_leaves_find_due(due_backend: Backend) -> None:
    b = due_backend
    job = leased(b, "w1")
    b.jobs.save_projection(terminal(job, 3), owner=None)
    assert due_ids(b, time.time() + 365 * 86400, job) == set()
    assert b.jobs.postpone(job.job_id, time.time() - 100) is False  # the sweeper's late postpone: a no-op
    assert due_ids(b, time.time() + 365 * 86400, job) == set()


def test_postpone_moves_an_active_jobs_deadline(due_backend: Backend) -> None:
    b = due_backend
    job = created(b)
    late = job.created_at + PENDING_GRACE + 1
    assert b.jobs.postpone(job.job_id, late + 100) is True
    assert due_ids(b, late, job) == set()
    assert due_ids(b, late + 101, job) == {job.job_id}
    assert stored(b, job.job_id) == job, "only the deadline moves"
    unknown = uid("job")
    assert b.jobs.postpone(unknown, late) is False  # says so, and creates nothing
    assert b.jobs.get(unknown) is None


def test_postpone_waiting_moves_the_deadline_of_a_waiting_job_nobody_holds_only(due_backend: Backend) -> None:
    b = due_backend
    job = created(b)
    now = time.time()
    expiry = now + 86400  # the question's
    assert b.jobs.postpone_waiting(job.job_id, expiry, now) is False, "pending: it does not wait"
    b.jobs.acquire_lease(job.job_id, "w1", now, LEASE)
    b.jobs.save_projection(replace(stored(b, job.job_id), status=JobStatus.WAITING, last_seq=3), owner="w1")
    assert b.jobs.postpone_waiting(job.job_id, expiry, now) is False, "held: its asker has not left"
    b.jobs.release_lease(job.job_id, "w1", now + 5)
    assert b.jobs.postpone_waiting(job.job_id, expiry, now) is True
    assert due_ids(b, expiry - 1, job) == set() and due_ids(b, expiry + 1, job) == {job.job_id}
    # a next attempt takes it (an answer's resume, whose projection failed) and dies: the asker's
    # write landing late leaves its deadline at the lease's end
    b.jobs.release_lease(job.job_id, "w1", now + 5)
    b.jobs.acquire_lease(job.job_id, "w2", now, LEASE)
    assert b.jobs.postpone_waiting(job.job_id, expiry, now) is False, "a live lease"
    assert due_ids(b, now + LEASE + 1, job) == {job.job_id}
    assert b.jobs.postpone_waiting(job.job_id, expiry, now + LEASE + 1) is True, "a lease run out holds nothing"
    # the answer's projection says pending: nothing written
    b.jobs.save_projection(replace(stored(b, job.job_id), status=JobStatus.PENDING, last_seq=4), owner=None)
    b.jobs.postpone(job.job_id, now + 5)
    assert b.jobs.postpone_waiting(job.job_id, expiry, now + LEASE + 1) is False
    assert due_ids(b, now + 6, job) == {job.job_id}
    assert stored(b, job.job_id).status is JobStatus.PENDING, "only the deadline ever moves"
    b.jobs.save_projection(terminal(stored(b, job.job_id), 5), owner=None)
    assert b.jobs.postpone_waiting(job.job_id, expiry, now) is False, "not active"
    unknown = uid("job")
    assert b.jobs.postpone_waiting(unknown, expiry, now) is False  # says so, and creates nothing
    assert b.jobs.get(unknown) is None


def test_postpone_waiting_leaves_a_job_whose_door_an_ender_closed(due_backend: Backend) -> None:
    # An ender (the API's cancel or interrupt, the sweeper's timeout) closes the door, sets the
    # job's deadline a grace period on and puts its terminal event; should its finalizing then
    # fail, the sweeper finds the job by that deadline. An asker's move to the question's expiry
    # landing after the close must leave it there (sim seed 195980).
    b = due_backend
    job = created(b)
    now = time.time()
    expiry = now + 86400  # the question's
    b.jobs.acquire_lease(job.job_id, "w1", now, LEASE)
    b.jobs.save_projection(replace(stored(b, job.job_id), status=JobStatus.WAITING, last_seq=3), owner="w1")
    b.jobs.release_lease(job.job_id, "w1", now + 5)
    assert b.jobs.close_door(job.job_id, 0, owner=None) is not None
    assert b.jobs.postpone(job.job_id, now + 30) is True  # the ender's, after its close
    assert b.jobs.postpone_waiting(job.job_id, expiry, now) is False, "an ender closed its door"
    assert due_ids(b, now + 31, job) == {job.job_id}
    closed = stored(b, job.job_id)
    assert closed.status is JobStatus.WAITING and closed.door_closed, "nothing else moved"


def test_presume_queued_once_per_send(due_backend: Backend) -> None:
    b = due_backend
    job = created(b)
    late = job.created_at + PENDING_GRACE + 1
    assert b.jobs.presume_queued(job.job_id, late + 100) is True
    assert due_ids(b, late, job) == set() and due_ids(b, late + 101, job) == {job.job_id}, "moves the deadline"
    assert stored(b, job.job_id) == job, "only the deadline moves (and the mark, not in the record)"
    assert b.jobs.presume_queued(job.job_id, late + 200) is False, "presumed once already: nothing written"
    assert due_ids(b, late + 101, job) == {job.job_id}
    # a sender postpones before its send (its message may be lost after that write): a new send
    assert b.jobs.postpone(job.job_id, late) is True
    assert b.jobs.presume_queued(job.job_id, late) is True
    assert b.jobs.presume_queued(job.job_id, late) is False
    # the sweeper's own send, made before its write: its message is in the queue, presumed while it lasts
    assert b.jobs.postpone(job.job_id, late, sent=True) is True
    assert b.jobs.presume_queued(job.job_id, late) is True
    assert b.jobs.presume_queued(job.job_id, late) is True
    unknown = uid("job")
    assert b.jobs.presume_queued(unknown, late) is False  # says so, and creates nothing
    assert b.jobs.get(unknown) is None


def test_presume_queued_is_refused_for_an_ended_job_and_new_after_a_lease(due_backend: Backend) -> None:
    b = due_backend
    job = created(b)
    now = time.time()
    assert b.jobs.presume_queued(job.job_id, now) is True
    # a worker received a message: leased, then given back (not its turn); a message sent after
    # that is a new send
    b.jobs.acquire_lease(job.job_id, "w1", now, LEASE)
    b.jobs.release_lease(job.job_id, "w1", now + 5, undo_attempt=True)
    assert b.jobs.presume_queued(job.job_id, now) is True
    assert b.jobs.presume_queued(job.job_id, now) is False
    b.jobs.acquire_lease(job.job_id, "w2", now, LEASE)
    assert b.jobs.presume_queued(job.job_id, now) is True, "the lease's taking clears the mark"
    b.jobs.save_projection(terminal(stored(b, job.job_id), 3), owner=None)
    assert b.jobs.presume_queued(job.job_id, now) is False, "not active"
    assert due_ids(b, time.time() + 365 * 86400, job) == set()


def test_find_due_limit(fresh_backend: Backend) -> None:
    """Deliberate difference. DynamoDB reads the due index one shard at a time and applies
    ``limit`` per shard, so it returns up to ``limit * ACTIVE_SHARDS`` jobs (the sweeper's
    "at most limit per shard"); the fake has no shards and returns at most ``limit``. Both return
    at least ``min(limit, due)`` and nothing that is not due."""
    b = fresh_backend
    jobs = [created(b) for _ in range(12)]
    later = max(j.created_at for j in jobs) + PENDING_GRACE + 1
    assert {j.job_id for j in b.jobs.find_due(later, 100)} == {j.job_id for j in jobs}
    assert b.jobs.find_due(later - PENDING_GRACE - 2, 2) == [], "none due yet"
    got = b.jobs.find_due(later, 2)
    assert len({j.job_id for j in got}) == len(got), "no job twice"
    if b.is_aws:
        assert 2 <= len(got) <= 2 * ACTIVE_SHARDS
    else:
        assert len(got) == 2
