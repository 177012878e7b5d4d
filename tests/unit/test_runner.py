"""The runner against in-memory fakes of the ports: resume, fencing, cancel, retries, finalize."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryEventLog, MemoryJobQueue, MemoryJobStore, memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.agent import AgentContext, Plan, PlanStep
from alfred_jobs.domain.events import PlanPayload, StepPayload, replay
from alfred_jobs.domain.gate import Gate
from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job, JobStatus
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.exceptions import RetryableAgentError, TransientStoreError
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock


@pytest.fixture
def deps() -> Deps:
    return memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, max_attempts=3,
                                cancel_poll_seconds=0.02))


def submit(deps: Deps, message: str = "chicken [steps=3]", user: str = "u1") -> str:
    return JobService(deps).submit(user, ChatRequest(message=message), None).job.job_id


def events(deps: Deps, job_id: str) -> list[Event]:
    log = deps.log
    assert isinstance(log, MemoryEventLog)
    return log.all(job_id)


def types(deps: Deps, job_id: str) -> list[str]:
    return [f"{e.type}:{e.data.get('status', e.data.get('phase', ''))}" for e in events(deps, job_id)]


class CrashAt(Exception):
    """Simulates the process dying: raised out of the agent, it is not an AgentError."""


class ScriptedAgent(DemoAgent):
    """The demo agent, with hooks to crash or block inside a chosen step."""

    def __init__(self, deps: Deps, crash_step: int | None = None,
                 block: threading.Event | None = None, block_step: int | None = None,
                 wait_cancel: bool = False) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.crash_step = crash_step
        self.block = block
        self.block_step = block_step
        self.wait_cancel = wait_cancel
        self.acts: list[tuple[int, int]] = []
        self.entered = threading.Event()

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        self.acts.append((step.index, ctx.attempt))
        if step.index == self.block_step and self.block is not None:
            self.entered.set()
            self.block.wait(10)
            if self.wait_cancel:  # a long step: the worker's cancel poll sees the request meanwhile
                deadline = threading.Event()
                for _ in range(500):
                    if ctx.cancelled():
                        break
                    deadline.wait(0.01)
        if step.index == self.crash_step:
            raise SystemExit("worker died")  # escapes the runner like a real crash would
        return super().act(step, ctx)


def test_happy_path_checkpoints_every_phase_and_step(deps: Deps) -> None:
    job_id = submit(deps)
    result = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    assert result.outcome is Outcome.DONE and result.status is JobStatus.COMPLETE
    got = types(deps, job_id)
    # No phase event for think and act (status running and the first step open them); the plan
    # starts step 1, and each completed step but the last the next one, in the same write (issue 16).
    assert got == ["status:running", "plan:", "step:completed", "step:completed",
                   "step:completed", "phase:reply", *["delta:"] * got.count("delta:"), "complete:"]
    evs = events(deps, job_id)
    assert [e.data.get("next", {}).get("index") for e in evs if e.type in (EventType.PLAN, EventType.STEP)] \
        == [1, 2, 3, None]
    assert [e.seq for e in events(deps, job_id)] == list(range(1, len(got) + 1))
    job = deps.jobs.get(job_id)
    assert job is not None and job.status is JobStatus.COMPLETE and job.last_seq == len(got)


def test_resume_after_crash_never_reruns_completed_steps(deps: Deps) -> None:
    job_id = submit(deps, "chicken [steps=4]")
    crashing = ScriptedAgent(deps, crash_step=3)
    with pytest.raises(SystemExit):
        JobRunner(deps, crashing).run(Delivery(job_id))
    # the dead worker's lease must run out before another may take over
    job = deps.jobs.get(job_id)
    assert job is not None
    deps.jobs.items[job_id] = job.__class__(**{**job.__dict__, "lease_expires": time.time() - 1})  # type: ignore[attr-defined]
    second = ScriptedAgent(deps)
    result = JobRunner(deps, second).run(Delivery(job_id))
    assert result.status is JobStatus.COMPLETE
    assert [i for i, _ in second.acts] == [3, 4], "only the cut-off and remaining steps run again"
    evs = events(deps, job_id)
    resumed = [e for e in evs if e.type is EventType.RESUMED]
    assert len(resumed) == 1 and resumed[0].data["attempt"] == 2
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    assert deps.agent_data.step_effects(job_id) == {1: 1, 2: 1, 3: 1, 4: 1}


def test_duplicate_delivery_while_held_is_dropped(deps: Deps) -> None:
    job_id = submit(deps)
    block = threading.Event()
    agent = ScriptedAgent(deps, block=block, block_step=1)
    runner = JobRunner(deps, agent)
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(runner.run(Delivery(job_id))))
    t.start()
    assert agent.entered.wait(5)
    dup = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    assert dup.outcome is Outcome.DROPPED
    block.set()
    t.join(10)
    assert results[0].status is JobStatus.COMPLETE
    assert deps.agent_data.step_effects(job_id) == {1: 1, 2: 1, 3: 1}


def test_fenced_worker_writes_nothing_after_takeover() -> None:
    # A long lease: the zombie's keeper never renews during the test, so what stops the zombie is
    # the log's fence alone (its next put finds the slot taken by the taker's events), never a renewal that
    # happens to fail first. One outcome, not two.
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=60, max_attempts=3, cancel_poll_seconds=0.02))
    job_id = submit(deps)
    block = threading.Event()
    zombie_agent = ScriptedAgent(deps, block=block, block_step=2)
    zombie = JobRunner(deps, zombie_agent)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(zombie.run(Delivery(job_id))))
    t.start()
    assert zombie_agent.entered.wait(5)
    # GIVEN the zombie's lease has expired (paused past it) and a new worker took over and finished
    job = deps.jobs.get(job_id)
    assert job is not None
    deps.jobs.items[job_id] = job.__class__(**{**job.__dict__, "lease_expires": time.time() - 1})  # type: ignore[attr-defined]
    taker = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    assert taker.status is JobStatus.COMPLETE
    before = events(deps, job_id)
    # WHEN the zombie wakes up
    block.set()
    t.join(10)
    # THEN it wrote nothing more and knows it lost the job
    assert events(deps, job_id) == before
    assert (out[0].outcome, out[0].reason) == (Outcome.DROPPED, "fenced")
    owners = {e.writer for e in before if e.attempt == 2}
    assert len(owners) == 1


def test_cancel_pending_is_immediate_and_running_stops_at_boundary(deps: Deps) -> None:
    svc = JobService(deps)
    pending = submit(deps)
    job, done = svc.cancel("u1", pending)
    assert done and job.status is JobStatus.CANCELLED
    assert types(deps, pending) == ["cancelled:"]
    # a later delivery of its message just acks
    assert JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(pending)).outcome is Outcome.DONE

    running = submit(deps, "x [steps=5]")
    block = threading.Event()
    agent = ScriptedAgent(deps, block=block, block_step=2, wait_cancel=True)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(JobRunner(deps, agent).run(Delivery(running))))
    t.start()
    assert agent.entered.wait(5)
    job, done = svc.cancel("u1", running)
    assert not done and job.cancel_requested
    block.set()
    t.join(10)
    assert out[0].status is JobStatus.CANCELLED
    evs = events(deps, running)
    assert evs[-1].type is EventType.CANCELLED
    assert max(i for i, _ in agent.acts) == 2, "no step starts after the cancel"


def test_poison_job_fails_after_max_attempts_and_parks_message(deps: Deps) -> None:
    job_id = submit(deps, "x [fail]")
    runner = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings))
    outcomes = [runner.run(Delivery(job_id)) for _ in range(3)]
    assert [o.outcome for o in outcomes] == [Outcome.RETRY, Outcome.RETRY, Outcome.DONE]
    assert [o.retry_after for o in outcomes[:2]] == [2, 4], "exponential backoff"
    job = deps.jobs.get(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert job.error is not None and job.error["code"] == "recipe_unavailable"
    assert "3 attempts" in job.error["message"]
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue) and queue.dead == [(job_id, "recipe_unavailable")]
    evs = events(deps, job_id)
    assert sum(e.type is EventType.FAILED for e in evs) == 1 and evs[-1].type is EventType.FAILED


def test_terminal_agent_error_fails_at_once(deps: Deps) -> None:
    job_id = submit(deps, "x [fatal]")
    result = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    assert result.status is JobStatus.FAILED
    job = deps.jobs.get(job_id)
    assert job is not None and job.error is not None and job.error["code"] == "recipe_refused"
    # the message says the request itself is the cause, so a retry (the page's Retry sends the same
    # message) is not expected to help (issue 27, problem 8)
    assert job.error["message"].startswith("the recipe service refused this request: the message asks it to")
    assert "sending it again fails the same way; send it without [fatal]" in job.error["message"]


def test_crash_between_terminal_event_and_projection_is_finalized(deps: Deps) -> None:
    job_id = submit(deps)

    class CommitCrash(Exception):
        pass

    conversations = deps.conversations
    real_commit = conversations.commit_turn
    calls = {"n": 0}

    def flaky_commit(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise CommitCrash()
        real_commit(*args, **kwargs)

    conversations.commit_turn = flaky_commit  # type: ignore[method-assign]
    first = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    assert first.outcome is Outcome.RETRY, "the message must come back to finish the job"
    assert events(deps, job_id)[-1].type is EventType.COMPLETE, "nothing written after the terminal event"
    job = deps.jobs.get(job_id)
    assert job is not None and not job.terminal, "record still active: the sweeper will find it"
    assert job.lease_owner is None, "lease released so the redelivery is not dropped"
    again = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    assert again.status is JobStatus.COMPLETE
    msgs = deps.conversations.messages("u1", job.conversation_id, 10)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert sum(e.type is EventType.COMPLETE for e in events(deps, job_id)) == 1


class FlakyReplyAgent(DemoAgent):
    """Its reply differs between attempts: the resumed attempt must replace the shown text once."""

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        if ctx.attempt == 1:
            yield "Hello wor"
            raise RetryableAgentError("dropped")
        yield "Goodbye"


def test_reply_resume_replaces_diverging_text(deps: Deps) -> None:
    deps.settings.delta_flush_seconds = 0.0
    job_id = submit(deps, "x [steps=1]")
    runner = JobRunner(deps, FlakyReplyAgent(deps.agent_data, deps.settings))
    assert runner.run(Delivery(job_id)).outcome is Outcome.RETRY
    assert runner.run(Delivery(job_id)).status is JobStatus.COMPLETE
    deltas = [e.data for e in events(deps, job_id) if e.type is EventType.DELTA]
    assert deltas[0] == {"text": "Hello wor"}
    assert deltas[-1] == {"text": "Goodbye", "replace": True}


class FailingDeltaLog(MemoryEventLog):
    """A log whose puts of ``delta`` events fail while ``failing`` (throttled past every retry)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True
        self.failed = 0

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        if event.type is EventType.DELTA and self.failing:
            self.failed += 1
            raise TransientStoreError("throttled")
        super().append(job_id, event, expires_at)


