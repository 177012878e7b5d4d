"""Steering (``multitask: steer``, guarantee 15) against the in-memory fakes: the service's decision,
the runner's reply door, the ender's seal, and the same key giving the same outcome."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryEventLog, MemoryJobStore, memory_deps
from alfred_jobs.agents.bedrock.agent import BedrockAgent
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.agent import AgentContext, PlanStep
from alfred_jobs.domain.events import PhasePayload
from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job, JobStatus, Steer
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome, _Attempt
from alfred_jobs.exceptions import Conflict, SlotTaken
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService, Submitted, body_hash
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock

CONV = "c" * 32


@pytest.fixture
def deps() -> Deps:
    # A keeper that polls rarely: a steer then reaches the runner only through the door's close.
    return memory_deps(Settings(demo_step_seconds=0, lease_seconds=30, cancel_poll_seconds=60))


def send(deps: Deps, message: str, multitask: str = "enqueue", key: str | None = None,
         conv: str = CONV) -> Submitted:
    req = ChatRequest(message=message, conversation_id=conv, multitask=multitask)  # type: ignore[arg-type]
    return JobService(deps).submit("u1", req, key)


def log_of(deps: Deps, job_id: str) -> list[Event]:
    assert isinstance(deps.log, MemoryEventLog)
    return deps.log.all(job_id)


def kinds(evs: list[Event]) -> list[str]:
    return [f"{e.type}:{e.data.get('phase', '')}" for e in evs if e.type is not EventType.DELTA]


class SteeringAgent(DemoAgent):
    """The demo agent; during step ``at`` the user steers ``text`` into the job (another request)."""

    def __init__(self, deps: Deps, at: int, text: str, key: str | None = None) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.deps, self.at, self.text, self.key = deps, at, text, key
        self.answers: list[Submitted] = []
        self.seen: dict[int, list[str]] = {}

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        self.seen[step.index] = list(ctx.steers)
        if step.index == self.at:
            self.answers.append(send(self.deps, self.text, "steer", self.key))
        return super().act(step, ctx)


def run(deps: Deps, job_id: str, agent: DemoAgent | None = None) -> Outcome:
    agent = agent or DemoAgent(deps.agent_data, deps.settings)
    return JobRunner(deps, agent).run(Delivery(job_id, next_up=True)).outcome


class WatchedJobs(MemoryJobStore):
    """Sets ``keeper_saw`` once a read from another thread (the lease keeper's) returns a steer."""

    keeper_saw = threading.Event()

    def get(self, job_id: str, consistent: bool = True) -> Job | None:
        job = super().get(job_id, consistent)
        if job is not None and job.steers and threading.current_thread() is not threading.main_thread():
            self.keeper_saw.set()
        return job


def test_a_steer_into_a_running_job_is_seen_before_the_one_reply_and_committed_in_order() -> None:
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=30, cancel_poll_seconds=0.01))
    deps.jobs = watched = WatchedJobs(clock=deps.clock)
    job_id = send(deps, "chicken stir fry [steps=6]").job.job_id

    class WaitsForTheKeeper(SteeringAgent):
        def act(self, step: PlanStep, ctx: AgentContext) -> Any:
            out = super().act(step, ctx)
            if step.index == self.at:  # the keeper reads the record before the next boundary
                assert watched.keeper_saw.wait(10)
            return out

    agent = WaitsForTheKeeper(deps, at=2, text="and make it vegetarian")
    assert run(deps, job_id, agent) is Outcome.DONE
    [answer] = agent.answers
    assert answer.steered and answer.job.job_id == job_id and not answer.created
    evs = log_of(deps, job_id)
    got = kinds(evs)
    assert got.count("steered:") == 1 and got.index("steered:") < got.index("phase:reply")
    assert agent.seen[3] == ["and make it vegetarian"] and agent.seen[2] == []  # from the next boundary on
    reply = evs[-1].data["output"]["reply"]
    assert "chicken" not in reply.lower() and "vegetarian" in reply
    job = deps.jobs.get(job_id)
    assert job is not None and job.door_closed and job.status is JobStatus.COMPLETE
    msgs = deps.conversations.messages("u1", CONV, 10)
    assert [(m["role"], m["text"]) for m in msgs] == [
        ("user", "chicken stir fry [steps=6]"), ("user", "and make it vegetarian"), ("assistant", reply)]


