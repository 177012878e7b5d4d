"""The invariants checked once a history is quiet, each named after the guarantee it proves.

The ones checked as the history runs live beside the actors (``world.py``):
``no_5xx_unless_the_store_fails`` (every API answer), ``watchers_see_each_event_once_in_order``
(every event a watcher receives), ``max_running_per_user`` and ``completed_step_never_runs_again``
(every agent call), ``gate_within_max_active`` (every virtual second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alfred_jobs.domain.events import CompletePayload, replay
from alfred_jobs.domain.models import Event, EventType, JobStatus, iso, refold

if TYPE_CHECKING:
    from alfred_tools.sim.world import World

from alfred_tools.sim.world import CANCEL_SECONDS, SETTLE_SECONDS


def check_end(w: World) -> None:
    """Every quiescence invariant, over the stores' true contents (no round trips, no staleness)."""
    f = w.found
    quiet_from = w.cfg.fault_seconds
    live_by_user: dict[str, set[str]] = {}
    now = w.k.now()
    for job_id, rec in w.inner_jobs.items.items():
        events = w.log.events_of(job_id)
        if rec.expired(now):
            _check_log(w, job_id, events)  # what was written still had to be right
            continue  # retention is over: the job is gone, and nothing more of it is asked for
        job, state = refold(rec, events), replay(events)
        a = w.accepted.get(job_id)

        _check_log(w, job_id, events)

        # Guarantee 9: nothing stays pending or running for ever.
        asking = job.status is JobStatus.WAITING and state.question is not None
        waiting = asking or (job.status is JobStatus.PENDING and (
            w.behind_a_question(rec.user_id, job_id) or (a is None and w.waits_for_room(rec.user_id, job_id))))
        f.check("every_job_ends_or_waits_on_a_question", job.terminal or waiting,
                lambda job_id=job_id, job=job, rec=rec: (
                    f"{job_id} is {job.status} (record {rec.status}, attempts {rec.attempts}) "
                    f"{SETTLE_SECONDS:.0f}s after faults stopped"))
        if asking and a is not None and not a.abandoned:
            f.check("an_answered_question_continues", False,
                    lambda job_id=job_id: f"{job_id} waits on a question its user meant to answer")

        # Guarantee 7: a cancel answered 202 ends the job within the cancel bound.
        if job_id in w.cancels:
            at = w.cancels[job_id]
            ended = w.log.terminal.get(job_id)
            bound = max(at, quiet_from) + CANCEL_SECONDS
            f.check("cancel_ends_the_job", ended is not None and ended <= bound,
                    lambda job_id=job_id, at=at, ended=ended, job=job: (
                        f"{job_id} cancelled (202) at {at:.1f}, is {job.status}, ended at {ended}"))

        # A job submitted while nothing failed has no reason to fail (its script's one flaky step
        # fails only its first attempt), except a question nobody answered.
        if a is not None and a.at >= quiet_from and job.status is JobStatus.FAILED:
            code = (job.error or {}).get("code")
            f.check("quiet_jobs_do_not_fail", code == "input_timeout",
                    lambda job_id=job_id, job=job: f"{job_id}, submitted after faults stopped, failed: {job.error}")

        # Guarantee 8: a failed job's message is parked.
        if job.status is JobStatus.FAILED:
            f.check("failed_jobs_are_parked", any(j == job_id for j, _ in w.queue.dead),
                    lambda job_id=job_id: f"{job_id} failed and was never dead-lettered")
        if not job.terminal:
            live_by_user.setdefault(rec.user_id, set()).add(job_id)

        # Conversation turns: a completed job's turn is committed, once.
        if isinstance(events[-1].payload if events else None, CompletePayload) and rec.terminal:
            conv = _live_messages(w, rec.user_id, rec.conversation_id)
            # (a turn of an earlier job with this id, reused after retention, may outlive that job)
            mine = [m for m in conv.values() if m["job_id"] == job_id and str(m["at"]) >= iso(rec.created_at)]
            f.check("turn_committed_once", len(mine) == 2 + len(state.steered),
                    lambda job_id=job_id, mine=mine, state=state: (
                        f"{job_id}'s turn has {len(mine)} messages ({len(state.steered)} steered)"))

    # Conversation turns in submit order: a job accepted (202) before another was sent commits
    # its turn first (submits that overlapped, a retried one among them, may go either way).
    for user, conv in w.inner_conversations.items:
        committed = []
        for _, m in sorted(_live_messages(w, user, conv).items()):
            rec = w.inner_jobs.items.get(str(m["job_id"]))
            if rec is None or str(m["at"]) < iso(rec.created_at):
                continue  # an earlier job's turn (its id was reused after retention)
            if m["job_id"] not in committed:
                committed.append(m["job_id"])
        for i, later in enumerate(committed):
            for earlier in committed[i + 1:]:
                a, b = w.accepted.get(str(earlier)), w.accepted.get(str(later))
                f.check("turns_in_submit_order", a is None or b is None or not a.at < b.sent,
                        lambda earlier=earlier, later=later, conv=conv: (
                            f"conversation {conv[:6]}: {earlier} was accepted before {later} was sent, "
                            f"and its turn comes after"))

    _check_steers(w)

    # The gate: every entry belongs to a live job; a user with no live job has an empty gate.
    for user in w.inner_gates.gates:
        for job_id in w.inner_gates._live(user):
            f.check("gate_entries_belong_to_live_jobs", job_id in live_by_user.get(user, set()),
                    lambda job_id=job_id, user=user: f"{user}'s gate holds {job_id}, which is gone or ended")

    # Guarantees 9 and 11: a message sent while the store is healthy is done within a few
    # deliveries (the job runs, ends, hands on, waits or is dropped as a duplicate). One the redrive
    # policy moves to the DLQ made no progress in five: its job is stuck, and one whose retention
    # ends meanwhile escapes the liveness check above (a reused key whose new job could write no
    # event, issue 12's writable expired slots). The DLQ is for failed jobs (guarantee 8).
    for job_id, sent in w.queue.redriven:
        f.check("no_redrive_while_healthy", sent < quiet_from,
                lambda job_id=job_id, sent=sent: (
                    f"{job_id}'s message, sent at {sent:.1f} with the faults over, went to the DLQ "
                    f"after {w.queue.max_receives} deliveries"))

    # Web Push: only to the job's owner (at most once per event: the claim, modelled by the
    # notifier), and only to endpoints that were theirs when the push was addressed (an endpoint
    # moves to whoever subscribes it last: a shared browser).
    for user, message in w.notifier.calls:
        owner = w.inner_jobs.items.get(message.job_id)
        f.check("push_only_to_the_owner", owner is not None and owner.user_id == user,
                lambda user=user, message=message: f"push about {message.job_id} sent to {user}")
    for sent in w.notifier.sent:
        f.check("push_only_to_the_owner", sent.owner == sent.user,
                lambda sent=sent: (f"push about {sent.message.job_id} for {sent.user} went to "
                                   f"{sent.endpoint}, which was {sent.owner}'s"))