def test_a_reply_delta_written_behind_the_agent_that_fails_leaves_no_gap() -> None:
    # GIVEN a log whose first reply delta cannot be written (the deltas are written while the
    # agent goes on generating: a failure is raised at the next write, not where it happened)
    base = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, max_attempts=3, retry_base_seconds=0,
                                delta_flush_seconds=0.001))
    log = FailingDeltaLog()
    deps = replace(base, log=log)
    job_id = submit(deps, "soup [steps=1]")
    runner = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings))
    # WHEN the attempt meets it, and the next delivery runs the job again
    first = runner.run(Delivery(job_id))
    assert log.failed and first.outcome is Outcome.RETRY
    log.failing = False
    assert runner.run(Delivery(job_id)).status is JobStatus.COMPLETE
    # THEN the log is 1..N with no gap (the failed put added nothing; the next write took its seq),
    # the failure is recorded where the delta would have been, and the reply is whole
    evs = events(deps, job_id)
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    kinds = [e.type for e in evs]
    assert kinds.index(EventType.STATUS, 1) == kinds.index(EventType.PHASE) + 1, kinds  # pending after the phase
    assert evs[-1].type is EventType.COMPLETE and evs[-1].data["output"]["reply"]


class CancelThenFail(DemoAgent):
    """The user cancels while the agent thinks (the API sees the live lease: a flag the keeper has
    not read yet), and the thinking then fails retryably."""

    def __init__(self, deps: Deps) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.svc = JobService(deps)

    def think(self, ctx: AgentContext) -> Plan:
        assert self.svc.cancel(ctx.user_id, ctx.job_id)[1] is False
        raise RetryableAgentError("model overloaded")