def test_a_steer_that_slips_in_after_the_last_boundary_fails_the_doors_close_and_is_recorded() -> None:
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=30, cancel_poll_seconds=60))
    job_id = send(deps, "chicken [steps=2]").job.job_id

    class LastMoment(DemoAgent):
        def act(self, step: PlanStep, ctx: AgentContext) -> Any:
            out = super().act(step, ctx)
            if step.index == 2:  # after the last step's boundary: only the door's close can see it
                assert deps.jobs.steer(job_id, Steer("m1", "no chicken, vegetarian please"), deps.clock.now(), 20)
            return out

    assert run(deps, job_id, LastMoment(deps.agent_data, deps.settings)) is Outcome.DONE
    got = kinds(log_of(deps, job_id))
    assert got.index("steered:") < got.index("phase:reply")
    assert "vegetarian" in log_of(deps, job_id)[-1].data["output"]["reply"]


def test_a_steer_once_the_door_is_closed_becomes_its_own_queued_job(deps: Deps) -> None:
    first = send(deps, "chicken [steps=1]").job.job_id

    class ReplyingSteer(DemoAgent):
        answers: list[Submitted] = []

        def reply(self, plan: Any, ctx: AgentContext) -> Any:
            self.answers.append(send(deps, "and make it vegetarian", "steer"))  # while replying
            yield from super().reply(plan, ctx)

    agent = ReplyingSteer(deps.agent_data, deps.settings)
    assert run(deps, first, agent) is Outcome.DONE
    [answer] = agent.answers
    assert not answer.steered and answer.created and answer.job.job_id != first
    assert "steered:" not in kinds(log_of(deps, first))
    assert run(deps, answer.job.job_id) is Outcome.DONE  # its own job, answered by its own reply
    msgs = deps.conversations.messages("u1", CONV, 10)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]


def test_steer_without_an_active_job_is_an_enqueue(deps: Deps) -> None:
    out = send(deps, "pasta", "steer")
    assert out.created and not out.steered
    assert deps.jobs.get(out.job.job_id) is not None


def test_a_repeated_keyed_steer_gives_the_same_outcome_and_one_steer(deps: Deps) -> None:
    job_id = send(deps, "chicken [steps=3]").job.job_id
    one = send(deps, "vegetarian", "steer", key="k1")
    two = send(deps, "vegetarian", "steer", key="k1")
    assert one.steered and two.steered and one.job.job_id == two.job.job_id == job_id
    rec = deps.jobs.get(job_id)
    assert rec is not None and len(rec.steers) == 1
    assert run(deps, job_id) is Outcome.DONE
    three = send(deps, "vegetarian", "steer", key="k1")  # after the job ended: still the same outcome
    assert three.steered and three.job.job_id == job_id and three.job.status is JobStatus.COMPLETE
    assert kinds(log_of(deps, job_id)).count("steered:") == 1


def test_a_repeated_keyed_steer_that_was_refused_finds_the_same_new_job(deps: Deps) -> None:
    job_id = send(deps, "chicken [steps=1]").job.job_id
    assert run(deps, job_id) is Outcome.DONE
    send(deps, "x", "enqueue")  # another active job, so a repeat could pick a different target
    one = send(deps, "vegetarian", "steer", key="k2", conv="d" * 32)
    two = send(deps, "vegetarian", "steer", key="k2", conv="d" * 32)
    assert not one.steered and not two.steered and one.job.job_id == two.job.job_id
    assert not two.created


@pytest.mark.parametrize(("first", "then"), [("enqueue", "interrupt"), ("enqueue", "steer"),
                                             ("steer", "enqueue"), ("interrupt", "reject")])
def test_the_same_key_with_another_multitask_is_a_409(deps: Deps, first: str, then: str) -> None:
    send(deps, "chicken [steps=3]")  # an active job, so steer joins it
    send(deps, "vegetarian", first, key="k3")
    with pytest.raises(Conflict):
        send(deps, "vegetarian", then, key="k3")


def test_a_fenced_worker_cannot_close_the_door_and_a_retried_steer_counts_once(deps: Deps) -> None:
    job_id = send(deps, "chicken").job.job_id
    deps.jobs.acquire_lease(job_id, "w1", deps.clock.now(), 30)
    steer = Steer("m1", "vegetarian")
    assert deps.jobs.steer(job_id, steer, deps.clock.now(), 20)
    assert deps.jobs.steer(job_id, steer, deps.clock.now(), 20)  # the SDK's retry of a landed write
    assert deps.jobs.close_door(job_id, 1, owner="someone-else") is None
    assert deps.jobs.close_door(job_id, 0, owner="w1") is None  # it has not seen the steer
    assert deps.jobs.close_door(job_id, 1, owner="w1") is not None
    assert not deps.jobs.steer(job_id, Steer("m2", "and rice"), deps.clock.now(), 20)
    assert deps.jobs.steer(job_id, steer, deps.clock.now(), 20)  # still there: still True
    rec = deps.jobs.get(job_id)
    assert rec is not None and [s.message_id for s in rec.steers] == ["m1"]


