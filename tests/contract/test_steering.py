"""Steering's writes (``JobStore.steer``, ``close_door``, ``claim_steer``, the turn with steered
messages): the contract, on the fakes and on DynamoDB (moto)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from alfred_jobs.domain.models import Job, Steer, SteerClaim, iso
from alfred_jobs.exceptions import ConditionFailed
from tests.contract.support import Backend, live, new_job, past, terminal, uid

LEASE = 60.0
MAX = 3


def leased(backend: Backend, owner: str = "w1") -> Job:
    job = new_job()
    backend.jobs.create(job)
    return backend.jobs.acquire_lease(job.job_id, owner, time.time(), LEASE)


def steers_of(backend: Backend, job_id: str) -> list[str]:
    job = backend.jobs.get(job_id)
    assert job is not None
    return [s.message_id for s in job.steers]


def test_steers_land_in_order_while_the_door_is_open_and_once_per_message_id(backend: Backend) -> None:
    job = leased(backend)
    now = time.time()
    assert backend.jobs.steer(job.job_id, Steer("m1", "make it vegetarian"), now, MAX)
    assert backend.jobs.steer(job.job_id, Steer("m2", "and use the rice"), now, MAX)
    assert backend.jobs.steer(job.job_id, Steer("m1", "make it vegetarian"), now, MAX)  # a retry: no second
    got = backend.jobs.get(job.job_id)
    assert got is not None and [(s.message_id, s.text) for s in got.steers] == [
        ("m1", "make it vegetarian"), ("m2", "and use the rice")]
    assert not got.door_closed


def test_the_door_closes_only_for_its_owner_having_seen_every_steer(backend: Backend) -> None:
    job = leased(backend, owner="w1")
    now = time.time()
    assert backend.jobs.steer(job.job_id, Steer("m1", "veg"), now, MAX)
    assert backend.jobs.close_door(job.job_id, 0, owner="w1") is None  # a steer slipped in: read again
    assert backend.jobs.close_door(job.job_id, 1, owner="w2") is None  # not the lease's owner: fenced
    closed = backend.jobs.close_door(job.job_id, 1, owner="w1")
    assert closed is not None and closed.door_closed and [s.message_id for s in closed.steers] == ["m1"]
    assert backend.jobs.close_door(job.job_id, 1, owner="w1") is not None  # the SDK's retry of it
    assert not backend.jobs.steer(job.job_id, Steer("m2", "late"), now, MAX)  # closed: refused
    assert backend.jobs.steer(job.job_id, Steer("m1", "veg"), now, MAX)  # but m1 is still on it
    assert steers_of(backend, job.job_id) == ["m1"]


def test_an_ender_without_a_lease_closes_an_empty_door(backend: Backend) -> None:
    job = new_job()
    backend.jobs.create(job)
    closed = backend.jobs.close_door(job.job_id, 0, owner=None)
    assert closed is not None and closed.door_closed
    assert not backend.jobs.steer(job.job_id, Steer("m1", "veg"), time.time(), MAX)


def test_no_steer_joins_an_ended_an_expired_or_a_full_job(backend: Backend) -> None:
    ended = leased(backend)
    backend.jobs.save_projection(terminal(ended, 3), owner=None)
    assert not backend.jobs.steer(ended.job_id, Steer("m1", "veg"), time.time(), MAX)
    gone = new_job(expires_at=past())
    backend.jobs.create(gone)
    assert not backend.jobs.steer(gone.job_id, Steer("m1", "veg"), time.time(), MAX)
    assert not backend.jobs.steer(uid("job"), Steer("m1", "veg"), time.time(), MAX)
    full = leased(backend)
    for n in range(MAX):
        assert backend.jobs.steer(full.job_id, Steer(f"m{n}", "x"), time.time(), MAX)
    assert not backend.jobs.steer(full.job_id, Steer("one-more", "x"), time.time(), MAX)


def test_a_steered_job_is_never_deleted_as_unstarted(backend: Backend) -> None:
    job = new_job()
    backend.jobs.create(job)
    assert backend.jobs.steer(job.job_id, Steer("m1", "veg"), time.time(), MAX)
    with pytest.raises(ConditionFailed):
        backend.jobs.delete_unstarted(job.job_id, job.created_at)
    assert backend.jobs.get(job.job_id) is not None


def claim(user: str, target: str | None, message_id: str | None = None, body: str = "h") -> SteerClaim:
    return SteerClaim(message_id=message_id or uid("msg"), user_id=user, target=target, body_hash=body,
                      created_at=time.time(), expires_at=live())


def test_the_first_claim_of_a_message_id_stays_and_is_no_job(backend: Backend) -> None:
    first = claim("u1", "job-a")
    assert backend.jobs.claim_steer(first) == first
    assert backend.jobs.claim_steer(replace(first, target="job-b")) == first  # a repeat follows it
    assert backend.jobs.steer_claim(first.message_id) == first
    assert backend.jobs.get(first.message_id) is None  # not a job: no read of jobs sees it
    with pytest.raises(ConditionFailed):  # and no job takes its id (the same key, another request)
        backend.jobs.create(replace(new_job(), job_id=first.message_id))
    none = claim("u1", None)
    assert backend.jobs.claim_steer(none) == none and backend.jobs.steer_claim(none.message_id) == none


def test_a_claim_meets_a_job_of_its_id_and_an_expired_claim_is_gone(backend: Backend) -> None:
    job = new_job()
    backend.jobs.create(job)
    assert backend.jobs.claim_steer(claim("u1", None, message_id=job.job_id)) is None
    old = replace(claim("u1", "job-a"), expires_at=past())
    backend.jobs.claim_steer(old)
    assert backend.jobs.steer_claim(old.message_id) is None
    fresh = claim("u1", "job-b", message_id=old.message_id)
    assert backend.jobs.claim_steer(fresh) == fresh


def test_a_turn_commits_its_steered_messages_between_the_message_and_the_reply(backend: Backend) -> None:
    user, conv, job = uid("user"), uid("conv"), uid("job")
    steered = tuple(f"steer {n}" for n in range(1, 12))  # past 9: the keys still sort in order
    when = iso(time.time())
    for _ in range(2):  # idempotent
        backend.conversations.commit_turn(user, conv, job, "chicken", "the reply", when, live(), steered)
    msgs = backend.conversations.messages(user, conv, 50)
    assert [m["text"] for m in msgs] == ["chicken", *steered, "the reply"]
    assert [m["role"] for m in msgs] == ["user"] * 12 + ["assistant"]
