"""Guarantee 13 against the in-memory ports: a question survives anything, one answer continues the
job exactly once; the races (two answers, an answer and a cancel, an answer while the asker leaves),
expiry, and a waiting job holding nothing."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryEventLog, MemoryGateStore, MemoryJobQueue, memory_deps
from alfred_jobs.agents.demo import PANTRY_QUESTION, DemoAgent
from alfred_jobs.domain.events import InputRequiredPayload
from alfred_jobs.domain.gate import Gate
from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job, JobStatus, iso
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.exceptions import Conflict, InvalidInput, TransientStoreError
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.sweeper import Sweeper
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock


def make_deps(**overrides: Any) -> Deps:
    return memory_deps(Settings(**{"demo_step_seconds": 0, "lease_seconds": 5, "cancel_poll_seconds": 0.02,
                                   **overrides}))


def log(deps: Deps, job_id: str) -> list[Event]:
    store = deps.log
    assert isinstance(store, MemoryEventLog)
    return store.all(job_id)


def sent(deps: Deps) -> list[str]:
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue)
    return [m.job_id for m in queue.sent]


def run(deps: Deps, job_id: str) -> Outcome:
    return JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job_id)).outcome


def ask_job(deps: Deps, conv: str = "c1", user: str = "u") -> Job:
    job = JobService(deps).submit(user, ChatRequest(message="chicken from my pantry [steps=2]",
                                                    conversation_id=conv), None).job
    assert run(deps, job.job_id) is Outcome.DONE
    return job


def record(deps: Deps, job_id: str) -> Job:
    job = deps.jobs.get(job_id)
    assert job is not None
    return job


def test_asking_ends_the_attempt_and_the_job_waits_holding_nothing() -> None:
    deps = make_deps()
    job = ask_job(deps)
    last = log(deps, job.job_id)[-1]
    assert last.type is EventType.INPUT_REQUIRED
    assert last.data["input_id"] == "s1q1" and last.data["kind"] == "confirm"
    assert last.data["prompt"] == PANTRY_QUESTION and "expires_at" in last.data
    assert "options" not in last.data, "a confirm has no options (SPEC: options only on a choice)"
    waiting = record(deps, job.job_id)
    assert waiting.status is JobStatus.WAITING and waiting.lease_owner is None
    gate = deps.gates.read("u")
    assert gate.running == 0 and gate.entries[0].asking, "its slot is back, its conversation held"
    assert deps.agent_data.step_effects(job.job_id) == {}, "asked before the step's side effect"
    # a duplicate delivery while it waits writes nothing
    before = len(log(deps, job.job_id))
    assert run(deps, job.job_id) is Outcome.DONE and len(log(deps, job.job_id)) == before


@pytest.mark.parametrize(("answer", "said"), [(True, "I used the 2 lb of chicken"), (False, "left your pantry")])
def test_one_answer_continues_the_job_once_from_its_checkpoint(answer: bool, said: str) -> None:
    deps = make_deps()
    job = ask_job(deps)
    answered, taken = JobService(deps).answer("u", job.job_id, "s1q1", answer)
    assert taken and answered.status is JobStatus.PENDING
    assert sent(deps)[-1] == job.job_id
    assert run(deps, job.job_id) is Outcome.DONE
    events = log(deps, job.job_id)
    assert events[-1].type is EventType.COMPLETE and said in events[-1].data["output"]["reply"]
    assert [e.type for e in events].count(EventType.INPUT_REQUIRED) == 1
    assert deps.agent_data.step_effects(job.job_id) == {1: 1, 2: 1}
    assert record(deps, job.job_id).status is JobStatus.COMPLETE
    assert deps.gates.read("u") == Gate()


def test_the_same_answer_again_is_200_and_any_other_is_refused() -> None:
    deps = make_deps()
    svc = JobService(deps)
    job = ask_job(deps)
    with pytest.raises(InvalidInput) as wrong_kind:
        svc.answer("u", job.job_id, "s1q1", "yes")  # a confirm takes a bool
    assert wrong_kind.value.code == "invalid_answer"
    with pytest.raises(Conflict) as stale:
        svc.answer("u", job.job_id, "s9q9", True)
    assert stale.value.code == "stale_input"
    assert svc.answer("u", job.job_id, "s1q1", True)[1] is True
    assert svc.answer("u", job.job_id, "s1q1", True)[1] is False  # the same answer again: 200
    with pytest.raises(Conflict) as other:
        svc.answer("u", job.job_id, "s1q1", False)
    assert other.value.code == "input_answered"
    assert [e.type for e in log(deps, job.job_id)].count(EventType.INPUT_RECEIVED) == 1


def failing_projections(deps: Deps, times: int) -> None:
    """The next ``times`` projections of the job record time out (their writes never land)."""
    real = deps.jobs.save_projection
    left = [times]

    def save(job: Job, *, owner: str | None) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise TransientStoreError("timed out")
        real(job, owner=owner)

    deps.jobs.save_projection = save  # type: ignore[method-assign]


def test_the_same_answer_again_finishes_what_the_first_left_undone() -> None:
    # GIVEN an answer that landed in the log, whose projection timed out, so its resume never ran
    # (sim seed 62469 at adb30d9: a client's retry, answered 200, repaired nothing)
    deps = make_deps()
    svc = JobService(deps)
    job = ask_job(deps)
    failing_projections(deps, 1)
    assert svc.answer("u", job.job_id, "s1q1", True)[1] is True
    assert record(deps, job.job_id).status is JobStatus.WAITING and job.job_id not in sent(deps)[1:]
    # WHEN the client sends the same answer again
    again, taken = svc.answer("u", job.job_id, "s1q1", True)
    # THEN it is still the 200 of a repeat, and the job is projected and sent on
    assert taken is False and again.status is JobStatus.PENDING
    assert record(deps, job.job_id).status is JobStatus.PENDING
    assert sent(deps)[-1] == job.job_id
    assert run(deps, job.job_id) is Outcome.DONE
    assert record(deps, job.job_id).status is JobStatus.COMPLETE
    assert [e.type for e in log(deps, job.job_id)].count(EventType.INPUT_RECEIVED) == 1


def test_an_answer_landing_after_the_sweepers_read_does_not_leave_the_job_for_the_questions_day() -> None:
    # GIVEN a sweeper that found the waiting job due and read its log (no answer yet), with its
    # move of the deadline to the question's expiry on its way; meanwhile the answer lands, its
    # projection times out, and all its other writes land before the sweeper's (sim seed 62469)
    deps = make_deps()
    svc = JobService(deps)
    job = ask_job(deps)
    deps.jobs.due[job.job_id] = time.time() - 1  # type: ignore[attr-defined]
    real = deps.jobs.postpone_waiting
    answers: list[bool] = []

    def late(job_id: str, due_at: float, now: float) -> bool:
        if not answers:
            failing_projections(deps, 1)
            answers.append(svc.answer("u", job.job_id, "s1q1", True)[1])
        return real(job_id, due_at, now)

    deps.jobs.postpone_waiting = late  # type: ignore[method-assign]
    # WHEN the sweeper's write lands
    report = Sweeper(deps).sweep()
    # THEN the sweeper, reading the log again after it, finds the answer and resumes the job
    assert answers == [True]
    assert report.requeued == [job.job_id] and report.waiting == []
    assert sent(deps)[-1] == job.job_id
    assert deps.jobs.due[job.job_id] <= time.time() + deps.settings.pending_grace_seconds  # type: ignore[attr-defined]
    assert run(deps, job.job_id) is Outcome.DONE
    assert record(deps, job.job_id).status is JobStatus.COMPLETE


def test_an_answer_whose_projection_fails_after_the_sweeper_looked_makes_the_job_due_at_once() -> None:
    # GIVEN an answer frozen between its first postpone and its event (sim seed 62469: 75 s), and a
    # sweeper that found the job due from before, read no answer and moved the deadline to the
    # question's expiry in between
    deps = make_deps()
    svc = JobService(deps)
    job = ask_job(deps)
    store = deps.log
    assert isinstance(store, MemoryEventLog)
    real_append = store.append
    swept: list[Any] = []

    def frozen(job_id: str, event: Event, expires_at: int) -> None:
        if event.type is EventType.INPUT_RECEIVED and not swept:
            deps.jobs.due[job_id] = time.time() - 1  # type: ignore[attr-defined]  # its earlier deadline
            swept.append(Sweeper(deps).sweep())
        real_append(job_id, event, expires_at)

    store.append = frozen  # type: ignore[method-assign]
    failing_projections(deps, 1)
    # WHEN the answer lands, and its projection times out
    assert svc.answer("u", job.job_id, "s1q1", True)[1] is True
    assert swept[0].waiting == [job.job_id]
    # THEN the job is due now, not at the question's expiry, and the next sweep resumes it
    assert deps.jobs.due[job.job_id] <= time.time()  # type: ignore[attr-defined]
    assert Sweeper(deps).sweep().requeued == [job.job_id]
    assert sent(deps)[-1] == job.job_id
    assert run(deps, job.job_id) is Outcome.DONE
    assert record(deps, job.job_id).status is JobStatus.COMPLETE


def test_two_answers_at_once_from_two_devices_one_is_taken() -> None:
    deps = make_deps()
    job = ask_job(deps)
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def answer(value: bool) -> None:
        svc = JobService(deps)
        barrier.wait()
        try:
            results.append(svc.answer("u", job.job_id, "s1q1", value)[1])
        except Conflict as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=answer, args=(v,)) for v in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(map(str, results)) == ["True", "input_answered"]
    assert [e.type for e in log(deps, job.job_id)].count(EventType.INPUT_RECEIVED) == 1


def test_an_answer_and_a_cancel_at_once_end_consistently() -> None:
    deps = make_deps()
    job = ask_job(deps)
    svc = JobService(deps)
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def answer() -> None:
        barrier.wait()
        try:
            outcome["answer"] = svc.answer("u", job.job_id, "s1q1", True)[1]
        except Conflict as exc:
            outcome["answer"] = exc.code

    def cancel() -> None:
        barrier.wait()
        outcome["cancel"] = svc.cancel("u", job.job_id)[1]

    threads = [threading.Thread(target=answer), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Either the cancel landed first (the answer is refused) or the answer did (the cancel is a
    # flag the resumed attempt obeys at its first boundary). Either way: cancelled, once.
    for _ in range(2):
        run(deps, job.job_id)
    events = log(deps, job.job_id)
    assert events[-1].type is EventType.CANCELLED
    assert [e.terminal for e in events].count(True) == 1
    assert record(deps, job.job_id).status is JobStatus.CANCELLED
    assert deps.gates.read("u") == Gate()


def test_an_answer_while_the_asker_is_still_leaving_is_not_lost() -> None:
    deps = make_deps()
    svc = JobService(deps)

    class AnswerDuringPause(MemoryGateStore):
        def pause(self, user_id: str, job_id: str, conversation_id: str, *, attempt: int,
                  created_at: float = 0.0) -> Gate:
            # the user answers between the question's event and the asker giving its slot back
            svc.answer(user_id, job_id, "s1q1", True)
            return super().pause(user_id, job_id, conversation_id, attempt=attempt, created_at=created_at)

    deps.gates = AnswerDuringPause()
    svc = JobService(deps)
    job = ask_job(deps)
    assert sent(deps)[-1] == job.job_id, "the asker saw the answer and sent the job on"
    assert run(deps, job.job_id) is Outcome.DONE
    assert log(deps, job.job_id)[-1].type is EventType.COMPLETE


def test_cancel_while_waiting_ends_it_and_hands_the_conversation_on() -> None:
    deps = make_deps()
    svc = JobService(deps)
    job = ask_job(deps)
    later = svc.submit("u", ChatRequest(message="next", conversation_id="c1"), None).job
    assert later.job_id not in sent(deps), "the asking job still holds its conversation"
    cancelled, done = svc.cancel("u", job.job_id)
    assert done and cancelled.status is JobStatus.CANCELLED
    assert sent(deps)[-1] == later.job_id


def test_a_waiting_job_gives_its_slot_to_the_users_other_jobs() -> None:
    deps = make_deps(max_running_per_user=1)
    svc = JobService(deps)
    job = svc.submit("u", ChatRequest(message="from my pantry [steps=1]", conversation_id="c1"), None).job
    other = svc.submit("u", ChatRequest(message="other", conversation_id="c2"), None).job
    assert other.job_id not in sent(deps)
    assert run(deps, job.job_id) is Outcome.DONE  # asks, gives its slot back
    assert sent(deps)[-1] == other.job_id


def test_an_unanswered_question_fails_its_job_when_it_expires() -> None:
    deps = make_deps(input_timeout_seconds=0.01)
    job = ask_job(deps)
    deps.jobs.due[job.job_id] = time.time() - 1  # type: ignore[attr-defined]
    threading.Event().wait(0.02)  # the question's 10 ms expiry (the timeout under test is time itself)
    report = Sweeper(deps).sweep()
    assert report.timed_out == [job.job_id] and report.requeued == []
    end = log(deps, job.job_id)[-1]
    assert end.type is EventType.FAILED and end.data["error"]["code"] == "input_timeout"
    assert record(deps, job.job_id).status is JobStatus.FAILED
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue) and (job.job_id, "input_timeout") in queue.dead
    with pytest.raises(Conflict):
        JobService(deps).answer("u", job.job_id, "s1q1", True)


def test_an_askers_late_deadline_write_does_not_hide_the_next_attempt_from_the_sweeper() -> None:
    # GIVEN the asker's last write, its job's sweep deadline moved to the question's expiry, frozen
    # in flight (its process stopped before the request went), and meanwhile the user answered and
    # a next attempt took the job and died (killed: its lease ran out); the cancel path, the
    # sweeper's, relies on the job being found due then (sim seed 47480 at abf65d9: the late write
    # landed just after the next attempt's lease, which froze; a cancel (202) waited 10 minutes,
    # until the message's visibility timeout)
    deps = make_deps()
    held: list[Any] = []
    far = time.time() + 3600  # the expiry is a day away; the grace periods are seconds
    for name in ("postpone", "postpone_waiting"):
        real = getattr(deps.jobs, name, None)
        if real is None:
            continue

        def hold(job_id: str, due_at: float, *args: Any, real: Any = real, **kwargs: Any) -> bool:
            if due_at < far:
                return bool(real(job_id, due_at, *args, **kwargs))
            held.append(lambda: real(job_id, due_at, *args, **kwargs))
            return True

        setattr(deps.jobs, name, hold)
    job = ask_job(deps)
    assert len(held) == 1  # the move to the expiry, on its way
    _, taken = JobService(deps).answer("u", job.job_id, "s1q1", True)
    assert taken
    deps.jobs.acquire_lease(job.job_id, "next-attempt", time.time() - 10, 5)  # taken, then killed
    # WHEN the asker's write lands
    held.pop()()
    # THEN the job is still due (its lease ran out), and the sweeper sends it again
    assert Sweeper(deps).sweep().requeued == [job.job_id]


class Killed(Exception):
    """The process dies here (a SIGKILL, a frozen Lambda past its timeout)."""


def test_a_timed_out_question_whose_ender_dies_before_its_dead_letter_is_parked_by_the_next_sweep() -> None:
    # GIVEN the sweeper ends an expired question and dies after its terminal event and its gate
    # removal, before the dead letter (sim seed 16182 at 2e09054: the simulator's quiet check came
    # before this repair could, and took it for a failure never parked)
    deps = make_deps(input_timeout_seconds=0.01)
    job = ask_job(deps)
    deps.jobs.due[job.job_id] = time.time() - 1  # type: ignore[attr-defined]
    threading.Event().wait(0.02)  # the question's 10 ms expiry (the timeout under test is time itself)
    queue = deps.queue
    assert isinstance(queue, MemoryJobQueue)
    park = queue.dead_letter

    def die(*_: Any) -> None:
        raise Killed

    queue.dead_letter = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        Sweeper(deps).sweep()
    queue.dead_letter = park  # type: ignore[method-assign]
    assert log(deps, job.job_id)[-1].type is EventType.FAILED and queue.dead == []
    assert record(deps, job.job_id).status is JobStatus.WAITING and deps.gates.read("u") == Gate()
    # its sweep deadline moved a grace period on before the terminal event, not to the expiry
    assert deps.jobs.due[job.job_id] <= time.time() + deps.settings.pending_grace_seconds  # type: ignore[attr-defined]
    # WHEN that grace period passes and the sweeper looks again, and a worker takes the job
    deps.jobs.due[job.job_id] = time.time() - 1  # type: ignore[attr-defined]
    assert Sweeper(deps).sweep().requeued == [job.job_id]
    assert run(deps, job.job_id) is Outcome.DONE
    # THEN the failure is parked, once, and the job is finished
    assert queue.dead == [(job.job_id, "input_timeout")]
    assert record(deps, job.job_id).status is JobStatus.FAILED


def test_the_sweeper_leaves_a_job_waiting_for_its_answer_alone_until_it_expires() -> None:
    deps = make_deps()
    job = ask_job(deps)
    deps.jobs.due[job.job_id] = time.time() - 1  # type: ignore[attr-defined]
    report = Sweeper(deps).sweep()
    assert report.waiting == [job.job_id] and report.requeued == [] and report.timed_out == []
    assert deps.jobs.due[job.job_id] > time.time() + 3600  # type: ignore[attr-defined]  # until the expiry


# ---- a cancel in the second before the agent asks -------------------------------------------------
# The keeper polls the flag every ``cancel_poll_seconds``: set here to a minute (and the lease too), so
# that it never reads the record during a test and a boundary trusts what it last saw, as it does
# for up to two poll periods. The interleavings are made by calling the API at the chosen point.


def slow_keeper_deps() -> Deps:
    return make_deps(lease_seconds=60, cancel_poll_seconds=60)


class CancelBeforeAsking(DemoAgent):
    """Calls ``cancel`` (the API) in step 1, just before the pantry question."""

    def __init__(self, deps: Deps, cancel: Any) -> None:
        super().__init__(deps.agent_data, deps.settings)
        self.cancel = cancel

    def act(self, step: Any, ctx: Any) -> Any:
        if step.index == 1 and self.cancel is not None:
            cancel, self.cancel = self.cancel, None
            cancel(ctx.job_id)
        return super().act(step, ctx)


@pytest.mark.parametrize("how", ["cancel", "interrupt"])
def test_a_cancel_just_before_the_question_ends_the_job(how: str) -> None:
    deps = slow_keeper_deps()
    svc = JobService(deps)
    job = svc.submit("u", ChatRequest(message="chicken from my pantry [steps=2]", conversation_id="c1"), None).job
    later: list[Job] = []

    def cancel(job_id: str) -> None:
        if how == "cancel":
            assert svc.cancel("u", job_id)[1] is False  # 202: the worker's lease is live, so a flag
        else:
            later.append(svc.submit("u", ChatRequest(message="no, fish", conversation_id="c1",
                                                     multitask="interrupt"), None).job)

    result = JobRunner(deps, CancelBeforeAsking(deps, cancel)).run(Delivery(job.job_id))
    # THEN the job does not sit waiting for an answer (a day, then input_timeout): it is cancelled
    assert result.status is JobStatus.CANCELLED
    events = log(deps, job.job_id)
    assert events[-1].type is EventType.CANCELLED and [e.terminal for e in events].count(True) == 1
    assert record(deps, job.job_id).status is JobStatus.CANCELLED
    if how == "interrupt":
        assert events[-1].data == {"reason": "interrupted", "by": later[0].job_id}
        assert sent(deps)[-1] == later[0].job_id, "the interrupting job runs now, not in a day"
        assert run(deps, later[0].job_id) is Outcome.DONE
    assert deps.gates.read("u") == Gate()


def test_a_cancel_whose_flag_lands_after_the_asker_left_is_ended_by_the_api() -> None:
    # GIVEN the API read the job while its worker held the lease, and the worker then asked and
    # left (released its lease, found no flag) before the API's flag landed
    deps = slow_keeper_deps()
    svc = JobService(deps)
    job = svc.submit("u", ChatRequest(message="chicken from my pantry [steps=2]", conversation_id="c1"), None).job
    seen: list[Job] = []
    agent = CancelBeforeAsking(deps, lambda job_id: seen.append(record(deps, job_id)))
    assert JobRunner(deps, agent).run(Delivery(job.job_id)).status is JobStatus.WAITING
    assert seen[0].lease_live(deps.clock.now())
    real_get = deps.jobs.get
    deps.jobs.get = lambda job_id, consistent=True: seen.pop() if seen else real_get(job_id, consistent)  # type: ignore[method-assign]
    # WHEN the API's cancel goes on from that read
    cancelled, done = svc.cancel("u", job.job_id)
    # THEN it finds the lease gone in what its flag's write returns, and ends the job itself
    assert done and cancelled.status is JobStatus.CANCELLED
    assert log(deps, job.job_id)[-1].type is EventType.CANCELLED
    assert record(deps, job.job_id).status is JobStatus.CANCELLED
    assert deps.gates.read("u") == Gate()


def test_the_sweeper_ends_a_waiting_job_whose_cancel_flag_is_set() -> None:
    # GIVEN a waiting job whose cancel flag is set and which nobody ended (its worker died after
    # letting its lease go, before it looked at the flag again)
    deps = make_deps()
    job = ask_job(deps)
    deps.jobs.request_cancel(job.job_id)
    deps.jobs.due[job.job_id] = deps.clock.now() - 1  # type: ignore[attr-defined]
    # WHEN the sweeper finds it due
    Sweeper(deps).sweep()
    # THEN it is cancelled, not left waiting for an answer until the question expires
    assert log(deps, job.job_id)[-1].type is EventType.CANCELLED
    assert record(deps, job.job_id).status is JobStatus.CANCELLED
    assert deps.gates.read("u") == Gate()


@pytest.mark.parametrize("dies_after", ["release_lease", "get"])
def test_an_asker_dying_as_it_leaves_does_not_hold_a_cancel_for_the_questions_day(dies_after: str) -> None:
    # GIVEN a worker that asks the user, a cancel the API answered 202 while it held the lease (a
    # flag), and the worker's process dying as it leaves: once its lease is gone, before it looked
    # at the flag again, or as it read it (sim seed 286 at 36d5f5e: its end's first write was held
    # in flight, the process killed)
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=60, cancel_poll_seconds=60,
                                pending_grace_seconds=30), clock=clock)
    svc = JobService(deps)
    job = svc.submit("u", ChatRequest(message="chicken from my pantry [steps=2]", conversation_id="c1"), None).job
    store = deps.jobs
    real_release, real_get = store.release_lease, store.get
    flagged: list[bool] = []

    def release_lease(job_id: str, *args: Any, **kwargs: Any) -> None:
        flagged.append(svc.cancel("u", job_id)[1] is False)  # 202: the lease is live, a flag only
        real_release(job_id, *args, **kwargs)
        if dies_after == "release_lease":
            raise SystemExit("the worker died here")

    def get(job_id: str, consistent: bool = True) -> Job | None:
        found = real_get(job_id, consistent)
        if flagged and dies_after == "get":
            raise SystemExit("the worker died here")
        return found

    store.release_lease = release_lease  # type: ignore[method-assign]
    store.get = get  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        run(deps, job.job_id)
    store.release_lease, store.get = real_release, real_get  # type: ignore[method-assign]
    assert flagged == [True] and record(deps, job.job_id).status is JobStatus.WAITING
    # WHEN a grace period passes (its message comes back only after its visibility timeout)
    clock.offset += deps.settings.pending_grace_seconds + 1
    Sweeper(deps).sweep()
    # THEN the sweeper has ended it cancelled, not left it until the question's expiry
    assert log(deps, job.job_id)[-1].type is EventType.CANCELLED
    assert record(deps, job.job_id).status is JobStatus.CANCELLED
    assert deps.gates.read("u") == Gate()


def test_an_asking_jobs_flag_is_read_strongly_before_its_deadline_moves_to_the_expiry() -> None:
    # GIVEN a waiting job found due by an index read that does not show its cancel flag yet
    deps = make_deps()
    job = ask_job(deps)
    deps.jobs.request_cancel(job.job_id)
    store = deps.jobs
    real_find_due = store.find_due

    def stale_find_due(now: float, limit: int) -> list[Job]:
        return [replace(j, cancel_requested=False) for j in real_find_due(now, limit)]

    store.find_due = stale_find_due  # type: ignore[method-assign]
    deps.jobs.due[job.job_id] = deps.clock.now() - 1  # type: ignore[attr-defined]
    # WHEN the sweeper looks at it
    report = Sweeper(deps).sweep()
    # THEN it is cancelled, not postponed until its question expires
    assert report.cancelled == [job.job_id] and report.waiting == []
    assert record(deps, job.job_id).status is JobStatus.CANCELLED


# ---- a question from a fenced worker ------------------------------------------------------------------


class DiesInStepOne(DemoAgent):
    def act(self, step: Any, ctx: Any) -> Any:
        raise SystemExit("the worker froze here (past its lease)")


def test_a_question_from_a_worker_past_its_lease_still_gets_its_answer() -> None:
    # GIVEN a worker that stopped in step 1 (paused, not dead) and lost its lease
    deps = make_deps()
    job = JobService(deps).submit("u", ChatRequest(message="chicken from my pantry [steps=2]",
                                                   conversation_id="c1"), None).job
    with pytest.raises(SystemExit):
        JobRunner(deps, DiesInStepOne(deps.agent_data, deps.settings)).run(Delivery(job.job_id))
    deps.jobs.items[job.job_id] = replace(record(deps, job.job_id), lease_expires=deps.clock.now() - 1)  # type: ignore[attr-defined]
    # ... and a new owner that read the log while the old one slept: as it puts its ``resumed``,
    # the old one wakes up and asks step 1's question in that very slot
    store = deps.log
    assert isinstance(store, MemoryEventLog)
    real_append = store.append

    def old_owner_asks_first(job_id: str, event: Event, expires_at: int) -> None:
        if event.type is EventType.RESUMED:
            store.append = real_append  # type: ignore[method-assign]
            question = InputRequiredPayload(input_id="s1q1", prompt=PANTRY_QUESTION, kind="confirm",
                                            expires_at=iso(deps.clock.now() + 3600))
            real_append(job_id, Event.of(event.seq, question, attempt=1, writer="the-old-owner",
                                         at=deps.clock.now()), expires_at)
        real_append(job_id, event, expires_at)

    store.append = old_owner_asks_first  # type: ignore[method-assign]
    result = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job.job_id))
    # THEN the question stands: the job waits for its answer (no ``resumed`` after it), holding nothing
    assert result.status is JobStatus.WAITING
    assert [e.type for e in log(deps, job.job_id)][-1] is EventType.INPUT_REQUIRED
    waiting = record(deps, job.job_id)
    assert waiting.status is JobStatus.WAITING and waiting.lease_owner is None
    assert deps.gates.read("u").entries[0].asking
    # ... and one answer continues it, once
    assert JobService(deps).answer("u", job.job_id, "s1q1", True)[1] is True
    assert run(deps, job.job_id) is Outcome.DONE
    events = log(deps, job.job_id)
    assert events[-1].type is EventType.COMPLETE and "I used the 2 lb of chicken" in events[-1].data["output"]["reply"]
    assert [e.type for e in events].count(EventType.INPUT_REQUIRED) == 1
    assert deps.gates.read("u") == Gate()


# ---- an ending whose hand-off fails ---------------------------------------------------------------


class RemoveFails(MemoryGateStore):
    """Fails ``remove`` while ``failing`` is set, as a throttled store or a crash would."""

    failing = False

    def remove(self, user_id: str, job_id: str, *, conversation_id: str | None = None,
               only_untaken: bool = False, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        if self.failing:
            raise TransientStoreError("throttled")
        return super().remove(user_id, job_id, conversation_id=conversation_id, only_untaken=only_untaken,
                              attempt=attempt, created_at=created_at)


def _end_with_a_failing_hand_off(svc: JobService, gates: RemoveFails, job: Job, how: str) -> Job:
    """The API ends ``job`` (a cancel, or a later message that interrupts it) while the gate's
    removal fails: its terminal event lands, the hand-off after it does not. The later job."""
    gates.failing = True
    if how == "cancel":
        later = svc.submit("u", ChatRequest(message="next", conversation_id="c1"), None).job
        assert svc.cancel("u", job.job_id)[1] is True
    else:
        later = svc.submit("u", ChatRequest(message="no, fish", conversation_id="c1",
                                            multitask="interrupt"), None).job
    gates.failing = False
    return later


def _assert_ended_unfinalized(deps: Deps, job: Job, later: Job) -> None:
    assert log(deps, job.job_id)[-1].type is EventType.CANCELLED
    assert record(deps, job.job_id).status is JobStatus.WAITING, "not finalized"
    assert later.job_id not in sent(deps), "the ended job's gate entry still holds the conversation"


def _assert_swept_a_grace_period_on_and_handed_on(deps: Deps, clock: ShiftedClock, job: Job, later: Job) -> None:
    """The sweeper finds the ended job a grace period on (not at the question's expiry), a worker
    finalizes it, and the later job of its conversation runs."""
    clock.offset += deps.settings.pending_grace_seconds + 1
    assert job.job_id in Sweeper(deps).sweep().requeued
    assert run(deps, job.job_id) is Outcome.DONE
    assert record(deps, job.job_id).status is JobStatus.CANCELLED
    assert sent(deps)[-1] == later.job_id
    assert run(deps, later.job_id) is Outcome.DONE
    assert log(deps, later.job_id)[-1].type is EventType.COMPLETE
    assert deps.gates.read("u") == Gate()


@pytest.mark.parametrize("how", ["cancel", "interrupt"])
def test_a_waiting_job_ended_whose_hand_off_fails_is_finalized_within_a_grace_period(how: str) -> None:
    # GIVEN a job waiting for its answer (its sweep deadline at the question's expiry, a day away)
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, cancel_poll_seconds=0.02,
                                pending_grace_seconds=30), clock=clock)
    gates = deps.gates = RemoveFails(clock)
    svc = JobService(deps)
    job = ask_job(deps)
    # WHEN the API ends it (a cancel, or a later message that interrupts it), and its terminal
    # event lands but the hand-off after it fails ("finalizing is left to a worker")
    later = _end_with_a_failing_hand_off(svc, gates, job, how)
    _assert_ended_unfinalized(deps, job, later)
    # THEN the sweeper finds it a grace period later (not at the question's expiry), a worker
    # finalizes it, and the later job of its conversation runs
    _assert_swept_a_grace_period_on_and_handed_on(deps, clock, job, later)


@pytest.mark.parametrize("lands", ["before_the_close", "before_the_terminal_event"])
@pytest.mark.parametrize("how", ["cancel", "interrupt"])
def test_an_askers_late_move_to_the_expiry_does_not_hide_an_ended_job_whose_hand_off_failed(
        how: str, lands: str) -> None:
    # GIVEN an asker whose last write, its job's sweep deadline moved to the question's expiry, is
    # still on its way (sim seed 195980 at 5290c41: the asker stalled 1.6 s before it), and an
    # API ending the job meanwhile (a cancel, or a message that interrupts it), itself stalled
    # after its grace deadline: the asker's write lands in the middle of the ending, and the
    # ending's gate removal is throttled after its terminal event. The ended job's entry, asking,
    # held the conversation for the question's day; the message behind it never started.
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, cancel_poll_seconds=0.02,
                                pending_grace_seconds=30), clock=clock)
    gates = deps.gates = RemoveFails(clock)
    svc = JobService(deps)
    held: list[Any] = []
    real_move = deps.jobs.postpone_waiting

    def hold(job_id: str, due_at: float, now: float) -> bool:
        held.append(lambda: real_move(job_id, due_at, now))
        return True

    deps.jobs.postpone_waiting = hold  # type: ignore[method-assign]
    job = ask_job(deps)
    assert len(held) == 1, "the asker's move to the expiry, on its way"
    deps.jobs.postpone_waiting = real_move  # type: ignore[method-assign]

    def land() -> None:
        if held:
            held.pop()()

    if lands == "before_the_close":
        real_close = deps.jobs.close_door

        def close(job_id: str, seen: int, *, owner: str | None) -> Job | None:
            land()
            return real_close(job_id, seen, owner=owner)

        deps.jobs.close_door = close  # type: ignore[method-assign]
    else:
        store = deps.log
        assert isinstance(store, MemoryEventLog)
        real_append = store.append

        def append(job_id: str, event: Event, expires_at: int) -> None:
            if event.type is EventType.CANCELLED:
                land()
            real_append(job_id, event, expires_at)

        store.append = append  # type: ignore[method-assign]
    # WHEN the API ends the job, the asker's write landing in the middle, and the hand-off fails
    later = _end_with_a_failing_hand_off(svc, gates, job, how)
    assert not held, "the asker's write landed"
    _assert_ended_unfinalized(deps, job, later)
    # THEN the ended job is still due a grace period on, not at the question's expiry: the sweeper
    # sends it, a worker finalizes it, and the later job of its conversation runs
    _assert_swept_a_grace_period_on_and_handed_on(deps, clock, job, later)


# ---- stray deliveries while a job waits ------------------------------------------------------------


def test_stray_deliveries_while_a_job_waits_do_not_use_up_its_attempts() -> None:
    # GIVEN a job that asked in its first attempt, with three attempts in all
    deps = make_deps(max_attempts=3)
    job = ask_job(deps)
    assert record(deps, job.job_id).attempts == 1
    # WHEN deliveries come while the question is open (SQS duplicates, the sweeper's sends), each
    # taking the lease and leaving again: none of them starts anything
    for _ in range(3):
        assert run(deps, job.job_id) is Outcome.DONE
        waiting = record(deps, job.job_id)
        assert waiting.status is JobStatus.WAITING and waiting.lease_owner is None
        assert waiting.attempts == 1, "a delivery that only left again counted an attempt"
    assert log(deps, job.job_id)[-1].type is EventType.INPUT_REQUIRED
    # THEN the attempt after the answer is the second, and the job completes
    assert JobService(deps).answer("u", job.job_id, "s1q1", True)[1] is True
    assert run(deps, job.job_id) is Outcome.DONE
    events = log(deps, job.job_id)
    assert events[-1].type is EventType.COMPLETE, events[-1].data
    assert [e.data["attempt"] for e in events if e.type is EventType.RESUMED] == [2]
    assert record(deps, job.job_id).attempts == 2
    assert deps.gates.read("u") == Gate()


# ---- a question whose put was ambiguous ------------------------------------------------------------


class QuestionLandsUnseen(MemoryEventLog):
    """The question's put lands, and every answer about it is lost: the put and the SDK's retries
    fail (``TransientStoreError``), and so does the journal's look before it gives up."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_appends = self.fail_gets = 0
        self.struck = False

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        if self.fail_appends:
            self.fail_appends -= 1
            raise TransientStoreError("throttled")
        super().append(job_id, event, expires_at)
        if event.type is EventType.INPUT_REQUIRED and not self.struck:
            self.struck = True
            self.fail_appends, self.fail_gets = 3, 1  # the journal's retries, then its look
            raise TransientStoreError("the answer was lost")

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        if self.fail_gets:
            self.fail_gets -= 1
            raise TransientStoreError("throttled")
        return super().get(job_id, seq, consistent)


class SwallowsStoreErrors(DemoAgent):
    """An agent that catches what its step raises (here: the question's store error) and goes on."""

    def act(self, step: Any, ctx: Any) -> Any:
        try:
            return super().act(step, ctx)
        except TransientStoreError:
            return {"pantry": "unknown"}


@pytest.mark.parametrize("agent", [DemoAgent, SwallowsStoreErrors])
def test_a_question_whose_put_landed_unseen_stands_and_its_answer_continues_the_job(agent: type[DemoAgent]) -> None:
    # GIVEN an attempt whose question lands in the log while it sees only errors: the attempt
    # goes on to record a retryable failure at the head it knows (or, its agent having swallowed
    # the error, to record the step), and meets its own question there
    deps = make_deps(max_attempts=3)
    deps.log = QuestionLandsUnseen()
    job = JobService(deps).submit("u", ChatRequest(message="chicken from my pantry [steps=2]",
                                                   conversation_id="c1"), None).job
    result = JobRunner(deps, agent(deps.agent_data, deps.settings)).run(Delivery(job.job_id))
    # THEN the question stands: the job waits for its answer (nothing written after it), holding nothing
    assert result.status is JobStatus.WAITING
    events = log(deps, job.job_id)
    assert events[-1].type is EventType.INPUT_REQUIRED, [e.type for e in events]
    waiting = record(deps, job.job_id)
    assert waiting.status is JobStatus.WAITING and waiting.lease_owner is None
    assert deps.gates.read("u").entries[0].asking
    # ... and one answer continues it, once
    assert JobService(deps).answer("u", job.job_id, "s1q1", True)[1] is True
    assert run(deps, job.job_id) is Outcome.DONE
    events = log(deps, job.job_id)
    assert events[-1].type is EventType.COMPLETE and "I used the 2 lb of chicken" in events[-1].data["output"]["reply"]
    assert [e.type for e in events].count(EventType.INPUT_REQUIRED) == 1
def test_an_askers_pause_landing_after_a_new_owner_took_the_job_leaves_the_new_owners_slot_alone() -> None:
    # GIVEN one run slot per user: a job that asks the user (c1), and another of the user's jobs (c2)
    # waiting for that slot
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, cancel_poll_seconds=0.02,
                                max_running_per_user=1), clock=clock)
    took_over: list[str] = []

    class PauseHeldInFlight(MemoryGateStore):
        def pause(self, user_id: str, job_id: str, conversation_id: str, *args: Any, **kwargs: Any) -> Gate:
            if not took_over:
                took_over.append(job_id)
                # The asker's pause is on the wire, its process frozen (past any check it made).
                # Meanwhile the user answers (the answer's unpause finds the entry still running) ...
                svc.answer(user_id, job_id, "s1q1", True)
                # ... the sweeper finds the job holding a slot with no worker and sends it ...
                clock.offset += deps.settings.pending_grace_seconds + 1
                assert job_id in Sweeper(deps).sweep().requeued
                # ... and a new owner takes it over, and is running it (frozen in step 1, lease and slot held)
                with pytest.raises(SystemExit):
                    JobRunner(deps, DiesInStepOne(deps.agent_data, deps.settings)).run(Delivery(job_id))
            return super().pause(user_id, job_id, conversation_id, *args, **kwargs)

    deps.gates = PauseHeldInFlight(clock)
    svc = JobService(deps)
    job = svc.submit("u", ChatRequest(message="chicken from my pantry [steps=2]", conversation_id="c1"), None).job
    other = svc.submit("u", ChatRequest(message="other", conversation_id="c2"), None).job
    assert other.job_id not in sent(deps)
    # WHEN the asker's pause lands after all that
    run(deps, job.job_id)
    assert took_over == [job.job_id]
    new_owner = record(deps, job.job_id)
    assert new_owner.lease_live(clock.now()) and new_owner.attempts == 2
    # THEN the new owner's slot is left alone: the job still holds it, and the other job neither
    # is sent nor starts on a delivery (max_running_per_user: 1)
    gate = deps.gates.read("u")
    mine = gate.entry(job.job_id)
    assert mine is not None and mine.running and gate.running == 1
    assert other.job_id not in sent(deps)
    assert run(deps, other.job_id) is Outcome.DROPPED and log(deps, other.job_id) == []
    # ... and once the new owner's lease runs out, the job finishes once, then the other one runs
    clock.offset += deps.settings.lease_seconds + 1
    assert run(deps, job.job_id) is Outcome.DONE
    assert log(deps, job.job_id)[-1].type is EventType.COMPLETE
    assert sent(deps)[-1] == other.job_id
    assert run(deps, other.job_id) is Outcome.DONE
    assert deps.gates.read("u") == Gate()


