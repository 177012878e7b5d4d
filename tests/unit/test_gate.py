"""Guarantee 12 and per-user fairness against the in-memory ports: the gate, the three multitask
policies, the hand-off and its crash points, the sweeper telling waiting from stranded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryEventLog, MemoryGateStore, MemoryJobQueue, MemoryJobStore, memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.clock import Clock
from alfred_jobs.domain.agent import AgentContext, PlanStep
from alfred_jobs.domain.events import CancelledPayload
from alfred_jobs.domain.gate import Gate, GateEntry
from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job, JobStatus
from alfred_jobs.durability.admission import Admission, Verdict, gate_entry
from alfred_jobs.durability.ending import end_unheld
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.exceptions import (
    AgentError,
    ConversationBusy,
    Fenced,
    StoreError,
    TooManyRequests,
    TransientStoreError,
)
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService, Submitted, keyed_id
from alfred_jobs.service.sweeper import Sweeper
from alfred_jobs.settings import Settings


def make_deps(**overrides: Any) -> Deps:
    return memory_deps(Settings(**{"demo_step_seconds": 0, "lease_seconds": 5, "cancel_poll_seconds": 0.02,
                                   "pending_grace_seconds": 30, **overrides}))


def sent(deps: Deps) -> list[str]:
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue)
    return [m.job_id for m in queue.sent]


def log(deps: Deps, job_id: str) -> list[Event]:
    store = deps.log
    assert isinstance(store, MemoryEventLog)
    return store.all(job_id)


def chat(svc: JobService, message: str, conv: str | None = "c1", user: str = "u", **kw: Any) -> Job:
    return svc.submit(user, ChatRequest(message=message, conversation_id=conv, **kw), None).job


def run(deps: Deps, job_id: str, agent: DemoAgent | None = None) -> Outcome:
    return JobRunner(deps, agent or DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id)).outcome


# ---- the gate itself ---------------------------------------------------------------------------


def e(job: str, conv: str, order: str, running: bool = False) -> GateEntry:
    return GateEntry(job, conv, order, running)


def test_one_job_of_a_conversation_at_a_time_in_submit_order() -> None:
    gate = Gate((e("b", "c1", "2"), e("a", "c1", "1"), e("x", "c2", "3")), running=0)
    assert [g.job_id for g in gate.startable(2)] == ["a", "x"]
    assert gate.may_start("a", 2) and not gate.may_start("b", 2) and gate.may_start("x", 2)
    assert [g.job_id for g in gate.ahead_of("b")] == ["a"]
    running = Gate((e("a", "c1", "1", True), e("b", "c1", "2"), e("x", "c2", "3")), running=1)
    assert [g.job_id for g in running.startable(2)] == ["x"]
    assert [g.job_id for g in running.startable(1)] == []


def test_a_running_job_blocks_its_conversation_whatever_its_order() -> None:
    # Clock skew between API hosts can give a later submit an earlier order: the running job
    # still holds the conversation.
    gate = Gate((e("late", "c1", "2", True), e("early", "c1", "1")), running=1)
    assert not gate.may_start("early", 5) and gate.startable(5) == []
    assert [g.job_id for g in gate.ahead_of("early")] == ["late"]


# ---- enqueue: in order, history, hand-off ------------------------------------------------------------


def test_a_second_message_waits_then_starts_with_the_first_turn_in_its_history() -> None:
    deps = make_deps()
    svc = JobService(deps)
    first = chat(svc, "chicken [steps=2]")
    second = chat(svc, "and make it vegetarian [steps=1]")
    assert sent(deps) == [first.job_id], "the second message holds no queue message while it waits"
    seen: dict[str, Any] = {}

    class Recording(DemoAgent):
        def think(self, ctx: AgentContext) -> Any:
            seen[ctx.job_id] = [m["job_id"] for m in ctx.history]
            return super().think(ctx)

    agent = Recording(deps.agent_data, deps.settings)
    assert run(deps, first.job_id, agent) is Outcome.DONE
    assert sent(deps) == [first.job_id, second.job_id], "the first job's end hands its place on"
    assert run(deps, second.job_id, agent) is Outcome.DONE
    assert seen == {first.job_id: [], second.job_id: [first.job_id, first.job_id]}
    turns = deps.conversations.messages("u", "c1", 10)
    assert [(m["job_id"], m["role"]) for m in turns] == [
        (first.job_id, "user"), (first.job_id, "assistant"), (second.job_id, "user"), (second.job_id, "assistant")]
    assert deps.gates.read("u") == Gate()


def test_a_delivery_of_a_waiting_job_is_given_back_without_counting_an_attempt() -> None:
    deps = make_deps()
    svc = JobService(deps)
    first = chat(svc, "one")
    second = chat(svc, "two")
    # a duplicate (or a stray) message of the waiting job
    assert run(deps, second.job_id) is Outcome.DROPPED
    record = deps.jobs.get(second.job_id)
    assert record is not None and record.attempts == 0 and record.lease_owner is None
    assert log(deps, second.job_id) == []
    assert run(deps, first.job_id) is Outcome.DONE and run(deps, second.job_id) is Outcome.DONE


@pytest.mark.parametrize("slot_free", [True, False])
def test_a_delivery_racing_an_api_cancel_does_not_enroll_the_ended_job_again(slot_free: bool) -> None:
    # GIVEN a job that may start, its message sent (next_up), and the API cancelling it as the
    # worker takes it: the API read the job before the worker's lease, so it ends the job itself
    # (terminal event, entry removed) between the worker's lease and its take
    deps = make_deps(max_running_per_user=1)
    svc = JobService(deps)
    if not slot_free:
        busy = chat(svc, "busy", conv="c0")
        assert run(deps, busy.job_id, agent=_Parked(deps)) is Outcome.RETRY  # holds the one slot
    job = chat(svc, "one")
    stale = deps.jobs.get(job.job_id)
    assert stale is not None
    real_take = deps.gates.take

    def take_after_the_cancel(*args: Any, **kwargs: Any) -> Gate:
        deps.gates.take = real_take  # type: ignore[method-assign]
        assert end_unheld(deps, stale, CancelledPayload(), "api") is not None
        return real_take(*args, **kwargs)

    deps.gates.take = take_after_the_cancel  # type: ignore[method-assign]
    # WHEN the delivery runs
    result = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job.job_id, next_up=True))
    # THEN it finishes the ended job and gives the gate no entry for it (an entry of an ended job
    # would hold its conversation for good)
    assert result.outcome is Outcome.DONE and result.status is JobStatus.CANCELLED
    assert deps.gates.read("u").entry(job.job_id) is None
    assert [e.type for e in log(deps, job.job_id)] == [EventType.CANCELLED]


class _Parked(DemoAgent):
    """An agent whose think fails retryably: its job keeps its slot through the backoff."""

    def __init__(self, deps: Deps) -> None:
        super().__init__(deps.agent_data, deps.settings)

    def think(self, ctx: AgentContext) -> Any:
        raise AgentError("later", code="later", retryable=True)


# ---- reject, interrupt, the limits ------------------------------------------------------------------


def test_reject_is_a_409_naming_the_active_job_and_creates_nothing() -> None:
    deps = make_deps()
    svc = JobService(deps)
    first = chat(svc, "one")
    with pytest.raises(ConversationBusy) as busy:
        chat(svc, "two", multitask="reject")
    assert busy.value.job_id == first.job_id and busy.value.status == 409
    assert [g.job_id for g in deps.gates.read("u").entries] == [first.job_id]
    assert len(deps.jobs.items) == 1  # type: ignore[attr-defined]
    # an idle conversation takes a "reject" like any other message
    assert run(deps, first.job_id) is Outcome.DONE
    third = chat(svc, "three", multitask="reject")
    assert sent(deps)[-1] == third.job_id


def test_interrupt_cancels_a_waiting_job_at_once_and_runs_the_new_one() -> None:
    deps = make_deps(max_running_per_user=1)
    svc = JobService(deps)
    busy = chat(svc, "elsewhere", conv="c0")  # holds the user's one slot
    first = chat(svc, "one")
    second = chat(svc, "two", multitask="interrupt")
    assert log(deps, first.job_id)[-1].type is EventType.CANCELLED
    assert log(deps, first.job_id)[-1].data == {"reason": "interrupted", "by": second.job_id}
    record = deps.jobs.get(first.job_id)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert [g.job_id for g in deps.gates.read("u").in_order()] == [busy.job_id, second.job_id]
    assert run(deps, busy.job_id) is Outcome.DONE
    assert sent(deps)[-1] == second.job_id


class BlockingAgent(DemoAgent):
    def __init__(self, deps: Deps) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.entered = threading.Event()

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        self.entered.set()
        while not ctx.cancelled():
            threading.Event().wait(0.01)
        return super().act(step, ctx)


def test_interrupt_ends_a_running_job_at_its_next_boundary_with_the_reason() -> None:
    deps = make_deps()
    svc = JobService(deps)
    first = chat(svc, "long [steps=3]")
    agent = BlockingAgent(deps)
    outcome: list[Outcome] = []
    worker = threading.Thread(target=lambda: outcome.append(run(deps, first.job_id, agent)))
    worker.start()
    assert agent.entered.wait(10)
    second = chat(svc, "no, something else", multitask="interrupt")
    worker.join(10)
    assert outcome == [Outcome.DONE]
    end = log(deps, first.job_id)[-1]
    assert end.type is EventType.CANCELLED and end.data == {"reason": "interrupted", "by": second.job_id}
    assert sent(deps)[-1] == second.job_id, "the interrupted job hands its place to the new one"
    assert run(deps, second.job_id) is Outcome.DONE


def test_at_most_max_running_jobs_of_a_user_run_and_others_are_not_held_up() -> None:
    deps = make_deps(max_running_per_user=1)
    svc = JobService(deps)
    x = chat(svc, "x", conv="c1")
    y = chat(svc, "y", conv="c2")
    z = chat(svc, "z", conv="c3", user="bystander")
    assert sent(deps) == [x.job_id, z.job_id]
    assert run(deps, x.job_id) is Outcome.DONE
    assert sent(deps)[-1] == y.job_id


def test_an_attempt_of_an_earlier_job_of_the_same_id_never_moves_the_new_jobs_entry() -> None:
    """Seed 1106 (docs/simulation.md): a reused Idempotency-Key makes a new job with the id of one
    whose retention ran out. An attempt of the old job that wakes late carries the same attempt
    numbers as the new job's: the gate's fence must tell the two jobs apart by creation time."""
    # GIVEN a new job of a reused id, its attempt 1 running in the user's only slot, and the old
    # job of that id (created earlier), whose attempts 1 and 2 are still about
    deps = make_deps(max_running_per_user=1)
    admission = Admission(deps)
    new = replace(chat(JobService(deps), "again", conv="c1"), attempts=1)
    old = replace(new, created_at=new.created_at - 200)
    assert admission.take(new) is Verdict.RUN
    running = deps.gates.read("u")
    # WHEN the old job's asker pauses, or its finalize releases the slot
    # THEN each is refused as the old job's: the new job keeps its slot
    with pytest.raises(Fenced):
        admission.pause(old, attempt=1)
    with pytest.raises(Fenced):
        admission.release(replace(old, attempts=2), attempt=2)
    assert deps.gates.read("u") == running
    # AND once the new job asks the user itself, the old asker's resume cannot answer it
    admission.pause(new, attempt=1)
    asking = deps.gates.read("u")
    with pytest.raises(Fenced):
        admission.resume(old, attempt=1)
    assert deps.gates.read("u") == asking


def test_past_max_active_a_submit_is_a_429_and_leaves_no_record() -> None:
    deps = make_deps(max_active_per_user=2)
    svc = JobService(deps)
    chat(svc, "a", conv=None)
    chat(svc, "b", conv=None)
    with pytest.raises(TooManyRequests) as too_many:
        chat(svc, "c", conv=None)
    assert too_many.value.code == "too_many_jobs" and too_many.value.retry_after >= 1
    assert len(deps.jobs.items) == 2  # type: ignore[attr-defined]
    assert len(chat(svc, "d", conv=None, user="someone-else").job_id) == 32


def test_a_replayed_submit_of_an_ended_job_leaves_no_entry_behind() -> None:
    deps = make_deps()
    svc = JobService(deps)
    job = svc.submit("u", ChatRequest(message="m", conversation_id="c1"), "key-1").job
    assert run(deps, job.job_id) is Outcome.DONE
    again = svc.submit("u", ChatRequest(message="m", conversation_id="c1"), "key-1")
    assert not again.created and again.job.job_id == job.job_id
    assert deps.gates.read("u") == Gate()
    later = chat(svc, "next")
    assert sent(deps)[-1] == later.job_id, "the conversation is free"


# ---- the hand-off's crash points ---------------------------------------------------------------------


class FlakyGates(MemoryGateStore):
    """Fails the first ``remove`` as a crash would (after the terminal event, before the hand-off)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_removes = 1

    def remove(self, user_id: str, job_id: str, *, conversation_id: str | None = None,
               only_untaken: bool = False, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        if self.fail_removes:
            self.fail_removes -= 1
            raise StoreError("the process died here")
        return super().remove(user_id, job_id, conversation_id=conversation_id, only_untaken=only_untaken,
                              attempt=attempt, created_at=created_at)


def test_a_job_that_dies_before_handing_on_is_finalized_again_and_hands_on() -> None:
    deps = make_deps()
    deps.gates = FlakyGates()
    svc = JobService(deps)
    first = chat(svc, "one")
    second = chat(svc, "two")
    run(deps, first.job_id)  # ends: terminal event written, the hand-off "crashes"
    assert log(deps, first.job_id)[-1].type is EventType.COMPLETE
    record = deps.jobs.get(first.job_id)
    assert record is not None and not record.terminal, "no terminal projection before the hand-off"
    assert second.job_id not in sent(deps)
    # THEN the sweeper finds the first job (still on its index) and its finalize runs again
    deps.jobs.due[first.job_id] = time.time() - 1  # type: ignore[attr-defined]
    assert Sweeper(deps).sweep().requeued == [first.job_id]
    assert run(deps, first.job_id) is Outcome.DONE
    assert sent(deps)[-1] == second.job_id
    assert len([m for m in deps.conversations.messages("u", "c1", 10) if m["job_id"] == first.job_id]) == 2


def test_two_jobs_ending_at_once_each_hand_on_and_nothing_runs_twice() -> None:
    deps = make_deps(max_running_per_user=2)
    svc = JobService(deps)
    a, b = chat(svc, "a", conv="c1"), chat(svc, "b", conv="c2")
    c, d = chat(svc, "c", conv="c1"), chat(svc, "d", conv="c2")
    threads = [threading.Thread(target=run, args=(deps, j.job_id)) for j in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {c.job_id, d.job_id} <= set(sent(deps))
    for job in (c, d, c, d):  # with duplicate deliveries
        run(deps, job.job_id)
    for job in (a, b, c, d):
        assert [ev.type for ev in log(deps, job.job_id)].count(EventType.COMPLETE) == 1


def test_a_job_its_submit_never_enrolled_is_enrolled_by_its_first_delivery() -> None:
    deps = make_deps()
    now = time.time()
    orphan = Job(job_id="a" * 32, user_id="u", message="hi", conversation_id="c1", created_at=now,
                 expires_at=int(now) + 3600)
    deps.jobs.create(orphan)  # the submit died between its put and its enroll
    assert run(deps, orphan.job_id) is Outcome.DONE
    assert deps.gates.read("u") == Gate()


# ---- the sweeper: waiting, queued, stranded, repaired --------------------------------------------------


def test_the_sweeper_leaves_a_backlog_of_waiting_jobs_alone() -> None:
    deps = make_deps(max_running_per_user=1, max_active_per_user=300)
    svc = JobService(deps)
    jobs = [chat(svc, f"m{i}", conv=f"c{i % 3}") for i in range(200)]
    for j in jobs:
        deps.jobs.due[j.job_id] = time.time() - 1  # type: ignore[attr-defined]  # every job past its grace
    before = len(sent(deps))
    report = Sweeper(deps).sweep(limit=500)
    # the one job that may run was sent and never picked up (the fake queue delivers nothing): it
    # is the one stranded; the 199 behind it wait their turn, and get no message
    assert report.requeued == [jobs[0].job_id]
    assert len(report.waiting) == 199 and len(sent(deps)) - before == 1
    assert Sweeper(deps).sweep(limit=500).waiting == [], "each waiting job is looked at once per grace period"


def test_the_sweeper_repairs_a_gate_entry_whose_job_never_got_a_record() -> None:
    deps = make_deps()
    old = time.time() - 300
    ghost = Job(job_id="b" * 32, user_id="u", message="", conversation_id="c1", created_at=old,
                expires_at=int(old) + 3600)
    # its put never landed
    deps.gates.enroll("u", gate_entry(ghost), None, int(time.time()) + 3600, check_at=time.time() + 600)
    svc = JobService(deps)
    waiting = chat(svc, "stuck behind a ghost")
    assert waiting.job_id not in sent(deps)
    deps.jobs.due[waiting.job_id] = time.time() - 1  # type: ignore[attr-defined]
    report = Sweeper(deps).sweep()
    assert report.repaired == [ghost.job_id] and report.handed_on == [waiting.job_id]
    assert report.requeued == [], "sent by the repair's hand-off, not counted as stuck"
    assert sent(deps)[-1] == waiting.job_id


# ---- leftover entries (an entry whose job is gone or has ended) never lock a user out ---------------


def leftover_of_a_lost_put(deps: Deps, conv: str, age: float = 300) -> str:
    """An entry whose job never got a record (the put failed after the enroll, and so did the
    undo; or the submit died between its two writes), older than the grace period. (Enrolled
    first in its gate: an entry's order, which tells its age, is never before the gate's last.)"""
    old = deps.clock.now() - age
    ghost = Job(job_id=deps.new_id(), user_id="u", message="", conversation_id=conv, created_at=old,
                expires_at=int(old) + 3600)
    deps.gates.enroll("u", gate_entry(ghost), None, int(deps.clock.now()) + 3600, check_at=deps.clock.now() + 600)
    return ghost.job_id


def leftover_of_a_resend(deps: Deps, conv: str) -> str:
    """An entry of an ended job: what a resend of its submit (same Idempotency-Key) leaves when it
    enrolls the finished job again and taking it out again fails (``JobService._replayed``)."""
    now = deps.clock.now()
    job = Job(job_id=deps.new_id(), user_id="u", message="m", conversation_id=conv, created_at=now,
              expires_at=int(now) + 3600)
    deps.jobs.create(job)
    deps.jobs.save_projection(replace(job, status=JobStatus.COMPLETE, last_seq=3, completed_at=now), owner=None)
    deps.gates.enroll("u", gate_entry(job), None, int(now) + 3600, check_at=now + 600)
    return job.job_id


def test_the_sweeper_sends_a_job_whose_only_blockers_are_leftovers_of_other_conversations() -> None:
    # GIVEN two leftovers in other conversations: with the default limits (two run slots) they are
    # the gate's oldest "jobs to start", so the user's new job is not sent at submit
    deps = make_deps()
    svc = JobService(deps)
    gone = leftover_of_a_lost_put(deps, "old-1")
    ended = leftover_of_a_resend(deps, "old-2")
    job = chat(svc, "hello", conv="c1")
    assert job.job_id not in sent(deps)
    # WHEN the sweeper finds it due
    deps.jobs.due[job.job_id] = deps.clock.now() - 1  # type: ignore[attr-defined]
    report = Sweeper(deps).sweep()
    # THEN it removes both leftovers and the job is sent, not left "waiting" for ever
    assert sorted(report.repaired) == sorted([gone, ended])
    assert job.job_id not in report.waiting and sent(deps)[-1] == job.job_id
    assert [e.job_id for e in deps.gates.read("u").entries] == [job.job_id]
    assert run(deps, job.job_id) is Outcome.DONE
    assert deps.gates.read("u") == Gate()


def test_leftovers_filling_the_gate_are_repaired_instead_of_a_429() -> None:
    deps = make_deps(max_active_per_user=2)
    svc = JobService(deps)
    leftover_of_a_lost_put(deps, "old-1")
    leftover_of_a_resend(deps, "old-2")
    job = chat(svc, "hello", conv="c1")  # no 429: the gate's two entries belong to no live job
    assert sent(deps)[-1] == job.job_id
    assert [e.job_id for e in deps.gates.read("u").entries] == [job.job_id]


def test_a_user_whose_last_job_ends_is_left_with_an_empty_gate() -> None:
    # GIVEN leftovers that block nobody (a third slot is free: the user's job is sent at once)
    deps = make_deps(max_running_per_user=3)
    svc = JobService(deps)
    leftover_of_a_lost_put(deps, "old-1")
    leftover_of_a_resend(deps, "old-2")
    job = chat(svc, "hello", conv="c1")
    assert sent(deps)[-1] == job.job_id
    # WHEN the user's one live job ends, its hand-off meets the leftovers
    assert run(deps, job.job_id) is Outcome.DONE
    # THEN the gate is empty: no leftover outlives the user's live jobs
    assert deps.gates.read("u") == Gate()


def test_a_cancel_while_a_stray_delivery_holds_the_lease_ends_the_job_at_its_give_back() -> None:
    # GIVEN a job waiting its turn, and a stray delivery of it holding its lease for a moment: the
    # API's cancel sees that lease live and only sets the flag (202)
    deps = make_deps(lease_seconds=60, cancel_poll_seconds=60)
    svc = JobService(deps)
    first = chat(svc, "one")
    second = chat(svc, "two")
    real_read = deps.gates.read

    def read_as_the_user_cancels(user_id: str) -> Gate:
        deps.gates.read = real_read  # type: ignore[method-assign]
        assert svc.cancel("u", second.job_id)[1] is False
        return real_read(user_id)

    deps.gates.read = read_as_the_user_cancels  # type: ignore[method-assign]
    # WHEN the stray delivery gives the job back (not its turn)
    assert run(deps, second.job_id) is not Outcome.RETRY
    # THEN the job is cancelled now, not when its turn would have come
    record = deps.jobs.get(second.job_id)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert [e.type for e in log(deps, second.job_id)] == [EventType.CANCELLED]
    assert [g.job_id for g in deps.gates.read("u").entries] == [first.job_id]


def test_a_hand_off_that_meets_a_stray_deliverys_lease_is_not_lost() -> None:
    # GIVEN a job waiting its turn, and a stray delivery of it that has read the gate (not its
    # turn) while it holds the job's lease
    deps = make_deps()
    svc = JobService(deps)
    first = chat(svc, "one")
    second = chat(svc, "two")
    real_read = deps.gates.read
    consumed: list[int] = []

    def read_then_the_first_job_ends(user_id: str) -> Gate:
        deps.gates.read = real_read  # type: ignore[method-assign]
        gate = real_read(user_id)
        # ... and meanwhile the first job ends and hands its place on: the hand-off's message
        # meets the stray's live lease and is dropped as a duplicate
        assert run(deps, first.job_id) is Outcome.DONE
        assert sent(deps)[-1] == second.job_id
        handed = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(second.job_id, next_up=True))
        assert handed.outcome is Outcome.DROPPED
        consumed.append(len(sent(deps)))
        return gate

    deps.gates.read = read_then_the_first_job_ends  # type: ignore[method-assign]
    # WHEN the stray delivery gives the job back (its gate read said: not its turn) and drops its own message
    assert run(deps, second.job_id) is Outcome.DROPPED
    # THEN a message for the job is under way again (it is next up), and it runs now, not after
    # the sweeper's queue wait
    assert second.job_id in sent(deps)[consumed[0]:]
    assert JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(
        Delivery(second.job_id, next_up=True)).status is JobStatus.COMPLETE
    assert deps.gates.read("u") == Gate()


# ---- the active limit: a refused submit whose record could not be deleted --------------------------------


class DeleteFails(MemoryJobStore):
    """Fails the next ``delete_unstarted`` (a store error: throttled past every retry)."""

    def __init__(self, pending_grace: float, clock: Clock) -> None:
        super().__init__(pending_grace, clock)
        self.fail_deletes = 1

    def delete_unstarted(self, job_id: str, created_at: float) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise TransientStoreError("throttled")
        super().delete_unstarted(job_id, created_at)


def refused_with_its_record_left(deps: Deps, svc: JobService) -> Job:
    """A submit refused for the full gate (one active job, the limit) whose record's delete failed:
    the client saw an error, a record without a gate entry remains."""
    deps.jobs = DeleteFails(deps.settings.pending_grace_seconds, deps.clock)
    svc = JobService(deps)
    chat(svc, "the one active job", conv="c0")
    with pytest.raises(TransientStoreError):
        svc.submit("u", ChatRequest(message="one too many", conversation_id="c1"), "key-1")
    left = next(j for j in deps.jobs.items.values() if j.message == "one too many")  # type: ignore[attr-defined]
    assert deps.gates.read("u").entry(left.job_id) is None
    return left


def test_a_resend_of_a_refused_submit_is_refused_again_while_the_gate_is_full() -> None:
    deps = make_deps(max_active_per_user=1)
    left = refused_with_its_record_left(deps, JobService(deps))
    # WHEN the client sends the same request again (same Idempotency-Key)
    with pytest.raises(TooManyRequests):
        JobService(deps).submit("u", ChatRequest(message="one too many", conversation_id="c1"), "key-1")
    # THEN it is a 429 again, not a 202 for a job past the limit, and the record is gone
    assert deps.jobs.get(left.job_id) is None
    assert len(deps.gates.read("u").entries) == 1


def test_a_refused_job_never_runs_past_the_active_limit() -> None:
    deps = make_deps(max_active_per_user=1)
    svc = JobService(deps)
    left = refused_with_its_record_left(deps, svc)
    active = next(e.job_id for e in deps.gates.read("u").entries)
    # WHEN a delivery of it comes (the sweeper sends a job its submit never enrolled)
    assert run(deps, left.job_id) is not Outcome.RETRY
    # THEN it is not enrolled past the limit, and does not run
    assert [e.job_id for e in deps.gates.read("u").entries] == [active]
    assert log(deps, left.job_id) == []
    # ... and the sweeper, finding it due while the gate is full, counts it waiting for room, not stuck
    deps.jobs.due[left.job_id] = deps.clock.now() - 1  # type: ignore[attr-defined]
    report = Sweeper(deps).sweep()
    assert left.job_id in report.waiting and left.job_id not in report.requeued
    # ... until the user's active job ends: then it is admitted under the limit, and runs
    assert run(deps, active) is Outcome.DONE
    deps.jobs.due[left.job_id] = deps.clock.now() - 1  # type: ignore[attr-defined]
    Sweeper(deps).sweep()
    assert sent(deps)[-1] == left.job_id
    assert run(deps, left.job_id) is Outcome.DONE
    assert log(deps, left.job_id)[-1].type is EventType.COMPLETE


def test_a_resend_whose_enroll_lands_after_a_refusal_deleted_the_job_leaves_no_entry() -> None:
    # GIVEN a job put by one submit of a key (frozen since), and a resend of the same key that is
    # refused meanwhile: it deletes the record (and takes its own entry out) just after the
    # frozen submit found the record there
    deps = make_deps()
    svc = JobService(deps)
    req = ChatRequest(message="soup", conversation_id="c1")
    first = svc.submit("u", req, "k1").job
    deps.gates.remove("u", first.job_id)  # the refusing resend took the entry out...
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    real_get = store.get
    calls: list[str] = []

    def get_then_deleted(job_id: str, consistent: bool = True) -> Job | None:
        job = real_get(job_id, consistent)
        calls.append(job_id)
        if len(calls) == 1:
            store.delete_unstarted(job_id, first.created_at)  # ... and deleted the record now
        return job

    store.get = get_then_deleted  # type: ignore[method-assign]
    # WHEN the frozen submit wakes: its put meets the record, its enroll lands after the removal
    again = svc.submit("u", req, "k1")
    store.get = real_get  # type: ignore[method-assign]
    # THEN no entry is left without its job: the submit takes its entry out and, as the key's
    # first submit again, makes the job anew (its record and its entry)
    assert again.created
    assert deps.jobs.get(again.job.job_id) is not None
    assert [e.job_id for e in deps.gates.read("u").entries] == [again.job.job_id]


def test_a_reject_whose_entry_cannot_be_taken_out_keeps_its_job_rather_than_leave_an_entry_without_one() -> None:
    # GIVEN a conversation with a job under way, and a store that refuses the removal of the new
    # job's entry (throttled)
    deps = make_deps()
    svc = JobService(deps)
    chat(svc, "first")
    gates = deps.gates
    assert isinstance(gates, MemoryGateStore)
    real_remove = gates.remove

    def throttled(*args: Any, **kwargs: Any) -> Gate:
        raise TransientStoreError("throttled")

    gates.remove = throttled  # type: ignore[method-assign]
    # WHEN a message with ``multitask: reject`` arrives
    with pytest.raises(TransientStoreError):
        svc.submit("u", ChatRequest(message="second", conversation_id="c1", multitask="reject"), "k2")
    gates.remove = real_remove  # type: ignore[method-assign]
    # THEN its record stays with its entry (it runs after the first, as if enqueued; a resend with
    # its key finds it), never an entry without a job
    entries = deps.gates.read("u").entries
    assert len(entries) == 2
    assert all(deps.jobs.get(e.job_id) is not None for e in entries)


def one_job_ahead() -> tuple[Deps, JobService, Job]:
    """A user with one run slot and one job of conversation c1 ahead, its message sent."""
    deps = make_deps(max_running_per_user=1)
    svc = JobService(deps)
    return deps, svc, chat(svc, "first")


@contextmanager
def undo_held(deps: Deps, meanwhile: Callable[[str], Job]) -> Iterator[list[Job]]:
    """A refused submit's undo (the removal of its entry) held in flight: ``meanwhile(job_id)``
    runs before it lands, once; the job it returns is put in the list yielded."""
    gates = deps.gates
    assert isinstance(gates, MemoryGateStore)
    real_remove = gates.remove
    later: list[Job] = []
    held_once: list[str] = []

    def held(user_id: str, job_id: str, **kwargs: Any) -> Gate:
        if kwargs.get("only_untaken") and not held_once:
            held_once.append(job_id)  # (before ``meanwhile``: an undo it makes itself is not held)
            later.append(meanwhile(job_id))
        return real_remove(user_id, job_id, **kwargs)

    gates.remove = held  # type: ignore[method-assign]
    try:
        yield later
    finally:
        gates.remove = real_remove  # type: ignore[method-assign]


def test_a_rejects_late_undo_leaves_the_entry_of_a_job_a_worker_started_and_that_asked() -> None:
    # GIVEN a reject submit, refused (a job of its conversation is ahead), whose undo (the removal
    # of its entry) is frozen in flight: meanwhile the job ahead ends and hands on, a worker takes
    # the refused job after all, it asks the user (its slot back, its conversation held), and a
    # third message of the conversation queues behind it (sim seed 108223 at d7a96dd)
    deps, svc, first = one_job_ahead()

    def meanwhile(job_id: str) -> Job:
        assert run(deps, first.job_id) is Outcome.DONE
        assert sent(deps)[-1] == job_id, "the hand-off sent the refused job: its way was clear"
        assert run(deps, job_id) is Outcome.DONE
        assert log(deps, job_id)[-1].type is EventType.INPUT_REQUIRED
        return chat(svc, "third")

    # WHEN the undo lands
    with undo_held(deps, meanwhile) as later:
        asked = svc.submit("u", ChatRequest(message="chicken from my pantry [steps=2]", conversation_id="c1",
                                            multitask="reject"), None)
    # THEN the job that started keeps its entry (asking: it holds its conversation), so the third
    # message still waits behind it: removed, its way would be clear with no message to start it
    # (nobody sends it: the removal is an undo, not an ending that hands on), and the asker's
    # conversation would be open to the next job while its question waits
    assert asked.created and asked.job.job_id == sent(deps)[-1]
    entry = deps.gates.read("u").entry(asked.job.job_id)
    assert entry is not None and entry.asking
    assert not deps.gates.read("u").may_start(later[0].job_id, 1)
    assert later[0].job_id not in sent(deps)


def test_a_rejects_undo_after_the_hand_off_sent_its_job_hands_on_to_the_job_behind_it() -> None:
    # GIVEN a reject submit, refused (a job of its conversation is ahead), whose undo is slow to
    # land: meanwhile the job ahead ends and hands on to the refused job (its message on the way,
    # no worker has taken it yet), and a later message of the conversation queues behind it
    deps, svc, first = one_job_ahead()

    def meanwhile(job_id: str) -> Job:
        assert run(deps, first.job_id) is Outcome.DONE
        assert sent(deps)[-1] == job_id, "the hand-off sent the refused job"
        third = chat(svc, "third")
        assert sent(deps)[-1] == job_id, "the third waits behind the refused job"
        return third

    # WHEN the undo lands: the refused job's entry goes (no worker took it) and its record too
    with undo_held(deps, meanwhile) as later, pytest.raises(ConversationBusy):
        chat(svc, "second", multitask="reject")
    # THEN the job behind it, whose way the removal cleared, is sent: the refused job's message
    # finds no record and is dropped, and nobody else would send it (only the sweeper's repair)
    assert deps.gates.read("u").next_up(later[0].job_id, 1)
    assert sent(deps)[-1] == later[0].job_id
    assert run(deps, later[0].job_id) is Outcome.DONE


@pytest.mark.parametrize("its_delete", ["lands", "throttled"])
def test_a_resend_of_a_refused_reject_is_refused_too_not_accepted_and_then_undone(its_delete: str) -> None:
    # GIVEN a reject submit with an Idempotency-Key, refused (a job of its conversation is under
    # way), whose undo is frozen in flight: its client, with no answer, sends it again (the resend
    # meets the record and the entry, both still there), and then a third message of the
    # conversation; the frozen submit's delete of the record then lands or is throttled (sim seed
    # 232214 at 74a44b3: the resend answered 202, the undo took its entry out, the delete was
    # throttled, and the job, accepted before the third was sent, ran after it)
    deps, svc, first = one_job_ahead()
    req = ChatRequest(message="second", conversation_id="c1", multitask="reject")
    resent: list[Submitted | ConversationBusy] = []

    def meanwhile(job_id: str) -> Job:
        try:
            resent.append(svc.submit("u", req, "k"))
        except ConversationBusy as busy:
            resent.append(busy)
        return chat(svc, "third")

    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    real_delete = store.delete_unstarted

    def delete(job_id: str, created_at: float) -> None:
        if its_delete == "throttled" and held_later:
            raise TransientStoreError("throttled")
        real_delete(job_id, created_at)

    store.delete_unstarted = delete  # type: ignore[method-assign]
    # WHEN the undo lands
    with undo_held(deps, meanwhile) as held_later, pytest.raises((ConversationBusy, TransientStoreError)):
        svc.submit("u", req, "k")
    store.delete_unstarted = real_delete  # type: ignore[method-assign]
    # THEN the resend had the first submit's outcome, a 409 ("repeating the request repeats the
    # outcome"), not a 202 for a job the first submit's undo then takes out of its place (deleted,
    # or its record left without an entry, to be enrolled behind the third by the repairs): the
    # key's job is gone, and the third runs next, after the first
    third = held_later[0]
    assert len(resent) == 1 and isinstance(resent[0], ConversationBusy), resent
    job_id = keyed_id("u", "k")
    assert deps.jobs.get(job_id) is None
    assert [e.job_id for e in deps.gates.read("u").entries] == [first.job_id, third.job_id]
    assert run(deps, first.job_id) is Outcome.DONE
    assert sent(deps)[-1] == third.job_id


def test_a_refused_rejects_late_undo_leaves_the_entry_of_a_later_job_of_its_key() -> None:
    # GIVEN a reject submit with an Idempotency-Key, refused, whose undo is frozen in flight:
    # meanwhile a resend is refused too (its undo and delete land: the key's job is gone), the job
    # ahead ends, a further resend makes the key's job anew (the conversation free now: 202, sent),
    # and a third message queues behind it
    deps, svc, first = one_job_ahead()
    req = ChatRequest(message="second", conversation_id="c1", multitask="reject")
    anew: list[Submitted] = []

    def meanwhile(job_id: str) -> Job:
        with pytest.raises(ConversationBusy):
            svc.submit("u", req, "k")
        assert run(deps, first.job_id) is Outcome.DONE
        anew.append(svc.submit("u", req, "k"))
        assert anew[0].created and sent(deps)[-1] == job_id
        return chat(svc, "third")

    # WHEN the first submit's undo lands (and its delete, of its own record, finds none)
    with undo_held(deps, meanwhile) as later, pytest.raises(ConversationBusy):
        svc.submit("u", req, "k")
    # THEN the new job of the key keeps its entry, and the third still waits behind it: the undo
    # was for the first submit's job, long gone, not this one (its entry taken out, the third's
    # way would look clear and be sent, and the new job, accepted first, enrolled behind it)
    assert [e.job_id for e in deps.gates.read("u").entries] == [anew[0].job.job_id, later[0].job_id]
    assert later[0].job_id not in sent(deps)
    assert run(deps, anew[0].job.job_id) is Outcome.DONE
    assert sent(deps)[-1] == later[0].job_id


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value

    def done(self) -> bool:
        return True


class _InlineTasks:
    """``Tasks`` that run submitted work at once: whatever a submit starts beside its put is done
    before the put, the worst order for a crash between them."""

    def submit(self, fn: Any, *args: Any) -> _Done:
        return _Done(fn(*args))

    def start(self, fn: Any, name: str) -> Any:
        raise NotImplementedError


def test_a_submit_that_dies_at_its_put_leaves_no_entry_without_a_job() -> None:
    # GIVEN a submit whose process dies as it puts the job's record (SIGKILL: nothing after it runs)
    deps = make_deps()
    deps.tasks = _InlineTasks()  # type: ignore[assignment]
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)

    def dies(job: Job) -> None:
        raise SystemExit("the process died here")

    store.create = dies  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        JobService(deps).submit("u", ChatRequest(message="soup", conversation_id="c1"), None)
    # THEN its user's gate holds no entry (an entry without a job would stay once the user has no
    # live job: nothing visits it)
    assert deps.gates.read("u") == Gate()


