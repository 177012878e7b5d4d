"""Submit and checkpoint costs against the bare DynamoDB/SQS calls they are made of.

- ``submit_ratio``: ``JobService.submit`` p50 / the writes a submit must make, as bare calls, p50:
  the job's conditional PutItem, the gate's conditional UpdateItem that enrolls it (returning the
  gate, which says whether the job may start), the SendMessage (issue 28: the gate's write was
  left out of the floor before, so the ratio charged ours with a round trip the floor skipped);
- ``checkpoint_ratio``: ``Journal.append`` of a step event, as the runner does it, p50 / one
  conditional PutItem of an event-sized item p50;
- ``checkpoint_growth``: the same checkpoint into a job whose log already holds N events (bulk
  loaded with BatchWriteItem into the events table) / into an empty one.

Both sides of every ratio run alternately in the same loop, on the same clients.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from alfred_jobs.adapters.aws import serialize
from alfred_jobs.domain.gate import GateEntry
from alfred_jobs.domain.models import ChatRequest, Event, EventType, iso
from alfred_jobs.durability.journal import Journal
from alfred_jobs.service.jobs import JobService
from alfred_tools.benchmarks.common import USER, BenchStack, Sizes, bench_stack, interleaved, ms, p50


def _step_data(i: int) -> dict[str, Any]:
    return {"index": i, "total": 5, "label": "Search recipes", "status": "completed",
            "output": {"step": i, "label": "Search recipes", "ingredients": ["chicken", "rice"], "runs": 1}}


def submit_scenario(stack: BenchStack, sizes: Sizes) -> dict[str, Any]:
    """Submit through the service vs its two bare calls."""
    deps = stack.deps
    svc = JobService(deps)
    c = stack.clients
    req = ChatRequest(message="chicken and rice, something quick")
    table, queue_url = stack.settings.jobs_table, c.queue_url

    # One user per sample, each with a gate and no job under way (a user sending a message to a
    # conversation that is idle: the case this ratio is about). The gates exist before timing, as
    # they do for any user who has sent a message before.
    users = iter(ready_users(deps, sizes.samples + 10))
    floor_users = iter(ready_users(deps, sizes.samples + 10))

    def ours() -> None:
        svc.submit(next(users), req, None)

    def floor() -> None:
        job_id = uuid.uuid4().hex
        now = time.time()
        item = {"job_id": job_id, "user_id": USER, "created_sk": f"{iso(now)}#{job_id}",
                "message": req.message, "conversation_id": uuid.uuid4().hex, "status": "pending",
                "body_hash": "0" * 64, "created_at": now, "attempts": 0, "last_seq": 0,
                "progress_json": "{}", "cancel_requested": False, "expires_at": int(now) + 604800,
                "active_shard": "A#0", "due_at": now + 30}
        c.dynamodb.put_item(TableName=table, Item=serialize(item),
                            ConditionExpression="attribute_not_exists(job_id)")
        # The gate's enroll, as one bare conditional UpdateItem on the user's gate item (the same
        # expression shape as ``DynamoGateStore.enroll``: the entry in, the order moved on).
        order = f"{iso(now)}#{job_id}"
        c.dynamodb.update_item(
            TableName=table, Key=serialize({"job_id": f"gate#{next(floor_users)}"}),
            UpdateExpression="SET m.#j = :e, #last = :k, expires_at = :x",
            ConditionExpression="attribute_exists(m) AND attribute_not_exists(m.#j) AND "
                                "(attribute_not_exists(#last) OR #last < :k)",
            ExpressionAttributeNames={"#j": job_id, "#last": "last"},
            ExpressionAttributeValues=serialize({":e": {"c": item["conversation_id"], "k": order, "r": False},
                                                 ":k": order, ":x": int(now) + 3600}),
            ReturnValues="ALL_NEW")
        c.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"job_id": job_id}), DelaySeconds=0)

    t_ours, t_floor = interleaved(ours, floor, sizes.samples)
    stack.purge()
    return {"submit_ratio": round(p50(t_ours) / p50(t_floor), 3),
            "submit_p50_ms": ms(p50(t_ours)), "submit_floor_p50_ms": ms(p50(t_floor))}


def ready_users(deps: Any, n: int) -> list[str]:
    """``n`` fresh users, each with an empty gate (enrolled and removed once)."""
    users = [f"{USER}-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    expires = int(time.time()) + 3600
    for user in users:
        warm = GateEntry(uuid.uuid4().hex, "warm-up", f"{iso(time.time())}#warm")
        deps.gates.enroll(user, warm, None, expires, check_at=time.time() + 3600)
        deps.gates.remove(user, warm.job_id)
    return users


class _Appender:
    """Appends step events to one job's log through the Journal, as ``_Attempt.append`` does."""

    def __init__(self, journal: Journal, job_id: str, head: int = 0) -> None:
        self.journal = journal
        self.job_id = job_id
        self.head = head
        self.writer = uuid.uuid4().hex

    def __call__(self) -> None:
        now = time.time()
        ev = Event.new(self.head + 1, EventType.STEP, _step_data(self.head + 1), attempt=1, writer=self.writer,
                       at=now)
        self.journal.append(self.job_id, ev, self.journal.expires_at(now))
        self.head += 1


