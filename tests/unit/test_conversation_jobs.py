"""A conversation's jobs (``GET /api/jobs?conversation_id=``), at the service over the memory store.

What a fresh device reads to show an older conversation's failed and cancelled turns, whatever
the user sent since in other conversations (it used to look among the user's latest 100 jobs).
"""

from __future__ import annotations

import time

import pytest

from alfred_jobs.adapters.memory import MemoryJobStore, memory_deps
from alfred_jobs.domain.models import Job, JobStatus
from alfred_jobs.exceptions import InvalidInput
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings

SETTINGS = Settings(demo_step_seconds=0)


def make(deps: Deps, n: int, conv: str, *, user: str = "alice", at: float, expires_in: float = 3600,
         status: JobStatus = JobStatus.PENDING) -> Job:
    job = Job(job_id=f"{n:032x}", user_id=user, message=f"m{n}", conversation_id=conv, created_at=at,
              expires_at=int(time.time() + expires_in), status=status)
    deps.jobs.create(job)
    return job


def all_pages(svc: JobService, conv: str | None, limit: int, status: str | None = None) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        jobs, cursor = svc.list_jobs("alice", status, limit, cursor, conv)
        pages.append([j.job_id for j in jobs])
        if cursor is None:
            return pages
        assert len(pages) < 50


def test_an_old_conversations_jobs_behind_many_newer_ones_page_newest_first() -> None:
    deps = memory_deps(SETTINGS)
    svc = JobService(deps)
    base = time.time() - 3000
    old = [make(deps, n, "old", at=base + n) for n in range(3)]
    for n in range(3, 153):  # 150 newer jobs elsewhere: the old conversation is past the latest 100
        make(deps, n, "new", at=base + n)
    make(deps, 900, "old", user="bob", at=base + 500)  # another user's, under the same conversation id
    latest, _ = svc.list_jobs("alice", None, 100, None)
    assert not {j.job_id for j in latest} & {j.job_id for j in old}, "the gap: not among the latest 100"
    pages = all_pages(svc, "old", 2)
    assert pages == [[old[2].job_id, old[1].job_id], [old[0].job_id]]


def test_an_expired_job_reads_as_gone_and_the_status_filter_applies_too() -> None:
    deps = memory_deps(SETTINGS)
    svc = JobService(deps)
    base = time.time() - 3000
    gone = make(deps, 1, "c", at=base, expires_in=-1)  # expired, TTL has not deleted it (it never does here)
    failed = make(deps, 2, "c", at=base + 1, status=JobStatus.FAILED)
    pending = make(deps, 3, "c", at=base + 2)
    assert isinstance(deps.jobs, MemoryJobStore) and gone.job_id in deps.jobs.items
    assert all_pages(svc, "c", 10) == [[pending.job_id, failed.job_id]]
    assert all_pages(svc, "c", 10, "failed") == [[failed.job_id]]


@pytest.mark.parametrize("conv", ["", "a b", "a/b", "x" * 65, "ü"])
def test_a_malformed_conversation_id_is_invalid_input(conv: str) -> None:
    svc = JobService(memory_deps(SETTINGS))
    with pytest.raises(InvalidInput) as err:
        svc.list_jobs("alice", None, 10, None, conv)
    assert err.value.code == "invalid_conversation_id"


def test_a_cursor_stays_on_the_list_it_came_from() -> None:
    deps = memory_deps(SETTINGS)
    svc = JobService(deps)
    for n in range(4):
        make(deps, n, "a" if n % 2 else "b", at=time.time() - 100 + n)
    _, of_a = svc.list_jobs("alice", None, 1, None, "a")
    _, of_all = svc.list_jobs("alice", None, 1, None)
    assert of_a and of_all
    for cursor, conv in ((of_a, "b"), (of_a, None), (of_all, "a")):
        with pytest.raises(InvalidInput):
            svc.list_jobs("alice", None, 1, cursor, conv)
    with pytest.raises(InvalidInput):
        svc.list_jobs("bob", None, 1, of_a, "a")
    assert len(svc.list_jobs("alice", None, 1, of_a, "a")[0]) == 1


def test_a_submit_touches_the_conversation_list_beside_the_send_not_in_turn() -> None:
    # GIVEN a queue whose send waits for the conversation list's touch to be under way, and a
    # touch (a best-effort view) that waits for the job's message to be on the queue: each only
    # sees the other if they run beside each other (issue 28: neither the job's start nor the
    # answer waits for a view's write in turn)
    import threading
    from dataclasses import replace

    from alfred_jobs.adapters.memory import MemoryConversationStore, MemoryJobQueue
    from alfred_jobs.domain.models import ChatRequest

    touching, sent = threading.Event(), threading.Event()
    send_saw_touch: list[bool] = []
    touch_saw_send: list[bool] = []

    class SignallingQueue(MemoryJobQueue):
        def send(self, job_id: str, delay_seconds: int = 0, *, next_up: bool = False) -> None:
            send_saw_touch.append(touching.wait(5))
            super().send(job_id, delay_seconds, next_up=next_up)
            sent.set()

    class TouchBesideSend(MemoryConversationStore):
        def touch(self, user_id: str, conversation_id: str, at: str, title: str, expires_at: int) -> None:
            touching.set()
            touch_saw_send.append(sent.wait(5))
            super().touch(user_id, conversation_id, at, title, expires_at)

    deps = replace(memory_deps(SETTINGS), queue=SignallingQueue(), conversations=TouchBesideSend())
    # WHEN a job is submitted
    job = JobService(deps).submit("alice", ChatRequest(message="soup"), None).job
    # THEN the touch and the send overlapped, and both were done before the answer
    assert send_saw_touch == [True], "the send waited for the touch to end"
    assert touch_saw_send == [True], "the touch waited for the send to end"
    assert isinstance(deps.queue, MemoryJobQueue)
    assert [m.job_id for m in deps.queue.sent] == [job.job_id]
    assert [c.conversation_id for c in deps.conversations.recent("alice", 10).conversations] \
        == [job.conversation_id]