def _live_messages(w: World, user: str, conv: str) -> dict[str, dict[str, object]]:
    """A conversation's unexpired messages, by sort key (an expired one is gone)."""
    now = w.k.now()
    store = w.inner_conversations
    return {sk: m for sk, m in store.items.get((user, conv), {}).items()
            if store.expiry.get((user, conv, sk), 0) > now}


def _check_log(w: World, job_id: str, events: list[Event]) -> None:
    """The log's own invariants: contiguous, nothing after the end, nothing past an open question."""
    f = w.found
    # Guarantee 2 and the fence: seqs 1..N without a hole, nothing after a terminal event.
    seqs = [e.seq for e in events]
    f.check("log_contiguous", seqs == list(range(1, len(seqs) + 1)),
            lambda job_id=job_id, seqs=seqs: f"{job_id}'s log has seqs {seqs}")
    ends = [e.seq for e in events if e.terminal]
    f.check("nothing_after_terminal", not ends or ends[0] == seqs[-1],
            lambda job_id=job_id, ends=ends: f"{job_id}'s log goes on past its terminal event at {ends[0]}")

    # An open question holds the job: after it comes its answer, or the job's end, nothing else
    # (but the messages steered into it, which whoever ends it records first: guarantee 15).
    for i, e in enumerate(events):
        if e.type is EventType.INPUT_REQUIRED:
            nxt = next((n for n in events[i + 1:] if n.type is not EventType.STEERED), None)
            f.check("nothing_runs_past_an_open_question",
                    nxt is None or nxt.terminal or nxt.type is EventType.INPUT_RECEIVED,
                    lambda job_id=job_id, e=e, nxt=nxt: (
                        f"{job_id}: {nxt.type if nxt else ''} at {nxt.seq if nxt else 0} "
                        f"follows the question at {e.seq}"))