def checkpoint_scenario(stack: BenchStack, sizes: Sizes) -> dict[str, Any]:
    """Journal.append vs one bare conditional PutItem of the same-sized event item."""
    deps = stack.deps
    journal = Journal(deps.log, stack.settings.retention_seconds)
    ours = _Appender(journal, uuid.uuid4().hex)
    table = stack.settings.events_table
    bare_job = uuid.uuid4().hex
    seq = [0]
    writer = uuid.uuid4().hex
    expires = int(time.time()) + 604800

    def floor() -> None:
        seq[0] += 1
        item = {"job_id": {"S": bare_job}, "seq": {"N": str(seq[0])}, "type": {"S": "step"},
                "at": {"S": iso(time.time())}, "attempt": {"N": "1"},
                "data_json": {"S": json.dumps(_step_data(seq[0]), separators=(",", ":"))},
                "writer": {"S": writer}, "expires_at": {"N": str(expires)}}
        stack.clients.dynamodb.put_item(TableName=table, Item=item,
                                        ConditionExpression="attribute_not_exists(seq)")

    t_ours, t_floor = interleaved(ours, floor, sizes.samples)
    return {"checkpoint_ratio": round(p50(t_ours) / p50(t_floor), 3),
            "checkpoint_p50_ms": ms(p50(t_ours)), "checkpoint_floor_p50_ms": ms(p50(t_floor))}


def bulk_load(stack: BenchStack, job_id: str, n: int) -> None:
    """Store events 1..n of ``job_id`` with BatchWriteItem (25 items a call)."""
    table = stack.settings.events_table
    expires = int(time.time()) + 604800
    writer = uuid.uuid4().hex
    at = iso(time.time())
    for lo in range(1, n + 1, 25):
        reqs = [{"PutRequest": {"Item": {
            "job_id": {"S": job_id}, "seq": {"N": str(s)}, "type": {"S": "step"}, "at": {"S": at},
            "attempt": {"N": "1"}, "data_json": {"S": json.dumps(_step_data(s), separators=(",", ":"))},
            "writer": {"S": writer}, "expires_at": {"N": str(expires)}}}}
            for s in range(lo, min(n, lo + 24) + 1)]
        request: dict[str, Any] = {table: reqs}
        while request:
            out = stack.clients.dynamodb.batch_write_item(RequestItems=request)
            request = out.get("UnprocessedItems") or {}


def growth_scenario(endpoint_env: dict[str, str], stack: BenchStack, sizes: Sizes) -> dict[str, Any]:
    """Checkpoint p50 with ``growth_events`` stored in the job's log / with an empty log.

    The empty side writes to an events table of its own that stays empty, so the two run
    interleaved (the machine is noisy) and "none" really means none, in the job and the table.
    """
    full_deps = stack.deps
    grown_job = uuid.uuid4().hex
    bulk_load(stack, grown_job, sizes.growth_events)
    grown = _Appender(Journal(full_deps.log, stack.settings.retention_seconds), grown_job,
                      head=sizes.growth_events)
    with bench_stack(endpoint_env, stack.tmp) as empty_stack:
        empty_deps = empty_stack.deps
        empty = _Appender(Journal(empty_deps.log, empty_stack.settings.retention_seconds), uuid.uuid4().hex)
        t_grown, t_empty = interleaved(grown, empty, sizes.samples)
    return {"checkpoint_growth": round(p50(t_grown) / p50(t_empty), 3),
            "checkpoint_grown_p50_ms": ms(p50(t_grown)), "checkpoint_empty_p50_ms": ms(p50(t_empty)),
            "growth_events": sizes.growth_events}


__all__ = ["checkpoint_scenario", "growth_scenario", "submit_scenario"]