def test_a_cancel_before_a_retry_ends_the_job_instead_of_the_backoff() -> None:
    # A keeper that never polls during the test (a minute's period): the flag is unseen until the
    # attempt looks at it itself.
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=60, max_attempts=3, cancel_poll_seconds=60))
    job_id = submit(deps)
    result = JobRunner(deps, CancelThenFail(deps)).run(Delivery(job_id))
    # THEN the attempt, having let its lease go for the backoff, sees the flag and ends the job
    assert (result.outcome, result.status) == (Outcome.DONE, JobStatus.CANCELLED)
    assert events(deps, job_id)[-1].type is EventType.CANCELLED
    job = deps.jobs.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED


# ---- a cancel that lands while a step's start is being written ----------------------------------------


class SlowStartLog(MemoryEventLog):
    """The put that starts a step (``next`` on the plan, or on step ``after``'s completion) is slow:
    the user cancels while it is in flight (a flag: the worker's lease is live), and it lands
    ``seconds`` later (a paused process, a slow store)."""

    def __init__(self, clock: ShiftedClock, cancel: Callable[[str], None], after: int, seconds: float) -> None:
        super().__init__(clock)
        self.shifted, self.cancel, self.after, self.seconds = clock, cancel, after, seconds

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        p = event.payload
        starts_a_step = (isinstance(p, PlanPayload) and self.after == 0 and p.next is not None) or (
            isinstance(p, StepPayload) and p.completed and p.index == self.after and p.next is not None)
        if starts_a_step:
            self.cancel(job_id)
            self.shifted.offset += self.seconds
        super().append(job_id, event, expires_at)


