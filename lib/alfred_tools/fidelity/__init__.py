"""Faithful mode: an HTTP proxy in front of moto server that behaves like AWS where moto is kinder.

Why it exists. moto answers every read strongly consistently, never deletes TTL-expired items,
never loses the answer to a write it applied, never throttles, and enforces no IAM. Code that
only ever runs against moto can come to depend on guarantees AWS does not give, and no test
would notice. This proxy sits between every boto3 client (API, workers, sweeper, tests) and a
moto server, and puts back what AWS really does. Every random choice is drawn from a seed
(``seed=N``), so a run can be replayed (per operation; which thread draws the n-th decision
can vary under concurrency).

1. Eventually consistent reads are stale. The proxy watches every write that passes through
   it (PutItem, UpdateItem, DeleteItem, BatchWriteItem, TransactWriteItems) and keeps, per
   (table, primary key), a short history of versions with the time each appeared. A read
   with ``ConsistentRead`` false or absent (GetItem, BatchGetItem, Query, Scan; a query on a
   global secondary index is always eventually consistent) sees each key as it was at
   ``now - lag``, lag uniform in [0, stale_ms] drawn per request: an item created less than
   lag ago is absent, an updated one comes back as its older version, a recently deleted one
   is still returned by GetItem/BatchGetItem. Query/Scan results are mapped item by item
   through the same view (the older version is kept only if it still satisfies the key
   condition and filter). Consistent reads are never stale.
2. TTL deletes late and in any order. A background thread learns each table's TTL attribute,
   looks for items whose TTL is in the past, and deletes each after its own random delay in
   ``ttl_delay`` seconds, so the items of one job disappear late and one by one (the job
   record before its events, some events before others). Until then reads return them, as
   DynamoDB does; the deletions enter the history, so stale reads may still see them.
3. Ambiguous writes. A PutItem, UpdateItem, DeleteItem, SendMessage, DeleteMessage(Batch) or
   ChangeMessageVisibility(Batch) is applied upstream and then its answer is lost (HTTP 500,
   or the connection is closed) *before* the SDK's retry loop: botocore sends it again, and
   the caller sees the outcome of the retry, e.g. ConditionalCheckFailedException on its own
   conditional write, or a message sent twice.
4. Throttling and 5xx, not forwarded: DynamoDB ProvisionedThroughputExceededException /
   ThrottlingException (400) and InternalServerError (500); SQS RequestThrottled /
   ThrottlingException (400) and InternalError (500) / ServiceUnavailable (503), in the JSON
   error shape botocore parses (``__type``, ``x-amzn-query-error`` for SQS).
5. SQS is at-least-once. Duplicate delivery: after a ReceiveMessage, a message is made
   visible again at once (ChangeMessageVisibility 0 upstream), so another consumer receives
   it while the first still holds it. Lost delete: a DeleteMessage (or a batch entry) is
   answered success but never applied, so the message comes back after its visibility
   timeout. Superseded receipt handles: once a message has been received again, a delete
   with an older receipt handle succeeds without deleting it (AWS documents that the most
   recent handle must be used; moto deletes with any handle it ever issued).

Random faults (kinds 3-5) are bounded: the same request (botocore's invocation id) fails at
most twice in a row, so the SDK's retries settle; scripted faults are exact and unbounded.
Principals (access key ids) listed in ``exempt`` never get random or unnamed scripted faults;
stale reads and TTL apply to everyone.

Run ``python -m alfred_tools.fidelity --upstream http://127.0.0.1:PORT [--port N] [--spec SPEC]``
or :func:`start_fidelity_proxy`. The spec (``--spec`` or ``ALFRED_FIDELITY_SPEC``) is a
``;``-separated list, e.g. ``aws;seed=7;stale_ms=200;ambiguous.UpdateItem=0.1`` (see
:class:`FidelitySpec`). Control endpoints live under ``/_fidelity/`` (health, calls, script,
config, stats).

Not reproduced: IAM (any credentials work); capacity (throttles are random, not load-driven);
partial batch failures (UnprocessedItems, Failed entries) and transaction conflicts; in
Query/Scan, an item the current state no longer matches but an older version did (a recent
delete, a changed sort key): the proxy only re-maps the items moto returned, it adds none;
staleness of writes that bypass the proxy. Time is compressed: AWS deletes expired items
within days, not seconds, and a lost answer here is immediate, not a read timeout.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs

import httpx
import urllib3

from alfred_tools.emulator import free_port, wait_http

JsonDict = dict[str, Any]

# ---- the spec --------------------------------------------------------------------------------

RATE_KINDS = ("ambiguous", "throttle", "5xx", "sqs_duplicate", "sqs_lost_delete", "sqs_stale_receipt")
AMBIGUOUS_OPS = frozenset({"PutItem", "UpdateItem", "DeleteItem", "SendMessage", "DeleteMessage",
                           "DeleteMessageBatch", "ChangeMessageVisibility", "ChangeMessageVisibilityBatch"})
FAULTED_SERVICES = frozenset({"dynamodb", "sqs"})
PROFILES: dict[str, str] = {
    "aws": ("stale_ms=500;ttl_delay=0-3;ambiguous=0.03;ambiguous_close=0.5;throttle=0.01;5xx=0.01;"
            "sqs_duplicate=0.05;sqs_lost_delete=0.05;sqs_stale_receipt=1;exempt=inspector"),
    "off": "",
}
DEFAULT_PROFILE = "aws"
MAX_RANDOM_FAULTS = 2  # per request (botocore invocation): its retries then settle


class FidelitySpecError(ValueError):
    """A fidelity spec string is not in the documented format."""


@dataclass(frozen=True)
class FidelitySpec:
    """What the proxy does; parsed from ``seed=7;stale_ms=500;ttl_delay=0-3;...``.

    Keys: ``seed`` (int), ``stale_ms`` (max staleness of eventually consistent reads),
    ``ttl_delay`` (seconds, ``a-b`` or ``x``: each expired item is deleted that long after it is
    first seen expired), ``ttl_scan`` / ``ttl_rescan`` (seconds between TTL scans of a table
    with known expiries / of every TTL table), rates in 0..1 for ``ambiguous``, ``throttle``,
    ``5xx``, ``sqs_duplicate``, ``sqs_lost_delete``, ``sqs_stale_receipt`` (with per-operation
    overrides ``kind.Operation=rate``), ``ambiguous_close`` (share of ambiguous faults answered
    by closing the connection instead of a 500) and ``exempt=akid1,akid2``. A bare word is a
    profile (``aws``, ``off``); later clauses override earlier ones.
    """

    seed: int = 0
    stale_ms: float = 0.0
    ttl_delay: tuple[float, float] = (0.0, 0.0)
    ttl_scan: float = 0.5
    ttl_rescan: float = 30.0
    ambiguous_close: float = 0.0
    rates: Mapping[str, float] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    exempt: frozenset[str] = frozenset()

    def rate(self, kind: str, operation: str) -> float:
        per_op = self.overrides.get(kind)
        if per_op is not None and operation in per_op:
            return per_op[operation]
        return self.rates.get(kind, 0.0)

    @classmethod
    def parse(cls, text: str | None, base: FidelitySpec | None = None) -> FidelitySpec:
        """Apply the clauses of ``text`` over ``base`` (default: everything off)."""
        b = base or cls()
        d: dict[str, Any] = {"seed": b.seed, "stale_ms": b.stale_ms, "ttl_delay": b.ttl_delay,
                             "ttl_scan": b.ttl_scan, "ttl_rescan": b.ttl_rescan,
                             "ambiguous_close": b.ambiguous_close, "exempt": b.exempt}
        rates = dict(b.rates)
        overrides = {k: dict(v) for k, v in b.overrides.items()}
        for raw in (text or "").split(";"):
            clause = raw.strip()
            if clause.startswith("profile="):
                clause = clause.partition("=")[2].strip()
            if not clause:
                continue
            if "=" not in clause:
                if clause not in PROFILES:
                    raise FidelitySpecError(f"unknown profile {clause!r} (known: {', '.join(PROFILES)})")
                spec = cls.parse(PROFILES[clause])
                d = {"seed": spec.seed, "stale_ms": spec.stale_ms, "ttl_delay": spec.ttl_delay,
                     "ttl_scan": spec.ttl_scan, "ttl_rescan": spec.ttl_rescan,
                     "ambiguous_close": spec.ambiguous_close, "exempt": spec.exempt}
                rates, overrides = dict(spec.rates), {k: dict(v) for k, v in spec.overrides.items()}
                continue
            key, _, value = (s.strip() for s in clause.partition("="))
            try:
                if key == "seed":
                    d["seed"] = int(value)
                elif key in ("stale_ms", "ttl_scan", "ttl_rescan"):
                    d[key] = _non_negative(value)
                elif key == "ambiguous_close":
                    d[key] = _rate(value)
                elif key == "ttl_delay":
                    lo, sep, hi = value.partition("-")
                    pair = (_non_negative(lo), _non_negative(hi if sep else lo))
                    if pair[1] < pair[0]:
                        raise FidelitySpecError(f"ttl_delay range is backwards: {clause!r}")
                    d["ttl_delay"] = pair
                elif key == "exempt":
                    d["exempt"] = frozenset(p.strip() for p in value.split(",") if p.strip())
                elif key in RATE_KINDS:
                    rates[key] = _rate(value)
                elif "." in key and key.partition(".")[0] in RATE_KINDS and key.partition(".")[2].isalnum():
                    kind, _, op = key.partition(".")
                    overrides.setdefault(kind, {})[op] = _rate(value)
                else:
                    raise FidelitySpecError(f"unknown key {key!r}")
            except ValueError as exc:
                if isinstance(exc, FidelitySpecError):
                    raise
                raise FidelitySpecError(f"bad value in {clause!r}: {exc}") from None
        return cls(rates=rates, overrides=overrides, **d)

    def describe(self) -> str:
        """The spec in its own format (what to paste to replay it)."""
        parts = [f"seed={self.seed}", f"stale_ms={self.stale_ms:g}",
                 f"ttl_delay={self.ttl_delay[0]:g}-{self.ttl_delay[1]:g}", f"ttl_scan={self.ttl_scan:g}",
                 f"ttl_rescan={self.ttl_rescan:g}", f"ambiguous_close={self.ambiguous_close:g}"]
        parts += [f"{k}={self.rates[k]:g}" for k in RATE_KINDS if k in self.rates]
        parts += [f"{k}.{op}={r:g}" for k in sorted(self.overrides) for op, r in sorted(self.overrides[k].items())]
        if self.exempt:
            parts.append("exempt=" + ",".join(sorted(self.exempt)))
        return ";".join(parts)


def _non_negative(value: str) -> float:
    v = float(value)
    if v < 0:
        raise FidelitySpecError(f"must not be negative: {value!r}")
    return v


def _rate(value: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise FidelitySpecError(f"rate must be within 0..1: {value!r}")
    return v


def default_spec_text() -> str:
    return os.environ.get("ALFRED_FIDELITY_SPEC") or DEFAULT_PROFILE


def _unit(seed: int, key: str, n: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Draws:
    """Seeded uniform draws: the n-th draw for a purpose is a function of (seed, purpose, n)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._n: Counter[str] = Counter()
        self._lock = threading.Lock()

    def next(self, purpose: str) -> float:
        with self._lock:
            n = self._n[purpose]
            self._n[purpose] = n + 1
        return _unit(self.seed, purpose, n)

    def fixed(self, purpose: str) -> float:
        """A draw that depends on the purpose only (e.g. one item's TTL delay)."""
        return _unit(self.seed, purpose, 0)


