"""ConversationStore: the contract of ``alfred_jobs.ports.ConversationStore``, on the fake and on DynamoDB."""

from __future__ import annotations

from alfred_jobs.domain.models import iso, now_ts
from tests.contract.support import Backend, live, past, uid


def at(minutes_ago: int) -> str:
    return iso(now_ts() - 60 * minutes_ago)


def test_a_turn_is_the_message_then_the_reply(backend: Backend) -> None:
    user, conv, job = uid("user"), uid("conv"), uid("job")
    when = at(1)
    backend.conversations.commit_turn(user, conv, job, "chicken and rice?", "Here is a plan.", when, live())
    assert backend.conversations.messages(user, conv, 10) == [
        {"role": "user", "text": "chicken and rice?", "job_id": job, "at": when},
        {"role": "assistant", "text": "Here is a plan.", "job_id": job, "at": when}]


def test_commit_turn_is_idempotent_per_job(backend: Backend) -> None:
    user, conv, job = uid("user"), uid("conv"), uid("job")
    when = at(1)
    for _ in range(3):  # finalize runs again after a lost answer or a crash
        backend.conversations.commit_turn(user, conv, job, "m", "r", when, live())
    assert len(backend.conversations.messages(user, conv, 10)) == 2


def test_commit_turn_is_keyed_by_job_and_time(backend: Backend) -> None:
    """Narrower than the docstring's "idempotent on job id", on both back-ends: a turn's key is
    ``at#job_id``, so a repeat is absorbed only if it passes the same ``at``. The runner does (the
    stored terminal event's ``at``); a caller that stamped each commit with the clock would write
    the turn twice."""
    user, conv, job = uid("user"), uid("conv"), uid("job")
    backend.conversations.commit_turn(user, conv, job, "m", "r", at(2), live())
    backend.conversations.commit_turn(user, conv, job, "m", "r", at(1), live())
    assert len(backend.conversations.messages(user, conv, 10)) == 4


def test_messages_are_oldest_first_and_limit_keeps_the_newest(backend: Backend) -> None:
    user, conv = uid("user"), uid("conv")
    turns = [(uid("job"), at(10 - i), f"m{i}", f"r{i}") for i in range(4)]
    for job, when, message, reply in reversed(turns):  # committed newest first: order is by time
        backend.conversations.commit_turn(user, conv, job, message, reply, when, live())
    texts = [m["text"] for m in backend.conversations.messages(user, conv, 100)]
    assert texts == ["m0", "r0", "m1", "r1", "m2", "r2", "m3", "r3"]
    assert [m["text"] for m in backend.conversations.messages(user, conv, 3)] == ["r2", "m3", "r3"]
    assert [m["text"] for m in backend.conversations.messages(user, conv, 1)] == ["r3"]


def test_conversations_are_separate_per_user_and_conversation(backend: Backend) -> None:
    user, conv = uid("user"), uid("conv")
    backend.conversations.commit_turn(user, conv, uid("job"), "mine", "r", at(1), live())
    backend.conversations.commit_turn(uid("user"), conv, uid("job"), "other user", "r", at(1), live())
    backend.conversations.commit_turn(user, uid("conv"), uid("job"), "other conv", "r", at(1), live())
    assert [m["text"] for m in backend.conversations.messages(user, conv, 10)] == ["mine", "r"]
    assert backend.conversations.messages(uid("user"), conv, 10) == []


def test_expired_messages_read_as_gone(backend: Backend) -> None:
    user, conv = uid("user"), uid("conv")
    backend.conversations.commit_turn(user, conv, uid("job"), "old", "old reply", at(5), past())
    backend.conversations.commit_turn(user, conv, uid("job"), "new", "new reply", at(1), live())
    assert [m["text"] for m in backend.conversations.messages(user, conv, 10)] == ["new", "new reply"]
    assert [m["text"] for m in backend.conversations.messages(user, conv, 2)] == ["new", "new reply"]