@pytest.mark.parametrize("after", [0, 1], ids=["the plan starts step 1", "step 1 starts step 2"])
def test_a_cancel_that_lands_while_a_steps_start_is_written_stops_the_job_before_the_step(after: int) -> None:
    # GIVEN a worker whose keeper does not read the record during the write (a minute's poll; the
    # write takes three): only a boundary after the write can see the cancel
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=600, max_attempts=3, cancel_poll_seconds=60),
                       clock=clock)
    svc = JobService(deps)

    def cancel(job_id: str) -> None:
        assert svc.cancel("u1", job_id)[1] is False  # 202: a flag for the worker

    deps.log = SlowStartLog(clock, cancel, after=after, seconds=180)
    job_id = submit(deps, "x [steps=3]")
    agent = ScriptedAgent(deps)
    # WHEN the plan (or step 1's completion) that starts the next step lands, after the cancel
    result = JobRunner(deps, agent).run(Delivery(job_id))
    # THEN no step starts past the cancel (guarantee 7): the job ends cancelled at that boundary
    assert (result.outcome, result.status) == (Outcome.DONE, JobStatus.CANCELLED)
    assert [i for i, _ in agent.acts] == list(range(1, after + 1))
    evs = events(deps, job_id)
    assert [e.type for e in evs][-2:] == [EventType.PLAN if after == 0 else EventType.STEP, EventType.CANCELLED]
    assert deps.agent_data.step_effects(job_id) == {i: 1 for i in range(1, after + 1)}
    # ... and the log (a step started by ``next``, then ``cancelled``) reads as a cancelled job
    state = replay(evs)
    assert state.status is JobStatus.CANCELLED and state.started == set(range(1, after + 2))
    assert sorted(state.outputs) == list(range(1, after + 1))
    assert state.progress.label == "Cancelled" and state.progress.completed_steps == after
    job = svc.get("u1", job_id)
    assert job.status is JobStatus.CANCELLED and job.progress.label == "Cancelled"
    stored = deps.jobs.get(job_id)
    assert stored is not None and stored.status is JobStatus.CANCELLED
    assert deps.gates.read("u1") == Gate()


