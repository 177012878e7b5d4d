"""DynamoDB and SQS adapters. Key layouts and expressions live here and nowhere else.

Every botocore error is turned into a domain error at this boundary (``ConditionFailed``,
``TransientStoreError``), so the services never see botocore. Clients are injected; a default is
built lazily from settings, never at import time (moto and tests rely on that).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as BotoClientError

from alfred_jobs.clock import Clock, SystemClock
from alfred_jobs.domain.gate import Gate, GateEntry
from alfred_jobs.domain.models import (
    ACTIVE_STATUSES,
    Event,
    EventType,
    Job,
    JobStatus,
    Progress,
    Steer,
    SteerClaim,
    iso,
    turn_messages,
)
from alfred_jobs.domain.retention import expired
from alfred_jobs.exceptions import ConditionFailed, Fenced, GateFull, LeaseHeld, StoreError, TransientStoreError
from alfred_jobs.ports import ConversationHead, ConversationList, JobPage, MessagePage
from alfred_jobs.settings import Settings

ACTIVE_SHARDS = 4  # the sweeper's sparse index is spread over this many partitions
MAX_QUERY_LIMIT = 1000  # items asked of one Query when a read has to go on (see DynamoConversationStore)
_ser = TypeSerializer()
_de = TypeDeserializer()
_TRANSIENT_CODES = {
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "InternalFailure", "Throttling",
    "TransactionConflictException", "RequestThrottled", "OverLimit", "RequestTimeout",
}


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_dynamo(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(_to_dynamo(v)) for k, v in item.items() if v is not None}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Turn botocore errors into domain errors."""
    try:
        yield
    except BotoClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ConditionalCheckFailedException":
            raise ConditionFailed(code) from exc
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500:
            raise TransientStoreError(f"{code or status}") from exc
        raise StoreError(f"{code}: {exc}") from exc
    except BotoCoreError as exc:  # connection errors, read timeouts
        raise TransientStoreError(type(exc).__name__) from exc


ClientFactory = Callable[[str], Any]  # a service name ("dynamodb", "sqs") -> a boto3 client

DEFAULT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=25,
                        max_pool_connections=50)


@dataclass
class AwsClients:
    """The boto3 clients of one process, built on first use.

    Clients are injected, never swapped through the environment: pass ``factory`` (a service name
    to a client; the tooling's adds fault injection, the tests' their own credentials) or the
    clients themselves. By default they come from boto3 with ``DEFAULT_CONFIG`` (endpoints from
    ``AWS_ENDPOINT_URL*`` as boto3 reads them).
    """

    settings: Settings
    factory: ClientFactory | None = None
    _dynamodb: Any = None
    _sqs: Any = None
    _queue_url: str | None = None
    _dlq_url: str | None = None

    def client(self, service: str) -> Any:
        if self.factory is not None:
            return self.factory(service)
        session: Any = boto3.session.Session()  # Any: the stubs type client() per literal service name
        return session.client(service, region_name=self.settings.region, config=DEFAULT_CONFIG)

    @property
    def dynamodb(self) -> Any:
        if self._dynamodb is None:
            self._dynamodb = self.client("dynamodb")
        return self._dynamodb

    @property
    def sqs(self) -> Any:
        if self._sqs is None:
            self._sqs = self.client("sqs")
        return self._sqs

    @property
    def queue_url(self) -> str:
        if self._queue_url is None:
            self._queue_url = self.settings.queue_url or self._resolve(self.settings.queue_name)
        return self._queue_url

    @property
    def dlq_url(self) -> str:
        if self._dlq_url is None:
            self._dlq_url = self.settings.dlq_url or self._resolve(self.settings.dlq_name)
        return self._dlq_url

    def _resolve(self, name: str) -> str:
        with mapped_errors():
            return str(self.sqs.get_queue_url(QueueName=name)["QueueUrl"])


# ---- jobs ------------------------------------------------------------------------------


def _shard(job_id: str) -> str:
    return f"A#{sum(job_id.encode()) % ACTIVE_SHARDS}"


def job_to_item(job: Job) -> dict[str, Any]:
    item: dict[str, Any] = {
        "job_id": job.job_id,
        "user_id": job.user_id,
        "created_sk": f"{iso(job.created_at)}#{job.job_id}",
        "message": job.message,
        "conversation_id": job.conversation_id,
        "status": str(job.status),
        "body_hash": job.body_hash,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "attempts": job.attempts,
        "last_seq": job.last_seq,
        "progress_json": json.dumps(job.progress.public()),
        "output_json": json.dumps(job.output) if job.output is not None else None,
        "error_json": json.dumps(job.error) if job.error is not None else None,
        "cancel_requested": job.cancel_requested,
        "cancel_by": job.cancel_by,
        "lease_owner": job.lease_owner,
        "lease_expires": job.lease_expires,
        "expires_at": job.expires_at,
    }
    if job.steers:
        item["steers"] = [{"message_id": st.message_id, "text": st.text} for st in job.steers]
        item["steer_ids"] = {st.message_id for st in job.steers}
    if job.door_closed:
        item["door_closed"] = True
    return item


def item_to_job(item: dict[str, Any]) -> Job:
    p = json.loads(item.get("progress_json") or "{}")
    return Job(
        job_id=item["job_id"],
        user_id=item["user_id"],
        message=item.get("message", ""),
        conversation_id=item.get("conversation_id", ""),
        created_at=float(item["created_at"]),
        expires_at=int(item["expires_at"]),
        status=JobStatus(item.get("status", "pending")),
        body_hash=item.get("body_hash", ""),
        started_at=float(item["started_at"]) if item.get("started_at") is not None else None,
        completed_at=float(item["completed_at"]) if item.get("completed_at") is not None else None,
        attempts=int(item.get("attempts", 0)),
        last_seq=int(item.get("last_seq", 0)),
        progress=Progress(phase=p.get("phase"), completed_steps=int(p.get("completed_steps") or 0),
                          total_steps=p.get("total_steps"), label=p.get("label")),
        output=json.loads(item["output_json"]) if item.get("output_json") else None,
        error=json.loads(item["error_json"]) if item.get("error_json") else None,
        cancel_requested=bool(item.get("cancel_requested", False)),
        cancel_by=item.get("cancel_by"),
        lease_owner=item.get("lease_owner"),
        lease_expires=float(item.get("lease_expires", 0)),
        steers=tuple(Steer(message_id=st["message_id"], text=st["text"]) for st in item.get("steers") or ()),
        door_closed=bool(item.get("door_closed", False)),
    )


def claim_to_item(claim: SteerClaim) -> dict[str, Any]:
    """A keyed steer's claim: an item of the jobs table under the id a job of its key would have,
    with none of the indexes' keys (no ``user_id``, ``active_shard``: no list or sweep sees it)."""
    return {"job_id": claim.message_id, "steer_target": claim.target or "", "claim_user": claim.user_id,
            "body_hash": claim.body_hash, "created_at": claim.created_at, "expires_at": claim.expires_at}


def item_to_claim(item: dict[str, Any]) -> SteerClaim:
    return SteerClaim(message_id=item["job_id"], user_id=item["claim_user"], target=item["steer_target"] or None,
                      body_hash=item.get("body_hash", ""), created_at=float(item["created_at"]),
                      expires_at=int(item["expires_at"]))


_ACTIVE_VALUES = {":pending": JobStatus.PENDING.value, ":running": JobStatus.RUNNING.value,
                  ":waiting": JobStatus.WAITING.value}


