"""GateStore: the contract of ``alfred_jobs.ports.GateStore``, on the fake and on DynamoDB."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from alfred_jobs.domain.gate import Gate, GateEntry
from alfred_jobs.domain.models import iso
from alfred_jobs.exceptions import ConditionFailed, GateFull
from alfred_jobs.ports import GateStore
from tests.contract.support import Backend, live, uid
from tests.support.stack import wait_until


def entry(conv: str = "c1", at: float | None = None) -> GateEntry:
    job = uid("job")
    return GateEntry(job, conv, f"{iso(time.time() if at is None else at)}#{job}")


def ids(gate: Gate) -> list[str]:
    return [e.job_id for e in gate.in_order()]


def test_a_user_without_a_gate_has_an_empty_one(backend: Backend) -> None:
    assert backend.deps.gates.read(uid("user")) == Gate()


def test_enroll_returns_the_gate_after_it_and_is_idempotent(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    a, b = entry(), entry()
    assert ids(gates.enroll(user, a, 5, live(), check_at=time.time() + 600)) == [a.job_id]
    after = gates.enroll(user, b, 5, live(), check_at=time.time() + 600)
    assert ids(after) == [a.job_id, b.job_id] and after.running == 0
    assert gates.enroll(user, a, 5, live(), check_at=time.time() + 600) == after, "enrolling again changes nothing"
    assert gates.read(user) == after


def test_the_order_is_the_order_the_enrolls_landed_whatever_the_clocks_say(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    first = entry(at=time.time())
    behind = entry(at=time.time() - 60)  # a host whose clock is a minute behind, enrolling second
    same_ms = GateEntry(uid("job"), "c1", first.order)  # the same order key, enrolling third
    gates.enroll(user, first, None, live(), check_at=time.time() + 600)
    gates.enroll(user, behind, None, live(), check_at=time.time() + 600)
    gate = gates.enroll(user, same_ms, None, live(), check_at=time.time() + 600)
    assert ids(gate) == [first.job_id, behind.job_id, same_ms.job_id]
    assert [e.job_id for e in gate.ahead_of(same_ms.job_id)] == [first.job_id, behind.job_id]


def test_enroll_past_the_limit_raises_gate_full_with_the_gate(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    a, b = entry(), entry()
    gates.enroll(user, a, 2, live(), check_at=time.time() + 600)
    gates.enroll(user, b, 2, live(), check_at=time.time() + 600)
    with pytest.raises(GateFull) as full:
        gates.enroll(user, entry(), 2, live(), check_at=time.time() + 600)
    assert ids(full.value.gate) == [a.job_id, b.job_id]
    repair = gates.enroll(user, entry(), None, live(), check_at=time.time() + 600)
    assert len(repair.entries) == 3, "no limit: a repair goes in"


def test_take_holds_a_slot_once_per_conversation_and_within_the_limit(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    a, b, c, d = entry("c1"), entry("c1"), entry("c2"), entry("c3")
    for e in (a, b, c, d):
        gates.enroll(user, e, None, live(), check_at=time.time() + 600)
    gate = gates.take(user, a, 2, live(), attempt=1)
    assert gate.entry(a.job_id) == GateEntry(a.job_id, "c1", a.order, running=True, attempt=1) and gate.running == 1
    with pytest.raises(ConditionFailed):
        gates.take(user, a, 2, live(), attempt=1)  # taken already (the SDK's retry of a landed take fails too)
    with pytest.raises(ConditionFailed):
        gates.take(user, b, 2, live(), attempt=1)  # its conversation runs a job
    assert gates.take(user, c, 2, live(), attempt=1).running == 2
    with pytest.raises(ConditionFailed):
        gates.take(user, d, 2, live(), attempt=1)  # both slots held
    with pytest.raises(ConditionFailed):
        gates.take(user, entry("c9"), 5, live(), attempt=1)  # not enrolled


def test_remove_frees_the_slot_and_the_conversation_and_is_idempotent(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    a, b = entry("c1"), entry("c1")
    gates.enroll(user, a, None, live(), check_at=time.time() + 600)
    gates.enroll(user, b, None, live(), check_at=time.time() + 600)
    gates.take(user, a, 1, live(), attempt=1)
    after = gates.remove(user, a.job_id, conversation_id="c1")
    assert ids(after) == [b.job_id] and after.running == 0
    assert gates.remove(user, a.job_id, conversation_id="c1") == after
    assert gates.remove(user, a.job_id) == after
    assert gates.take(user, b, 1, live(), attempt=1).running == 1, "the conversation and the slot are free"
    assert gates.remove(user, b.job_id).entries == ()  # running, removed without the hint
    assert gates.read(user) == Gate()


def test_remove_only_untaken_leaves_a_running_entry(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    a, b = entry("c1"), entry("c2")
    gates.enroll(user, a, None, live(), check_at=time.time() + 600)
    gates.enroll(user, b, None, live(), check_at=time.time() + 600)
    gates.take(user, a, 2, live(), attempt=1)
    with pytest.raises(ConditionFailed):
        gates.remove(user, a.job_id, conversation_id="c1", only_untaken=True)
    assert ids(gates.remove(user, b.job_id, conversation_id="c2", only_untaken=True)) == [a.job_id]


def test_remove_only_untaken_leaves_an_entry_a_worker_took_that_gave_its_slot_back(backend: Backend) -> None:
    # A refused submit's undo is for an entry no worker took: one that asked the user (its slot
    # back, its conversation held) or was answered since (waiting to run again) is a started job's.
    gates, user = backend.deps.gates, uid("user")
    a = entry("c1")
    gates.enroll(user, a, None, live(), check_at=time.time() + 600)
    gates.take(user, a, 1, live(), attempt=1)
    gates.pause(user, a.job_id, "c1", attempt=1)
    for hint in ("c1", None):
        with pytest.raises(ConditionFailed):
            gates.remove(user, a.job_id, conversation_id=hint, only_untaken=True)
    gates.unpause(user, a.job_id, attempt=1)
    for hint in ("c1", None):
        with pytest.raises(ConditionFailed):
            gates.remove(user, a.job_id, conversation_id=hint, only_untaken=True)
    after = gates.read(user)
    assert ids(after) == [a.job_id] and after.entries[0].attempt == 1 and not after.entries[0].running


def test_remove_only_untaken_leaves_the_entry_of_another_job_of_its_id(backend: Backend) -> None:
    # A refused submit's undo, frozen in flight, lands after its job was deleted and its key made a
    # job anew (enrolled with its own creation time): that entry is not the undo's to take out.
    gates, user = backend.deps.gates, uid("user")
    born = time.time()
    new = replace(entry("c1"), created_at=born)
    gates.enroll(user, new, None, live(), check_at=time.time() + 600)
    for hint in ("c1", None):
        gate = gates.remove(user, new.job_id, conversation_id=hint, only_untaken=True, created_at=born - 12)
        assert ids(gate) == [new.job_id]
    assert ids(gates.read(user)) == [new.job_id]
    # Its own job's undo, or one whose job's creation time is unknown (0), still takes it out
    assert ids(gates.remove(user, new.job_id, conversation_id="c1", only_untaken=True, created_at=born)) == []
    gates.enroll(user, new, None, live(), check_at=time.time() + 600)
    assert ids(gates.remove(user, new.job_id, only_untaken=True)) == []


def test_an_expired_gate_reads_as_empty_and_a_new_enroll_starts_afresh(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    old = entry()
    # it expires in a second, and the store keeps it past that (TTL deletes days late)
    gates.enroll(user, old, None, int(time.time()) + 1, check_at=time.time() + 600)
    wait_until(lambda: gates.read(user) == Gate(), timeout=10, what="the gate to expire")
    new = entry(at=time.time() - 3600)  # an order below the expired gate's last one
    assert ids(gates.enroll(user, new, 1, live(), check_at=time.time() + 600)) == [new.job_id]


# ---- the fence: the attempt that took the slot ---------------------------------------------------------


def running_entry(gates: GateStore, user: str, conv: str = "c1", attempt: int = 1) -> GateEntry:
    e = entry(conv)
    gates.enroll(user, e, None, live(), check_at=time.time() + 600)
    gates.take(user, e, 2, live(), attempt=attempt)
    return e


def test_retake_stamps_a_running_entry_with_a_later_attempt_only(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    a = running_entry(gates, user, attempt=1)
    gate = gates.retake(user, a.job_id, attempt=3)
    assert gate.entry(a.job_id) == replace(a, running=True, attempt=3) and gate.running == 1, "still one slot"
    for attempt in (3, 2):  # the same attempt again (the SDK's retry of a landed one), an earlier one
        with pytest.raises(ConditionFailed):
            gates.retake(user, a.job_id, attempt=attempt)
    waiting = entry("c2")
    gates.enroll(user, waiting, None, live(), check_at=time.time() + 600)
    with pytest.raises(ConditionFailed):
        gates.retake(user, waiting.job_id, attempt=5)  # not running: nothing to take over
    with pytest.raises(ConditionFailed):
        gates.retake(user, uid("job"), attempt=5)  # not enrolled
    assert gates.read(user).entry(a.job_id) == replace(a, running=True, attempt=3)


def test_pause_gives_the_slot_back_keeps_the_conversation_and_unpause_lets_it_wait(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    a = running_entry(gates, user, attempt=2)
    paused = gates.pause(user, a.job_id, "c1", attempt=2)
    assert paused.entry(a.job_id) == replace(a, asking=True, attempt=2) and paused.running == 0
    assert gates.pause(user, a.job_id, "c1", attempt=2) == paused, "idempotent"
    assert gates.pause(user, a.job_id, "c1", attempt=3) == paused, "a later attempt (one that found it waiting)"
    unpaused = gates.unpause(user, a.job_id, attempt=2)
    assert unpaused.entry(a.job_id) == replace(a, attempt=2) and unpaused.running == 0
    assert gates.unpause(user, a.job_id) == unpaused, "idempotent"
    assert gates.unpause(user, uid("job")) == unpaused, "not enrolled: the gate as it is"


def test_a_workers_writes_are_refused_once_a_later_attempt_took_the_slot_over(backend: Backend) -> None:
    # The asker (attempt 1) lost the job before its pause landed; attempt 2 took the slot over.
    gates, user = backend.deps.gates, uid("user")
    a = running_entry(gates, user, attempt=1)
    before = gates.retake(user, a.job_id, attempt=2)
    with pytest.raises(ConditionFailed):
        gates.pause(user, a.job_id, "c1", attempt=1)
    with pytest.raises(ConditionFailed):
        gates.remove(user, a.job_id, conversation_id="c1", attempt=1)
    with pytest.raises(ConditionFailed):
        gates.remove(user, a.job_id, attempt=1)  # without the hint: read, then refused
    assert gates.read(user) == before, "nothing written"
    # ... and attempt 2 asks: the late answer the asker saw may not unpause attempt 2's question
    asking = gates.pause(user, a.job_id, "c1", attempt=2)
    with pytest.raises(ConditionFailed):
        gates.unpause(user, a.job_id, attempt=1)
    assert gates.read(user) == asking
    # ... while the API and the sweeper, which hold no lease, pass no attempt
    assert gates.unpause(user, a.job_id).entry(a.job_id) == replace(a, attempt=2)
    assert gates.remove(user, a.job_id, attempt=2).entries == ()


def test_a_later_attempt_writes_over_an_earlier_stamp(backend: Backend) -> None:
    # A retry (attempt 3) that never took the slot again: the slot is still attempt 1's
    gates, user = backend.deps.gates, uid("user")
    a = running_entry(gates, user, attempt=1)
    assert gates.pause(user, a.job_id, "c1", attempt=3).running == 0
    assert gates.unpause(user, a.job_id, attempt=3).entry(a.job_id) == replace(a, attempt=1)
    b = running_entry(gates, user, conv="c2", attempt=1)
    assert gates.remove(user, b.job_id, conversation_id="c2", attempt=3).entry(b.job_id) is None


def test_the_fence_tells_apart_two_jobs_of_one_id_by_their_creation_time(backend: Backend) -> None:
    # A reused Idempotency-Key made a new job with the id of one whose retention ran out (seed
    # 1106): the new job's attempt 1 holds the slot; the old job's attempts (numbered 1 and 2 too)
    # wake late, and none of their writes may move the new job's entry.
    gates, user = backend.deps.gates, uid("user")
    born = time.time()
    new = replace(entry(), created_at=born)
    old_at = born - 200
    gates.enroll(user, new, None, live(), check_at=time.time() + 600)
    running = gates.take(user, new, 2, live(), attempt=1)
    assert running.entry(new.job_id) == replace(new, running=True, attempt=1)
    with pytest.raises(ConditionFailed):
        gates.pause(user, new.job_id, "c1", attempt=1, created_at=old_at)
    with pytest.raises(ConditionFailed):
        gates.remove(user, new.job_id, conversation_id="c1", attempt=2, created_at=old_at)
    with pytest.raises(ConditionFailed):
        gates.remove(user, new.job_id, attempt=2, created_at=old_at)  # without the hint: read, then refused
    with pytest.raises(ConditionFailed):
        gates.retake(user, new.job_id, attempt=2, created_at=old_at)
    assert gates.read(user) == running, "nothing written"
    asking = gates.pause(user, new.job_id, "c1", attempt=1, created_at=born)
    with pytest.raises(ConditionFailed):
        gates.unpause(user, new.job_id, attempt=2, created_at=old_at)
    assert gates.read(user) == asking
    # ... nor take a waiting entry of the new job
    waiting = gates.unpause(user, new.job_id, attempt=1, created_at=born)
    with pytest.raises(ConditionFailed):
        gates.take(user, replace(new, created_at=old_at), 2, live(), attempt=3)
    assert gates.read(user) == waiting
    # The new job's own writes pass, and an entry an earlier job of the id stamped fences nothing
    # of the new one's (a leftover its enroll kept): the new job takes it over
    again = gates.take(user, new, 2, live(), attempt=1)
    assert again.entry(new.job_id) == replace(new, running=True, attempt=1)
    later = born + 300
    taken = gates.retake(user, new.job_id, attempt=1, created_at=later)
    assert taken.entry(new.job_id) == replace(new, running=True, attempt=1, created_at=later)
    with pytest.raises(ConditionFailed):
        gates.retake(user, new.job_id, attempt=1, created_at=later)  # the same stamp again
    assert gates.remove(user, new.job_id, attempt=1, created_at=later).entries == ()


def test_an_enroll_takes_over_an_untaken_entry_another_job_of_its_id_left(backend: Backend) -> None:
    # Seed 139234: a resend of a submit enrolled the id for its own job (created later), whose
    # record a refusal then deleted; the first submit, frozen with its put in flight, created the
    # job and enrolled it. Its enroll found the id's entry: it must become the enrolling job's
    # (a later job's creation time on it would refuse every take of the job: pending forever).
    gates, user = backend.deps.gates, uid("user")
    born = time.time()
    first = replace(entry(), created_at=born - 12)
    gates.enroll(user, replace(first, created_at=born), None, live(), check_at=time.time() + 600)
    gate = gates.enroll(user, first, None, live(), check_at=time.time() + 600)
    mine = gate.entry(first.job_id)
    assert mine is not None and mine.created_at == first.created_at, "the enrolling job's entry now"
    running = gates.take(user, first, 2, live(), attempt=1)
    assert running.entry(first.job_id) == replace(mine, running=True, attempt=1)
    # An entry a worker took stays its job's, whoever enrolls the id again
    assert gates.enroll(user, replace(first, created_at=born), None, live(), check_at=time.time() + 600) == running
    assert gates.read(user) == running


# ---- the check index (due_for_check, check_later, unlist_if_empty) -----------------------------
# The index spans the jobs table: on the shared AWS stack other tests' gates are listed too, so
# each test looks only at its own users (``mine``).


def due_users(gates: GateStore, now: float, *mine: str) -> set[str]:
    found = gates.due_for_check(now, 1000)
    assert len(found) == len(set(found)), "no gate twice"
    return set(found) & set(mine)


def test_an_enroll_lists_the_gate_for_a_check_and_an_earlier_check_time_stays(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    now = time.time()
    assert due_users(gates, now + 10_000, user) == set(), "no gate, nothing listed"
    gates.enroll(user, entry(), None, live(), check_at=now + 100)
    assert due_users(gates, now + 99, user) == set()
    assert due_users(gates, now + 101, user) == {user}
    gates.enroll(user, entry(), None, live(), check_at=now + 500)
    assert due_users(gates, now + 101, user) == {user}, "a later enroll does not put the check off"


def test_check_later_moves_the_check_and_creates_no_gate(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    now = time.time()
    a = entry()
    gates.enroll(user, a, None, live(), check_at=now + 100)
    gates.check_later(user, now + 1000)
    assert due_users(gates, now + 101, user) == set()
    assert due_users(gates, now + 1001, user) == {user}
    assert ids(gates.read(user)) == [a.job_id], "only the check time moves"
    nobody = uid("user")
    gates.check_later(nobody, now)
    assert gates.read(nobody) == Gate() and due_users(gates, now + 10_000, nobody) == set()


def test_unlist_if_empty_takes_only_an_empty_gate_off_the_index(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    now = time.time()
    a = entry()
    gates.enroll(user, a, None, live(), check_at=now + 100)
    assert gates.unlist_if_empty(user) is False, "it holds an entry: it stays listed"
    assert due_users(gates, now + 101, user) == {user}
    gates.remove(user, a.job_id)
    assert due_users(gates, now + 101, user) == {user}, "a removal leaves the listing to the check"
    assert gates.unlist_if_empty(user) is True
    assert gates.unlist_if_empty(user) is True, "again (the SDK's retry of a landed write): still off"
    assert due_users(gates, now + 10_000, user) == set()
    gates.enroll(user, entry(), None, live(), check_at=now + 200)
    assert due_users(gates, now + 201, user) == {user}, "the next enroll lists it again"
    assert gates.unlist_if_empty(uid("user")) is True, "no gate: nothing listed, nothing created"


def test_an_expired_gate_comes_off_the_index_and_a_new_enroll_lists_it_afresh(backend: Backend) -> None:
    gates, user = backend.deps.gates, uid("user")
    now = time.time()
    gates.enroll(user, entry(), None, int(now) + 1, check_at=now + 100)
    wait_until(lambda: gates.read(user) == Gate(), timeout=10, what="the gate to expire")
    assert gates.unlist_if_empty(user) is True, "expired: its entries are gone (TTL deletes days late)"
    assert due_users(gates, now + 10_000, user) == set()
    gates.enroll(user, entry(), None, live(), check_at=now + 300)
    assert due_users(gates, now + 299, user) == set()
    assert due_users(gates, now + 301, user) == {user}