def test_a_job_whose_retention_ends_as_it_is_taken_over_runs_no_step_again() -> None:
    """Sim seed 9620: a job's worker died at step 3; the lease was taken over a moment before the
    job's retention ended, and the history read just after it found nothing (the events expire
    with the job). The new attempt took the empty log for a fresh job and ran steps 1 and 2
    again. Past its retention a job is gone: the attempt stops, hands its place on, and runs
    nothing."""
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, max_attempts=3,
                                cancel_poll_seconds=0.02, retention_seconds=600), clock=clock)
    job_id = submit(deps, "chicken [steps=4]")
    submit(deps, "soup [steps=1]")  # waits behind the first (one running per user)
    with pytest.raises(SystemExit):
        JobRunner(deps, ScriptedAgent(deps, crash_step=3)).run(Delivery(job_id))
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    taken = store.acquire_lease

    def acquire_then_retention_ends(job_id: str, owner: str, now: float, lease_seconds: float) -> Job:
        job = taken(job_id, owner, now, lease_seconds)
        clock.offset += job.expires_at - clock.now() + 1  # the history read comes after it
        return job

    store.acquire_lease = acquire_then_retention_ends  # type: ignore[method-assign]
    clock.offset += 6  # the dead worker's lease runs out
    second = ScriptedAgent(deps)
    result = JobRunner(deps, second).run(Delivery(job_id))
    assert second.acts == [], "no step of a job past its retention runs again"
    assert result.outcome is Outcome.DONE
    gate = deps.gates.read("u1")
    assert job_id not in gate.entries, "its place in the user's gate is handed on"


class PausedInAStepAgent(DemoAgent):
    """The user cancels while step 1 runs; the worker's process is then paused (SIGSTOP) past its
    lease and the job's retention, and the step asks ``ctx.cancelled()`` as it wakes."""

    def __init__(self, deps: Deps, clock: ShiftedClock, svc: JobService) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.clock, self.svc = clock, svc
        self.answers: list[bool] = []

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        if step.index == 1:
            assert self.svc.cancel("u1", ctx.job_id)[1] is False  # 202: a flag for the worker
            self.clock.offset += ctx.expires_at - self.clock.now() + 1
            self.answers.append(ctx.cancelled())
        return super().act(step, ctx)


def test_a_step_woken_past_its_lease_and_its_jobs_retention_stops() -> None:
    """Sim seed 153439 (``cancel_seen_within_a_second``): a worker was paused mid-step for 75 s;
    the user cancelled meanwhile, its lease ran out, then the job's retention. Awake, the step's
    ``ctx.cancelled()`` read the record itself (its keeper's read was old), found it gone (an
    expired item reads as gone) and answered False: the step went on 27 s after the cancel. An
    attempt whose lease is lost is to stop as at a cancel, as the reply's check already does."""
    # GIVEN a keeper that does not poll while the step runs (a minute's poll, a long lease)
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=600, max_attempts=3,
                                cancel_poll_seconds=60, retention_seconds=900), clock=clock)
    job_id = submit(deps, "chicken [steps=2]")
    agent = PausedInAStepAgent(deps, clock, JobService(deps))
    # WHEN the step asks whether to stop after the pause
    JobRunner(deps, agent).run(Delivery(job_id))
    # THEN it is told to stop: the cancel's record is gone, and so is the attempt's lease
    assert deps.jobs.get(job_id) is None, "the record reads as gone"
    assert agent.answers == [True]


class SlowThinkingAgent(ScriptedAgent):
    """The demo agent, whose thinking takes ``seconds`` of the shifted clock."""

    def __init__(self, deps: Deps, clock: ShiftedClock, seconds: float) -> None:
        super().__init__(deps)
        self.clock, self.seconds = clock, seconds

    def think(self, ctx: AgentContext) -> Plan:
        self.clock.offset += self.seconds
        return super().think(ctx)