def _check_steers(w: World) -> None:
    """Guarantee 15: a steered message is answered exactly once. Each 202 with ``steered: true``
    names the job it joined: that job's log holds its ``steered`` event once, before the reply
    (``phase: reply``) and the end, and a completed job commits it between its message and its
    reply. With ``steered: false`` it is its own job, and no log holds it as a steer. Never both,
    never neither; every repeat of a keyed request got the same outcome."""
    f = w.found
    now = w.k.now()
    steered_in: dict[str, list[tuple[str, int]]] = {}  # text -> (job, its position in the log), for every log
    logs: dict[str, list[Event]] = {}
    for job_id in w.inner_jobs.items:
        events = logs[job_id] = w.log.events_of(job_id)
        for i, e in enumerate(events):
            if e.type is EventType.STEERED:
                steered_in.setdefault(str(e.data["text"]), []).append((job_id, i))
    for text, sent in w.steers.items():
        if not sent.outcomes:
            continue  # never answered 202: the client knows nothing was taken
        f.check("steered_message_answered_once", len(set(sent.outcomes)) == 1,
                lambda text=text, sent=sent: f"{sent.key!r}: repeats of one steer got {sent.outcomes}")
        steered, job_id = sent.outcomes[0]
        rec = w.inner_jobs.items.get(job_id)
        if rec is None or rec.expired(now) or rec.created_at > sent.at:
            continue  # retention is over (its id may be a new job's now): nothing of it is asked for
        found = steered_in.get(text, [])
        if not steered:
            f.check("steered_message_answered_once", not found and rec.message == text,
                    lambda text=text, job_id=job_id, found=found: (
                        f"{text[-16:]!r} became job {job_id} (steered: false) but is a steer of {found}"))
            continue
        events = logs.get(job_id, [])
        where = [i for j, i in found if j == job_id]
        others = [j for j, _ in found if j != job_id]
        reply = next((i for i, e in enumerate(events) if e.type is EventType.PHASE
                      and e.data.get("phase") == "reply"), None)
        end = next((i for i, e in enumerate(events) if e.terminal), None)
        if reply is None and end is None:
            before = len(where) <= 1  # still before its reply (waiting on a question): later, then
        else:
            before = len(where) == 1 and all(b is None or where[0] < b for b in (reply, end))
        f.check("steered_message_answered_once", before and not others,
                lambda text=text, job_id=job_id, where=where, reply=reply, end=end, others=others: (
                    f"{text[-16:]!r} joined {job_id} (202 steered: true): steered at {where} of its log, "
                    f"reply at {reply}, end at {end}; also a steer of {others}"))
        if end is not None and isinstance(events[end].payload, CompletePayload) and rec.terminal:
            conv = _live_messages(w, rec.user_id, rec.conversation_id)
            turn = [m for _, m in sorted(conv.items()) if m["job_id"] == job_id]
            roles = [(m["role"], m["text"] == text) for m in turn]
            f.check("steered_message_answered_once",
                    roles.count(("user", True)) == 1 and roles[-1][0] == "assistant"
                    and roles.index(("user", True)) > 0,
                    lambda text=text, job_id=job_id, roles=roles: (
                        f"{text[-16:]!r} joined {job_id}, whose committed turn is {roles}"))