def test_cancelling_a_pending_steered_job_records_the_steer_before_the_end(deps: Deps) -> None:
    job_id = send(deps, "chicken").job.job_id
    assert send(deps, "vegetarian", "steer").steered
    job, done = JobService(deps).cancel("u1", job_id)
    assert done and job.status is JobStatus.CANCELLED
    assert kinds(log_of(deps, job_id)) == ["steered:", "cancelled:"]
    assert not send(deps, "and rice", "steer").steered  # ended: the door is closed


def test_a_default_request_hashes_as_before_multitask_counted() -> None:
    """A resend across the deploy that made ``multitask`` count still finds its job."""
    req = ChatRequest(message="soup", conversation_id=CONV)
    before = hashlib.sha256(json.dumps(req.model_dump(exclude={"multitask"}), sort_keys=True).encode()).hexdigest()
    assert body_hash(req) == before
    assert body_hash(ChatRequest(message="soup", conversation_id=CONV, multitask="interrupt")) != before


def test_the_bedrock_agent_sends_the_steers_as_user_turns_after_the_message() -> None:
    ctx = AgentContext(job_id="j", user_id="u", conversation_id=CONV, message="chicken curry",
                       history=[{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}],
                       attempt=1, step_outputs={}, cancelled=lambda: False,
                       steers=["make it vegetarian", "and mild"])
    messages = BedrockAgent._conversation(ctx, ctx.message, 10)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[-1]["content"][0]["text"] == "chicken curry\n\nmake it vegetarian\n\nand mild"


def test_a_slot_taken_by_an_older_attempts_late_write_gives_the_lease_back(deps: Deps) -> None:
    """Not steering's own, found by its workload (sim seed 2287): an attempt whose put meets an
    older attempt's late write (a paused process) is not fenced; dropping the delivery left its
    live lease holding the job, with nobody running it, for a lease period."""
    job_id = send(deps, "chicken").job.job_id
    job = deps.jobs.acquire_lease(job_id, "w2", deps.clock.now(), 30)
    attempt = _Attempt(JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)), replace(job, attempts=2), "w2",
                       Delivery(job_id))
    late = Event.of(2, PhasePayload(phase="think"), attempt=1, writer="w1", at=deps.clock.now())
    result = attempt._lost_slot(SlotTaken(late))
    assert result.outcome is Outcome.RETRY
    rec = deps.jobs.get(job_id)
    assert rec is not None and rec.lease_owner is None  # given back: the message's return resumes it
    newer = Event.of(2, PhasePayload(phase="think"), attempt=3, writer="w3", at=deps.clock.now())
    assert attempt._lost_slot(SlotTaken(newer)).outcome is Outcome.DROPPED  # a newer owner: fenced


class FrozenInTheClose(MemoryJobStore):
    """The process freezes with the reply door's close on the wire, past its lease; meanwhile the
    user cancels. The close lands as the process wakes."""

    def __init__(self, clock: ShiftedClock) -> None:
        super().__init__(clock=clock)
        self.shifted = clock
        self.froze = False

    def close_door(self, job_id: str, seen: int, *, owner: str | None) -> Job | None:
        closed = super().close_door(job_id, seen, owner=owner)  # it lands as sent; its answer comes late
        if not self.froze:
            self.froze = True
            self.shifted.offset += 120  # two minutes frozen: the lease (30 s) ran out long ago
            self.request_cancel(job_id)
        return closed


def test_a_worker_frozen_in_the_doors_close_does_not_start_the_reply() -> None:
    """Sim seed 4508 (``cancel_stops_at_the_next_boundary``): the door's close before the reply can
    take any time; a worker frozen two minutes in it woke and started replying, its lease long gone
    and its job cancelled meanwhile. The boundary's checks come after the close."""
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=30, cancel_poll_seconds=60), clock=clock)
    deps.jobs = FrozenInTheClose(clock)
    job_id = send(deps, "chicken [steps=1]").job.job_id

    class Replies(DemoAgent):
        replied = False

        def reply(self, plan: Any, ctx: AgentContext) -> Any:
            Replies.replied = True
            return super().reply(plan, ctx)

    outcome = run(deps, job_id, Replies(deps.agent_data, deps.settings))
    assert deps.jobs.froze and not Replies.replied, "the agent replied after its lease ran out"
    assert outcome is not Outcome.DONE or log_of(deps, job_id)[-1].type is EventType.CANCELLED
    assert "phase:reply" not in kinds(log_of(deps, job_id))
