"""In-memory fakes of the ports, for unit tests. They keep the same conditions as the DynamoDB
adapters (conditional puts, lease checks, expiry), so a unit test fails where the real store would
refuse. tests/contract runs one suite against these and the adapters; where they differ on purpose
it says so: ``list_for_user`` ends without a ``next_key`` on an exactly full last page (DynamoDB
hands one out, leading to an empty page), ``find_due`` returns at most ``limit`` jobs (DynamoDB:
``limit`` per shard), and the queue only records calls (SQS refuses unknown receipt handles)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from alfred_jobs.adapters.push_memory import MemoryPushStore, RecordingNotifier
from alfred_jobs.clock import Clock, SystemClock, Tasks, ThreadTasks
from alfred_jobs.domain.gate import Gate, GateEntry
from alfred_jobs.domain.models import (
    ACTIVE_STATUSES,
    Event,
    Job,
    JobStatus,
    Progress,
    Steer,
    SteerClaim,
    iso,
    turn_messages,
)
from alfred_jobs.exceptions import ConditionFailed, Fenced, GateFull, LeaseHeld
from alfred_jobs.ports import ConversationHead, ConversationList, Deps, JobPage, MessagePage
from alfred_jobs.settings import Settings


class MemoryJobStore:
    def __init__(self, pending_grace: float = 30.0, clock: Clock | None = None) -> None:
        self.items: dict[str, Job] = {}
        self.claims: dict[str, SteerClaim] = {}  # keyed steers' claims, under the id a job would have
        self.due: dict[str, float] = {}
        # The sweeper's mark on a never-started job's message (as ``queued`` in DynamoDB):
        # "presumed" (presumed queued once since its last send) or "swept" (the sweeper sent it)
        self.queued: dict[str, str] = {}
        self.lock = threading.RLock()
        self.pending_grace = pending_grace
        self.clock = clock or SystemClock()  # what "expired" means: the store's own clock, as DynamoDB's

    def create(self, job: Job) -> None:
        with self.lock:
            old = self.items.get(job.job_id)
            if old is not None and not old.expired(self.clock.now()):
                raise ConditionFailed(job.job_id)  # an expired record is replaced, as in DynamoDB
            claim = self.claims.get(job.job_id)
            if claim is not None and claim.expires_at > self.clock.now():
                raise ConditionFailed(job.job_id)  # the id holds a steer's claim (one item in DynamoDB)
            self.claims.pop(job.job_id, None)
            self.items[job.job_id] = job
            self.due[job.job_id] = job.created_at + self.pending_grace
            self.queued.pop(job.job_id, None)

    def get(self, job_id: str, consistent: bool = True) -> Job | None:
        with self.lock:
            job = self.items.get(job_id)
            return None if job is None or job.expired(self.clock.now()) else job

    def acquire_lease(self, job_id: str, owner: str, now: float, lease_seconds: float) -> Job:
        with self.lock:
            job = self.items.get(job_id)
            if job is None or job.status not in ACTIVE_STATUSES or job.expires_at <= now:
                raise ConditionFailed(job_id)
            if job.lease_live(now):
                if job.lease_owner == owner:
                    # Our own live lease (an earlier try landed, its answer was lost): the job is
                    # ours, returned as taken without a second bump, as DynamoJobStore does.
                    return job
                raise LeaseHeld(job_id)
            job = replace(job, lease_owner=owner, lease_expires=now + lease_seconds,
                          attempts=job.attempts + 1)
            self.items[job_id] = job
            self.due[job_id] = now + lease_seconds
            self.queued.pop(job_id, None)
            return job

    def renew_lease(self, job_id: str, owner: str, now: float, lease_seconds: float,
                    last_seq: int, status: JobStatus, progress: Progress) -> Job:
        with self.lock:
            job = self.items.get(job_id)
            if (job is None or job.lease_owner != owner or job.status not in ACTIVE_STATUSES
                    or job.last_seq > last_seq):
                raise Fenced(job_id)
            job = replace(job, lease_expires=now + lease_seconds, last_seq=last_seq, status=status,
                          progress=progress)
            self.items[job_id] = job
            self.due[job_id] = now + lease_seconds
            return job

    def release_lease(self, job_id: str, owner: str, due_at: float, *, undo_attempt: bool = False) -> None:
        with self.lock:
            job = self.items.get(job_id)
            if job is None or job.lease_owner != owner or job_id not in self.due:
                return  # not ours any more: nothing to release
            self.items[job_id] = replace(job, lease_owner=None, lease_expires=0.0,
                                         attempts=job.attempts - (1 if undo_attempt else 0))
            self.due[job_id] = due_at
            self.queued.pop(job_id, None)

    def save_projection(self, job: Job, *, owner: str | None) -> None:
        with self.lock:
            cur = self.items.get(job.job_id)
            # Another creation time: the id's next job (a key reused after retention), not ours.
            if cur is None or cur.created_at != job.created_at or cur.last_seq > job.last_seq:
                if owner is not None and not job.terminal:
                    raise Fenced(job.job_id)
                return
            if not job.terminal and owner is not None and (
                    cur.lease_owner != owner or cur.status not in ACTIVE_STATUSES):
                raise Fenced(job.job_id)
            # Not ``attempts``: it is the lease's (``DynamoJobStore.save_projection``).
            new = replace(cur, status=job.status, last_seq=job.last_seq, progress=job.progress,
                          started_at=job.started_at or cur.started_at,
                          completed_at=job.completed_at or cur.completed_at,
                          output=job.output if job.output is not None else cur.output,
                          error=job.error if job.error is not None else cur.error)
            if job.terminal:
                new = replace(new, lease_owner=None)
                self.due.pop(job.job_id, None)
            self.items[job.job_id] = new

    def request_cancel(self, job_id: str, by: str | None = None) -> Job:
        with self.lock:
            job = self.items.get(job_id)
            if job is None or job.status not in ACTIVE_STATUSES:
                raise ConditionFailed(job_id)
            job = replace(job, cancel_requested=True, cancel_by=by or job.cancel_by)
            self.items[job_id] = job
            return job

    def list_for_user(self, user_id: str, statuses: frozenset[JobStatus] | None, limit: int,
                      start_key: dict[str, Any] | None, conversation_id: str | None = None) -> JobPage:
        with self.lock:
            return page_of(self.items.values(), user_id, statuses, limit, start_key, self.clock.now(),
                           conversation_id)

    def find_due(self, now: float, limit: int) -> list[Job]:
        with self.lock:
            ids = [j for j, d in sorted(self.due.items(), key=lambda kv: kv[1]) if d < now][:limit]
            return [self.items[j] for j in ids]

    def postpone(self, job_id: str, due_at: float, *, sent: bool = False) -> bool:
        with self.lock:
            if job_id not in self.due:
                return False
            self.due[job_id] = due_at
            if sent:
                self.queued[job_id] = "swept"
            else:
                self.queued.pop(job_id, None)
            return True

    def postpone_waiting(self, job_id: str, due_at: float, now: float) -> bool:
        with self.lock:
            job = self.items.get(job_id)
            if (job is None or job_id not in self.due or job.status is not JobStatus.WAITING
                    or job.lease_live(now) or job.door_closed):
                return False
            self.due[job_id] = due_at
            self.queued.pop(job_id, None)
            return True

    def presume_queued(self, job_id: str, due_at: float) -> bool:
        with self.lock:
            if job_id not in self.due or self.queued.get(job_id) == "presumed":
                return False
            self.due[job_id] = due_at
            self.queued.setdefault(job_id, "presumed")
            return True

    def steer(self, job_id: str, steer: Steer, now: float, max_steers: int) -> bool:
        with self.lock:
            job = self.items.get(job_id)
            if job is None:
                return False
            if any(s.message_id == steer.message_id for s in job.steers):
                return True
            if (job.door_closed or job.status not in ACTIVE_STATUSES or job.expires_at <= now
                    or job.expired(self.clock.now()) or len(job.steers) >= max_steers):
                return False
            self.items[job_id] = replace(job, steers=(*job.steers, steer))
            return True

    def close_door(self, job_id: str, seen: int, *, owner: str | None) -> Job | None:
        with self.lock:
            job = self.items.get(job_id)
            if job is None or len(job.steers) != seen or (owner is not None and job.lease_owner != owner):
                return None
            job = replace(job, door_closed=True)
            self.items[job_id] = job
            return job

    def claim_steer(self, claim: SteerClaim) -> SteerClaim | None:
        with self.lock:
            now = self.clock.now()
            job = self.items.get(claim.message_id)
            if job is not None and not job.expired(now):
                return None
            old = self.claims.get(claim.message_id)
            if old is not None and old.expires_at > now:
                return old
            self.claims[claim.message_id] = claim
            return claim

    def steer_claim(self, message_id: str) -> SteerClaim | None:
        with self.lock:
            claim = self.claims.get(message_id)
            return claim if claim is not None and claim.expires_at > self.clock.now() else None

    def delete_unstarted(self, job_id: str, created_at: float) -> None:
        with self.lock:
            job = self.items.get(job_id)
            if job is None or job.expired(self.clock.now()) or job.created_at != created_at:
                return
            if job.attempts or job.steers:
                raise ConditionFailed(job_id)
            del self.items[job_id]
            self.due.pop(job_id, None)


def page_of(jobs: Iterable[Job], user_id: str, statuses: frozenset[JobStatus] | None, limit: int,
            start_key: dict[str, Any] | None, now: float, conversation_id: str | None = None) -> JobPage:
    """One page of a user's live jobs (of one conversation, with ``conversation_id``), newest
    first, as the user index serves it (the simulator pages its stale view of the index with this
    too)."""
    mine = sorted((j for j in jobs if j.user_id == user_id and not j.expired(now)),
                  key=lambda j: (iso(j.created_at), j.job_id), reverse=True)
    if start_key:
        pos = (start_key["created_sk"].split("#")[0], start_key["job_id"])
        mine = [j for j in mine if (iso(j.created_at), j.job_id) < pos]
    if statuses:
        mine = [j for j in mine if j.status in statuses]
    if conversation_id is not None:
        mine = [j for j in mine if j.conversation_id == conversation_id]
    page = mine[:limit]
    nxt = None
    if len(mine) > limit:
        last = page[-1]
        nxt = {"job_id": last.job_id, "user_id": user_id, "created_sk": f"{iso(last.created_at)}#{last.job_id}"}
    return JobPage(page, nxt)


def after(last: str, entry: GateEntry) -> str:
    """As ``adapters.aws.after``: an order greater than ``last``."""
    return entry.order if entry.order > last else f"{last}|{entry.job_id}"


class MemoryGateStore:
    """Each user's gate, with the conditions of ``DynamoGateStore`` (and its expiry)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.gates: dict[str, tuple[dict[str, GateEntry], int]] = {}  # user -> (entries, expires_at)
        self.last: dict[str, str] = {}  # user -> the order of the latest entry (as ``last``)
        # user -> when the sweeper checks the gate's entries next (the sparse ``gate_check`` index)
        self.checks: dict[str, float] = {}
        self.lock = threading.RLock()
        self.writes = 0
        self.clock = clock or SystemClock()

    def _live(self, user_id: str) -> dict[str, GateEntry]:
        entries, expires_at = self.gates.get(user_id, ({}, 0))
        return entries if expires_at > self.clock.now() else {}

    @staticmethod
    def _gate(entries: dict[str, GateEntry]) -> Gate:
        return Gate(tuple(entries.values()), sum(e.running for e in entries.values()))

    def read(self, user_id: str) -> Gate:
        with self.lock:
            return self._gate(self._live(user_id))

    def enroll(self, user_id: str, entry: GateEntry, max_active: int | None, expires_at: int, *,
               check_at: float) -> Gate:
        with self.lock:
            entries = dict(self._live(user_id))
            mine = entries.get(entry.job_id)
            if mine is not None:
                if mine.left_by_another_job(entry.created_at):
                    entries[entry.job_id] = replace(mine, created_at=entry.created_at)
                    self.gates[user_id] = (entries, self.gates[user_id][1])
                    self.writes += 1
                return self._gate(entries)
            if max_active is not None and len(entries) >= max_active:
                raise GateFull(self._gate(entries))
            if user_id not in self.gates or self.gates[user_id][1] <= self.clock.now():
                self.last.pop(user_id, None)  # an expired gate is gone, its ``last`` with it
                self.checks.pop(user_id, None)  # and its check time (a new item replaces it)
            order = after(self.last.get(user_id, ""), entry)
            self.last[user_id] = order
            entries[entry.job_id] = GateEntry(entry.job_id, entry.conversation_id, order, running=False,
                                              created_at=entry.created_at)
            self.gates[user_id] = (entries, expires_at)
            self.checks.setdefault(user_id, check_at)
            self.writes += 1
            return self._gate(entries)

    def due_for_check(self, now: float, limit: int) -> list[str]:
        with self.lock:
            return [u for u, at in sorted(self.checks.items(), key=lambda ua: ua[1]) if at < now][:limit]

    def check_later(self, user_id: str, check_at: float) -> None:
        with self.lock:
            if user_id in self.gates:
                self.checks[user_id] = check_at
                self.writes += 1

    def unlist_if_empty(self, user_id: str) -> bool:
        with self.lock:
            if self._live(user_id):
                return False
            if self.checks.pop(user_id, None) is not None:
                self.writes += 1
            return True

    def take(self, user_id: str, entry: GateEntry, max_running: int, expires_at: int, *, attempt: int) -> Gate:
        with self.lock:
            entries = dict(self._live(user_id))
            mine = entries.get(entry.job_id)
            busy = any(e.running and e.conversation_id == entry.conversation_id for e in entries.values())
            if (mine is None or mine.running or mine.asking or busy
                    or sum(e.running for e in entries.values()) >= max_running
                    or mine.later_job(entry.created_at)):
                raise ConditionFailed(entry.job_id)
            entries[entry.job_id] = replace(mine, running=True, attempt=attempt,
                                            created_at=entry.created_at or mine.created_at)
            self.gates[user_id] = (entries, expires_at)
            self.writes += 1
            return self._gate(entries)

    def retake(self, user_id: str, job_id: str, *, attempt: int, created_at: float = 0.0) -> Gate:
        with self.lock:
            entries = dict(self._live(user_id))
            mine = entries.get(job_id)
            # stamped by an earlier attempt (of this job, or of an earlier job of its id) only
            if (mine is None or not mine.running or mine.fences(created_at, attempt)
                    or mine.stamped_by(created_at, attempt)):
                raise ConditionFailed(job_id)
            entries[job_id] = replace(mine, attempt=attempt, created_at=created_at or mine.created_at)
            self.gates[user_id] = (entries, self.gates[user_id][1])
            self.writes += 1
            return self._gate(entries)

    @staticmethod
    def _fence(entries: dict[str, GateEntry], job_id: str, attempt: int | None, created_at: float) -> None:
        """``ConditionFailed`` if a later attempt than ``attempt`` (or a later job of the id) stamped
        the job's entry."""
        mine = entries.get(job_id)
        if attempt is not None and mine is not None and mine.fences(created_at, attempt):
            raise ConditionFailed(f"{job_id}: held by attempt {mine.attempt} of the job created at {mine.created_at}")

    def pause(self, user_id: str, job_id: str, conversation_id: str, *, attempt: int,
              created_at: float = 0.0) -> Gate:
        with self.lock:
            entries = dict(self._live(user_id))
            self._fence(entries, job_id, attempt, created_at)
            mine = entries.get(job_id)
            if mine is not None and mine.running:
                entries[job_id] = replace(mine, running=False, asking=True)
                self.gates[user_id] = (entries, self.gates[user_id][1])
                self.writes += 1
            return self._gate(entries)

    def unpause(self, user_id: str, job_id: str, *, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        with self.lock:
            entries = dict(self._live(user_id))
            self._fence(entries, job_id, attempt, created_at)
            mine = entries.get(job_id)
            if mine is not None and mine.asking:
                entries[job_id] = replace(mine, asking=False)
                self.gates[user_id] = (entries, self.gates[user_id][1])
                self.writes += 1
            return self._gate(entries)

    def remove(self, user_id: str, job_id: str, *, conversation_id: str | None = None,
               only_untaken: bool = False, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        with self.lock:
            entries = dict(self._live(user_id))
            mine = entries.get(job_id)
            if mine is None or (only_untaken and mine.of_another_job(created_at)):
                return self._gate(entries)  # (the entry of another job of the id is not the undo's)
            if only_untaken and (mine.running or mine.attempt):
                raise ConditionFailed(job_id)  # a worker took it (it may have given its slot back since)
            self._fence(entries, job_id, attempt, created_at)
            del entries[job_id]
            self.gates[user_id] = (entries, self.gates[user_id][1])
            self.writes += 1
            return self._gate(entries)


class MemoryStreamSlots:
    """Each user's stream slots, with the conditions of ``DynamoStreamSlots``: a take counts every
    slot still listed (an expired one too) until a take that finds the user at the cap clears the
    expired ones, as the adapter's does; an expired lease reads as gone."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.slots: dict[str, dict[str, float]] = {}  # user -> holder -> lease end
        self.lock = threading.RLock()
        self.writes = 0
        self.clock = clock or SystemClock()

    def take(self, user_id: str, holder: str, cap: int, until: float) -> bool:
        with self.lock:
            mine = self.slots.setdefault(user_id, {})
            if holder not in mine and len(mine) >= cap:
                now = self.clock.now()
                for h in [h for h, t in mine.items() if t <= now]:
                    del mine[h]  # expired: gone
                if len(mine) >= cap:
                    return False
            mine[holder] = until
            self.writes += 1
            return True

    def renew(self, user_id: str, holder: str, until: float) -> bool:
        with self.lock:
            mine = self.slots.get(user_id, {})
            if holder not in mine:
                return False
            mine[holder] = until
            self.writes += 1
            return True

    def release(self, user_id: str, holder: str) -> None:
        with self.lock:
            if self.slots.get(user_id, {}).pop(holder, None) is not None:
                self.writes += 1

    def holders(self, user_id: str) -> dict[str, float]:
        with self.lock:
            now = self.clock.now()
            return {h: t for h, t in self.slots.get(user_id, {}).items() if t > now}


class MemoryEventLog:
    """Events with their expiry: an expired event reads as gone and its slot is free, as in DynamoDB."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.items: dict[tuple[str, int], Event] = {}
        self.expiry: dict[tuple[str, int], int] = {}
        self.lock = threading.RLock()
        self.reads = 0
        self.clock = clock or SystemClock()

    def _live(self, key: tuple[str, int]) -> Event | None:
        ev = self.items.get(key)
        return ev if ev is not None and self.expiry.get(key, 0) > self.clock.now() else None

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        with self.lock:
            key = (job_id, event.seq)
            if self._live(key) is not None:
                raise ConditionFailed(f"{job_id}#{event.seq}")
            self.items[key] = event
            self.expiry[key] = expires_at

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        with self.lock:
            self.reads += 1
            return self._live((job_id, seq))

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        with self.lock:
            self.reads += 1
            found = (self._live((job_id, s)) for s in range(first, last + 1))
            return [ev for ev in found if ev is not None]

    def all(self, job_id: str) -> list[Event]:
        with self.lock:
            return sorted((e for (j, s), e in self.items.items() if j == job_id and self._live((j, s))),
                          key=lambda e: e.seq)


@dataclass(frozen=True)
class _Head:
    updated_at: str
    title: str
    expires_at: int


class MemoryConversationStore:
    """Two messages per turn, keyed by ``at#job_id#n`` as in DynamoDB; expired messages read as
    gone. Each conversation's head (its place on its user's list) as the adapter keeps it."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.items: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.heads: dict[str, dict[str, _Head]] = {}  # user -> conversation -> head
        self.expiry: dict[tuple[str, str, str], int] = {}
        self.items_read = 0  # messages looked at by reads (live or expired), for tests
        self.lock = threading.RLock()
        self.clock = clock or SystemClock()

    def commit_turn(self, user_id: str, conversation_id: str, job_id: str, message: str, reply: str,
                    at: str, expires_at: int, steered: tuple[str, ...] = (), *, stopped: bool = False) -> None:
        with self.lock:
            conv = self.items.setdefault((user_id, conversation_id), {})
            for n, role, text in turn_messages(message, steered, reply):
                sk = f"{at}#{job_id}#{n}"
                conv[sk] = {"role": role, "text": text, "job_id": job_id, "at": at,
                            **({"stopped": True} if stopped and role == "assistant" else {})}
                self.expiry[(user_id, conversation_id, sk)] = expires_at

    def page(self, user_id: str, conversation_id: str, limit: int, before: str | None = None) -> MessagePage:
        # As the adapter reads: newest first from ``before``, stopping at ``limit + 1`` live messages
        # (the one past the page only says there is more). ``items_read`` counts what was looked at.
        with self.lock:
            now = self.clock.now()
            conv = self.items.get((user_id, conversation_id), {})
            newest_first = sorted((sk for sk in conv if before is None or sk < before), reverse=True)
            found: list[str] = []
            for sk in newest_first:
                self.items_read += 1
                if self.expiry.get((user_id, conversation_id, sk), 0) > now:
                    found.append(sk)
                    if len(found) > limit:
                        break
            more = len(found) > limit
            found = found[:limit]
            return MessagePage([dict(conv[sk]) for sk in reversed(found)], found[-1] if more and found else None)

    def messages(self, user_id: str, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        return self.page(user_id, conversation_id, limit).messages

    def touch(self, user_id: str, conversation_id: str, at: str, title: str, expires_at: int) -> None:
        with self.lock:
            heads = self.heads.setdefault(user_id, {})
            old = heads.get(conversation_id)
            if old is None or old.expires_at <= self.clock.now():
                heads[conversation_id] = _Head(at, title, expires_at)
            elif old.updated_at < at:  # a later touch stands: the earlier one changes nothing
                heads[conversation_id] = _Head(at, old.title, expires_at)

    def recent(self, user_id: str, limit: int, before: str | None = None) -> ConversationList:
        with self.lock:
            now = self.clock.now()
            live = sorted(((f"{h.updated_at}#{c}", c, h) for c, h in self.heads.get(user_id, {}).items()
                           if h.expires_at > now), reverse=True)
            after = [(sk, c, h) for sk, c, h in live if before is None or sk < before]
            page = after[:limit]
            heads = [ConversationHead(c, h.updated_at, h.title) for _, c, h in page]
            return ConversationList(heads, page[-1][0] if len(after) > limit else None)


@dataclass
class SentMessage:
    job_id: str
    delay_seconds: int
    next_up: bool = False


@dataclass
class MemoryJobQueue:
    sent: list[SentMessage] = field(default_factory=list)
    visibility: dict[str, int] = field(default_factory=dict)
    dead: list[tuple[str, str]] = field(default_factory=list)

    def send(self, job_id: str, delay_seconds: int = 0, *, next_up: bool = False) -> None:
        self.sent.append(SentMessage(job_id, delay_seconds, next_up))

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self.visibility[receipt_handle] = seconds

    def dead_letter(self, job_id: str, body: str, reason: str) -> None:
        self.dead.append((job_id, reason))

    def backlog(self) -> int:
        return 0  # the fake only records sends: nothing waits in it


class MemoryAgentDataStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self.executions: dict[tuple[str, int], int] = {}
        self.expiry: dict[tuple[str, int], int] = {}
        self.usage: dict[str, dict[str, tuple[dict[str, int], int]]] = {}  # job key -> call -> (usage, expiry)
        self.lock = threading.Lock()
        self.clock = clock or SystemClock()

    def record_step_effect(self, job_id: str, step_index: int, attempt: int, payload: dict[str, Any],
                           expires_at: int) -> int:
        with self.lock:
            key = (job_id, step_index)
            if self.expiry.get(key, 0) <= self.clock.now():
                self.executions.pop(key, None)  # an earlier job's record (id reused after retention)
            self.executions[key] = self.executions.get(key, 0) + 1
            self.expiry[key] = expires_at
            return self.executions[key]

    def step_effects(self, job_id: str) -> dict[int, int]:
        with self.lock:
            now = self.clock.now()
            return {i: n for (j, i), n in self.executions.items()
                    if j == job_id and self.expiry.get((j, i), 0) > now}

    def record_usage(self, job_key: str, call: str, usage: dict[str, int], expires_at: int) -> None:
        with self.lock:
            self.usage.setdefault(job_key, {})[call] = (dict(usage), expires_at)

    def usage_records(self, job_key: str) -> dict[str, dict[str, int]]:
        with self.lock:
            now = self.clock.now()
            return {c: dict(u) for c, (u, e) in self.usage.get(job_key, {}).items() if e > now}


def memory_deps(settings: Settings | None = None, clock: Clock | None = None,
                tasks: Tasks | None = None) -> Deps:
    """A full set of in-memory ports, every fake on ``clock`` (the real one by default), and
    ``tasks`` for background work (real threads by default): the simulator passes its own."""
    s = settings or Settings()
    c = clock or SystemClock()
    return Deps(settings=s, jobs=MemoryJobStore(s.pending_grace_seconds, c), log=MemoryEventLog(c),
                conversations=MemoryConversationStore(c), queue=MemoryJobQueue(),
                agent_data=MemoryAgentDataStore(c), gates=MemoryGateStore(c),
                push=MemoryPushStore(s.max_push_subscriptions, c), notifier=RecordingNotifier(),
                stream_slots=MemoryStreamSlots(c), clock=c, tasks=tasks or ThreadTasks())