def test_a_cancel_landing_while_the_leases_answer_travels_back_is_seen_within_two_poll_periods() -> None:
    """Sim seed 1740 (``cancel_seen_within_a_second``, at 7f0c04d): the lease's take landed, the
    user's cancel landed just after it, and the take's answer came back slowly; the keeper dated
    its first read (the take's) from its own construction, after that answer, not from when the
    take was sent, so the reply went on 1.10 s after the cancel without reading the record
    (``cancel_seen`` reads it only once the newest read is two poll periods old, 1 s)."""
    # GIVEN a keeper that does not poll by itself (a minute's poll, a long lease)
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=600, max_attempts=3,
                                cancel_poll_seconds=60, retention_seconds=3600), clock=clock)
    job_id = submit(deps)
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    taken = store.acquire_lease
    svc = JobService(deps)

    def cancelled_while_the_answer_travels(job_id: str, owner: str, now: float, lease_seconds: float) -> Job:
        job = taken(job_id, owner, now, lease_seconds)
        assert svc.cancel("u1", job_id)[1] is False  # 202: it lands after the take
        clock.offset += 100  # the take's answer takes this long to come back
        return job

    store.acquire_lease = cancelled_while_the_answer_travels  # type: ignore[method-assign]
    # WHEN the agent then thinks for 30 s: its first boundary comes 130 s after the take was sent,
    # more than two poll periods (120 s), though only 30 s after its answer came back
    agent = SlowThinkingAgent(deps, clock, 30)
    JobRunner(deps, agent).run(Delivery(job_id))
    # THEN the boundary reads the record itself, sees the cancel, and runs no step
    assert agent.acts == []
    assert store.get(job_id) is not None and replay(events(deps, job_id)).status is JobStatus.CANCELLED


class FailingReadLog(MemoryEventLog):
    """A log whose reads are refused (throttled after the SDK's retries) while ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        if self.failing:
            raise TransientStoreError("throttled")
        return super().read_range(job_id, first, last, consistent)


def test_a_resumed_attempt_whose_history_read_fails_gives_the_job_back() -> None:
    """Sim seed 12 (invariant ``no_lease_left_behind``): an attempt that could not read the log
    recorded its failure at seq 1, met the job's own first event there, took itself for fenced and
    dropped the delivery with its lease live: nobody ran the job for a lease period, and an
    attempt was spent. It never started: it gives the delivery back, as if it never came."""
    base = memory_deps(Settings(demo_step_seconds=0, lease_seconds=30, max_attempts=3))
    log = FailingReadLog()
    deps = replace(base, log=log)
    job_id = submit(deps, "chicken [steps=3]")
    with pytest.raises(SystemExit):
        JobRunner(deps, ScriptedAgent(deps, crash_step=2)).run(Delivery(job_id))
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    store.items[job_id] = replace(store.items[job_id], lease_expires=time.time() - 1)  # the crash's lease ran out
    log.failing = True
    result = JobRunner(deps, ScriptedAgent(deps)).run(Delivery(job_id))
    assert result.outcome is Outcome.RETRY and result.retry_after <= 1
    job = store.items[job_id]
    assert job.lease_owner is None, "the lease is let go at once"
    assert job.attempts == 1, "an attempt that never started is not counted"
    log.failing = False
    second = ScriptedAgent(deps)
    assert JobRunner(deps, second).run(Delivery(job_id)).status is JobStatus.COMPLETE
    assert [i for i, _ in second.acts] == [2, 3]


class PlanHeldInFlight(MemoryEventLog):
    """The first attempt's plan put is held in flight (its process frozen with the write on the
    wire: ``SystemExit`` stands for the freeze), and lands just before the second attempt's first
    put, in the slot that put wants; the one read after it is refused (throttled)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: tuple[str, Event, int] | None = None
        self.landed = False
        self.fail_reads = 0

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        if event.type is EventType.PLAN and event.attempt == 1 and self.held is None:
            self.held = (job_id, event, expires_at)
            raise SystemExit("frozen with the plan's put in flight")
        if event.attempt == 2 and self.held is not None and not self.landed:
            self.landed = True
            super().append(*self.held)
            self.fail_reads = 1
        super().append(job_id, event, expires_at)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise TransientStoreError("throttled")
        return super().read_range(job_id, first, last, consistent)