class DynamoJobStore:
    """Job records in the jobs table; see docs/data-model.md for the key layout."""

    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.jobs_table
        self._pending_grace = settings.pending_grace_seconds
        self._clock = clock or SystemClock()

    def _update(self, **kwargs: Any) -> dict[str, Any]:
        values = kwargs.pop("values", None)
        if values:
            kwargs["ExpressionAttributeValues"] = serialize(values)
        with mapped_errors():
            out = self._c.dynamodb.update_item(TableName=self._table, **kwargs)
        return deserialize(out.get("Attributes", {}))

    def create(self, job: Job) -> None:
        item = job_to_item(job)
        item["active_shard"] = _shard(job.job_id)
        item["due_at"] = job.created_at + self._pending_grace
        # An expired record no longer exists for us (TTL deletes it up to days late): a key
        # reused after retention replaces it with a new job (guarantee 11).
        with mapped_errors():
            self._c.dynamodb.put_item(TableName=self._table, Item=serialize(item),
                                      ConditionExpression="attribute_not_exists(job_id) OR expires_at <= :now",
                                      ExpressionAttributeValues=serialize({":now": int(self._clock.now())}))

    def get(self, job_id: str, consistent: bool = True) -> Job | None:
        with mapped_errors():
            out = self._c.dynamodb.get_item(TableName=self._table, Key=serialize({"job_id": job_id}),
                                            ConsistentRead=consistent)
        if "Item" not in out:
            return None
        item = deserialize(out["Item"])
        if "steer_target" in item:
            return None  # a steer's claim, not a job (``claim_steer``)
        job = item_to_job(item)
        return None if job.expired(self._clock.now()) else job

    def steer(self, job_id: str, steer: Steer, now: float, max_steers: int) -> bool:
        # The message id is the key: a steer already on the job is no second one (the SDK's retry
        # of a landed write fails the condition on its own steer, and the read below says so).
        try:
            self._update(
                Key=serialize({"job_id": job_id}),
                UpdateExpression="SET steers = list_append(if_not_exists(steers, :none), :one) ADD steer_ids :ids",
                ConditionExpression=("attribute_exists(job_id) AND #s IN (:pending, :running, :waiting) "
                                     "AND expires_at > :now AND attribute_not_exists(door_closed) "
                                     "AND (attribute_not_exists(steer_ids) OR NOT contains(steer_ids, :mid)) "
                                     "AND (attribute_not_exists(steers) OR size(steers) < :max)"),
                ExpressionAttributeNames={"#s": "status"},
                values={":none": [], ":one": [{"message_id": steer.message_id, "text": steer.text}],
                        ":ids": {steer.message_id}, ":mid": steer.message_id, ":now": now,
                        ":max": max_steers, **_ACTIVE_VALUES})
            return True
        except ConditionFailed:
            job = self.get(job_id)  # strongly consistent
            return job is not None and any(st.message_id == steer.message_id for st in job.steers)

    def close_door(self, job_id: str, seen: int, *, owner: str | None) -> Job | None:
        count = "attribute_not_exists(steers)" if seen == 0 else "size(steers) = :n"
        values: dict[str, Any] = {":t": True, **({":n": seen} if seen else {})}
        condition = f"attribute_exists(job_id) AND {count}"
        if owner is not None:
            condition += " AND lease_owner = :me"
            values[":me"] = owner
        try:
            return item_to_job(self._update(Key=serialize({"job_id": job_id}), UpdateExpression="SET door_closed = :t",
                                            ConditionExpression=condition, values=values, ReturnValues="ALL_NEW"))
        except ConditionFailed:
            return None

    def claim_steer(self, claim: SteerClaim) -> SteerClaim | None:
        try:
            with mapped_errors():
                self._c.dynamodb.put_item(
                    TableName=self._table, Item=serialize(claim_to_item(claim)),
                    ConditionExpression="attribute_not_exists(job_id) OR expires_at <= :now",
                    ExpressionAttributeValues=serialize({":now": int(self._clock.now())}))
            return claim
        except ConditionFailed:
            # An earlier claim (or our own put, landed with its answer lost), or a job of this key.
            return self.steer_claim(claim.message_id)

    def steer_claim(self, message_id: str) -> SteerClaim | None:
        with mapped_errors():
            out = self._c.dynamodb.get_item(TableName=self._table, Key=serialize({"job_id": message_id}),
                                            ConsistentRead=True)
        item = deserialize(out.get("Item") or {})
        if "steer_target" not in item or expired(int(item["expires_at"]), self._clock.now()):
            return None
        return item_to_claim(item)

    def acquire_lease(self, job_id: str, owner: str, now: float, lease_seconds: float) -> Job:
        try:
            attrs = self._update(
                Key=serialize({"job_id": job_id}),
                UpdateExpression=("SET lease_owner = :me, lease_expires = :exp, due_at = :exp, "
                                  "attempts = attempts + :one REMOVE queued"),
                ConditionExpression=("attribute_exists(job_id) AND #s IN (:pending, :running, :waiting) "
                                     "AND expires_at > :now "
                                     "AND (attribute_not_exists(lease_owner) OR lease_expires < :now)"),
                ExpressionAttributeNames={"#s": "status"},
                values={":me": owner, ":exp": now + lease_seconds, ":one": 1, ":now": now,
                        **_ACTIVE_VALUES},
                ReturnValues="ALL_NEW")
        except ConditionFailed:
            current = self.get(job_id)  # strongly consistent
            if current is not None and current.status in ACTIVE_STATUSES:
                if current.lease_owner == owner:
                    # Our own update landed and its answer was lost; the SDK's retry then failed
                    # the condition on our own lease. The job is ours.
                    return current
                raise LeaseHeld(job_id) from None
            raise
        return item_to_job(attrs)

    def renew_lease(self, job_id: str, owner: str, now: float, lease_seconds: float,
                    last_seq: int, status: JobStatus, progress: Progress) -> Job:
        try:
            attrs = self._update(
                Key=serialize({"job_id": job_id}),
                UpdateExpression=("SET lease_expires = :exp, due_at = :exp, last_seq = :ls, #s = :st, "
                                  "progress_json = :p"),
                ConditionExpression="lease_owner = :me AND #s IN (:pending, :running, :waiting) AND last_seq <= :ls",
                ExpressionAttributeNames={"#s": "status"},
                values={":me": owner, ":exp": now + lease_seconds, ":ls": last_seq, ":st": str(status),
                        ":p": json.dumps(progress.public()), **_ACTIVE_VALUES},
                ReturnValues="ALL_NEW")
        except ConditionFailed:
            raise Fenced(job_id) from None
        return item_to_job(attrs)

    def release_lease(self, job_id: str, owner: str, due_at: float, *, undo_attempt: bool = False) -> None:
        # The condition on our lease makes the undo count once: the SDK's retry of a landed
        # release fails it.
        try:
            self._update(
                Key=serialize({"job_id": job_id}),
                UpdateExpression=("REMOVE lease_owner, queued SET lease_expires = :zero, due_at = :due"
                                  + (" ADD attempts :m1" if undo_attempt else "")),
                ConditionExpression="lease_owner = :me AND attribute_exists(active_shard)",
                values={":me": owner, ":zero": 0, ":due": due_at, **({":m1": -1} if undo_attempt else {})})
        except ConditionFailed:
            # Not ours any more: released by an earlier try whose answer was lost, taken over, or
            # ended. Either way the job is not held by us, which is all a release asks for.
            pass

    def save_projection(self, job: Job, *, owner: str | None) -> None:
        names = {"#s": "status"}
        values: dict[str, Any] = {
            ":st": str(job.status), ":ls": job.last_seq, ":p": json.dumps(job.progress.public())}
        # Not ``attempts``: it is the lease's (bumped by each acquisition, undone by its holder). A
        # fold read before a later acquisition would write an older count back, and the gate's
        # fence could no longer tell that attempt from the one before (sim seed 918).
        sets = ["#s = :st", "last_seq = :ls", "progress_json = :p"]
        removes: list[str] = []
        for attr, val in (("started_at", job.started_at), ("completed_at", job.completed_at),
                          ("output_json", json.dumps(job.output) if job.output is not None else None),
                          ("error_json", json.dumps(job.error) if job.error is not None else None)):
            if val is not None:
                sets.append(f"{attr} = :{attr}")
                values[f":{attr}"] = val
        # Only onto this job's record: a projection held in flight past retention must not land on
        # the record of the next job of a reused Idempotency-Key (another creation time; sim seed 11).
        condition = "attribute_exists(job_id) AND created_at = :ca AND last_seq <= :ls"
        values[":ca"] = job.created_at
        if job.terminal:
            # Terminal: leave the sweeper's index, drop the lease. Anyone may write it (the log
            # already holds the terminal event); it only ever moves forward.
            removes += ["active_shard", "due_at", "lease_owner"]
        elif owner is not None:
            condition += " AND lease_owner = :me AND #s IN (:pending, :running, :waiting)"
            values[":me"] = owner
            values.update(_ACTIVE_VALUES)
        expr = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            self._update(Key=serialize({"job_id": job.job_id}), UpdateExpression=expr,
                         ConditionExpression=condition, ExpressionAttributeNames=names, values=values)
        except ConditionFailed:
            if owner is not None and not job.terminal:
                raise Fenced(job.job_id) from None
            # A later projection is already there: nothing to do.

    def request_cancel(self, job_id: str, by: str | None = None) -> Job:
        update = "SET cancel_requested = :t" + (", cancel_by = :by" if by else "")
        attrs = self._update(
            Key=serialize({"job_id": job_id}),
            UpdateExpression=update,
            ConditionExpression="attribute_exists(job_id) AND #s IN (:pending, :running, :waiting)",
            ExpressionAttributeNames={"#s": "status"},
            values={":t": True, **({":by": by} if by else {}), **_ACTIVE_VALUES},
            ReturnValues="ALL_NEW")
        return item_to_job(attrs)

    def list_for_user(self, user_id: str, statuses: frozenset[JobStatus] | None, limit: int,
                      start_key: dict[str, Any] | None, conversation_id: str | None = None) -> JobPage:
        # The user index (eventually consistent: a listing only). A conversation's jobs are the
        # user's, filtered: no index of their own, which every job write would pay for. Such a
        # read costs the user's jobs from ``start_key`` back to the page's last match (to the
        # user's oldest live job on the last page): bounded by retention, not by the table.
        now = self._clock.now()
        jobs: list[Job] = []
        key = start_key
        values: dict[str, Any] = {":u": user_id, ":now": int(now)}
        filt = "expires_at > :now"
        if statuses:
            placeholders = []
            for i, st in enumerate(sorted(statuses)):
                values[f":s{i}"] = str(st)
                placeholders.append(f":s{i}")
            filt += f" AND #s IN ({', '.join(placeholders)})"
        if conversation_id is not None:
            values[":c"] = conversation_id
            filt += " AND conversation_id = :c"
        ask = 0
        while True:
            # A filtered page that came back short asks for more each round (few calls to cross
            # a run of other conversations' jobs); the first ask is the page, as before.
            ask = max(limit, 25) if ask == 0 else min(MAX_QUERY_LIMIT, 2 * ask)
            args: dict[str, Any] = {
                "TableName": self._table, "IndexName": "by_user",
                "KeyConditionExpression": "user_id = :u", "FilterExpression": filt,
                "ExpressionAttributeValues": serialize(values), "ScanIndexForward": False,
                "Limit": ask}
            if statuses:
                args["ExpressionAttributeNames"] = {"#s": "status"}
            if key:
                args["ExclusiveStartKey"] = serialize(key)
            with mapped_errors():
                out = self._c.dynamodb.query(**args)
            for raw in out.get("Items", []):
                jobs.append(item_to_job(deserialize(raw)))
                if len(jobs) == limit:
                    last = jobs[-1]
                    # Resume right after the last job handed out, even mid-page.
                    return JobPage(jobs, {"job_id": last.job_id, "user_id": last.user_id,
                                          "created_sk": f"{iso(last.created_at)}#{last.job_id}"})
            lek = out.get("LastEvaluatedKey")
            if not lek:
                return JobPage(jobs, None)
            key = deserialize(lek)

    def find_due(self, now: float, limit: int) -> list[Job]:
        due: list[Job] = []
        for shard in range(ACTIVE_SHARDS):
            with mapped_errors():
                out = self._c.dynamodb.query(
                    TableName=self._table, IndexName="due",
                    KeyConditionExpression="active_shard = :s AND due_at < :now",
                    ExpressionAttributeValues=serialize({":s": f"A#{shard}", ":now": now}),
                    Limit=limit)
            due += [item_to_job(deserialize(i)) for i in out.get("Items", [])]
        return due[:limit * ACTIVE_SHARDS]

    def postpone(self, job_id: str, due_at: float, *, sent: bool = False) -> bool:
        # ``queued``: the sweeper's mark on the job's message (``presume_queued``). The sweeper's
        # own send, made before this write, is "swept"; any other postpone clears the mark.
        values: dict[str, Any] = {":d": due_at, **({":swept": "swept"} if sent else {})}
        try:
            self._update(Key=serialize({"job_id": job_id}),
                         UpdateExpression="SET due_at = :d" + (", queued = :swept" if sent else " REMOVE queued"),
                         ConditionExpression="attribute_exists(active_shard)", values=values)
        except ConditionFailed:
            return False  # it became terminal meanwhile, or has no record
        return True

    def postpone_waiting(self, job_id: str, due_at: float, now: float) -> bool:
        try:
            self._update(Key=serialize({"job_id": job_id}),
                         UpdateExpression="SET due_at = :d REMOVE queued",
                         ConditionExpression=("attribute_exists(active_shard) AND #s = :waiting "
                                              "AND (attribute_not_exists(lease_owner) OR lease_expires < :now) "
                                              "AND attribute_not_exists(door_closed)"),
                         ExpressionAttributeNames={"#s": "status"},
                         values={":d": due_at, ":now": now, ":waiting": JobStatus.WAITING.value})
        except ConditionFailed:
            return False  # answered, taken by a next attempt, or being ended (its door closed) meanwhile
        return True

    def presume_queued(self, job_id: str, due_at: float) -> bool:
        try:
            self._update(Key=serialize({"job_id": job_id}),
                         UpdateExpression="SET due_at = :d, queued = if_not_exists(queued, :presumed)",
                         ConditionExpression=("attribute_exists(active_shard) "
                                              "AND (attribute_not_exists(queued) OR queued = :swept)"),
                         values={":d": due_at, ":presumed": "presumed", ":swept": "swept"})
        except ConditionFailed:
            # Presumed once already since its last send (or our own landed write, retried by the
            # SDK: one duplicate message at worst), or not active.
            return False
        return True

    def delete_unstarted(self, job_id: str, created_at: float) -> None:
        try:
            with mapped_errors():
                self._c.dynamodb.delete_item(
                    TableName=self._table, Key=serialize({"job_id": job_id}),
                    # A job a message was steered into is never deleted: that steer was answered 202.
                    ConditionExpression=("attribute_not_exists(job_id) OR (created_at = :c AND attempts = :zero "
                                         "AND attribute_not_exists(steers))"),
                    ExpressionAttributeValues=serialize({":c": created_at, ":zero": 0}))
        except ConditionFailed:
            # Ours, and a worker took it (or the SDK retried our landed delete and met... nothing:
            # that passes the first clause). Let the caller tell.
            current = self.get(job_id)
            if current is not None and current.created_at == created_at:
                raise