# ---- requests and replies ----------------------------------------------------------------------

_TARGET_SERVICES = {"DynamoDB_20120810": "dynamodb", "AmazonSQS": "sqs", "secretsmanager": "secretsmanager"}
_SERVICE_TARGETS = {"dynamodb": "DynamoDB_20120810", "sqs": "AmazonSQS"}
_AUTH_RE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                          "trailer", "trailers", "transfer-encoding", "upgrade", "content-length",
                          "content-encoding", "accept-encoding", "expect"})


@dataclass
class _Call:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    service: str
    action: str
    principal: str
    region: str
    payload: JsonDict
    invocation: str

    def header(self, name: str) -> str:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), "")

    @property
    def table(self) -> str:
        return str(self.payload.get("TableName", ""))


@dataclass
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    close: bool = False  # drop the connection without an answer

    def json(self) -> JsonDict:
        try:
            data = json.loads(self.body) if self.body else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def _parse_call(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> _Call:
    lower = {k.lower(): v for k, v in headers}
    m = _AUTH_RE.search(lower.get("authorization", ""))
    principal, region, scope = (m.group(1), m.group(2), m.group(3)) if m else ("", "us-east-1", "")
    target = lower.get("x-amz-target", "")
    payload: JsonDict = {}
    if target:
        prefix, _, action = target.rpartition(".")
        service = _TARGET_SERVICES.get(prefix, scope or prefix.lower())
        if body and "json" in lower.get("content-type", "application/x-amz-json-1.0"):
            try:
                parsed = json.loads(body)
                payload = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                payload = {}
    else:
        service, action = scope or "unknown", ""
        if body and "x-www-form-urlencoded" in lower.get("content-type", ""):
            form = parse_qs(body.decode("utf-8", "replace"))
            payload = {k: v[0] for k, v in form.items()}
            action = str(payload.get("Action", ""))
        action = action or f"{method} {path.split('?')[0]}"
    invocation = lower.get("amz-sdk-invocation-id") or hashlib.sha1(
        principal.encode() + action.encode() + body).hexdigest()
    return _Call(method, path, headers, body, service, action, principal, region, payload, invocation)


def _resource(call: _Call) -> Any:
    p = call.payload
    if call.service == "dynamodb":
        if call.action in ("BatchGetItem", "BatchWriteItem"):
            return sorted(p.get("RequestItems") or {})
        if call.action in ("TransactWriteItems", "TransactGetItems"):
            names: list[str] = []
            for entry in p.get("TransactItems") or []:
                for part in entry.values():
                    if isinstance(part, dict) and part.get("TableName") not in names:
                        names.append(str(part.get("TableName")))
            return names
        return p.get("TableName")
    if call.service == "sqs":
        return p.get("QueueUrl") or p.get("QueueName")
    if call.service == "secretsmanager":
        return p.get("SecretId") or p.get("Name")
    return None


def _auth_header(principal: str, region: str, service: str) -> str:
    return (f"AWS4-HMAC-SHA256 Credential={principal or 'fidelity'}/20240101/{region}/{service}/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=0")


def _json_reply(status: int, data: JsonDict, service: str, extra: Iterable[tuple[str, str]] = ()) -> _Reply:
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-RequestId", uuid.uuid4().hex), *extra]
    if service == "dynamodb":
        headers.append(("x-amz-crc32", str(zlib.crc32(body))))
    return _Reply(status, headers, body)


def _rewritten(reply: _Reply, data: JsonDict) -> _Reply:
    """``reply`` with a new JSON body (and the checksum botocore verifies for DynamoDB)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [(k, str(zlib.crc32(body)) if k.lower() == "x-amz-crc32" else v) for k, v in reply.headers]
    return _Reply(reply.status, headers, body)


# (__type, status, message, x-amzn-query-error or None); one is picked per fault
_ERRORS: dict[tuple[str, str], list[tuple[str, int, str, str | None]]] = {
    ("dynamodb", "throttle"): [
        ("com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", 400,
         "The level of configured provisioned throughput for the table was exceeded. Consider increasing "
         "your provisioning level with the UpdateTable API.", None),
        ("com.amazon.coral.availability#ThrottlingException", 400,
         "Rate of requests exceeds the allowed throughput.", None)],
    ("dynamodb", "5xx"): [("com.amazonaws.dynamodb.v20120810#InternalServerError", 500,
                           "Internal server error", None)],
    ("sqs", "throttle"): [
        ("com.amazonaws.sqs#RequestThrottled", 400, "Request is throttled.", "RequestThrottled;Sender"),
        ("com.amazonaws.sqs#ThrottlingException", 400, "Rate exceeded", None)],
    ("sqs", "5xx"): [
        ("com.amazonaws.sqs#InternalError", 500, "We encountered an internal error. Please try again.",
         "InternalError;Receiver"),
        ("com.amazonaws.sqs#ServiceUnavailable", 503, "Service is unavailable. Please try again.",
         "ServiceUnavailable;Receiver")],
}


def _error_reply(service: str, kind: str, draw: float) -> _Reply:
    choices = _ERRORS[(service, kind)]
    error_type, status, message, query_error = choices[min(int(draw * len(choices)), len(choices) - 1)]
    extra = [("x-amzn-ErrorType", error_type.rpartition("#")[2])]
    if query_error:
        extra.append(("x-amzn-query-error", query_error))
    return _json_reply(status, {"__type": error_type, "message": message}, service, extra)


# ---- upstream --------------------------------------------------------------------------------


class _Upstream:
    """Pooled HTTP to the moto server."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.pool = urllib3.PoolManager(num_pools=4, maxsize=256, block=False, retries=False,
                                        timeout=urllib3.Timeout(connect=5.0, read=120.0))

    def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> _Reply:
        send = {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}
        r = self.pool.request(method, self.base + path, body=body or None, headers=send, redirect=False,
                              preload_content=True, decode_content=True)
        out = [(k, v) for k, v in r.headers.items() if k.lower() not in _HOP_HEADERS]
        return _Reply(r.status, out, r.data)

    def call(self, service: str, region: str, principal: str, action: str, payload: JsonDict) -> tuple[int, JsonDict]:
        """One direct call (snapshots, DescribeTable, TTL scans): bypasses every semantic here."""
        headers = [("X-Amz-Target", f"{_SERVICE_TARGETS[service]}.{action}"),
                   ("Content-Type", "application/x-amz-json-1.0"),
                   ("Authorization", _auth_header(principal, region, service))]
        reply = self.request("POST", "/", headers, json.dumps(payload).encode())
        return reply.status, reply.json()


# ---- DynamoDB tables and keys ------------------------------------------------------------------


@dataclass
class _Index:
    hash: str
    range: str | None
    projection: str
    include: frozenset[str]
    gsi: bool


@dataclass
class _Table:
    region: str
    name: str
    principal: str
    hash: str
    range: str | None
    indexes: dict[str, _Index]
    ttl_attr: str | None = None
    ttl_known: bool = False
    ttl_next: float = 0.0  # earliest TTL deadline known (epoch seconds); 0 means scan soon
    dirty: bool = True  # written since the last scan with an unknown TTL value
    last_scan: float = 0.0

    def key_of(self, item: Mapping[str, Any]) -> JsonDict | None:
        names = [self.hash] + ([self.range] if self.range else [])
        if not all(n in item for n in names):
            return None
        return {n: item[n] for n in names}

    def key_id(self, item: Mapping[str, Any]) -> str | None:
        key = self.key_of(item)
        if key is None:
            return None
        parts = []
        for name in sorted(key):
            value = key[name]
            typ, raw = next(iter(value.items())) if isinstance(value, dict) and value else ("?", value)
            parts.append(f"{name}={typ}:{_norm_number(raw) if typ == 'N' else raw}")
        return f"{self.region}\x00{self.name}\x00" + "\x00".join(parts)


