"""ConversationStore: the contract of ``alfred_jobs.ports.ConversationStore``, on the fake and on DynamoDB."""

from __future__ import annotations

import time
from typing import Any

from alfred_jobs.adapters.aws import AwsClients, DynamoConversationStore
from alfred_jobs.adapters.memory import MemoryConversationStore
from alfred_jobs.domain.models import iso
from alfred_jobs.ports import ConversationStore
from tests.contract.support import Backend, live, past, uid


def at(minutes_ago: int) -> str:
    return iso(time.time() - 60 * minutes_ago)


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


# ---- bounded, paged reads (issue 17, finding 7) ------------------------------------------------


class CountingDynamo:
    """The stack's DynamoDB client, counting each Query and the items it returned."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.queries: list[dict[str, Any]] = []
        self.items = 0

    def query(self, **kwargs: Any) -> Any:
        out = self._inner.query(**kwargs)
        self.queries.append(kwargs)
        self.items += len(out.get("Items", []))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Counted:
    """``backend.conversations`` whose reads are counted: on AWS through a counting client, on the
    fake through its own ``items_read`` (the same measure: items looked at, live or expired)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        if backend.is_aws:
            stack = backend.aws
            self.client = CountingDynamo(stack.clients.dynamodb)
            clients = AwsClients(stack.settings, factory=lambda service: self.client)
            self.store: ConversationStore = DynamoConversationStore(clients, stack.settings)
        else:
            self.store = backend.conversations

    def reset(self) -> None:
        if self.backend.is_aws:
            self.client.queries.clear()
            self.client.items = 0
        else:
            assert isinstance(self.store, MemoryConversationStore)
            self.store.items_read = 0

    @property
    def items_read(self) -> int:
        if self.backend.is_aws:
            return self.client.items
        assert isinstance(self.store, MemoryConversationStore)
        return self.store.items_read


def commit_turns(backend: Backend, user: str, conv: str, n: int, *, expires_at: int | None = None,
                 first_minute: int = 0) -> list[str]:
    """``n`` turns a minute apart (the oldest first); their texts, oldest first."""
    texts: list[str] = []
    for i in range(n):
        minute = first_minute + i
        backend.conversations.commit_turn(user, conv, uid("job"), f"m{minute}", f"r{minute}",
                                          iso(BASE - 60 * (10_000 - minute)), expires_at or live())
        texts += [f"m{minute}", f"r{minute}"]
    return texts


BASE = time.time()


def test_a_page_is_the_newest_messages_oldest_first_and_pages_walk_back(backend: Backend) -> None:
    user, conv = uid("user"), uid("conv")
    texts = commit_turns(backend, user, conv, 7)  # 14 messages
    first = backend.conversations.page(user, conv, 4)
    assert [m["text"] for m in first.messages] == texts[-4:]
    assert first.before is not None
    seen = list(reversed(first.messages))
    before = first.before
    for _ in range(10):
        page = backend.conversations.page(user, conv, 4, before)
        assert 1 <= len(page.messages) <= 4
        seen += list(reversed(page.messages))
        if page.before is None:
            break
        before = page.before
    assert [m["text"] for m in reversed(seen)] == texts, "every message once, in order"
    # An exactly full last page says there is nothing older, on both back-ends (the read looks one
    # message past the page instead of trusting LastEvaluatedKey).
    whole = backend.conversations.page(user, conv, 14)
    assert [m["text"] for m in whole.messages] == texts and whole.before is None
    half = backend.conversations.page(user, conv, 7)
    rest = backend.conversations.page(user, conv, 7, half.before)
    assert [m["text"] for m in rest.messages + half.messages] == texts and rest.before is None
    assert backend.conversations.messages(user, conv, 3) == backend.conversations.page(user, conv, 3).messages


def test_a_page_reads_the_page_not_the_conversation(backend: Backend) -> None:
    """1,500 turns took 3.65 s to read and slowed every job of the conversation: the adapter
    queried all of it and kept the last N. Now a page costs ``limit + 1`` items."""
    user, conv = uid("user"), uid("conv")
    turns = 200  # 400 messages: enough to tell a page from the whole (the bench measures 1,500)
    texts = commit_turns(backend, user, conv, turns)
    counted = Counted(backend)
    counted.reset()
    history = counted.store.messages(user, conv, 50)  # the runner's history lookup
    assert [m["text"] for m in history] == texts[-50:]
    assert counted.items_read == 51, f"read {counted.items_read} of {2 * turns} messages for a page of 50"
    counted.reset()
    page = counted.store.page(user, conv, 20)
    older = counted.store.page(user, conv, 20, page.before)
    assert [m["text"] for m in older.messages + page.messages] == texts[-40:]
    assert counted.items_read == 42
    if backend.is_aws:  # how the adapter reads: newest first, a Limit, strongly consistent
        assert len(counted.client.queries) == 2
        for q in counted.client.queries:
            assert q["ScanIndexForward"] is False and q["ConsistentRead"] is True and q["Limit"] == 21