# ---- gates -----------------------------------------------------------------------------------


def _gate_key(user_id: str) -> dict[str, Any]:
    # In the jobs table beside the job records (job ids are 32 hex characters: no collision). No
    # ``user_id``/``created_sk`` and no ``active_shard``: the gate is in neither index.
    return serialize({"job_id": f"gate#{user_id}"})


def _gate_shard(user_id: str) -> str:
    """The gate's partition of the sparse ``gate_check`` index (spread as the ``due`` index is)."""
    return f"G#{sum(user_id.encode()) % ACTIVE_SHARDS}"


def after(last: str, entry: GateEntry) -> str:
    """An order for ``entry`` greater than ``last`` (its own, if that is greater already)."""
    return entry.order if entry.order > last else f"{last}|{entry.job_id}"


def item_to_gate(item: dict[str, Any] | None, now: float) -> Gate:
    if not item or expired(int(item.get("expires_at", 0)), now):
        return Gate()
    entries = tuple(GateEntry(job_id=j, conversation_id=e["c"], order=e["k"], running=bool(e.get("r")),
                              asking=bool(e.get("a")), attempt=int(e.get("n", 0)),
                              created_at=float(e.get("t", 0)))
                    for j, e in (item.get("m") or {}).items())
    return Gate(entries=entries, running=int(item.get("running", 0)))


