"""The proxy's calls and replies as they are on the wire, and its pooled connection to moto.

A request becomes a ``_Call`` (``_parse_call``): the service and action from ``X-Amz-Target`` or
the query form, the payload, botocore's invocation id, and the principal and region from the
SigV4 ``Authorization`` credential scope (the signature itself is not checked: the access key id
names the caller, e.g. ``WorkerFunction`` or ``inspector``). ``_resource`` names what a call
touches (table, queue, secret). A ``_Reply`` is what goes back; ``_json_reply`` / ``_rewritten``
build them with the checksum botocore verifies for DynamoDB. ``_Upstream`` is HTTP to moto: the
caller's request forwarded (``forward``) or a call of the proxy's own (``call``), which bypasses
every semantic of the proxy.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import urllib3

from alfred_tools.fidelity.basics import JsonDict

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

    def forward(self, call: _Call, payload: JsonDict | None = None) -> _Reply:
        """``call`` as it came (or with ``payload`` for its body), and moto's reply."""
        body = call.body if payload is None else json.dumps(payload).encode()
        return self.request(call.method, call.path, call.headers, body)