def test_a_stray_deliverys_pause_after_it_gave_its_attempt_back_leaves_the_next_attempts_slot_alone() -> None:
    # GIVEN one run slot per user: a job waiting on its question (attempt 1, its slot handed on),
    # another of the user's jobs (c2) behind it, and a stray delivery of the waiting job, which gives
    # back the attempt its lease counted (2) and then pauses the job's entry
    clock = ShiftedClock()
    deps = memory_deps(Settings(demo_step_seconds=0, lease_seconds=5, cancel_poll_seconds=0.02,
                                max_running_per_user=1), clock=clock)
    armed: list[bool] = []
    took_over: list[str] = []

    class PauseHeldInFlight(MemoryGateStore):
        def pause(self, user_id: str, job_id: str, conversation_id: str, *args: Any, **kwargs: Any) -> Gate:
            if armed and not took_over:
                took_over.append(job_id)
                # The stray's pause is on the wire, its process frozen, its lease released and its
                # attempt given back. Meanwhile the user answers (the job is sent) ...
                assert svc.answer(user_id, job_id, "s1q1", True)[1] is True
                # ... and the next attempt (numbered 2 again) takes the job and its slot, and is
                # running it (frozen in step 1, lease and slot held)
                with pytest.raises(SystemExit):
                    JobRunner(deps, DiesInStepOne(deps.agent_data, deps.settings)).run(Delivery(job_id))
            return super().pause(user_id, job_id, conversation_id, *args, **kwargs)

    deps.gates = PauseHeldInFlight(clock)
    svc = JobService(deps)
    job = svc.submit("u", ChatRequest(message="chicken from my pantry [steps=2]", conversation_id="c1"), None).job
    assert run(deps, job.job_id) is Outcome.DONE
    assert record(deps, job.job_id).status is JobStatus.WAITING
    other = svc.submit("u", ChatRequest(message="other", conversation_id="c2"), None).job  # not run yet
    # WHEN the stray's pause lands after the next attempt took the slot
    armed.append(True)
    run(deps, job.job_id)
    assert took_over == [job.job_id]
    now_running = record(deps, job.job_id)
    assert now_running.lease_live(clock.now()) and now_running.attempts == 2
    # THEN that attempt's slot is left alone: the job still holds it, and the user's other job does
    # not start on a delivery (max_running_per_user: 1)
    gate = deps.gates.read("u")
    mine = gate.entry(job.job_id)
    assert mine is not None and mine.running and gate.running == 1
    assert run(deps, other.job_id) is Outcome.DROPPED and log(deps, other.job_id) == []