def _norm_number(raw: Any) -> str:
    try:
        return str(Decimal(str(raw)).normalize())
    except InvalidOperation:
        return str(raw)


def _key_schema(schema: list[JsonDict]) -> tuple[str, str | None]:
    hash_key = next(str(k["AttributeName"]) for k in schema if k["KeyType"] == "HASH")
    range_key = next((str(k["AttributeName"]) for k in schema if k["KeyType"] == "RANGE"), None)
    return hash_key, range_key


def _table_from_description(region: str, principal: str, desc: JsonDict) -> _Table:
    h, r = _key_schema(desc["KeySchema"])
    indexes: dict[str, _Index] = {}
    for gsi, group in ((True, "GlobalSecondaryIndexes"), (False, "LocalSecondaryIndexes")):
        for ix in desc.get(group) or []:
            ih, ir = _key_schema(ix["KeySchema"])
            proj = ix.get("Projection") or {}
            indexes[str(ix["IndexName"])] = _Index(ih, ir, str(proj.get("ProjectionType", "ALL")),
                                                   frozenset(proj.get("NonKeyAttributes") or []), gsi)
    return _Table(region, str(desc["TableName"]), principal, h, r, indexes)


# ---- the version history -----------------------------------------------------------------------

Version = tuple[float, JsonDict | None]


class _History:
    """Per (region, table, key): the versions seen, oldest first, with the time each appeared."""

    STRIPES = 512

    def __init__(self) -> None:
        self._versions: dict[str, list[Version]] = {}
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]
        self._touched: deque[tuple[float, str]] = deque()

    @contextmanager
    def locked(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold the keys' locks (striped, taken in order) across a write and its snapshots."""
        stripes = sorted({hash(k) % self.STRIPES for k in keys})
        for i in stripes:
            self._stripes[i].acquire()
        try:
            yield
        finally:
            for i in reversed(stripes):
                self._stripes[i].release()

    def latest(self, key: str) -> tuple[bool, JsonDict | None]:
        with self._lock:
            versions = self._versions.get(key)
            return (True, versions[-1][1]) if versions else (False, None)

    def seed(self, key: str, item: JsonDict | None, now: float) -> None:
        """The version before the first write seen: older than any window."""
        with self._lock:
            if key not in self._versions:
                self._versions[key] = [(0.0, item)]
                self._touched.append((now, key))

    def record(self, key: str, prior: JsonDict | None, after: JsonDict | None, now: float) -> None:
        with self._lock:
            self._versions.setdefault(key, [(0.0, prior)]).append((now, after))
            self._touched.append((now, key))

    def view(self, key: str, at: float) -> tuple[JsonDict | None, bool] | None:
        """The version visible at ``at`` and whether it is the newest; None without history."""
        with self._lock:
            versions = self._versions.get(key)
            if not versions:
                return None
            for i in range(len(versions) - 1, -1, -1):
                if versions[i][0] <= at:
                    return versions[i][1], i == len(versions) - 1
            return versions[0][1], len(versions) == 1

    def prune(self, now: float, window: float) -> None:
        """Forget versions older than the window (keeping the newest of those) and idle keys."""
        cutoff = now - window
        with self._lock:
            while self._touched and self._touched[0][0] < cutoff:
                _, key = self._touched.popleft()
                versions = self._versions.get(key)
                if not versions:
                    continue
                keep = 0
                for i in range(len(versions) - 1, -1, -1):
                    if versions[i][0] < cutoff:
                        keep = i
                        break
                del versions[:keep]
                if len(versions) == 1 and versions[0][0] < cutoff:
                    del self._versions[key]

    def clear(self) -> None:
        with self._lock:
            self._versions.clear()
            self._touched.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)


# ---- condition expressions (re-checking an older version against a query) ------------------------


class _ExprError(ValueError):
    """An expression this evaluator does not understand."""


_TOKEN_RE = re.compile(r"\s*(\[\d+\]|<>|<=|>=|=|<|>|\(|\)|,|\.|#[A-Za-z0-9_]+|:[A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_-]*)")
_FUNCTIONS = frozenset({"attribute_exists", "attribute_not_exists", "attribute_type", "begins_with", "contains"})
_COMPARATORS = frozenset({"=", "<>", "<", "<=", ">", ">="})


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _ExprError(f"cannot read {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over DynamoDB's condition grammar, into nested tuples."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok.upper() != expected):
            raise _ExprError(f"expected {expected or 'more'}, found {tok!r}")
        self.i += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.upper() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> tuple[Any, ...]:
        node = self.or_()
        if self.peek() is not None:
            raise _ExprError(f"unexpected {self.peek()!r}")
        return node

    def or_(self) -> tuple[Any, ...]:
        node = self.and_()
        while self.keyword("OR"):
            node = ("or", node, self.and_())
        return node

    def and_(self) -> tuple[Any, ...]:
        node = self.not_()
        while self.keyword("AND"):
            node = ("and", node, self.not_())
        return node

    def not_(self) -> tuple[Any, ...]:
        if self.keyword("NOT"):
            return ("not", self.not_())
        return self.primary()

    def primary(self) -> tuple[Any, ...]:
        tok = self.peek()
        if tok == "(":
            self.take()
            node = self.or_()
            self.take(")")
            return node
        if tok is not None and tok.lower() in _FUNCTIONS and self.peek(1) == "(":
            self.take()
            self.take("(")
            args = [self.operand()]
            while self.peek() == ",":
                self.take()
                args.append(self.operand())
            self.take(")")
            return ("fn", tok.lower(), args)
        left = self.operand()
        if self.keyword("BETWEEN"):
            lo = self.operand()
            self.take("AND")
            return ("between", left, lo, self.operand())
        if self.keyword("IN"):
            self.take("(")
            items = [self.operand()]
            while self.peek() == ",":
                self.take()
                items.append(self.operand())
            self.take(")")
            return ("in", left, items)
        op = self.take()
        if op not in _COMPARATORS:
            raise _ExprError(f"expected a comparator, found {op!r}")
        return ("cmp", op, left, self.operand())

    def operand(self) -> tuple[Any, ...]:
        tok = self.peek()
        if tok is not None and tok.startswith(":"):
            self.take()
            return ("value", tok)
        if tok is not None and tok.lower() == "size" and self.peek(1) == "(":
            self.take()
            self.take("(")
            path = self.path()
            self.take(")")
            return ("size", path)
        return self.path()

    def path(self) -> tuple[Any, ...]:
        segments: list[str | int] = [self.name()]
        while True:
            tok = self.peek()
            if tok == ".":
                self.take()
                segments.append(self.name())
            elif tok is not None and tok.startswith("["):
                self.take()
                segments.append(int(tok[1:-1]))
            else:
                return ("path", segments)

    def name(self) -> str:
        tok = self.take()
        if not (tok.startswith("#") or tok[0].isalpha() or tok[0] == "_"):
            raise _ExprError(f"expected a name, found {tok!r}")
        return tok


@lru_cache(maxsize=512)
def _parsed(text: str) -> tuple[Any, ...]:
    return _Parser(text).parse()


def _get_path(item: Mapping[str, Any], segments: list[str | int], names: Mapping[str, str]) -> Any:
    def resolve(seg: str) -> str:
        if seg.startswith("#"):
            if seg not in names:
                raise _ExprError(f"undefined name {seg}")
            return names[seg]
        return seg

    first = segments[0]
    cur: Any = item.get(resolve(first)) if isinstance(first, str) else None
    for seg in segments[1:]:
        if cur is None:
            return None
        if isinstance(seg, int):
            lst = cur.get("L") if isinstance(cur, dict) else None
            cur = lst[seg] if isinstance(lst, list) and seg < len(lst) else None
        else:
            mp = cur.get("M") if isinstance(cur, dict) else None
            cur = mp.get(resolve(seg)) if isinstance(mp, dict) else None
    return cur


def _norm(value: Any) -> Any:
    """A comparable form of a typed attribute value."""
    if not isinstance(value, dict) or not value:
        return value
    typ, raw = next(iter(value.items()))
    if typ == "N":
        return ("N", Decimal(str(raw)))
    if typ == "NS":
        return ("NS", frozenset(Decimal(str(x)) for x in raw))
    if typ in ("SS", "BS"):
        return (typ, frozenset(raw))
    if typ == "L":
        return ("L", tuple(_norm(x) for x in raw))
    if typ == "M":
        return ("M", tuple(sorted((k, _norm(v)) for k, v in raw.items())))
    if typ == "B":
        return ("B", base64.b64decode(raw) if isinstance(raw, str) else raw)
    return (typ, raw)


def _evaluate(text: str, item: Mapping[str, Any], names: Mapping[str, str], values: Mapping[str, Any]) -> bool:
    return _eval(_parsed(text), item, names, values)