def test_expired_messages_inside_a_page_are_skipped_and_the_page_stays_full(backend: Backend) -> None:
    """TTL deletes days late: the newest items may be expired (a job id reused after retention
    keeps its old, newer-looking turn until then). The page still holds ``limit`` live messages."""
    user, conv = uid("user"), uid("conv")
    live_texts = commit_turns(backend, user, conv, 6)
    commit_turns(backend, user, conv, 5, expires_at=past(), first_minute=100)  # newer, expired
    counted = Counted(backend)
    counted.reset()
    page = counted.store.page(user, conv, 4)
    assert [m["text"] for m in page.messages] == live_texts[-4:]
    rest = counted.store.page(user, conv, 100, page.before)
    assert [m["text"] for m in rest.messages] == live_texts[:-4] and rest.before is None
    assert counted.items_read <= 10 + (4 + 1) + len(live_texts), "the expired items are read once each"


# ---- the user's list of conversations (touch, recent) -------------------------------------------


def test_recent_lists_the_users_conversations_most_recently_active_first(backend: Backend) -> None:
    user, a, b, c = uid("user"), uid("conv"), uid("conv"), uid("conv")
    backend.conversations.touch(user, a, at(30), "tofu stir fry", live())
    backend.conversations.touch(user, b, at(20), "mushroom risotto", live())
    backend.conversations.touch(user, c, at(10), "pancakes", live())
    later = at(5)
    backend.conversations.touch(user, a, later, "a later message", live())  # a is active again
    backend.conversations.touch(uid("user"), uid("conv"), at(1), "another user's", live())
    listed = backend.conversations.recent(user, 10)
    assert [(h.conversation_id, h.title) for h in listed.conversations] == [
        (a, "tofu stir fry"), (c, "pancakes"), (b, "mushroom risotto")]  # the title is the first's
    assert listed.conversations[0].updated_at == later and listed.before is None


def test_a_touch_that_lands_late_does_not_move_a_conversation_back(backend: Backend) -> None:
    user, conv = uid("user"), uid("conv")
    newer = at(1)
    backend.conversations.touch(user, conv, newer, "first", live())
    backend.conversations.touch(user, conv, at(9), "late", live())  # a commit read before a submit
    backend.conversations.touch(user, conv, newer, "again", live())  # idempotent
    [head] = backend.conversations.recent(user, 10).conversations
    assert (head.updated_at, head.title) == (newer, "first")


def test_recent_pages_cover_each_conversation_once(backend: Backend) -> None:
    user = uid("user")
    convs = [uid("conv") for _ in range(7)]
    for minute, conv in enumerate(convs):
        backend.conversations.touch(user, conv, at(100 - minute), f"t{minute}", live())
    seen: list[str] = []
    before: str | None = None
    pages = 0
    while True:
        page = backend.conversations.recent(user, 3, before)
        seen += [h.conversation_id for h in page.conversations]
        pages += 1
        if page.before is None:
            break
        before = page.before
    assert seen == convs[::-1] and pages == 3


def test_an_expired_conversation_is_never_listed_and_starts_anew(backend: Backend) -> None:
    user, old, kept = uid("user"), uid("conv"), uid("conv")
    backend.conversations.touch(user, kept, at(50), "kept", live())
    backend.conversations.touch(user, old, at(40), "long ago", past())  # still held: TTL deletes late
    listed = backend.conversations.recent(user, 1)
    assert [h.conversation_id for h in listed.conversations] == [kept] and listed.before is None
    backend.conversations.touch(user, old, at(30), "its id used again", live())
    [head, _] = backend.conversations.recent(user, 10).conversations
    assert (head.conversation_id, head.title) == (old, "its id used again")


def test_the_list_never_shows_in_a_conversations_messages(backend: Backend) -> None:
    user, conv = uid("user"), uid("conv")
    backend.conversations.commit_turn(user, conv, uid("job"), "m", "r", at(2), live())
    backend.conversations.touch(user, conv, at(2), "m", live())
    assert [m["text"] for m in backend.conversations.messages(user, conv, 10)] == ["m", "r"]