class DynamoGateStore:
    """Each user's gate as one item of the jobs table (``gate#<user>``): ``m`` maps each active job
    id to ``{c: conversation, k: order, r: running, a: asking, n: the attempt that took its slot,
    t: the creation time of the job that enrolled it or took its slot}``,
    ``busy`` maps each conversation with a running job to that job, ``running`` counts the slots
    held. Every change is one UpdateItem whose condition is the state it changes from (so the SDK's
    retry of a landed write fails the condition instead of applying twice), returning ALL_NEW; a
    worker's writes are also conditional on no later attempt's stamp (``t`` and ``n``: the fence,
    see ``ports.GateStore``). ``gate_shard`` and ``check_at`` put the gate on the sparse, KEYS_ONLY
    ``gate_check`` index while it may hold entries: set by the enroll that adds one (an earlier
    ``check_at`` stays), moved by the sweeper's check, removed only under ``size(m) = 0``; KEYS_ONLY,
    so the gate's other writes cost the index nothing. See docs/data-model.md."""

    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.jobs_table
        self._clock = clock or SystemClock()

    def _raw(self, user_id: str) -> dict[str, Any] | None:
        with mapped_errors():
            out = self._c.dynamodb.get_item(TableName=self._table, Key=_gate_key(user_id), ConsistentRead=True)
        return deserialize(out["Item"]) if "Item" in out else None

    def read(self, user_id: str) -> Gate:
        return item_to_gate(self._raw(user_id), self._clock.now())

    def _write(self, user_id: str, update: str, condition: str, names: dict[str, str],
               values: dict[str, Any]) -> Gate:
        with mapped_errors():
            out = self._c.dynamodb.update_item(
                TableName=self._table, Key=_gate_key(user_id), UpdateExpression=update,
                ConditionExpression=condition, ExpressionAttributeNames=names,
                ExpressionAttributeValues=serialize(values), ReturnValues="ALL_NEW")
        return item_to_gate(deserialize(out.get("Attributes", {})), self._clock.now())

    def _create_empty(self, user_id: str, expires_at: int) -> None:
        """A new (or expired, so gone) gate becomes an empty one. Losing the race is fine."""
        try:
            with mapped_errors():
                self._c.dynamodb.put_item(
                    TableName=self._table,
                    Item=serialize({"job_id": f"gate#{user_id}", "gate_user": user_id, "m": {}, "busy": {},
                                    "running": 0, "expires_at": expires_at}),
                    ConditionExpression="attribute_not_exists(job_id) OR expires_at <= :now",
                    ExpressionAttributeValues=serialize({":now": int(self._clock.now())}))
        except ConditionFailed:
            pass  # someone else made it first

    def enroll(self, user_id: str, entry: GateEntry, max_active: int | None, expires_at: int, *,
               check_at: float) -> Gate:
        # ``last`` is the order of the latest entry: each entry's order must be greater, so the
        # order is the order in which the enrolls landed (submit order), whatever the clocks of
        # the API hosts say. Two submits in the same millisecond, or a host whose clock is
        # behind, fail that condition once and go in with an order just after ``last``.
        condition = ("attribute_exists(m) AND expires_at > :now AND attribute_not_exists(m.#j) "
                     "AND (attribute_not_exists(#last) OR #last < :k)")
        order = entry.order
        values: dict[str, Any] = {":x": expires_at, ":gs": _gate_shard(user_id), ":ca": check_at}
        if max_active is not None:
            condition += " AND size(m) < :max"
            values[":max"] = max_active
        # Enrolls of one user race only each other (on ``last``), and every round one of them lands:
        # a burst of n concurrent submits settles within n rounds.
        for _ in range(max_active + 8 if max_active is not None else 64):
            values[":now"] = int(self._clock.now())
            values[":k"] = order
            values[":e"] = {"c": entry.conversation_id, "k": order, "r": False, "t": entry.created_at}
            try:
                # The same write lists the gate for the sweeper's check: no entry without it.
                return self._write(user_id, "SET m.#j = :e, #last = :k, expires_at = :x, gate_shard = :gs, "
                                            "check_at = if_not_exists(check_at, :ca)", condition,
                                   {"#j": entry.job_id, "#last": "last"}, values)
            except ConditionFailed:
                raw = self._raw(user_id)
                now = self._clock.now()
                gate = item_to_gate(raw, now)
                mine = gate.entry(entry.job_id)
                if mine is not None:
                    if mine.left_by_another_job(entry.created_at):
                        return self._take_over_entry(user_id, mine, entry.created_at)
                    return gate  # enrolled already (a replay, or our own write landed unanswered)
                if raw is None or expired(int(raw.get("expires_at", 0)), now):
                    self._create_empty(user_id, expires_at)
                    continue
                if max_active is not None and len(gate.entries) >= max_active:
                    raise GateFull(gate) from None
                order = after(str(raw.get("last") or ""), entry)
        raise TransientStoreError(f"could not enroll {entry.job_id}")

    def _take_over_entry(self, user_id: str, mine: GateEntry, created_at: float) -> Gate:
        """The enrolling job's creation time on an entry of its id that another job of the id left
        untaken (``GateEntry.left_by_another_job``), if it is still as read: untaken, with that
        job's creation time. Otherwise (a worker took it, or a retry of ours landed) the gate as it is."""
        try:
            return self._write(
                user_id, "SET m.#j.#t = :ct",
                "m.#j.#t = :old AND m.#j.r = :f AND (attribute_not_exists(m.#j.a) OR m.#j.a = :f) "
                "AND (attribute_not_exists(m.#j.#n) OR m.#j.#n = :zero)",
                {"#j": mine.job_id, "#t": "t", "#n": "n"},
                {":ct": created_at, ":old": mine.created_at, ":f": False, ":zero": 0})
        except ConditionFailed:
            return self.read(user_id)

    def due_for_check(self, now: float, limit: int) -> list[str]:
        users: list[str] = []
        for shard in range(ACTIVE_SHARDS):
            with mapped_errors():
                out = self._c.dynamodb.query(
                    TableName=self._table, IndexName="gate_check",
                    KeyConditionExpression="gate_shard = :s AND check_at < :now",
                    ExpressionAttributeValues=serialize({":s": f"G#{shard}", ":now": now}), Limit=limit)
            users += [str(deserialize(i)["job_id"]).removeprefix("gate#") for i in out.get("Items", [])]
        return users

    def check_later(self, user_id: str, check_at: float) -> None:
        try:
            with mapped_errors():
                self._c.dynamodb.update_item(
                    TableName=self._table, Key=_gate_key(user_id),
                    UpdateExpression="SET gate_shard = :gs, check_at = :ca",
                    ConditionExpression="attribute_exists(m)",
                    ExpressionAttributeValues=serialize({":gs": _gate_shard(user_id), ":ca": check_at}))
        except ConditionFailed:
            pass  # no gate item (TTL deleted it): nothing to check

    def unlist_if_empty(self, user_id: str) -> bool:
        try:
            with mapped_errors():
                self._c.dynamodb.update_item(
                    TableName=self._table, Key=_gate_key(user_id), UpdateExpression="REMOVE gate_shard, check_at",
                    ConditionExpression="attribute_exists(job_id) AND (size(m) = :zero OR expires_at <= :now)",
                    ExpressionAttributeValues=serialize({":zero": 0, ":now": int(self._clock.now())}))
        except ConditionFailed:
            # It holds entries (an enroll landed since it was read), or there is no item at all
            # (then nothing is listed): the SDK's retry of our own landed write meets an empty
            # gate again and passes.
            return not self.read(user_id).entries
        return True

    def take(self, user_id: str, entry: GateEntry, max_running: int, expires_at: int, *, attempt: int) -> Gate:
        names = {"#j": entry.job_id, "#c": entry.conversation_id}
        values: dict[str, Any] = {":t": True, ":f": False, ":j": entry.job_id, ":one": 1, ":max": max_running,
                                  ":x": expires_at}
        condition = ("attribute_exists(m.#j) AND m.#j.r = :f AND running < :max AND attribute_not_exists(busy.#c) "
                     "AND (attribute_not_exists(m.#j.a) OR m.#j.a = :f)")
        stamp = self._stamp(names, values, attempt, entry.created_at)
        if entry.created_at:
            condition += " AND (attribute_not_exists(m.#j.#t) OR m.#j.#t <= :ct)"  # not a later job's entry
        return self._write(
            user_id, f"SET m.#j.r = :t, {stamp}, busy.#c = :j, "
                     "expires_at = :x ADD running :one", condition, names, values)

    def retake(self, user_id: str, job_id: str, *, attempt: int, created_at: float = 0.0) -> Gate:
        # Stamped by an earlier attempt only: fenced by no later one, and not by this one.
        names = {"#j": job_id}
        values: dict[str, Any] = {":t": True}
        condition = self._fence("m.#j.r = :t", names, values, attempt, created_at)
        same = "m.#j.#n = :att" if not created_at else "m.#j.#n = :att AND (m.#j.#t = :ct OR NOT m.#j.#t > :zero)"
        return self._write(user_id, f"SET {self._stamp(names, values, attempt, created_at)}",
                           f"{condition} AND NOT ({same})", names, values)

    @staticmethod
    def _fenced(gate: Gate, job_id: str, attempt: int | None, created_at: float) -> bool:
        """Whether a later attempt than ``attempt`` (or a later job of the id) stamped the job's
        entry (as read)."""
        mine = gate.entry(job_id)
        return attempt is not None and mine is not None and mine.fences(created_at, attempt)

    @staticmethod
    def _stamp(names: dict[str, str], values: dict[str, Any], attempt: int, created_at: float) -> str:
        """The SET clauses stamping the entry ``#j`` with ``attempt`` (and ``created_at``, if known)."""
        names["#n"] = "n"
        values[":att"] = attempt
        if not created_at:
            return "m.#j.#n = :att"
        names["#t"] = "t"
        values[":ct"] = created_at
        return "m.#j.#n = :att, m.#j.#t = :ct"

    @staticmethod
    def _fence(condition: str, names: dict[str, str], values: dict[str, Any], attempt: int | None,
               created_at: float) -> str:
        """``condition``, and the entry ``#j`` does not fence ``attempt`` of the job created at
        ``created_at`` (``GateEntry.fences``; as is without ``attempt``)."""
        if attempt is None:
            return condition
        names["#n"] = "n"
        values[":att"] = attempt
        no_later_attempt = "attribute_not_exists(m.#j.#n) OR m.#j.#n <= :att"
        if not created_at:
            return f"({condition}) AND ({no_later_attempt})"
        # Not a later job of the id; and no later attempt, unless the stamp is an earlier job's.
        # (An entry without a creation time, or 0: unknown, the attempts alone decide.)
        names["#t"] = "t"
        values[":ct"] = created_at
        values[":zero"] = 0
        return (f"({condition}) AND (attribute_not_exists(m.#j.#t) OR m.#j.#t <= :ct) "
                f"AND ({no_later_attempt} OR (m.#j.#t > :zero AND m.#j.#t < :ct))")

    def pause(self, user_id: str, job_id: str, conversation_id: str, *, attempt: int,
              created_at: float = 0.0) -> Gate:
        names = {"#j": job_id, "#c": conversation_id}
        values: dict[str, Any] = {":t": True, ":f": False, ":j": job_id, ":m1": -1}
        condition = self._fence("m.#j.r = :t AND busy.#c = :j", names, values, attempt, created_at)
        try:
            return self._write(user_id, "SET m.#j.r = :f, m.#j.a = :t REMOVE busy.#c ADD running :m1",
                               condition, names, values)
        except ConditionFailed:
            gate = self.read(user_id)
            if self._fenced(gate, job_id, attempt, created_at):
                raise  # a later attempt holds the job: ours lost it
            return gate  # paused already (a landed earlier try), or not running

    def unpause(self, user_id: str, job_id: str, *, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        names = {"#j": job_id}
        values: dict[str, Any] = {":t": True, ":f": False}
        condition = self._fence("m.#j.a = :t", names, values, attempt, created_at)
        try:
            return self._write(user_id, "SET m.#j.a = :f", condition, names, values)
        except ConditionFailed:
            gate = self.read(user_id)
            if self._fenced(gate, job_id, attempt, created_at):
                raise  # a later attempt holds the job: ours lost it
            return gate  # not asking (answered already, or never paused yet)

    def remove(self, user_id: str, job_id: str, *, conversation_id: str | None = None,
               only_untaken: bool = False, attempt: int | None = None, created_at: float = 0.0) -> Gate:
        # With the conversation known, guess the state (running, unless only an untaken entry may
        # go) and write at once: a job that ends removes itself in one write. A wrong guess fails
        # its condition, and the gate is read.
        entry = GateEntry(job_id, conversation_id, "", running=not only_untaken) if conversation_id else None
        for _ in range(4):
            if entry is None:
                gate = self.read(user_id)
                entry = gate.entry(job_id)
                if entry is None or (only_untaken and entry.of_another_job(created_at)):
                    return gate  # not enrolled (removed already, by us or by an earlier try), or not ours
                if self._fenced(gate, job_id, attempt, created_at):
                    raise ConditionFailed(f"{job_id}: held by attempt {entry.attempt} of the job created at "
                                          f"{entry.created_at}")
            names = {"#j": job_id}
            try:
                if only_untaken and (entry.running or entry.attempt):
                    raise ConditionFailed(f"{job_id}: taken by attempt {entry.attempt}")
                if entry.running:
                    names["#c"] = entry.conversation_id
                    values: dict[str, Any] = {":t": True, ":j": job_id, ":m1": -1}
                    return self._write(user_id, "REMOVE m.#j, busy.#c ADD running :m1",
                                       self._fence("m.#j.r = :t AND busy.#c = :j", names, values, attempt,
                                                   created_at),
                                       names, values)
                values = {":f": False}
                condition = "m.#j.r = :f"
                if only_untaken:  # and no worker's stamp: one that asked, or was answered since, is started
                    names["#n"], values[":zero"] = "n", 0
                    condition += " AND (attribute_not_exists(m.#j.#n) OR m.#j.#n = :zero)"
                    if created_at:  # and the entry is our job's (a creation time unknown, 0: as is)
                        names["#t"], values[":ct"] = "t", created_at
                        condition += " AND (attribute_not_exists(m.#j.#t) OR m.#j.#t = :zero OR m.#j.#t = :ct)"
                return self._write(user_id, "REMOVE m.#j", self._fence(condition, names, values, attempt, created_at),
                                   names, values)
            except ConditionFailed:
                if only_untaken and (entry.running or entry.attempt):
                    raise
                entry = None  # another state than guessed, or it moved: read and go again
        raise TransientStoreError(f"could not remove {job_id} from its gate")


# ---- stream slots -----------------------------------------------------------------------------

SLOT_ITEM_SECONDS = 86400  # a slots item's TTL past its latest take or renewal: longer than any lease
SLOTS_CLEARED_PER_WRITE = 25  # expired slots one write clears (an expression's size is bounded)


class DynamoStreamSlots:
    """Each user's stream slots as one item of the stream slots table (key ``user_id``): ``h`` maps
    each holder to the end of its lease. A take is one UpdateItem, ``SET h.<holder>`` on the
    condition that the holder is there already (the SDK's retry of a take that landed: counted
    once) or ``size(h)`` is under the cap. ``size(h)`` counts expired leases too, so the condition
    alone can refuse but never over-admit; a refused take reads the item (strongly consistent) and
    clears the expired leases it finds, each on the condition that it still holds the value read
    (a renewal meanwhile keeps it), then tries again. TTL (``expires_at``, a day past the latest
    take or renewal, so never before a live lease ends) only removes idle users' items."""

    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.stream_slots_table
        self._clock = clock or SystemClock()

    def _key(self, user_id: str) -> dict[str, Any]:
        return serialize({"user_id": user_id})

    def _update(self, user_id: str, update: str, condition: str, names: dict[str, str],
                values: dict[str, Any] | None = None) -> None:
        kwargs: dict[str, Any] = {"ExpressionAttributeValues": serialize(values)} if values else {}
        with mapped_errors():
            self._c.dynamodb.update_item(TableName=self._table, Key=self._key(user_id), UpdateExpression=update,
                                         ConditionExpression=condition, ExpressionAttributeNames=names, **kwargs)

    def _read(self, user_id: str) -> dict[str, float] | None:
        with mapped_errors():
            out = self._c.dynamodb.get_item(TableName=self._table, Key=self._key(user_id), ConsistentRead=True)
        if "Item" not in out:
            return None
        return {h: float(t) for h, t in (deserialize(out["Item"]).get("h") or {}).items()}

    def _lease(self, until: float) -> dict[str, Any]:
        return {":until": until, ":x": int(max(self._clock.now(), until)) + SLOT_ITEM_SECONDS}

    def take(self, user_id: str, holder: str, cap: int, until: float) -> bool:
        # Each round either lands, or finds the cap reached by live leases, or changes the item
        # (creates it, clears expired leases) or sees another take or release land: bounded.
        for _ in range(cap + 8):
            try:
                self._update(user_id, "SET h.#me = :until, expires_at = :x",
                             "attribute_exists(h) AND (attribute_exists(h.#me) OR size(h) < :cap)",
                             {"#me": holder}, {**self._lease(until), ":cap": cap})
                return True
            except ConditionFailed:
                pass
            held = self._read(user_id)
            if held is None:
                self._create(user_id)
                continue
            now = self._clock.now()
            expired = [(h, t) for h, t in held.items() if t <= now]
            if expired:
                self._clear(user_id, expired[:SLOTS_CLEARED_PER_WRITE])
            elif holder not in held and len(held) >= cap:
                return False
        return False

    def _create(self, user_id: str) -> None:
        """The user's first slot (or first since TTL removed the item): an empty item. Losing the race is fine."""
        try:
            with mapped_errors():
                self._c.dynamodb.put_item(
                    TableName=self._table,
                    Item=serialize({"user_id": user_id, "h": {},
                                    "expires_at": int(self._clock.now()) + SLOT_ITEM_SECONDS}),
                    ConditionExpression="attribute_not_exists(user_id)")
        except ConditionFailed:
            pass

    def _clear(self, user_id: str, expired: list[tuple[str, float]]) -> None:
        """Remove expired leases, each only if it still ends where it did when read."""
        names = {f"#e{i}": h for i, (h, _) in enumerate(expired)}
        values = {f":t{i}": t for i, (_, t) in enumerate(expired)}
        try:
            self._update(user_id, "REMOVE " + ", ".join(f"h.{n}" for n in names),
                         " AND ".join(f"h.#e{i} = :t{i}" for i in range(len(expired))), names, values)
        except ConditionFailed:
            pass  # renewed, released or cleared meanwhile: the caller reads again

    def renew(self, user_id: str, holder: str, until: float) -> bool:
        try:
            self._update(user_id, "SET h.#me = :until, expires_at = :x", "attribute_exists(h.#me)",
                         {"#me": holder}, self._lease(until))
            return True
        except ConditionFailed:
            return False

    def release(self, user_id: str, holder: str) -> None:
        try:
            self._update(user_id, "REMOVE h.#me", "attribute_exists(h.#me)", {"#me": holder})
        except ConditionFailed:
            pass  # gone already

    def holders(self, user_id: str) -> dict[str, float]:
        now = self._clock.now()
        return {h: t for h, t in (self._read(user_id) or {}).items() if t > now}


# ---- events ------------------------------------------------------------------------------


def event_to_item(job_id: str, ev: Event, expires_at: int) -> dict[str, Any]:
    return {"job_id": job_id, "seq": ev.seq, "type": str(ev.type), "at": ev.at, "attempt": ev.attempt,
            "data_json": json.dumps(ev.data, separators=(",", ":")), "writer": ev.writer,
            "event_id": ev.id or None, "expires_at": expires_at}


def item_to_event(item: dict[str, Any]) -> Event:
    return Event(seq=int(item["seq"]), type=EventType(item["type"]), at=item["at"],
                 attempt=int(item.get("attempt", 0)), data=json.loads(item.get("data_json") or "{}"),
                 writer=item.get("writer", ""), id=item.get("event_id", ""))


class DynamoEventLog:
    """One item per event, key (job_id, seq). Reads are GetItem/BatchGetItem by key, never Query:
    seqs are contiguous, so the keys to read are known, and key reads stay flat as the table grows."""

    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.events_table
        self._clock = clock or SystemClock()

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        # An expired item is gone as far as we are concerned, although TTL may keep it for days:
        # its slot is free (a job id reused after retention starts a fresh log on old items).
        with mapped_errors():
            self._c.dynamodb.put_item(TableName=self._table,
                                      Item=serialize(event_to_item(job_id, event, expires_at)),
                                      ConditionExpression="attribute_not_exists(seq) OR expires_at <= :now",
                                      ExpressionAttributeValues=serialize({":now": int(self._clock.now())}))

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        with mapped_errors():
            out = self._c.dynamodb.get_item(TableName=self._table,
                                            Key=serialize({"job_id": job_id, "seq": seq}),
                                            ConsistentRead=consistent)
        item = out.get("Item")
        if item is None:
            return None
        data = deserialize(item)
        if expired(int(data.get("expires_at", 0)), self._clock.now()):
            return None
        return item_to_event(data)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        if last < first:
            return []
        if first == last:
            ev = self.get(job_id, first, consistent)
            return [ev] if ev else []
        now = self._clock.now()
        found: list[Event] = []
        for lo in range(first, last + 1, 100):
            keys = [serialize({"job_id": job_id, "seq": s}) for s in range(lo, min(last, lo + 99) + 1)]
            request: dict[str, Any] = {self._table: {"Keys": keys, "ConsistentRead": consistent}}
            while request:
                with mapped_errors():
                    out = self._c.dynamodb.batch_get_item(RequestItems=request)
                for raw in out.get("Responses", {}).get(self._table, []):
                    data = deserialize(raw)
                    if not expired(int(data.get("expires_at", 0)), now):
                        found.append(item_to_event(data))
                request = out.get("UnprocessedKeys") or {}
        found.sort(key=lambda e: e.seq)
        return found


# ---- conversations and agent data --------------------------------------------------------


class DynamoConversationStore:
    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.conversations_table
        self._clock = clock or SystemClock()

    def commit_turn(self, user_id: str, conversation_id: str, job_id: str, message: str, reply: str,
                    at: str, expires_at: int, steered: tuple[str, ...] = (), *, stopped: bool = False) -> None:
        key = f"{user_id}#{conversation_id}"
        # Keyed by job id: a repeated commit overwrites the same two items with the same content
        # (both come from the stored terminal event), so the turn exists exactly once. Both go in
        # one BatchWriteItem (one round trip, the same write units): it is not atomic, which needs
        # no atomicity here: a crash between the two is repaired by the next finalize, which
        # writes both again before the terminal projection takes the job off the sweeper's index.
        requests = [{"PutRequest": {"Item": serialize({
            "conversation_key": key, "sk": f"{at}#{job_id}#{n}", "role": role, "text": text,
            "job_id": job_id, "at": at, "expires_at": expires_at,
            **({"stopped": True} if stopped and role == "assistant" else {})})}}
            for n, role, text in turn_messages(message, steered, reply)]
        for attempt in range(8):
            with mapped_errors():
                out = self._c.dynamodb.batch_write_item(RequestItems={self._table: requests})
            requests = out.get("UnprocessedItems", {}).get(self._table, [])
            if not requests:
                return
            self._clock.sleep(min(1.0, 0.05 * 2 ** attempt))  # throttled: back off, as the SDK would
        raise TransientStoreError("the conversation turn was not written (throttled)")

    def page(self, user_id: str, conversation_id: str, limit: int, before: str | None = None) -> MessagePage:
        """Newest first from ``before``, ``Limit`` = what is still wanted: a page of 50 reads 51
        items, whether the conversation holds 50 turns or 5,000 (it used to read them all and
        keep the last N). The item past the page only says there is more."""
        key = f"{user_id}#{conversation_id}"
        start: dict[str, Any] | None = {"conversation_key": key, "sk": before} if before else None
        # Strongly consistent: the next job plans from this history, and a stale read would
        # leave out the turn committed a moment ago.
        found = self._live_items({
            "TableName": self._table, "KeyConditionExpression": "conversation_key = :k",
            "ExpressionAttributeValues": serialize({":k": key}),
            "ScanIndexForward": False, "ConsistentRead": True}, start, limit + 1)  # newest first
        if len(found) > limit:
            kept = found[:limit]
            return MessagePage([_message(m) for m in reversed(kept)], kept[-1]["sk"] if kept else None)
        return MessagePage([_message(m) for m in reversed(found)], None)

    def _live_items(self, query: dict[str, Any], start: dict[str, Any] | None, count: int) -> list[dict[str, Any]]:
        """The first ``count`` unexpired items of ``query`` from ``start``, in its order (fewer
        at its end). A round that came back short of live items met expired ones (TTL deletes
        days late): ask for more each round, so an expired run costs few calls."""
        found: list[dict[str, Any]] = []
        ask = 0
        while True:
            want = count - len(found)
            ask = want if ask == 0 else min(MAX_QUERY_LIMIT, max(want, 2 * ask))
            args = {**query, "Limit": ask}
            if start:
                args["ExclusiveStartKey"] = serialize(start)
            with mapped_errors():
                out = self._c.dynamodb.query(**args)
            now = self._clock.now()
            for raw in out.get("Items", []):
                d = deserialize(raw)
                if expired(int(d.get("expires_at", 0)), now):
                    continue
                found.append(d)
                if len(found) == count:
                    return found
            lek = out.get("LastEvaluatedKey")
            if not lek:
                return found
            start = deserialize(lek)

    def messages(self, user_id: str, conversation_id: str, limit: int) -> list[dict[str, Any]]:
        return self.page(user_id, conversation_id, limit).messages

    # ---- the user's list: one head item per conversation, on the sparse index ``by_activity``

    def touch(self, user_id: str, conversation_id: str, at: str, title: str, expires_at: int) -> None:
        """One UpdateItem on the conversation's head (its own partition, ``user#conversation#head``,
        so that reading the messages never meets it). The condition keeps the latest ``at`` when
        touches land out of order; an expired head is started anew, title included (a second,
        rare, write: ``if_not_exists`` cannot tell an expired title from a live one)."""
        key = {"conversation_key": _head_key(user_id, conversation_id), "sk": HEAD_SK}
        values = {":u": user_id, ":c": conversation_id, ":at": at, ":s": f"{at}#{conversation_id}",
                  ":e": expires_at, ":t": title, ":now": int(self._clock.now())}
        try:
            with mapped_errors():
                out = self._c.dynamodb.update_item(
                    TableName=self._table, Key=serialize(key),
                    UpdateExpression="SET #u = :u, #c = :c, #at = :at, #s = :s, #e = :e, "
                                     "#t = if_not_exists(#t, :t)",
                    ConditionExpression="attribute_not_exists(#at) OR #at < :at OR #e <= :now",
                    ExpressionAttributeNames=_HEAD_NAMES, ExpressionAttributeValues=serialize(values),
                    ReturnValues="ALL_OLD")
        except ConditionFailed:
            return  # a later touch stands (with a later expiry): this one changes nothing
        old = deserialize(out.get("Attributes") or {})
        if old and expired(int(old.get("expires_at", 0)), values[":now"]) and old.get("title") != title:
            with suppress(ConditionFailed), mapped_errors():  # a later touch came in between: it stands
                self._c.dynamodb.update_item(
                    TableName=self._table, Key=serialize(key), UpdateExpression="SET #t = :t",
                    ConditionExpression="#at = :at", ExpressionAttributeNames={"#t": "title", "#at": "updated_at"},
                    ExpressionAttributeValues=serialize({":t": title, ":at": at}))

    def recent(self, user_id: str, limit: int, before: str | None = None) -> ConversationList:
        """An index query, newest first, from ``before``; expired heads (TTL deletes days late)
        are skipped, asking for more each round as ``page`` does."""
        cond, values = "user_id = :u", {":u": user_id}
        if before:
            cond, values = "user_id = :u AND active_sk < :b", {":u": user_id, ":b": before}
        found = self._live_items({
            "TableName": self._table, "IndexName": "by_activity", "KeyConditionExpression": cond,
            "ExpressionAttributeValues": serialize(values), "ScanIndexForward": False}, None, limit + 1)
        kept = found[:limit]
        more = len(found) > limit
        return ConversationList(
            [ConversationHead(h["conversation_id"], h["updated_at"], h.get("title", "")) for h in kept],
            kept[-1]["active_sk"] if more and kept else None)


HEAD_SK = "head"
_HEAD_NAMES = {"#u": "user_id", "#c": "conversation_id", "#at": "updated_at", "#s": "active_sk",
               "#e": "expires_at", "#t": "title"}


def _head_key(user_id: str, conversation_id: str) -> str:
    # Neither a user name nor a conversation id holds "#": no conversation's messages share it.
    return f"{user_id}#{conversation_id}#head"


def _message(item: dict[str, Any]) -> dict[str, Any]:
    out = {"role": item["role"], "text": item["text"], "job_id": item["job_id"], "at": item["at"]}
    if item.get("stopped"):
        out["stopped"] = True  # a reply cut off by a cancel (Stop keeps the words)
    return out


class DynamoAgentDataStore:
    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.agent_data_table
        self._clock = clock or SystemClock()

    def record_step_effect(self, job_id: str, step_index: int, attempt: int, payload: dict[str, Any],
                           expires_at: int) -> int:
        # Each run adds its own token to a set: the SDK's retry of an update whose answer was lost
        # adds the same token again, so one run is counted once (``ADD`` of a number would count
        # it twice). An expired record (a job id reused after retention) is replaced, not added to.
        key = serialize({"pk": f"EFFECT#{job_id}", "sk": f"STEP#{step_index:04d}"})
        token = uuid.uuid4().hex
        now = int(self._clock.now())
        for _ in range(3):
            try:
                with mapped_errors():
                    out = self._c.dynamodb.update_item(
                        TableName=self._table, Key=key,
                        UpdateExpression="ADD runs :run SET last_attempt = :a, payload_json = :p, "
                                         "expires_at = :e",
                        ConditionExpression="attribute_not_exists(pk) OR expires_at > :now",
                        ExpressionAttributeValues=serialize({":run": {token}, ":a": attempt,
                                                             ":p": json.dumps(payload), ":e": expires_at,
                                                             ":now": now}),
                        # ALL_NEW: an ADD that changes nothing (the retry of a landed try) may be
                        # left out of UPDATED_NEW, and the count is wanted either way.
                        ReturnValues="ALL_NEW")
                return len(deserialize(out["Attributes"])["runs"])
            except ConditionFailed:
                try:
                    with mapped_errors():
                        self._c.dynamodb.put_item(
                            TableName=self._table,
                            Item=serialize({"pk": f"EFFECT#{job_id}", "sk": f"STEP#{step_index:04d}",
                                            "runs": {token}, "last_attempt": attempt,
                                            "payload_json": json.dumps(payload), "expires_at": expires_at}),
                            ConditionExpression="expires_at <= :now",
                            ExpressionAttributeValues=serialize({":now": now}))
                    return 1
                except ConditionFailed:
                    continue  # someone wrote it meanwhile (or our put landed unanswered): add to it
        raise TransientStoreError(f"could not record step {step_index} of {job_id}")

    def step_effects(self, job_id: str) -> dict[int, int]:
        with mapped_errors():
            out = self._c.dynamodb.query(
                TableName=self._table, KeyConditionExpression="pk = :p",
                ExpressionAttributeValues=serialize({":p": f"EFFECT#{job_id}"}), ConsistentRead=True)
        result: dict[int, int] = {}
        now = self._clock.now()
        for raw in out.get("Items", []):
            d = deserialize(raw)
            if not expired(int(d.get("expires_at", 0)), now):
                result[int(d["sk"].split("#")[1])] = len(d.get("runs", ()))
        return result

    def record_usage(self, job_key: str, call: str, usage: dict[str, int], expires_at: int) -> None:
        # One item per (job, call): a put, so the SDK's retry of a lost answer writes the same item.
        with mapped_errors():
            self._c.dynamodb.put_item(TableName=self._table, Item=serialize({
                "pk": f"USAGE#{job_key}", "sk": f"CALL#{call}",
                "usage_json": json.dumps(usage, sort_keys=True), "expires_at": expires_at}))

    def usage_records(self, job_key: str) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        kwargs: dict[str, Any] = {"TableName": self._table, "KeyConditionExpression": "pk = :p",
                                  "ExpressionAttributeValues": serialize({":p": f"USAGE#{job_key}"}),
                                  "ConsistentRead": True}
        now = self._clock.now()
        while True:
            with mapped_errors():
                out = self._c.dynamodb.query(**kwargs)
            for raw in out.get("Items", []):
                d = deserialize(raw)
                if not expired(int(d.get("expires_at", 0)), now):
                    result[d["sk"].split("#", 1)[1]] = json.loads(d["usage_json"])
            if "LastEvaluatedKey" not in out:
                return result
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]


