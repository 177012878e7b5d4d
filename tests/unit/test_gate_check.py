"""No gate entry outlives its job, even where nobody's way leads to it (issue 24's
``gate_entries_belong_to_live_jobs``): the sweeper checks every gate that holds entries.

A leftover (an entry whose job has ended or has no record) that blocks a due job is removed by the
repairs that meet it (tests/unit/test_gate.py); these are the ones nobody meets: their user has no
live job left, so no hand-off, no due job and no refused submit ever looks at the gate."""

from __future__ import annotations

from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryGateStore, MemoryJobStore, memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.gate import Gate
from alfred_jobs.domain.models import ChatRequest, Job
from alfred_jobs.durability.admission import Admission
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.exceptions import TransientStoreError
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.sweeper import Sweeper
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock

CHECK = 300.0  # the default ``gate_check_seconds``


def make_deps(clock: ShiftedClock, **overrides: Any) -> Deps:
    return memory_deps(Settings(**{"demo_step_seconds": 0, "lease_seconds": 5, "cancel_poll_seconds": 0.02,
                                   "pending_grace_seconds": 30, **overrides}), clock=clock)


def submit(deps: Deps, message: str, key: str | None = None, conv: str = "c1") -> Job:
    return JobService(deps).submit("u", ChatRequest(message=message, conversation_id=conv), key).job


def run(deps: Deps, job_id: str) -> Outcome:
    return JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id)).outcome


def entries(deps: Deps) -> list[str]:
    return [e.job_id for e in deps.gates.read("u").entries]


def test_an_enroll_that_lands_after_its_job_ended_leaves_no_entry_once_its_user_has_no_live_job() -> None:
    # GIVEN a job that ran to its end, and its first submit's enroll, frozen in flight meanwhile
    # (a refused try of its key deleted that submit's record; a later try created the job again,
    # which ran), landing only now (sim seed 4188): an entry of an ended job, and no live job of
    # its user to lead anyone to it
    clock = ShiftedClock()
    deps = make_deps(clock)
    job = submit(deps, "hello", key="k1")
    assert run(deps, job.job_id) is Outcome.DONE and entries(deps) == []
    Admission(deps).enroll(job)
    assert entries(deps) == [job.job_id]
    # WHEN the sweeper runs, once a gate check is due
    clock.offset += CHECK + 1
    report = Sweeper(deps).sweep()
    # THEN the entry is gone: a user with no live job has an empty gate
    assert entries(deps) == [] and report.repaired == [job.job_id]


class EnrollOnTheWire(MemoryGateStore):
    """The first enroll does not land when sent: its submit is frozen with it in flight (SIGSTOP,
    a frozen Lambda) and its client sees no answer; ``land`` applies it later."""

    def __init__(self, clock: ShiftedClock) -> None:
        super().__init__(clock)
        self.in_flight: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def enroll(self, *args: Any, **kwargs: Any) -> Gate:
        if not self.in_flight:
            self.in_flight.append((args, kwargs))
            raise TransientStoreError("timed out: the process froze with the enroll in flight")
        return super().enroll(*args, **kwargs)

    def land(self) -> None:
        args, kwargs = self.in_flight[0]
        super().enroll(*args, **kwargs)


def test_a_submits_enroll_landing_after_its_job_was_enrolled_by_its_worker_and_ended_leaves_no_entry() -> None:
    # GIVEN a submit whose enroll is frozen in flight after its put (sim seeds 4385, 4777, 5287):
    # the sweeper sends the job, its first delivery enrolls it (a job without an entry), it runs
    # to its end and removes its entry; then the submit's enroll lands
    clock = ShiftedClock()
    deps = make_deps(clock)
    gates = deps.gates = EnrollOnTheWire(clock)
    with pytest.raises(TransientStoreError):
        submit(deps, "hello")
    [job_id] = list(deps.jobs.items)  # type: ignore[attr-defined]
    assert run(deps, job_id) is Outcome.DONE and entries(deps) == []
    gates.land()
    assert entries(deps) == [job_id]
    # WHEN the sweeper runs once a gate check is due
    clock.offset += CHECK + 1
    report = Sweeper(deps).sweep()
    # THEN the entry is gone, though its user has no live job to lead anyone to it
    assert entries(deps) == [] and report.repaired == [job_id]


def test_an_entry_without_a_record_goes_once_its_grace_is_over_and_the_gate_comes_off_the_index() -> None:
    # GIVEN an entry whose record is gone (a refused submit deleted its record and could not take
    # its entry out; or a late enroll of a job refused meanwhile), and no other job
    clock = ShiftedClock()
    deps = make_deps(clock)
    ghost = Job(job_id="b" * 32, user_id="u", message="m", conversation_id="c1", created_at=clock.now(),
                expires_at=int(clock.now()) + 3600)
    Admission(deps).enroll(ghost)
    # WHEN the sweeper checks the gate while the entry is young (its record may be on its way)
    clock.offset += 20
    sweeper = Sweeper(deps)
    assert sweeper.sweep().repaired == []
    # THEN it stays, and goes at a check past its grace; the empty gate then leaves the index
    clock.offset += CHECK + 1
    assert sweeper.sweep().repaired == [ghost.job_id]
    assert entries(deps) == []
    gates = deps.gates
    assert isinstance(gates, MemoryGateStore)
    clock.offset += CHECK + 1
    assert gates.due_for_check(clock.now(), 10) == []


def test_a_gate_with_live_entries_is_left_alone_and_checked_again_later() -> None:
    # GIVEN a live job waiting its turn behind a running one
    clock = ShiftedClock()
    deps = make_deps(clock, max_running_per_user=1, lease_seconds=3600)
    first = submit(deps, "one")
    second = submit(deps, "two")
    jobs = deps.jobs
    assert isinstance(jobs, MemoryJobStore)
    jobs.acquire_lease(first.job_id, "w", clock.now(), 3600)  # running, its lease live
    deps.gates.take("u", deps.gates.read("u").entry(first.job_id), 1, int(clock.now()) + 3600,  # type: ignore[arg-type]
                    attempt=1)
    # WHEN its gate's check comes (the waiting job's own deadline postponed: only the gate is due)
    clock.offset += CHECK + 1
    jobs.due[second.job_id] = clock.now() + 3600
    report = Sweeper(deps).sweep()
    # THEN nothing is removed, and the gate is not due again before another check period
    assert report.repaired == [] and report.gates_checked == ["u"]
    assert entries(deps) == [first.job_id, second.job_id]
    gates = deps.gates
    assert isinstance(gates, MemoryGateStore)
    assert gates.due_for_check(clock.now() + CHECK - 1, 10) == []
    assert gates.due_for_check(clock.now() + CHECK + 1, 10) == ["u"]


def test_a_gate_emptied_by_its_last_job_is_looked_at_once_more_then_leaves_the_index() -> None:
    clock = ShiftedClock()
    deps = make_deps(clock)
    job = submit(deps, "hello")
    assert run(deps, job.job_id) is Outcome.DONE
    gates = deps.gates
    assert isinstance(gates, MemoryGateStore)
    clock.offset += CHECK + 1
    assert gates.due_for_check(clock.now(), 10) == ["u"]
    assert Sweeper(deps).sweep().gates_checked == ["u"]
    assert gates.due_for_check(clock.now() + 10 * CHECK, 10) == []
    assert deps.gates.read("u") == Gate()