def test_an_older_attempts_late_write_met_while_reads_fail_is_no_fence() -> None:
    """Sim seed 11564 (invariant ``no_lease_left_behind``): a worker froze with its plan's put in
    flight; its lease ran out and a second attempt took the job. The frozen put landed in the slot
    the second attempt's ``resumed`` wanted, and the read after that was throttled: the attempt
    went on to record a retryable failure at the head it knew, met the older attempt's plan there,
    took itself for fenced and dropped the delivery with its lease live. An older attempt's write
    fences nothing (only a later attempt's does): the attempt reads the log again and records its
    failure after it, letting its lease go."""
    base = memory_deps(Settings(demo_step_seconds=0, lease_seconds=30, max_attempts=3))
    log = PlanHeldInFlight()
    deps = replace(base, log=log)
    job_id = submit(deps, "chicken [steps=3]")
    with pytest.raises(SystemExit):
        JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id))
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    store.items[job_id] = replace(store.items[job_id], lease_expires=time.time() - 1)  # the freeze outlasts the lease
    result = JobRunner(deps, ScriptedAgent(deps)).run(Delivery(job_id))
    assert log.landed
    assert result.outcome is Outcome.RETRY, result
    job = store.items[job_id]
    assert job.lease_owner is None, "the lease is let go, not left on a job nobody runs"
    assert types(deps, job_id) == ["status:running", "plan:", "status:pending"], "the failure follows the plan"
    assert [e.seq for e in events(deps, job_id)] == [1, 2, 3]
    last = JobRunner(deps, ScriptedAgent(deps)).run(Delivery(job_id))
    assert last.status is JobStatus.COMPLETE
    assert deps.agent_data.step_effects(job_id) == {1: 1, 2: 1, 3: 1}


def test_an_attempt_whose_lease_ran_out_by_its_clock_lets_a_lease_still_its_own_go() -> None:
    """Sim seed 1430 (invariant ``no_lease_left_behind``): a worker's process froze with its
    keeper's renewal on the wire, past its lease; nobody took the job meanwhile. It woke, its
    runner found the lease run out by its own clock and stopped as fenced, and the renewal then
    landed: the lease was its own and live again, on a job nobody ran, and the message deleted.
    Stopping with the lease ours, the attempt lets it go and keeps the message to resume at once."""
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=60, max_attempts=3,
                                cancel_poll_seconds=0.02), clock=clock)
    job_id = submit(deps, "chicken [steps=3]")
    block = threading.Event()
    agent = ScriptedAgent(deps, block=block, block_step=2)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(JobRunner(deps, agent).run(Delivery(job_id))))
    t.start()
    assert agent.entered.wait(5)
    # GIVEN the process froze past its lease, and its keeper's renewal, sent before the freeze,
    # landed as it woke: the record holds our lease, live; our own clock says it ran out
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    clock.offset += 61
    mine = store.items[job_id]
    store.items[job_id] = replace(mine, lease_expires=clock.now() + 60)
    # WHEN the runner goes on from the step
    block.set()
    t.join(10)
    # THEN it stops there (no step after the lapse), and lets the lease go, keeping the message
    assert out[0].outcome is Outcome.RETRY, out[0]
    job = store.items[job_id]
    assert job.lease_owner is None, "the lease is let go, not left on a job nobody runs"
    assert max(i for i, _ in agent.acts) == 2
    # ... and the next delivery resumes the job at once and finishes it
    last = JobRunner(deps, ScriptedAgent(deps)).run(Delivery(job_id))
    assert last.status is JobStatus.COMPLETE


class DeltaSignalLog(MemoryEventLog):
    """A log that says when the first ``delta`` event is in it."""

    def __init__(self) -> None:
        super().__init__()
        self.delta_in = threading.Event()

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        super().append(job_id, event, expires_at)
        if event.type is EventType.DELTA:
            self.delta_in.set()