def _eval(node: tuple[Any, ...], item: Mapping[str, Any], names: Mapping[str, str],
          values: Mapping[str, Any]) -> bool:
    kind = node[0]
    if kind == "or":
        return _eval(node[1], item, names, values) or _eval(node[2], item, names, values)
    if kind == "and":
        return _eval(node[1], item, names, values) and _eval(node[2], item, names, values)
    if kind == "not":
        return not _eval(node[1], item, names, values)

    def operand(n: tuple[Any, ...]) -> Any:
        if n[0] == "value":
            if n[1] not in values:
                raise _ExprError(f"undefined value {n[1]}")
            return values[n[1]]
        if n[0] == "size":
            v = _get_path(item, n[1][1], names)
            if not isinstance(v, dict) or not v:
                return None
            typ, raw = next(iter(v.items()))
            size = len(base64.b64decode(raw)) if typ == "B" else len(raw) if typ != "N" else None
            return None if size is None else {"N": str(size)}
        return _get_path(item, n[1], names)

    if kind == "cmp":
        left, right = _norm(operand(node[2])), _norm(operand(node[3]))
        if left is None or right is None:
            return False
        op = node[1]
        if op == "=":
            return bool(left == right)
        if op == "<>":
            return bool(left != right)
        if left[0] != right[0] or left[0] not in ("N", "S", "B"):
            return False
        a, b = left[1], right[1]
        return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
    if kind == "between":
        v, lo, hi = (_norm(operand(n)) for n in node[1:])
        if v is None or lo is None or hi is None or not (v[0] == lo[0] == hi[0]) or v[0] not in ("N", "S", "B"):
            return False
        return bool(lo[1] <= v[1] <= hi[1])
    if kind == "in":
        v = _norm(operand(node[1]))
        return v is not None and any(v == _norm(operand(n)) for n in node[2])
    if kind == "fn":
        name, args = node[1], node[2]
        if name in ("attribute_exists", "attribute_not_exists"):
            present = operand(args[0]) is not None
            return present if name == "attribute_exists" else not present
        first, second = _norm(operand(args[0])), _norm(operand(args[1]))
        if first is None or second is None:
            return False
        if name == "attribute_type":
            return bool(first[0] == second[1])
        if name == "begins_with":
            return first[0] == second[0] and first[0] in ("S", "B") and bool(first[1].startswith(second[1]))
        if name == "contains":
            if first[0] == second[0] and first[0] in ("S", "B"):
                return bool(second[1] in first[1])
            if first[0] in ("SS", "NS", "BS"):
                return bool(second[1] in first[1])
            if first[0] == "L":
                return second in first[1]
            return False
    raise _ExprError(f"cannot evaluate {kind}")


def _project(item: JsonDict, request: Mapping[str, Any]) -> JsonDict:
    """Apply a request's ProjectionExpression / AttributesToGet to a (full) item, as DynamoDB does:
    nested paths keep just the part named (``m.a`` gives ``{"m": {"M": {"a": ...}}}``)."""
    if request.get("ProjectionExpression"):
        names = request.get("ExpressionAttributeNames") or {}
        out: JsonDict = {}
        order: dict[int, list[int]] = {}
        for part in str(request["ProjectionExpression"]).split(","):
            _copy_path(item, out, _Parser(part).path()[1], names, order)
        return out
    if request.get("AttributesToGet"):
        wanted = set(request["AttributesToGet"])
        return {k: v for k, v in item.items() if k in wanted}
    return item


def _copy_path(src: Mapping[str, Any], dst: JsonDict, segments: list[str | int], names: Mapping[str, str],
               order: dict[int, list[int]]) -> None:
    """Copy the part of ``src`` at ``segments`` into ``dst``; list elements keep their index order
    (``order``: the source indexes already in each projected list)."""
    first = segments[0]
    if not isinstance(first, str):
        return
    name = names.get(first, first)
    if name not in src:
        return
    value = src[name]
    if len(segments) == 1:
        dst[name] = value
        return
    if dst.get(name) is value:
        return  # the whole attribute is projected already
    nxt = segments[1]
    if isinstance(nxt, int):
        elements = value.get("L") if isinstance(value, dict) else None
        if not isinstance(elements, list) or nxt >= len(elements):
            return
        holder = dst.setdefault(name, {"L": []}).get("L")
        if not isinstance(holder, list):
            return
        taken = order.setdefault(id(holder), [])
        if nxt in taken:
            if len(segments) == 2:
                holder[taken.index(nxt)] = elements[nxt]
            elif isinstance(holder[taken.index(nxt)], dict) and "M" in holder[taken.index(nxt)]:
                _copy_path({"\x00": elements[nxt]}, {"\x00": holder[taken.index(nxt)]}, ["\x00", *segments[2:]],
                           names, order)
            return
        element = elements[nxt]
        if len(segments) > 2:
            sub: JsonDict = {}
            _copy_path({"\x00": element}, sub, ["\x00", *segments[2:]], names, order)
            if "\x00" not in sub:
                return
            element = sub["\x00"]
        at = bisect.bisect(taken, nxt)
        taken.insert(at, nxt)
        holder.insert(at, element)
        return
    members = value.get("M") if isinstance(value, dict) else None
    if not isinstance(members, dict):
        return
    holder_map = dst.setdefault(name, {"M": {}}).get("M")
    if isinstance(holder_map, dict):
        _copy_path(members, holder_map, segments[1:], names, order)


def _with_keys(table: _Table, request: Mapping[str, Any]) -> tuple[JsonDict | None, frozenset[str]]:
    """``request`` with the table's key attributes added to its projection (so each result can be
    matched to its history), and the names added (to strip from the answer); None if none are."""
    keys = [k for k in (table.hash, table.range) if k]
    if request.get("ProjectionExpression"):
        names = dict(request.get("ExpressionAttributeNames") or {})
        expr = str(request["ProjectionExpression"])
        try:
            tops = {names.get(str(seg[0]), str(seg[0])) for seg in (_Parser(p).path()[1] for p in expr.split(","))}
        except _ExprError:
            return None, frozenset()
        missing = [k for k in keys if k not in tops]
        if not missing:
            return None, frozenset()
        aliases = []
        for i, k in enumerate(missing):
            names[f"#fidelity_key{i}"] = k
            aliases.append(f"#fidelity_key{i}")
        return ({**request, "ProjectionExpression": ", ".join([expr, *aliases]), "ExpressionAttributeNames": names},
                frozenset(missing))
    if request.get("AttributesToGet"):
        wanted = list(request["AttributesToGet"])
        missing = [k for k in keys if k not in wanted]
        if missing:
            return {**request, "AttributesToGet": wanted + missing}, frozenset(missing)
    return None, frozenset()


def _strip(item: JsonDict, added: frozenset[str]) -> JsonDict:
    return {k: v for k, v in item.items() if k not in added} if added else item


def _index_project(item: JsonDict, table: _Table, index: _Index | None) -> JsonDict:
    if index is None or index.projection == "ALL":
        return item
    keep = {table.hash, table.range, index.hash, index.range} | set(index.include)
    return {k: v for k, v in item.items() if k in keep}


# ---- rules scripted over the control API -----------------------------------------------------------

SCRIPT_FAULTS = frozenset({"ambiguous", "throttle", "5xx", "lost_delete", "duplicate", "hold"})
_PRE_FAULTS = frozenset({"ambiguous", "throttle", "5xx", "lost_delete", "hold"})
HOLD_SECONDS = 120.0  # the longest a held call waits for its release


@dataclass
class _Rule:
    fault: str
    action: str | None = None
    table: str | None = None
    queue_url_contains: str | None = None
    principal: str | None = None
    times: int = 1
    skip: int = 0
    # Only calls whose UpdateExpression contains this text (e.g. the gate's ``REMOVE m.``).
    expression_contains: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> _Rule:
        if not isinstance(data, dict):
            raise ValueError("a rule is a JSON object")
        unknown = set(data) - {"fault", "action", "table", "queue_url_contains", "principal", "times", "skip",
                               "expression_contains"}
        if unknown:
            raise ValueError(f"unknown rule fields: {sorted(unknown)}")
        fault = str(data.get("fault", ""))
        if fault not in SCRIPT_FAULTS:
            raise ValueError(f"fault must be one of {sorted(SCRIPT_FAULTS)}, not {fault!r}")
        rule = cls(fault=fault, action=data.get("action"), table=data.get("table"),
                   queue_url_contains=data.get("queue_url_contains"), principal=data.get("principal"),
                   times=int(data.get("times", 1)), skip=int(data.get("skip", 0)),
                   expression_contains=data.get("expression_contains"))
        if fault == "duplicate" and rule.action not in (None, "ReceiveMessage"):
            raise ValueError("duplicate applies to ReceiveMessage")
        if fault == "lost_delete" and rule.action not in (None, "DeleteMessage", "DeleteMessageBatch"):
            raise ValueError("lost_delete applies to DeleteMessage / DeleteMessageBatch")
        if rule.times < 0 or rule.skip < 0:
            raise ValueError("times and skip must not be negative")
        return rule

    def matches(self, call: _Call, exempt: frozenset[str]) -> bool:
        if self.times <= 0:
            return False
        if self.principal is not None:
            if call.principal != self.principal:
                return False
        elif call.principal in exempt:
            return False
        if self.action is not None and call.action != self.action:
            return False
        if self.fault == "duplicate" and call.action != "ReceiveMessage":
            return False
        if self.fault == "lost_delete" and call.action not in ("DeleteMessage", "DeleteMessageBatch"):
            return False
        if self.table is not None:
            res = _resource(call)
            if not (res == self.table or (isinstance(res, list) and self.table in res)):
                return False
        if (self.expression_contains is not None
                and self.expression_contains not in str(call.payload.get("UpdateExpression", ""))):
            return False
        return self.queue_url_contains is None or self.queue_url_contains in str(call.payload.get("QueueUrl", ""))

    def to_json(self) -> JsonDict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class _Lru(OrderedDict[str, Any]):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)


# ---- the proxy itself ------------------------------------------------------------------------------


