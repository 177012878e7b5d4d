"""The ports: what the service layer needs from storage and the queue.

Adapters for DynamoDB/SQS live in ``adapters/aws.py``; in-memory fakes in ``adapters/memory.py``.
Only adapters know key layouts, expressions and botocore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from alfred_jobs.clock import Clock, SystemClock, Tasks, ThreadTasks, random_id
from alfred_jobs.domain.gate import Gate, GateEntry
from alfred_jobs.domain.models import Event, Job, JobStatus, Progress, Steer, SteerClaim
from alfred_jobs.domain.push import PushMessage, PushSubscription
from alfred_jobs.settings import Settings


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    # An opaque store position; the service signs it into the public cursor.
    next_key: dict[str, Any] | None


class JobStore(Protocol):
    """Job records: creation, leases, projection of the log, listing, sweeping."""

    def create(self, job: Job) -> None:
        """Put a new job record; ``ConditionFailed`` if a live record has the id (idempotent
        submit). An expired record counts as gone and is replaced."""

    def get(self, job_id: str, consistent: bool = True) -> Job | None:
        """The job record, or None (expired records read as None)."""

    def acquire_lease(self, job_id: str, owner: str, now: float, lease_seconds: float) -> Job:
        """Take the job if it is active and nobody holds a live lease; bump ``attempts``.

        Raises ``LeaseHeld`` if another owner's lease is live, ``ConditionFailed`` if the job is
        terminal or gone. A lease already held by ``owner`` (our own update landed, its answer was
        lost and the SDK's retry failed the condition) is returned as taken.
        """

    def renew_lease(self, job_id: str, owner: str, now: float, lease_seconds: float,
                    last_seq: int, status: JobStatus, progress: Progress) -> Job:
        """Extend the lease and refresh the projection; ``Fenced`` if ``owner`` lost the job."""

    def release_lease(self, job_id: str, owner: str, due_at: float, *, undo_attempt: bool = False) -> None:
        """Give the job back (retry later). Idempotent: a job no longer held by ``owner`` (released
        by an earlier try whose answer was lost, taken over, ended) is left as it is.
        ``undo_attempt``: the delivery did not start the job (it must wait its turn), so the
        attempt its lease counted is taken back."""

    def save_projection(self, job: Job, *, owner: str | None) -> None:
        """Write a folded job record. With ``owner``, only while that owner holds the lease;
        terminal projections are written by anyone and only move forward in ``last_seq``. Never
        ``attempts``: only the lease's acquisition and its holder's release move it (the gate's fence)."""

    def request_cancel(self, job_id: str, by: str | None = None) -> Job:
        """Set ``cancel_requested`` on an active job (``by``: the job that interrupts it);
        ``ConditionFailed`` if it is terminal."""

    def list_for_user(self, user_id: str, statuses: frozenset[JobStatus] | None, limit: int,
                      start_key: dict[str, Any] | None, conversation_id: str | None = None) -> JobPage:
        """The user's jobs, newest first, one page; with ``conversation_id``, only that
        conversation's. Read from the user index: eventually consistent (a listing, never a
        decision), and an expired job is left out whether or not TTL has deleted it yet."""

    def find_due(self, now: float, limit: int) -> list[Job]:
        """Active jobs whose pending grace or running lease has run out (for the sweeper)."""

    def postpone(self, job_id: str, due_at: float, *, sent: bool = False) -> bool:
        """Move an active job's sweep deadline (after the sweeper re-enqueued it). False, and
        nothing written, if the job is not active (ended, or no record): the hand-off learns from
        it that a gate entry belongs to no live job.

        It also sets the sweeper's mark on the job's message (``presume_queued``): ``sent``, the
        caller's message went out before this write (the sweeper's own send), so a message of the
        job is in the queue; without it (a sender that postpones *before* it sends, whose message
        may be lost after the write, or a caller that sends nothing) the mark goes, and the next
        presumption is the first since that send."""

    def postpone_waiting(self, job_id: str, due_at: float, now: float) -> bool:
        """Move the sweep deadline of a job that waits on its question, and that nobody holds at
        ``now``, to ``due_at`` (the question's expiry). False, and nothing written, if the record
        does not say ``waiting``, holds a live lease, or has its door closed: the answer came (its
        projection says ``pending``), a next attempt took the job, or someone began ending it,
        while this write was on its way.

        Why not ``postpone``: a deadline a day away, written unconditionally by a process frozen
        with the write in flight (the asker as it leaves, the sweeper looking at an asking job),
        can land after the answer and the next attempt's lease; should that attempt die, the
        sweeper would not look at the job for the question's day, and a cancel (202) of it would
        wait for the message's visibility timeout (sim seed 47480 at abf65d9). The condition is
        checked on the record as it is, whatever the caller read.

        The closed door: an ender (``end_unheld``: the API's cancel or interrupt, the sweeper's
        timeout) closes it, then sets the deadline a grace period on, then puts its terminal
        event; should its finalizing fail, the sweeper finds the job by that deadline. A move to
        the expiry landing after the ender's would hide the ended job, its gate entry holding its
        conversation for the question's day (sim seed 195980 at 5290c41): one landing before the
        close is overwritten by the ender's, one after it is refused. Only an ender closes the door
        of a waiting job (a worker closes it as it starts its reply, past every question)."""

    def presume_queued(self, job_id: str, due_at: float) -> bool:
        """The sweeper presumes a never-started job's message is still in the queue's backlog:
        move the sweep deadline to ``due_at`` and mark it presumed, if the job is active and not
        presumed queued already since its last send (or its last send was the sweeper's own:
        ``postpone(sent=True)``, which then stays). False, and nothing written, otherwise: the
        caller sends the job again. The condition is checked on the record as it is, whatever a
        stale index read said. ``acquire_lease`` and ``release_lease`` clear the mark too (the
        message was received; one sent after a give-back is a new send)."""

    def steer(self, job_id: str, steer: Steer, now: float, max_steers: int) -> bool:
        """Add ``steer`` to an active, unexpired job whose door is open and which holds fewer than
        ``max_steers`` steers: True. True as well for a steer already on it, door open or not (the
        retry of a write whose answer was lost: the message id is the key). False, and nothing
        written, otherwise: the door is closed (the job is replying or ended), or the job is gone."""

    def close_door(self, job_id: str, seen: int, *, owner: str | None) -> Job | None:
        """Close the job's door if it holds exactly ``seen`` steers and, with ``owner``, while that
        owner holds the lease: the record after it. None, and nothing written, otherwise (a steer
        slipped in, or the lease was lost): the caller reads the record and decides. Closing an
        already closed door with the same count is no error (the SDK's retry of a landed close)."""

    def claim_steer(self, claim: SteerClaim) -> SteerClaim | None:
        """Put ``claim`` under its message id if no live job nor claim has that id: the claim
        that is there after it (ours, or the one a repeat of the request put first). None if a live
        job has the id (the key was used for a job)."""

    def steer_claim(self, message_id: str) -> SteerClaim | None:
        """The live claim under ``message_id``, or None (strongly consistent)."""

    def delete_unstarted(self, job_id: str, created_at: float) -> None:
        """Delete a job record no worker ever took (a submit refused after its put): only the
        record created at ``created_at`` with no attempt and no steer. ``ConditionFailed`` if a worker
        took it meanwhile, or a message was steered into it (a steer answered 202 must be answered:
        the job runs after all); a record already gone is no error."""


class GateStore(Protocol):
    """Each user's gate (``domain/gate.py``): one item per user, every change one conditional
    write that returns the gate as it is after it. Reads are strongly consistent: every decision
    taken from a gate is taken from its latest state.

    **The fence.** A running entry records the attempt that took its slot (``GateEntry.attempt``:
    the job's ``attempts`` as the taker's lease returned it). Every lease acquisition bumps
    ``attempts``, only a lease's holder undoes its own bump (a delivery that did not start the
    job), and nothing else writes it (not ``JobStore.save_projection``), so every attempt that
    takes a job after attempt n lost it is numbered above n; one that undid its bump gave its
    number to the next, and fences its writes after that with the number before it. An
    attempt passes its number with its own writes (``pause``, and ``unpause`` and ``remove`` when
    made by a worker); the store refuses them (``ConditionFailed``) once the entry is stamped by a
    later attempt: the caller lost the job, and stops without touching anything else. The API and
    the sweeper hold no lease and pass none: their writes are fenced by the log (a terminal event,
    an answer) before they are made.

    A worker passes its job's ``created_at`` with its attempt, and the entry keeps the creation
    time of the job that enrolled it or last took its slot (``GateEntry.fences``): a reused
    Idempotency-Key makes a new job with the id of one whose retention ran out, numbered from
    attempt 1 again, and an attempt of the old job must not pass the new job's fence.
    """

    def read(self, user_id: str) -> Gate:
        """The user's gate (empty if there is none, or it expired)."""

    def enroll(self, user_id: str, entry: GateEntry, max_active: int | None, expires_at: int, *,
               check_at: float) -> Gate:
        """Add a waiting entry; returns the gate after it. Idempotent: a job already enrolled is
        left as it is (and the gate returned), except that an entry of its id that another job of
        the id left untaken (another ``created_at``, never stamped by a worker) takes the enrolling
        job's creation time (``GateEntry.left_by_another_job``, seed 139234). ``GateFull`` if the
        gate holds ``max_active`` entries (``None``: no limit, for repairs).

        In the same write the gate goes on the sweeper's check index, due at ``check_at``, unless
        it is there already (its earlier check time stays). So a gate that holds an entry is
        always on that index: only ``unlist_if_empty`` takes it off, and only when it is empty."""

    def due_for_check(self, now: float, limit: int) -> list[str]:
        """The users whose gate's check time has passed (at most ``limit`` per shard). An index
        read, eventually consistent: it may name a gate checked or emptied a moment ago, or miss
        one listed a moment ago; the caller reads the gate itself before it decides anything."""

    def check_later(self, user_id: str, check_at: float) -> None:
        """Move the gate's next check to ``check_at`` (after a check found its entries live). A
        gate item that does not exist is left alone (nothing is created)."""

    def unlist_if_empty(self, user_id: str) -> bool:
        """Take the gate off the check index if it holds no entry (or has expired): True, or
        False and nothing written if it holds entries (an enroll landed since it was read: that
        one stays to be checked)."""

    def take(self, user_id: str, entry: GateEntry, max_running: int, expires_at: int, *, attempt: int) -> Gate:
        """Mark a waiting entry running, stamped with ``attempt`` and ``entry.created_at``, if its
        conversation has no running job and fewer than ``max_running`` slots are held, and it is not
        fenced; ``ConditionFailed`` otherwise (the caller reads and decides: already running, not
        enrolled, must wait, or a later job of the id)."""

    def retake(self, user_id: str, job_id: str, *, attempt: int, created_at: float = 0.0) -> Gate:
        """A later attempt takes over the slot its job holds already (an earlier attempt took it and
        lost the job before giving it back): stamp the running entry with ``attempt`` and
        ``created_at`` if an earlier attempt's stamp is on it. ``ConditionFailed`` otherwise (not
        running, or stamped by ``attempt`` or a later one: the caller reads and decides)."""

    def pause(self, user_id: str, job_id: str, conversation_id: str, *, attempt: int,
              created_at: float = 0.0) -> Gate:
        """A running entry asks the user: it gives its slot back but keeps its conversation
        (``asking``) and its stamp; returns the gate after it. Idempotent (an entry not running is
        left as is). ``ConditionFailed`` if a later attempt than ``attempt`` stamped the entry."""

    def unpause(self, user_id: str, job_id: str, *, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        """The user answered: the entry waits to run again. Idempotent; returns the gate after it.
        With ``attempt`` (a worker's): ``ConditionFailed`` if a later attempt stamped the entry."""

    def remove(self, user_id: str, job_id: str, *, conversation_id: str | None = None,
               only_untaken: bool = False, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        """Remove the job's entry, waiting or running (freeing its slot); returns the gate after
        it. Idempotent: a job not enrolled leaves the gate as it is. ``conversation_id`` (the
        job's, if known) lets the store write at once instead of reading first. ``only_untaken``:
        an entry a worker has taken (stamped with an attempt: running, asking the user, or
        answered and waiting again) is left alone and the call raises ``ConditionFailed`` (a
        refused submit's undo, which a worker beat to the job: one that asked has given its slot
        back, but its entry still holds its conversation; sim seed 108223); with ``created_at``
        too, the entry of another job of the id (its key's job made anew after the refused one was
        deleted) is left alone, as if the job were not enrolled: a frozen undo lands late. With
        ``attempt`` (a worker's finalize): ``ConditionFailed`` if a later attempt stamped the entry."""


class StreamSlots(Protocol):
    """The open streams and long-polls of each user, counted across every process: each one holds
    a slot, a lease named by its ``holder`` (an id of its own) until ``until``, which its stream
    renews and its end gives back. A slot whose lease has run out counts as free (DynamoDB's TTL
    deletes late: an expired lease reads as gone), so a process that died holding slots (SIGKILL,
    a Lambda timeout) has them back within one lease period.

    Every change is one conditional write; the one read (``holders``) is strongly consistent. A
    write the SDK retried after it landed meets its own slot and counts it once, held."""

    def take(self, user_id: str, holder: str, cap: int, until: float) -> bool:
        """Hold a slot for ``holder`` until ``until`` if the user holds fewer than ``cap`` live
        ones (``holder``'s own, if it holds one already, is renewed, never counted twice). False,
        and nothing written, if the user is at the cap."""

    def renew(self, user_id: str, holder: str, until: float) -> bool:
        """Extend ``holder``'s slot to ``until``; False if it holds none any more (its lease ran
        out and another take cleared it: the caller lost its slot)."""

    def release(self, user_id: str, holder: str) -> None:
        """Give the slot back. Idempotent: a slot already gone (released, or cleared) is no error."""

    def holders(self, user_id: str) -> dict[str, float]:
        """The user's live slots: holder -> the end of its lease (strongly consistent)."""


class EventLog(Protocol):
    """Per-job ordered log. ``append`` is a conditional put on (job_id, seq): the log is the fence."""

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        """Write ``event`` at ``event.seq`` if that slot is free (empty, or holding an expired
        event); ``ConditionFailed`` if taken."""

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        """One event, or None (expired events read as None)."""

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        """The events with first <= seq <= last that exist (any order from the store, sorted here)."""


@dataclass(frozen=True)
class MessagePage:
    messages: list[dict[str, Any]]  # oldest first: the newest ``limit`` before the position asked for
    # Where the next (older) page starts, if there are older live messages: an opaque store
    # position (the service signs it into the public cursor), passed back as ``before``.
    before: str | None


@dataclass(frozen=True)
class ConversationHead:
    """One conversation as the user's list shows it."""

    conversation_id: str
    updated_at: str  # ISO-8601: when it was last active (a message sent, a reply committed)
    title: str       # its first user message, shortened


@dataclass(frozen=True)
class ConversationList:
    conversations: list[ConversationHead]  # most recently active first
    # Where the next page starts, if there may be more: an opaque store position (the service
    # signs it into the public cursor), passed back as ``before``.
    before: str | None


class ConversationStore(Protocol):
    """A conversation's committed turns, and each user's list of conversations. Reads are
    bounded: newest first with a limit, so their cost is the page asked for, never the
    conversation's length (or the number of conversations)."""

    def commit_turn(self, user_id: str, conversation_id: str, job_id: str, message: str, reply: str,
                    at: str, expires_at: int, steered: tuple[str, ...] = (), *, stopped: bool = False) -> None:
        """Write the user message, the messages steered into the job (in order) and the reply of
        one job (``turn_messages``); idempotent on job id. ``stopped``: the reply was cut off by a
        cancel (its message reads ``"stopped": true``)."""

    def page(self, user_id: str, conversation_id: str, limit: int, before: str | None = None) -> MessagePage:
        """The newest ``limit`` live messages older than ``before`` (all, if None), returned oldest
        first. Reads at most ``limit + 1`` live messages (and the expired ones among them), strongly
        consistent (the next job plans from this history: a turn committed a moment ago counts)."""

    def messages(self, user_id: str, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` committed messages, oldest first (``page(...).messages``)."""

    def touch(self, user_id: str, conversation_id: str, at: str, title: str, expires_at: int) -> None:
        """Mark the conversation active at ``at`` (ISO-8601, as events write it) on the user's
        list, living until ``expires_at``. Its place moves to ``at`` unless it already stands later
        (touches may land out of order); ``title`` is kept from the first touch of the
        conversation's life (an expired entry counts as gone, and the next touch starts it anew).
        Idempotent."""

    def recent(self, user_id: str, limit: int, before: str | None = None) -> ConversationList:
        """The user's live conversations, most recently active first: ``limit`` of them after the
        position ``before`` (the start, if None). May be eventually consistent (on DynamoDB an
        index read: a conversation touched a moment ago may show at its older place, or not yet);
        an expired entry is never listed."""


class JobQueue(Protocol):
    def send(self, job_id: str, delay_seconds: int = 0, *, next_up: bool = False) -> None:
        """Enqueue a job for a worker. ``next_up``: the sender read (or wrote) the job's gate and
        found it the next to start in its conversation, which stays true (``Admission.take``)."""

    def backlog(self) -> int:
        """About how many messages wait to be received (SQS's approximate count: it can lag, so
        it only ever decides *when* the sweeper sends again, never whether a job runs)."""

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        """Hide an in-flight message for ``seconds`` more (heartbeat and retry backoff)."""

    def dead_letter(self, job_id: str, body: str, reason: str) -> None:
        """Park a message in the dead-letter queue."""


class AgentDataStore(Protocol):
    """The agent's own data (side effects of steps), keyed so writes are idempotent per step."""

    def record_step_effect(self, job_id: str, step_index: int, attempt: int, payload: dict[str, Any],
                           expires_at: int) -> int:
        """Record that a step ran; returns how many times it has run for this job (1 if once)."""

    def step_effects(self, job_id: str) -> dict[int, int]:
        """Step index → executions, for checking "never executed twice"."""

    def record_usage(self, job_key: str, call: str, usage: dict[str, int], expires_at: int) -> None:
        """Record one model call's token usage under ``(job_key, call)``; recording it again replaces it."""

    def usage_records(self, job_key: str) -> dict[str, dict[str, int]]:
        """Every unexpired usage record of a job, by call."""



class PushStore(Protocol):
    """The users' Web Push subscriptions (a few per user: one per browser)."""

    def add(self, user_id: str, subscription: PushSubscription) -> None:
        """Store (or replace, by endpoint) one of the user's subscriptions."""

    def remove(self, user_id: str, endpoint: str) -> None:
        """Forget one; idempotent."""

    def list(self, user_id: str) -> list[PushSubscription]:
        """The user's subscriptions."""


class Notifier(Protocol):
    """Tells the user's browsers that a job ended or asks for input (Web Push)."""

    def notify(self, user_id: str, message: PushMessage) -> None:
        """Best effort, at most once per (job, seq): never raises, never blocks a job for long."""


@dataclass
class Deps:
    """Every port the services use, and the settings. Built by the composition root
    (``entry/wiring.py``: DynamoDB and SQS) or from the in-memory fakes (``adapters.memory``).

    ``clock`` and ``tasks`` are the only way the runtime reads the time or starts background work
    (``alfred_jobs.clock``): the real ones by default, the simulator's virtual ones under it. The
    adapters in a ``Deps`` read the same clock (``memory_deps`` and ``aws_deps`` see to it)."""

    settings: Settings
    jobs: JobStore
    log: EventLog
    conversations: ConversationStore
    queue: JobQueue
    agent_data: AgentDataStore
    gates: GateStore
    # Web Push (issue 14): None where a process sends or stores no pushes.
    push: PushStore | None = None
    notifier: Notifier | None = None
    # The per-user stream cap across processes (issue 26): None where a process serves no streams.
    stream_slots: StreamSlots | None = None
    clock: Clock = field(default_factory=SystemClock)
    tasks: Tasks = field(default_factory=ThreadTasks)
    # Fresh ids (job ids without an Idempotency-Key, lease owners): random by default, the
    # seed's under the simulator, so a history replays exactly.
    new_id: Callable[[], str] = random_id