class WaitsForItsFirstDelta(DemoAgent):
    """Replies one word, then waits (up to 2 s) for that word to be in the log before the next."""

    def __init__(self, deps: Deps, log: DeltaSignalLog) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.log = log
        self.first_word_written: bool | None = None

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        yield "Simmer "
        self.first_word_written = self.log.delta_in.wait(2)
        yield "slowly."


def test_the_first_reply_delta_is_written_when_the_reply_starts_not_at_the_first_tick() -> None:
    # GIVEN a coalescing tick far longer than the reply (a minute), and an agent that holds its
    # second word until its first is in the log (issue 28: the first word is what a user waits for)
    base = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, delta_flush_seconds=60))
    log = DeltaSignalLog()
    deps = replace(base, log=log)
    job_id = submit(deps, "soup [steps=1]")
    agent = WaitsForItsFirstDelta(deps, log)
    # WHEN the job runs
    assert JobRunner(deps, agent).run(Delivery(job_id)).status is JobStatus.COMPLETE
    # THEN the first word was written before the agent went on, and the rest was coalesced after it
    assert agent.first_word_written is True
    deltas = [e.data for e in events(deps, job_id) if e.type is EventType.DELTA]
    assert deltas == [{"text": "Simmer "}, {"text": "slowly."}]


def test_a_plain_chat_turn_of_no_steps_thinks_then_replies(deps: Deps) -> None:
    # [steps=0]: the first-token bench's plain chat turn (issue 28)
    job_id = submit(deps, "soup [steps=0]")
    assert JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id)).status is JobStatus.COMPLETE
    kinds = [e.type for e in events(deps, job_id)]
    assert EventType.STEP not in kinds and EventType.DELTA in kinds and kinds[-1] is EventType.COMPLETE
    plan = next(e for e in events(deps, job_id) if e.type is EventType.PLAN)
    assert plan.data["steps"] == []


@pytest.mark.parametrize("landed", [False, True], ids=["not applied", "applied, answer lost"])
def test_a_lease_take_the_store_does_not_answer_lets_the_message_come_back_soon(deps: Deps, landed: bool) -> None:
    # GIVEN the store does not answer the lease's take (timed out after the SDK's retries): it
    # may not have landed, or landed with its answer lost (sim seed 62986 at 8f2ca27: raised out
    # of the runner, the delivery failed and its message came back after the queue's visibility
    # timeout, 12 minutes, while the sweeper presumed it queued behind a busy queue)
    job_id = submit(deps)
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    real = store.acquire_lease

    def unanswered(*args: Any, **kwargs: Any) -> Job:
        if landed:
            real(*args, **kwargs)
        raise TransientStoreError("acquire_lease: timed out")

    store.acquire_lease = unanswered  # type: ignore[method-assign]
    result = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id, "rh"))
    store.acquire_lease = real  # type: ignore[method-assign]
    # THEN the delivery asks to come back within seconds, holding no lease of its own, no attempt counted
    assert result.outcome is Outcome.RETRY and result.retry_after <= 1
    job = store.get(job_id)
    assert job is not None and job.lease_owner is None and job.attempts == 0
    # and the next delivery runs the job
    assert JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id)).outcome is Outcome.DONE


class CountingJobStore(MemoryJobStore):
    """Counts the reply door's closes (each one a conditional UpdateItem on the job record)."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0

    def close_door(self, job_id: str, seen: int, *, owner: str | None) -> Job | None:
        self.closes += 1
        return super().close_door(job_id, seen, owner=owner)


def test_a_job_closes_its_reply_door_once_not_again_before_its_terminal_event() -> None:
    # GIVEN a job that replies (issue 28: every write between the reply and the terminal event is
    # on the path to the user's last frame)
    store = CountingJobStore()
    deps = replace(memory_deps(Settings(demo_step_seconds=0, lease_seconds=5)), jobs=store)
    job_id = submit(deps, "soup [steps=2]")
    # WHEN it runs to the end
    assert JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id)).status \
        is JobStatus.COMPLETE
    # THEN the door was closed once, before the reply; the terminal event did not close it again
    assert store.closes == 1
    rec = deps.jobs.get(job_id)
    assert rec is not None and rec.door_closed
    assert "phase:reply" in types(deps, job_id)