def test_a_cancel_whose_hand_off_fails_behind_a_question_is_finalized_by_the_sweeper() -> None:
    # GIVEN a job waiting its turn behind an earlier job of its conversation that asked the user
    # (and will not hear back for a day), and the API's cancel of it, whose terminal event lands
    # but whose gate removal fails (a timeout): the API answers "cancelled", the record still says
    # pending (sim seed 3171 at 36d5f5e)
    deps = make_deps()
    deps.gates = FlakyGates()
    deps.gates.fail_removes = 0
    svc = JobService(deps)
    asking = chat(svc, "chicken from my pantry [steps=2]")
    assert run(deps, asking.job_id) is Outcome.DONE
    assert log(deps, asking.job_id)[-1].type is EventType.INPUT_REQUIRED
    second = chat(svc, "two")
    deps.gates.fail_removes = 1
    job, done = svc.cancel("u", second.job_id)
    assert done and job.status is JobStatus.CANCELLED
    assert [e.type for e in log(deps, second.job_id)] == [EventType.CANCELLED]
    assert deps.gates.read("u").entry(second.job_id) is not None, "its removal failed"
    # WHEN the sweeper finds it due (its cancel moved its deadline a grace period on)
    deps.jobs.due[second.job_id] = time.time() - 1  # type: ignore[attr-defined]
    report = Sweeper(deps).sweep()
    # THEN it finishes the ended job: its entry is gone and its record is terminal, off the index
    # (left "waiting" behind the question, its entry would outlive it for the question's day, and
    # a worker sent it would give it back unread: not its turn)
    assert second.job_id not in report.waiting
    assert deps.gates.read("u").entry(second.job_id) is None
    record = deps.jobs.get(second.job_id)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert second.job_id not in deps.jobs.due  # type: ignore[attr-defined]
    assert [g.job_id for g in deps.gates.read("u").entries] == [asking.job_id]