# ---- queue -------------------------------------------------------------------------------


class SqsJobQueue:
    def __init__(self, clients: AwsClients) -> None:
        self._c = clients

    def send(self, job_id: str, delay_seconds: int = 0, *, next_up: bool = False) -> None:
        body = {"job_id": job_id, "next_up": True} if next_up else {"job_id": job_id}
        with mapped_errors():
            self._c.sqs.send_message(QueueUrl=self._c.queue_url, MessageBody=json.dumps(body),
                                     DelaySeconds=max(0, min(900, delay_seconds)))

    def backlog(self) -> int:
        with mapped_errors():
            out = self._c.sqs.get_queue_attributes(
                QueueUrl=self._c.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"])
        attrs = out.get("Attributes", {})
        return sum(int(attrs.get(name, 0)) for name in ("ApproximateNumberOfMessages",
                                                         "ApproximateNumberOfMessagesDelayed"))

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        with mapped_errors():
            self._c.sqs.change_message_visibility(QueueUrl=self._c.queue_url, ReceiptHandle=receipt_handle,
                                                  VisibilityTimeout=max(0, min(43200, seconds)))

    def dead_letter(self, job_id: str, body: str, reason: str) -> None:
        with mapped_errors():
            self._c.sqs.send_message(
                QueueUrl=self._c.dlq_url, MessageBody=body,
                MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:256]},
                                   "job_id": {"DataType": "String", "StringValue": job_id}})