class Fidelity:
    """The semantics, independent of the HTTP server that feeds it."""

    def __init__(self, upstream: str, spec: FidelitySpec, calls_max: int = 200_000) -> None:
        self.upstream = _Upstream(upstream)
        self.spec = spec
        self._draws = _Draws(spec.seed)
        self._history = _History()
        self._lock = threading.Lock()
        self._tables: dict[tuple[str, str], _Table] = {}
        self._known: dict[tuple[str, str], str] = {}  # (region, table) -> a principal that used it
        self._regions: dict[str, str] = {}
        self._calls: deque[JsonDict] = deque(maxlen=calls_max)
        self._rules: list[_Rule] = []
        self._held: list[JsonDict] = []  # calls a "hold" rule stopped, in order
        self._release = threading.Event()
        self._faulted = _Lru(50_000)  # invocation id -> random faults injected
        self._handles = _Lru(200_000)  # receipt handle -> message id
        self._latest = _Lru(200_000)  # message id -> newest receipt handle
        self._pending: dict[str, tuple[float, _Table, JsonDict]] = {}  # TTL deletions scheduled
        self._injected: Counter[tuple[str, str]] = Counter()
        self._stale: Counter[str] = Counter()
        self._stale_items = 0
        self._ttl_deleted: Counter[str] = Counter()
        self._stale_receipts = 0
        self._total_calls = 0
        self._last_discovery = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._background, name="fidelity-ttl", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    # ---- entry point ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> _Reply:
        call = _parse_call(method, path, headers, body)
        spec = self.spec
        table_name = call.payload.get("TableName") if call.service == "dynamodb" else None
        if table_name:
            with self._lock:
                self._known.setdefault((call.region, str(table_name)), call.principal)
        elif call.service == "dynamodb" and call.action in ("BatchGetItem", "BatchWriteItem"):
            with self._lock:
                for name in call.payload.get("RequestItems") or {}:
                    self._known.setdefault((call.region, str(name)), call.principal)
        if call.service in FAULTED_SERVICES:
            with self._lock:
                self._regions.setdefault(call.region, call.principal)
        fault = self._pre_fault(call, spec) if call.service in FAULTED_SERVICES and call.payload else None
        try:
            if fault == "hold":
                reply = self._hold(call)
            elif fault in ("throttle", "5xx"):
                reply = _error_reply(call.service, str(fault), self._draws.next("variant"))
            elif call.service == "dynamodb" and call.payload:
                reply = self._dynamodb(call, spec)
            elif call.service == "sqs" and call.payload:
                reply = self._sqs(call, spec, fault)
            else:
                reply = self._forward(call)
            if fault == "ambiguous":
                reply = self._lost_answer(call, spec)
        except urllib3.exceptions.HTTPError as exc:
            reply = _Reply(502, [("Content-Type", "text/plain")], f"upstream: {type(exc).__name__}".encode())
        except Exception as exc:  # a bug here: say so loudly, answer something botocore retries
            traceback.print_exc()
            reply = _Reply(500, [("Content-Type", "text/plain")], f"fidelity proxy: {exc!r}".encode())
        self._record(call, reply, fault)
        return reply

    def _forward(self, call: _Call, payload: JsonDict | None = None) -> _Reply:
        body = call.body if payload is None else json.dumps(payload).encode()
        return self.upstream.request(call.method, call.path, call.headers, body)

    def _record(self, call: _Call, reply: _Reply, fault: str | None) -> None:
        entry: JsonDict = {"principal": call.principal, "service": call.service, "action": call.action,
                           "resource": _resource(call), "status": 0 if reply.close else reply.status,
                           "fault": fault}
        if call.payload.get("IndexName"):
            entry["index"] = call.payload["IndexName"]
        with self._lock:
            self._calls.append(entry)
            self._total_calls += 1

    # ---- faults --------------------------------------------------------------------------------

    def _pre_fault(self, call: _Call, spec: FidelitySpec) -> str | None:
        """The fault for this call before it is forwarded: scripted first, then random."""
        scripted = self._scripted(call, spec, _PRE_FAULTS)
        if scripted is not None:
            self._count(scripted, call.action)
            if scripted != "lost_delete":  # scripted failures count toward the random bound too
                with self._lock:
                    self._faulted.put(call.invocation, self._faulted.get(call.invocation, 0) + 1)
            return scripted
        if call.principal in spec.exempt:
            return None
        op = call.action
        with self._lock:
            if self._faulted.get(call.invocation, 0) >= MAX_RANDOM_FAULTS:
                return None
        u = self._draws.next(f"fault:{op}")
        edge = 0.0
        for kind in ("throttle", "5xx", "ambiguous", "lost_delete"):
            if kind == "ambiguous" and op not in AMBIGUOUS_OPS:
                continue
            if kind == "lost_delete":
                if op != "DeleteMessage":
                    continue
                edge += spec.rate("sqs_lost_delete", op)
            else:
                edge += spec.rate(kind, op)
            if u < edge:
                if kind != "lost_delete":
                    with self._lock:
                        self._faulted.put(call.invocation, self._faulted.get(call.invocation, 0) + 1)
                self._count(kind, op)
                return kind
        return None

    def _scripted(self, call: _Call, spec: FidelitySpec, kinds: frozenset[str]) -> str | None:
        with self._lock:
            for rule in self._rules:
                if rule.fault not in kinds or not rule.matches(call, spec.exempt):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                rule.times -= 1
                return rule.fault
        return None

    def _count(self, kind: str, op: str, n: int = 1) -> None:
        with self._lock:
            self._injected[(kind, op)] += n

    def _hold(self, call: _Call) -> _Reply:
        """A scripted ``hold``: the call is never forwarded; it waits (listed under ``/_fidelity/held``)
        until the test releases it (or ``HOLD_SECONDS``), then its connection is closed. Tests use
        it to stop a process at an exact call and kill it there."""
        with self._lock:
            self._held.append({"principal": call.principal, "action": call.action, "resource": _resource(call),
                               "expression": call.payload.get("UpdateExpression")})
        self._release.wait(HOLD_SECONDS)
        return _Reply(0, [], b"", close=True)

    def _lost_answer(self, call: _Call, spec: FidelitySpec) -> _Reply:
        """The request was applied; its answer never reaches the caller."""
        if self._draws.next("close") < spec.ambiguous_close:
            return _Reply(0, [], b"", close=True)
        if call.service == "dynamodb":
            return _error_reply("dynamodb", "5xx", 0.0)
        return _error_reply("sqs", "5xx", 0.0)

    # ---- DynamoDB ------------------------------------------------------------------------------

    def _table(self, region: str, name: str, principal: str, fetch: bool = True) -> _Table | None:
        key = (region, name)
        with self._lock:
            table = self._tables.get(key)
        if table is not None or not fetch or not name:
            return table
        status, out = self.upstream.call("dynamodb", region, principal, "DescribeTable", {"TableName": name})
        if status != 200 or "Table" not in out:
            return None
        table = _table_from_description(region, principal, out["Table"])
        with self._lock:
            return self._tables.setdefault(key, table)

    def _forget_table(self, region: str, name: str) -> None:
        with self._lock:
            self._tables.pop((region, name), None)

    def _snapshot(self, table: _Table, key: JsonDict) -> tuple[bool, JsonDict | None]:
        status, out = self.upstream.call("dynamodb", table.region, table.principal, "GetItem",
                                         {"TableName": table.name, "Key": key, "ConsistentRead": True})
        if status != 200:
            return False, None
        item = out.get("Item")
        return True, item if isinstance(item, dict) else None

    def _note_write(self, table: _Table, after: JsonDict | None, known: bool = True) -> None:
        """Tell the TTL scanner when this table may next have expired items."""
        with self._lock:
            if not known:
                table.dirty = True
            elif after is not None and table.ttl_attr and "N" in (after.get(table.ttl_attr) or {}):
                try:
                    table.ttl_next = min(table.ttl_next or float("inf"), float(after[table.ttl_attr]["N"]))
                except ValueError:
                    pass
            elif after is not None and not table.ttl_known:
                table.dirty = True

    def _dynamodb(self, call: _Call, spec: FidelitySpec) -> _Reply:
        op, p = call.action, call.payload
        if op in ("PutItem", "UpdateItem", "DeleteItem"):
            return self._write_one(call, spec)
        if op in ("BatchWriteItem", "TransactWriteItems"):
            return self._write_many(call, spec)
        if spec.stale_ms > 0 and op == "BatchGetItem":
            return self._stale_batch_get(call, spec)
        if spec.stale_ms > 0 and op in ("Query", "Scan"):
            return self._stale_query(call, spec)
        reply = self._forward(call)
        if op in ("CreateTable", "DeleteTable", "UpdateTable", "UpdateTimeToLive"):
            self._forget_table(call.region, call.table)
        if reply.status == 200 and spec.stale_ms > 0 and op == "GetItem" and not p.get("ConsistentRead"):
            return self._stale_get(call, spec, reply)
        return reply

    def _at(self, spec: FidelitySpec, op: str) -> float:
        return time.monotonic() - spec.stale_ms / 1000.0 * self._draws.next(f"lag:{op}")

    def _write_one(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        table = self._table(call.region, call.table, call.principal)
        source = p.get("Key") if call.action != "PutItem" else p.get("Item")
        key = table.key_of(source) if table is not None and isinstance(source, dict) else None
        kid = table.key_id(source) if table is not None and isinstance(source, dict) else None
        if table is None or key is None or kid is None or spec.stale_ms <= 0:
            reply = self._forward(call)
            if table is not None and reply.status == 200:
                after = p.get("Item") if call.action == "PutItem" else None
                self._note_write(table, after, known=call.action != "UpdateItem")
            return reply
        # The versions come with the write where they can: a caller that asked for no
        # ReturnValues gets ALL_OLD (Put/Delete: the version before, atomically) or ALL_NEW
        # (Update: the version after) asked for it upstream, and stripped from its answer.
        asked = p.get("ReturnValues") or "NONE"
        inject = None if asked != "NONE" else "ALL_NEW" if call.action == "UpdateItem" else "ALL_OLD"
        returns = inject or asked
        old_from_write = call.action in ("PutItem", "DeleteItem") and returns == "ALL_OLD"
        with self._history.locked([kid]):
            known, prior = self._history.latest(kid)
            if not known and not old_from_write:
                ok, prior = self._snapshot(table, key)
                if not ok:
                    return self._forward(call)
                self._history.seed(kid, prior, time.monotonic())
                known = True
            reply = self._forward(call, {**p, "ReturnValues": inject} if inject else None)
            if reply.status == 200:
                data = reply.json()
                attrs = data.get("Attributes") if isinstance(data.get("Attributes"), dict) else None
                if not known:
                    prior = attrs  # ALL_OLD of this very write
                if call.action == "PutItem":
                    after = p.get("Item")
                elif call.action == "DeleteItem":
                    after = None
                elif returns == "ALL_NEW" and attrs is not None:
                    after = attrs
                else:
                    ok, after = self._snapshot(table, key)
                    if not ok:
                        return reply
                self._history.record(kid, prior, after, time.monotonic())
                self._note_write(table, after)
                if inject:
                    data.pop("Attributes", None)
                    reply = _rewritten(reply, data)
            elif reply.status >= 500:  # it may have landed: see what is there now
                ok, after = self._snapshot(table, key)
                if ok:
                    self._history.record(kid, prior if known else after, after, time.monotonic())
                    self._note_write(table, after)
        return reply

    def _write_many(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        entries: list[tuple[str, JsonDict | None, bool]] = []  # (table, key source, known after)
        if call.action == "BatchWriteItem":
            for name, reqs in (p.get("RequestItems") or {}).items():
                for r in reqs or []:
                    if "PutRequest" in r:
                        entries.append((name, r["PutRequest"].get("Item"), True))
                    elif "DeleteRequest" in r:
                        entries.append((name, r["DeleteRequest"].get("Key"), True))
        else:
            for t in p.get("TransactItems") or []:
                for kind in ("Put", "Update", "Delete"):
                    if kind in t:
                        part = t[kind]
                        entries.append((part.get("TableName"), part.get("Item" if kind == "Put" else "Key"),
                                        False))
        resolved: list[tuple[_Table, JsonDict, str, JsonDict | None, bool]] = []
        for name, source, after_known in entries:
            table = self._table(call.region, str(name), call.principal)
            if table is None or not isinstance(source, dict):
                return self._forward(call)
            key, kid = table.key_of(source), table.key_id(source)
            if key is None or kid is None:
                return self._forward(call)
            resolved.append((table, key, kid, source, after_known))
        if spec.stale_ms <= 0 or not resolved:
            reply = self._forward(call)
            for table, _key, _kid, _source, _known in resolved:
                self._note_write(table, None, known=False)
            return reply
        puts = self._batch_put_sources(call)
        with self._history.locked(kid for _, _, kid, _, _ in resolved):
            priors: dict[str, JsonDict | None] = {}
            for table, key, kid, _source, _known in resolved:
                known, prior = self._history.latest(kid)
                if not known:
                    ok, prior = self._snapshot(table, key)
                    if not ok:
                        return self._forward(call)
                    self._history.seed(kid, prior, time.monotonic())
                priors[kid] = prior
            reply = self._forward(call)
            if reply.status == 200 or reply.status >= 500:
                unprocessed = self._unprocessed(reply) if reply.status == 200 else set()
                for table, key, kid, _source, after_known in resolved:
                    if kid in unprocessed:
                        continue
                    if reply.status == 200 and after_known:
                        ok, after = True, puts.get(kid)
                    else:
                        ok, after = self._snapshot(table, key)
                    if ok:
                        self._history.record(kid, priors[kid], after, time.monotonic())
                        self._note_write(table, after)
        return reply

    def _batch_put_sources(self, call: _Call) -> dict[str, JsonDict]:
        """BatchWriteItem: key id -> the item put (deleted keys are absent: None after)."""
        out: dict[str, JsonDict] = {}
        if call.action != "BatchWriteItem":
            return out
        for name, reqs in (call.payload.get("RequestItems") or {}).items():
            table = self._table(call.region, str(name), call.principal, fetch=False)
            if table is None:
                continue
            for r in reqs or []:
                item = (r.get("PutRequest") or {}).get("Item")
                kid = table.key_id(item) if isinstance(item, dict) else None
                if kid is not None and isinstance(item, dict):
                    out[kid] = item
        return out

    def _unprocessed(self, reply: _Reply) -> set[str]:
        out: set[str] = set()
        data = reply.json()
        for name, reqs in (data.get("UnprocessedItems") or {}).items():
            for region_table, table in list(self._tables.items()):
                if region_table[1] != name:
                    continue
                for r in reqs or []:
                    src = (r.get("PutRequest") or {}).get("Item") or (r.get("DeleteRequest") or {}).get("Key")
                    kid = table.key_id(src) if isinstance(src, dict) else None
                    if kid is not None:
                        out.add(kid)
        return out

    def _stale_get(self, call: _Call, spec: FidelitySpec, reply: _Reply) -> _Reply:
        p = call.payload
        table = self._table(call.region, call.table, call.principal, fetch=False)
        key = p.get("Key")
        kid = table.key_id(key) if table is not None and isinstance(key, dict) else None
        if kid is None:
            return reply
        view = self._history.view(kid, self._at(spec, "GetItem"))
        if view is None or view[1]:
            return reply
        data = reply.json()
        if view[0] is None:
            data.pop("Item", None)
        else:
            data["Item"] = _project(view[0], p)
        self._stale_count("GetItem", 1)
        return _rewritten(reply, data)

    def _stale_count(self, op: str, items: int) -> None:
        with self._lock:
            self._stale[op] += 1
            self._stale_items += items

    def _stale_batch_get(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        requests: dict[str, Any] = p.get("RequestItems") or {}
        tables: dict[str, _Table] = {}
        forwarded: dict[str, Any] = {}
        added: dict[str, frozenset[str]] = {}
        for name, req in requests.items():
            table = self._table(call.region, str(name), call.principal, fetch=False)
            forwarded[name] = req
            if table is None or req.get("ConsistentRead"):
                continue
            tables[name] = table
            with_keys, added[name] = _with_keys(table, req)
            if with_keys is not None:
                forwarded[name] = with_keys
        injected = any(added.values())
        reply = self._forward(call, {**p, "RequestItems": forwarded} if injected else None)
        if reply.status != 200 or not tables:
            return reply
        data = reply.json()
        responses = data.setdefault("Responses", {})
        unprocessed = data.get("UnprocessedKeys") or {}
        for name in unprocessed:  # hand back the caller's own request, not the one sent
            if name in requests:
                unprocessed[name] = {**{k: v for k, v in requests[name].items() if k != "Keys"},
                                     "Keys": unprocessed[name].get("Keys", [])}
        at = self._at(spec, "BatchGetItem")
        staled = 0
        for name, table in tables.items():
            req = requests[name]
            strip = added.get(name, frozenset())
            skip = {table.key_id(k) for k in (unprocessed.get(name) or {}).get("Keys", [])}
            current = {table.key_id(it): it for it in responses.get(name, [])}
            out: list[JsonDict] = []
            seen: set[str] = set()
            for key in req.get("Keys") or []:
                kid = table.key_id(key)
                if kid is None or kid in skip or kid in seen:
                    continue
                seen.add(kid)
                view = self._history.view(kid, at)
                if view is None or view[1]:
                    if kid in current:
                        out.append(_strip(current[kid], strip))
                    continue
                staled += 1
                if view[0] is not None:
                    out.append(_project(view[0], req))
            responses[name] = out
        if staled:
            self._stale_count("BatchGetItem", staled)
        elif not injected:
            return reply
        return _rewritten(reply, data)

    def _stale_query(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        table = self._table(call.region, call.table, call.principal, fetch=False)
        index = table.indexes.get(str(p.get("IndexName"))) if table is not None and p.get("IndexName") else None
        consistent = bool(p.get("ConsistentRead")) and (index is None or not index.gsi)
        if table is None or p.get("Select") == "COUNT" or consistent:
            return self._forward(call)
        with_keys, added = _with_keys(table, p)
        reply = self._forward(call, with_keys)
        if reply.status != 200:
            return reply
        data = reply.json()
        items = data.get("Items")
        if not items:
            return reply
        at = self._at(spec, call.action)
        names = p.get("ExpressionAttributeNames") or {}
        values = p.get("ExpressionAttributeValues") or {}
        conditions = [c for c in (p.get("KeyConditionExpression") if call.action == "Query" else None,
                                  p.get("FilterExpression")) if c]
        out: list[JsonDict] = []
        staled = 0
        for it in items:
            kid = table.key_id(it)
            view = self._history.view(kid, at) if kid is not None else None
            if view is None or view[1]:
                out.append(_strip(it, added))
                continue
            old = view[0]
            if old is not None and index is not None and (
                    index.hash not in old or (index.range is not None and index.range not in old)):
                old = None  # not in the (sparse) index at that time
            try:
                if old is not None and not all(_evaluate(c, old, names, values) for c in conditions):
                    old = None
            except (_ExprError, InvalidOperation, KeyError, TypeError, ValueError):
                out.append(_strip(it, added))  # cannot judge the older version: serve the current one
                continue
            staled += 1
            if old is not None:
                out.append(_project(_index_project(old, table, index), p))
        if not staled and not added:
            return reply
        data["Items"] = out
        if staled:
            data["Count"] = len(out)
            data["ScannedCount"] = max(int(data.get("ScannedCount", len(out))), len(out))
            self._stale_count(call.action, staled)
        return _rewritten(reply, data)

    # ---- SQS -----------------------------------------------------------------------------------

    def _sqs(self, call: _Call, spec: FidelitySpec, fault: str | None) -> _Reply:
        op, p = call.action, call.payload
        if op == "DeleteMessage":
            if fault == "lost_delete" or self._stale_receipt(spec, str(p.get("ReceiptHandle", ""))):
                return _json_reply(200, {}, "sqs")
            return self._forward(call)
        if op == "DeleteMessageBatch":
            return self._delete_batch(call, spec, fault)
        reply = self._forward(call)
        if op == "ReceiveMessage" and reply.status == 200:
            self._received(call, spec, reply)
        return reply

    def _delete_batch(self, call: _Call, spec: FidelitySpec, fault: str | None) -> _Reply:
        p = call.payload
        keep: list[JsonDict] = []
        dropped: list[str] = []
        lost = 0
        for entry in p.get("Entries") or []:
            is_lost = fault == "lost_delete" or (
                call.principal not in spec.exempt
                and self._draws.next("lost:DeleteMessageBatch") < spec.rate("sqs_lost_delete", "DeleteMessageBatch"))
            if is_lost or self._stale_receipt(spec, str(entry.get("ReceiptHandle", ""))):
                dropped.append(str(entry.get("Id")))
                lost += is_lost
            else:
                keep.append(entry)
        if lost and fault != "lost_delete":
            self._count("lost_delete", "DeleteMessageBatch", lost)
        if not dropped:
            return self._forward(call)
        if not keep:
            return _json_reply(200, {"Successful": [{"Id": i} for i in dropped], "Failed": []}, "sqs")
        reply = self._forward(call, {**p, "Entries": keep})
        if reply.status != 200:
            return reply
        data = reply.json()
        data["Successful"] = list(data.get("Successful") or []) + [{"Id": i} for i in dropped]
        data.setdefault("Failed", [])
        return _rewritten(reply, data)

    def _stale_receipt(self, spec: FidelitySpec, handle: str) -> bool:
        """A delete with a receipt handle superseded by a later receive of the same message."""
        rate = spec.rate("sqs_stale_receipt", "DeleteMessage")
        if rate <= 0:
            return False
        with self._lock:
            mid = self._handles.get(handle)
            stale = mid is not None and self._latest.get(mid) not in (None, handle)
        if stale and self._draws.next("stale_receipt") < rate:
            with self._lock:
                self._stale_receipts += 1
            return True
        return False

    def _received(self, call: _Call, spec: FidelitySpec, reply: _Reply) -> None:
        messages = reply.json().get("Messages") or []
        if not messages:
            return
        with self._lock:
            for m in messages:
                handle, mid = str(m.get("ReceiptHandle", "")), str(m.get("MessageId", ""))
                self._handles.put(handle, mid)
                self._latest.put(mid, handle)
        scripted = self._scripted(call, spec, frozenset({"duplicate"})) is not None
        rate = 0.0 if call.principal in spec.exempt else spec.rate("sqs_duplicate", "ReceiveMessage")
        for m in messages:
            if scripted or (rate > 0 and self._draws.next("duplicate") < rate):
                status, _ = self.upstream.call("sqs", call.region, call.principal, "ChangeMessageVisibility",
                                               {"QueueUrl": call.payload.get("QueueUrl"),
                                                "ReceiptHandle": m.get("ReceiptHandle"), "VisibilityTimeout": 0})
                if status == 200:
                    self._count("duplicate", "ReceiveMessage")

    # ---- TTL and housekeeping --------------------------------------------------------------------

    def _background(self) -> None:
        last_error, last_report = "", 0.0
        while not self._stopping.wait(0.1):
            try:
                spec = self.spec
                self._history.prune(time.monotonic(), spec.stale_ms / 1000.0 + 0.05)
                self._ttl_tick(spec)
            except Exception as exc:  # keep the thread alive whatever one round hit
                message = f"{type(exc).__name__}: {exc}"
                if message != last_error or time.monotonic() - last_report > 30:
                    sys.stderr.write(f"fidelity: background round failed: {message}\n")
                    last_error, last_report = message, time.monotonic()

    def _ttl_tick(self, spec: FidelitySpec) -> None:
        now = time.time()
        if now - self._last_discovery >= max(spec.ttl_rescan, 1.0):
            self._last_discovery = now
            self._discover()
        with self._lock:
            known = list(self._known.items())
        for (region, name), principal in known:
            table = self._table(region, name, principal)
            if table is None:
                with self._lock:
                    self._known.pop((region, name), None)
                continue
            if not table.ttl_known:
                self._learn_ttl(table)
            if not table.ttl_attr or now - table.last_scan < spec.ttl_scan:
                continue
            if table.dirty or table.ttl_next <= now or now - table.last_scan >= spec.ttl_rescan:
                self._ttl_scan(table, spec, now)
        with self._lock:
            due = [(kid, t, key) for kid, (at, t, key) in self._pending.items() if at <= now]
            for kid, _, _ in due:
                del self._pending[kid]
        for kid, table, key in due:
            self._ttl_delete(table, key, kid, spec)

    def _discover(self) -> None:
        with self._lock:
            regions = list(self._regions.items())
        for region, principal in regions:
            start: str | None = None
            while True:
                payload: JsonDict = {"ExclusiveStartTableName": start} if start else {}
                status, out = self.upstream.call("dynamodb", region, principal, "ListTables", payload)
                if status != 200:
                    break
                with self._lock:
                    for name in out.get("TableNames") or []:
                        self._known.setdefault((region, str(name)), principal)
                start = out.get("LastEvaluatedTableName")
                if not start:
                    break

    def _learn_ttl(self, table: _Table) -> None:
        status, out = self.upstream.call("dynamodb", table.region, table.principal, "DescribeTimeToLive",
                                         {"TableName": table.name})
        if status != 200:
            return
        desc = out.get("TimeToLiveDescription") or {}
        enabled = desc.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
        with self._lock:
            table.ttl_attr = str(desc.get("AttributeName")) if enabled and desc.get("AttributeName") else None
            table.ttl_known = True
            table.dirty = True

    def _ttl_scan(self, table: _Table, spec: FidelitySpec, now: float) -> None:
        attr = table.ttl_attr
        if attr is None:
            return
        with self._lock:
            table.dirty, table.ttl_next, table.last_scan = False, float("inf"), now
        names = {"#h": table.hash, "#t": attr, **({"#r": table.range} if table.range else {})}
        payload: JsonDict = {"TableName": table.name, "ConsistentRead": True, "ExpressionAttributeNames": names,
                             "ProjectionExpression": ", ".join(names)}
        next_due = float("inf")
        oldest_valid = now - 5 * 365 * 86400  # DynamoDB ignores TTL values more than five years old
        lo, hi = spec.ttl_delay
        while True:
            status, out = self.upstream.call("dynamodb", table.region, table.principal, "Scan", payload)
            if status != 200:
                with self._lock:
                    table.dirty = True
                return
            for item in out.get("Items") or []:
                try:
                    ttl = float((item.get(attr) or {})["N"])
                except (KeyError, TypeError, ValueError):
                    continue
                if ttl > now:
                    next_due = min(next_due, ttl)
                    continue
                if ttl < oldest_valid:
                    continue
                kid, key = table.key_id(item), table.key_of(item)
                if kid is None or key is None:
                    continue
                with self._lock:
                    if kid not in self._pending:
                        delay = lo + (hi - lo) * self._draws.fixed(f"ttl:{kid}")
                        self._pending[kid] = (now + delay, table, key)
            start = out.get("LastEvaluatedKey")
            if not start:
                break
            payload["ExclusiveStartKey"] = start
        with self._lock:
            table.ttl_next = min(table.ttl_next, next_due)

    def _ttl_delete(self, table: _Table, key: JsonDict, kid: str, spec: FidelitySpec) -> None:
        if table.ttl_attr is None:
            return
        payload = {"TableName": table.name, "Key": key, "ConditionExpression": "#t <= :now",
                   "ExpressionAttributeNames": {"#t": table.ttl_attr},
                   "ExpressionAttributeValues": {":now": {"N": repr(time.time())}}, "ReturnValues": "ALL_OLD"}
        with self._history.locked([kid]):
            known, prior = self._history.latest(kid)
            status, out = self.upstream.call("dynamodb", table.region, table.principal, "DeleteItem", payload)
            if status != 200:
                return  # gone already, or given a later expiry meanwhile
            with self._lock:
                self._ttl_deleted[table.name] += 1
            if spec.stale_ms > 0:
                old = out.get("Attributes") if isinstance(out.get("Attributes"), dict) else None
                self._history.record(kid, prior if known else old, None, time.monotonic())

    # ---- control API -----------------------------------------------------------------------------

    def control(self, method: str, path: str, body: bytes) -> _Reply:
        """The control API (JSON):

        - ``GET /_fidelity/health`` -> ``{"ok": true}``
        - ``GET /_fidelity/calls`` -> ``[{"principal", "service", "action", "resource", "status",
          "fault"[, "index"]}, ...]`` in order (status 0: connection closed);
          ``POST /_fidelity/calls/reset`` (or ``DELETE /_fidelity/calls``) empties it
        - ``POST /_fidelity/script`` with a rule or a list of rules ``{"fault", "action", "table",
          "queue_url_contains", "principal", "expression_contains", "times": 1, "skip": 0}`` appends
          them; ``GET`` lists the active ones, ``DELETE`` clears them (and lets held calls go)
        - ``GET /_fidelity/held``: the calls a ``hold`` rule stopped; ``POST /_fidelity/held/release``
          lets them (and any later one) go, their connections closed, never forwarded
        - ``POST /_fidelity/config`` with ``{"spec": "...", "replace": false}`` (or the spec as
          text) applies clauses over the current spec; ``GET`` -> ``{"spec": ...}``
        - ``GET /_fidelity/stats``; ``POST /_fidelity/stats/reset``
        """
        route = path.split("?", 1)[0].rstrip("/")
        try:
            if route == "/_fidelity/health":
                return _control_reply(200, {"ok": True})
            if route == "/_fidelity/calls":
                if method == "DELETE":
                    return self._reset_calls()
                with self._lock:
                    return _control_reply(200, list(self._calls))
            if route == "/_fidelity/calls/reset" and method == "POST":
                return self._reset_calls()
            if route == "/_fidelity/script":
                if method == "POST":
                    data = json.loads(body or b"[]")
                    rules = [_Rule.from_json(r) for r in (data if isinstance(data, list) else [data])]
                    with self._lock:
                        self._rules.extend(rules)
                if method == "DELETE":
                    with self._lock:
                        self._rules.clear()
                        self._held.clear()
                    self._release.set()  # nothing stays held once the script is cleared
                    self._release = threading.Event()
                with self._lock:
                    self._rules = [r for r in self._rules if r.times > 0]
                    return _control_reply(200, [r.to_json() for r in self._rules])
            if route == "/_fidelity/held":
                with self._lock:
                    return _control_reply(200, list(self._held))
            if route == "/_fidelity/held/release" and method == "POST":
                self._release.set()  # every held call, now and later, until cleared
                return _control_reply(200, {"ok": True})
            if route == "/_fidelity/config":
                if method == "POST":
                    self._configure(body)
                return _control_reply(200, {"spec": self.spec.describe()})
            if route == "/_fidelity/stats":
                return _control_reply(200, self.stats())
            if route == "/_fidelity/stats/reset" and method == "POST":
                with self._lock:
                    self._injected.clear()
                    self._stale.clear()
                    self._ttl_deleted.clear()
                    self._stale_items = self._stale_receipts = self._total_calls = 0
                return _control_reply(200, self.stats())
        except (ValueError, TypeError) as exc:
            return _control_reply(400, {"error": str(exc)})
        return _control_reply(404, {"error": f"no control endpoint {method} {route}"})

    def _reset_calls(self) -> _Reply:
        with self._lock:
            self._calls.clear()
        return _control_reply(200, {"ok": True})

    def _configure(self, body: bytes) -> None:
        text, replace_all = body.decode().strip(), False
        if text.startswith(("{", '"')):
            data = json.loads(text)
            if isinstance(data, dict):
                text, replace_all = str(data.get("spec", "")), bool(data.get("replace", False))
            else:
                text = str(data)
        old = self.spec
        new = FidelitySpec.parse(text, None if replace_all else old)
        if new.seed != old.seed:
            self._draws = _Draws(new.seed)
        if new.stale_ms <= 0 < old.stale_ms:
            self._history.clear()
        self.spec = new

    def stats(self) -> JsonDict:
        """Counts since start (or the last stats reset); see the control API in the module doc."""
        with self._lock:
            return {"calls": self._total_calls,
                    "injected": {f"{kind}/{op}": n for (kind, op), n in sorted(self._injected.items())},
                    "injected_total": sum(self._injected.values()),
                    "stale_answers": sum(self._stale.values()),
                    "stale_answers_by_operation": dict(sorted(self._stale.items())),
                    "stale_items": self._stale_items,
                    "ttl_deletions": sum(self._ttl_deleted.values()),
                    "ttl_deletions_by_table": dict(sorted(self._ttl_deleted.items())),
                    "ttl_pending": len(self._pending),
                    "stale_receipt_deletes_ignored": self._stale_receipts,
                    "history_keys": len(self._history), "spec": self.spec.describe()}


def _control_reply(status: int, data: Any) -> _Reply:
    return _Reply(status, [("Content-Type", "application/json")], json.dumps(data).encode())


# ---- the HTTP server -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections are closed after this long

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        server = cast(_Server, self.server)
        body = self._read_body()
        if self.path.startswith("/_fidelity/"):
            reply = server.fidelity.control(self.command, self.path, body)
        else:
            reply = server.fidelity.handle(self.command, self.path, list(self.headers.items()), body)
        if reply.close:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        reason = self.responses.get(reply.status, ("",))[0]
        head = [f"HTTP/1.1 {reply.status} {reason}"]
        head += [f"{k}: {v}" for k, v in reply.headers]
        head.append(f"Content-Length: {len(reply.body)}")
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(data if self.command == "HEAD" else data + reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], fidelity: Fidelity) -> None:
        super().__init__(address, _Handler)
        self.fidelity = fidelity

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # clients hanging up are not news
        super().handle_error(request, client_address)


def serve(upstream: str, spec: FidelitySpec, host: str = "127.0.0.1", port: int = 0) -> _Server:
    """A started proxy server (not yet serving: call ``serve_forever`` in a thread)."""
    fidelity = Fidelity(upstream, spec)
    server = _Server((host, port), fidelity)
    fidelity.start()
    return server


# ---- starting it from Python ------------------------------------------------------------------------


@dataclass
class FidelityProxy:
    """A fidelity proxy child process, and small clients of its control API."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    upstream: str
    spec: str = DEFAULT_PROFILE  # the spec it was started with (what ``configure(key=None)`` restores)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _url(self, path: str) -> str:
        return f"{self.endpoint}/_fidelity/{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def calls(self) -> list[JsonDict]:
        return cast(list[JsonDict], httpx.get(self._url("calls"), timeout=30).raise_for_status().json())

    def reset_calls(self) -> None:
        httpx.post(self._url("calls/reset"), timeout=10).raise_for_status()

    def script(self, rules: list[JsonDict]) -> list[JsonDict]:
        """Add deterministic faults; returns the rules still active."""
        return cast(list[JsonDict], httpx.post(self._url("script"), json=rules, timeout=10).raise_for_status().json())

    def clear_script(self) -> None:
        httpx.delete(self._url("script"), timeout=10).raise_for_status()

    def held(self) -> list[JsonDict]:
        """The calls a ``hold`` rule is holding (or held since the script was last cleared)."""
        return cast(list[JsonDict], httpx.get(self._url("held"), timeout=10).raise_for_status().json())

    def release_held(self) -> None:
        httpx.post(self._url("held/release"), timeout=10).raise_for_status()

    def configure(self, spec: str = "", replace: bool = False, **settings: float | str | None) -> str:
        """Change the spec at run time: ``spec`` clauses, then ``settings`` (``stale_ms=4000``; a
        None value puts back what the proxy was started with), over the current spec or, with
        ``replace``, from scratch. Returns the spec now in force."""
        clauses = [spec] if spec else []
        for name, value in settings.items():
            clauses.append(f"{name}={_setting_text(FidelitySpec.parse(self.spec), name) if value is None else value}")
        out = httpx.post(self._url("config"), json={"spec": ";".join(clauses), "replace": replace}, timeout=10)
        return str(out.raise_for_status().json()["spec"])

    def stats(self) -> JsonDict:
        return cast(JsonDict, httpx.get(self._url("stats"), timeout=10).raise_for_status().json())


def _setting_text(spec: FidelitySpec, name: str) -> str:
    """The value of one key of ``spec``, in the spec format."""
    current = dict(c.split("=", 1) for c in spec.describe().split(";"))
    if name in current:
        return current[name]
    if name in RATE_KINDS:
        return "0"
    kind = name.split(".", 1)[0]
    if "." in name and kind in RATE_KINDS:
        return current.get(kind, "0")  # an operation's override put back: its kind's rate again
    if name == "exempt":
        return ""
    raise FidelitySpecError(f"unknown key {name!r}")


def start_fidelity_proxy(upstream: str, spec: str | None = None, host: str = "127.0.0.1",
                         port: int | None = None) -> FidelityProxy:
    """Start ``python -m alfred_tools.fidelity`` in front of ``upstream`` and wait until it answers."""
    text = spec if spec is not None else default_spec_text()
    FidelitySpec.parse(text)  # fail here, not in the child
    port = port or free_port(host)
    proc = subprocess.Popen([sys.executable, "-m", "alfred_tools.fidelity", "--upstream", upstream,
                             "--host", host, "--port", str(port), "--spec", text], stdout=subprocess.DEVNULL)
    proxy = FidelityProxy(host, port, proc, upstream, text)
    try:
        wait_http(proxy._url("health"), proc=proc)
    except Exception:
        proxy.stop()
        raise
    return proxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alfred_tools.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="the moto server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port and prints the endpoint")
    parser.add_argument("--spec", default=None, help="default: $ALFRED_FIDELITY_SPEC or 'aws'")
    args = parser.parse_args(argv)
    try:
        spec = FidelitySpec.parse(args.spec if args.spec is not None else default_spec_text())
    except FidelitySpecError as exc:
        parser.error(str(exc))
    server = serve(args.upstream, spec, args.host, args.port)
    if args.port == 0:
        print(f"http://{args.host}:{server.server_address[1]}", flush=True)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.fidelity.stop()
        server.server_close()
    return 0
