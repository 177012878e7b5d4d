"""Web Push on DynamoDB and HTTP: the users' subscriptions, the once-per-event claim, and the
sender (RFC 8030 delivery, RFC 8291 ``aes128gcm`` payload encryption, RFC 8292 VAPID).

Items, all in the jobs table beside the job records (job ids are 32 hex characters, so no
collision) and, like the gates, without ``user_id``/``created_sk``/``active_shard``, so they stay
out of both of its indexes:

- ``push#<user>``: ``subs`` maps a hash of each endpoint to ``{e: endpoint, p: p256dh, a: auth,
  t: added}``, at most ``max_push_subscriptions`` (the oldest dropped); ``v`` counts changes (the
  condition of the next one); ``expires_at`` is refreshed on every subscribe (retention: a browser
  that comes back subscribes again, and a user gone longer than retention gets no pushes).
- ``pushep#<hash of the endpoint>``: whose the endpoint is (``owner``), ``expires_at`` (refreshed
  by each subscribe of it). An endpoint is one browser, and it belongs to the user who subscribed
  it last (issue 26: a shared device where another user signed in must not get the first one's
  pushes). Subscribing puts this item first, and its previous owner (the put's ``ALL_OLD``: the
  item it replaced, exact, no read involved) loses the endpoint from their list; ``list`` keeps
  only the entries whose owner item, read strongly consistent, names the user and has not
  expired. So whatever a crash between the writes leaves in a list, a push goes to an endpoint
  only while it is the user's.
- ``notify#<job>#<seq>``: the claim that the push about that event was (being) sent; put once,
  conditionally, so a finalize run twice (a crash after the push, a duplicate delivery) does not
  push twice. It expires with the job's retention.

The sender needs nothing but ``cryptography`` (and pyjwt, for the VAPID token): pywebpush's
``http_ece`` ships no wheel, and the Lambda layer installs wheels only (infra/layer/Makefile).
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alfred_jobs.adapters.aws import AwsClients, deserialize, mapped_errors, serialize
from alfred_jobs.adapters.push_http import http_post
from alfred_jobs.adapters.push_shares import FairShares
from alfred_jobs.clock import Clock, SystemClock, Tasks, ThreadTasks
from alfred_jobs.domain.push import PushMessage, PushSubscription
from alfred_jobs.domain.retention import expired, expiry
from alfred_jobs.exceptions import ConditionFailed, InvalidInput, TransientStoreError
from alfred_jobs.observability import count, get_logger
from alfred_jobs.ports import PushStore
from alfred_jobs.service.push import (
    Resolver,
    Target,
    VapidKey,
    allowed_hosts,
    b64url_decode,
    check_endpoint,
    detached_resolver,
    endpoint_id,
    vapid_key,
)
from alfred_jobs.settings import Settings

log = get_logger()

RECORD_SIZE = 4096      # one record: push services accept 4096-byte bodies
MAX_PLAINTEXT = 3000    # a payload longer than this has its body shortened (header 86, tag 16, pad 1)
RETRIES = 2             # a 5xx (or a connection error) is tried again this often
BACKOFF_SECONDS = 0.25  # then 0.5
REQUEST_SECONDS = 3.0   # one request in total (DNS, connect, TLS, send, read), within the notify's budget
TOKEN_SECONDS = 12 * 3600  # a VAPID token's life (RFC 8292: at most 24 h)


# ---- RFC 8291: the payload --------------------------------------------------------------------


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def encrypt(plaintext: bytes, p256dh: str, auth: str, *, salt: bytes | None = None,
            server_key: ec.EllipticCurvePrivateKey | None = None, record_size: int = RECORD_SIZE) -> bytes:
    """``plaintext`` encrypted for the subscription's keys as one ``aes128gcm`` record (RFC 8291
    section 3.4 with RFC 8188): header (salt, rs, the ephemeral public key) then the ciphertext.
    ``salt`` and ``server_key`` are fresh for every message unless given (the RFC's test vector)."""
    ua_public = b64url_decode(p256dh)
    auth_secret = b64url_decode(auth)
    salt = os.urandom(16) if salt is None else salt
    server_key = server_key or ec.generate_private_key(ec.SECP256R1())
    as_public = server_key.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint)
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ua_public)
    ecdh_secret = server_key.exchange(ec.ECDH(), ua_key)
    ikm = _hkdf(auth_secret, ecdh_secret, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    record = plaintext + b"\x02"  # the last (and only) record's delimiter, no padding
    if len(record) + 16 > record_size:
        raise ValueError("payload too large for one record")
    header = salt + record_size.to_bytes(4, "big") + bytes([len(as_public)]) + as_public
    return header + AESGCM(cek).encrypt(nonce, record, None)


def payload_bytes(message: PushMessage) -> bytes:
    """The JSON payload, its body shortened (ending in "…") if the whole would not fit one push."""
    data = message.payload()

    def dump(body: object) -> bytes:
        return json.dumps({**data, "body": body}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    raw = dump(data.get("body", ""))
    body = str(data.get("body", ""))
    for _ in range(8):  # escapes can make a cut fall short once or twice
        if len(raw) <= MAX_PLAINTEXT:
            return raw
        encoded = body.encode("utf-8")
        keep = max(0, len(encoded) - (len(raw) - MAX_PLAINTEXT) - len("…".encode()))
        body = encoded[:keep].decode("utf-8", "ignore") + "…"
        raw = dump(body)
    return raw if len(raw) <= MAX_PLAINTEXT else dump("")


# ---- RFC 8292: who sends it -------------------------------------------------------------------


def vapid_authorization(key: VapidKey, endpoint: str, now: float) -> str:
    """The ``Authorization: vapid t=<JWT>, k=<public key>`` header for a push to ``endpoint``,
    signed at ``now`` (epoch seconds)."""
    parts = urlsplit(endpoint)
    claims = {"aud": f"{parts.scheme}://{parts.netloc}", "exp": int(now + TOKEN_SECONDS),
              "sub": key.subject}
    token = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"typ": "JWT"})
    return f"vapid t={token}, k={key.public_key}"


# ---- delivery (RFC 8030) ---------------------------------------------------------------------------

# (target, headers, body, seconds the whole request may take) -> the HTTP status
Transport = Callable[[Target, dict[str, str], bytes, float], int]


# ---- the claim: at most once per event ----------------------------------------------------------


class Claims(Protocol):
    def claim(self, job_id: str, seq: int, expires_at: int) -> bool:
        """True once per (job, seq) within retention: the caller may push about that event."""


class DynamoClaims:
    """``notify#<job>#<seq>`` items in the jobs table (see the module)."""

    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.jobs_table
        self._clock = clock or SystemClock()

    def claim(self, job_id: str, seq: int, expires_at: int) -> bool:
        key = f"notify#{job_id}#{seq}"
        token = uuid.uuid4().hex
        try:
            with mapped_errors():
                self._c.dynamodb.put_item(
                    TableName=self._table,
                    Item=serialize({"job_id": key, "claim": token, "expires_at": expires_at}),
                    ConditionExpression="attribute_not_exists(job_id) OR expires_at <= :now",
                    ExpressionAttributeValues=serialize({":now": int(self._clock.now())}))
            return True
        except ConditionFailed:
            # Ours after all, if the put landed and its answer was lost (the SDK's retry then
            # found the item): the claim says whose it is.
            with mapped_errors():
                out = self._c.dynamodb.get_item(TableName=self._table, Key=serialize({"job_id": key}),
                                                ConsistentRead=True)
            return bool(out.get("Item")) and deserialize(out["Item"]).get("claim") == token


# ---- the subscriptions ---------------------------------------------------------------------------


def _sub_entry(sub: PushSubscription, at: float) -> dict[str, Any]:
    return {"e": sub.endpoint, "p": sub.p256dh, "a": sub.auth, "t": at}


def _subs_of(item: dict[str, Any] | None, now: float) -> dict[str, dict[str, Any]]:
    if not item or expired(int(item.get("expires_at", 0)), now):
        return {}
    return dict(item.get("subs") or {})


def _newest(subs: dict[str, dict[str, Any]], limit: int) -> dict[str, dict[str, Any]]:
    ordered = sorted(subs.items(), key=lambda kv: float(kv[1].get("t", 0)))
    return dict(ordered[-limit:])


def _to_sub(entry: dict[str, Any]) -> PushSubscription:
    return PushSubscription(endpoint=str(entry["e"]), p256dh=str(entry["p"]), auth=str(entry["a"]))


class DynamoPushStore:
    """Each user's subscriptions as one item of the jobs table (``push#<user>``), and each
    endpoint's owner as another (``pushep#<hash>``; see the module)."""

    def __init__(self, clients: AwsClients, settings: Settings, clock: Clock | None = None) -> None:
        self._c = clients
        self._table = settings.jobs_table
        self._retention = settings.retention_seconds
        self._limit = settings.max_push_subscriptions
        self._clock = clock or SystemClock()

    @staticmethod
    def _key(user_id: str) -> dict[str, Any]:
        return serialize({"job_id": f"push#{user_id}"})

    @staticmethod
    def _owner_key(endpoint: str) -> dict[str, Any]:
        return serialize({"job_id": f"pushep#{endpoint_id(endpoint)}"})

    def _raw(self, user_id: str) -> dict[str, Any] | None:
        with mapped_errors():
            out = self._c.dynamodb.get_item(TableName=self._table, Key=self._key(user_id), ConsistentRead=True)
        return deserialize(out["Item"]) if "Item" in out else None

    def add(self, user_id: str, subscription: PushSubscription) -> None:
        now = self._clock.now()
        with mapped_errors():
            out = self._c.dynamodb.put_item(
                TableName=self._table, ReturnValues="ALL_OLD",
                Item=serialize({"job_id": f"pushep#{endpoint_id(subscription.endpoint)}", "owner": user_id,
                                "e": subscription.endpoint, "expires_at": expiry(now, self._retention)}))
        old = deserialize(out["Attributes"]) if out.get("Attributes") else None
        if old and old.get("owner") != user_id and not expired(int(old.get("expires_at", 0)), now):
            # Tidy only: ``list`` would leave it out of the previous owner's pushes anyway.
            self._remove_entry(str(old["owner"]), subscription.endpoint)
        dropped = self._add_entry(user_id, subscription)
        for endpoint in dropped:
            self._disown(user_id, endpoint)

    def _add_entry(self, user_id: str, subscription: PushSubscription) -> list[str]:
        """Put the entry in the user's list; the endpoints dropped to keep it within the limit."""
        # Read, change, put on the condition that nobody changed it since (``v``); two browsers
        # subscribing at once settle in a round or two.
        for _ in range(8):
            raw = self._raw(user_id)
            now = self._clock.now()
            subs = _subs_of(raw, now)
            subs[endpoint_id(subscription.endpoint)] = _sub_entry(subscription, now)
            kept = _newest(subs, self._limit)
            version = int(raw.get("v", 0)) if raw else 0
            item = {"job_id": f"push#{user_id}", "subs": kept, "v": version + 1,
                    "expires_at": expiry(now, self._retention)}
            try:
                with mapped_errors():
                    if raw is None:
                        self._c.dynamodb.put_item(TableName=self._table, Item=serialize(item),
                                                  ConditionExpression="attribute_not_exists(job_id)")
                    else:
                        self._c.dynamodb.put_item(TableName=self._table, Item=serialize(item),
                                                  ConditionExpression="v = :v",
                                                  ExpressionAttributeValues=serialize({":v": version}))
                return [str(e["e"]) for k, e in subs.items() if k not in kept]
            except ConditionFailed:
                continue
        raise ConditionFailed(f"could not store a subscription of {user_id}")

    def _remove_entry(self, user_id: str, endpoint: str) -> None:
        try:
            with mapped_errors():
                self._c.dynamodb.update_item(
                    TableName=self._table, Key=self._key(user_id), UpdateExpression="REMOVE subs.#k ADD v :one",
                    ConditionExpression="attribute_exists(subs)",
                    ExpressionAttributeNames={"#k": endpoint_id(endpoint)},
                    ExpressionAttributeValues=serialize({":one": 1}))
        except ConditionFailed:
            pass  # no subscriptions at all: nothing to remove

    def _disown(self, user_id: str, endpoint: str) -> None:
        """Delete the endpoint's owner item if it still names ``user_id`` (not if it moved on)."""
        try:
            with mapped_errors():
                self._c.dynamodb.delete_item(TableName=self._table, Key=self._owner_key(endpoint),
                                             ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "owner"},
                                             ExpressionAttributeValues=serialize({":me": user_id}))
        except ConditionFailed:
            pass  # someone else's by now, or gone

    def remove(self, user_id: str, endpoint: str) -> None:
        self._remove_entry(user_id, endpoint)
        self._disown(user_id, endpoint)

    def _owners(self, endpoints: list[str]) -> dict[str, str]:
        """Endpoint -> its owner, for those whose owner item is there and unexpired (strongly consistent)."""
        now = self._clock.now()
        keys = [self._owner_key(e) for e in dict.fromkeys(endpoints)]
        owners: dict[str, str] = {}
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {self._table: {"Keys": keys[start:start + 100], "ConsistentRead": True}}
            for _ in range(8):
                with mapped_errors():
                    out = self._c.dynamodb.batch_get_item(RequestItems=request)
                for raw in out.get("Responses", {}).get(self._table, []):
                    item = deserialize(raw)
                    if not expired(int(item.get("expires_at", 0)), now):
                        owners[str(item["e"])] = str(item["owner"])
                request = out.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._clock.sleep(0.05)
            else:
                raise TransientStoreError("could not read the push endpoints' owners")
        return owners

    def list(self, user_id: str) -> list[PushSubscription]:
        subs = _subs_of(self._raw(user_id), self._clock.now())
        ordered = [_to_sub(e) for _, e in sorted(subs.items(), key=lambda kv: float(kv[1].get("t", 0)))]
        if not ordered:
            return []
        owners = self._owners([s.endpoint for s in ordered])
        return [s for s in ordered if owners.get(s.endpoint) == user_id]


# ---- the notifier ---------------------------------------------------------------------------------


class WebPushNotifier:
    """``Notifier`` over Web Push: claim the event once, then push to each of the user's
    subscriptions at once (each checked against the endpoint rule again, encrypted for its keys,
    signed with VAPID); a 5xx or a connection error is tried again after a short backoff, a
    404/410 drops the subscription. The whole call stays within ``push_budget_seconds`` and never
    raises: a push must never delay or fail a job.

    No user can stall another's pushes (issue 26): each request (its lookup included) ends by a
    deadline of its own (``REQUEST_SECONDS``, within the budget; ``push_http``), a user's sends
    take at most a share of the sender's ``push_send_threads`` (``FairShares``), and lookups run
    detached, one per name (``detached_resolver``): a slow or hostile endpoint costs its user.

    Time and work are the ports': ``clock`` for the budget, the deadlines, the backoff and the
    VAPID token; ``tasks`` runs the sends and the lookups. By default the sends get a pool of
    their own and each lookup a task of its own (a send waits for its lookup)."""

    def __init__(self, settings: Settings, store: PushStore, clients: AwsClients | None = None, *,
                 key: VapidKey | None = None, claims: Claims | None = None, transport: Transport | None = None,
                 resolver: Resolver | None = None, clock: Clock | None = None,
                 tasks: Tasks | None = None) -> None:
        self.settings = settings
        self.store = store
        resolved = key or vapid_key(settings)
        if resolved is None:
            raise ValueError("WebPushNotifier needs a VAPID key (ALFRED_VAPID_PRIVATE_KEY or _SECRET_ARN)")
        self.key = resolved
        if claims is None:
            if clients is None:
                raise ValueError("WebPushNotifier needs clients or claims")
            claims = DynamoClaims(clients, settings, clock)
        self.claims = claims
        self.clock = clock or SystemClock()
        self.transport = transport or self._http
        threads = settings.push_send_threads
        self.tasks = tasks or ThreadTasks(max_workers=threads, name="push-send")
        self.shares = FairShares(self.tasks, self.clock, threads)
        self.resolver = resolver or detached_resolver(tasks or ThreadTasks(name="push-resolve"), self.clock)
        self.allow = allowed_hosts(settings)

    def _http(self, target: Target, headers: dict[str, str], body: bytes, seconds: float) -> int:
        return http_post(target, headers, body, seconds, self.clock)

    def notify(self, user_id: str, message: PushMessage) -> None:
        try:
            self._notify(user_id, message, self.clock.monotonic() + self.settings.push_budget_seconds)
        except Exception as exc:  # never raises: a push must not fail a job
            log.warning("push not sent", extra={"job_id": message.job_id, "seq": message.seq,
                                                "error": f"{type(exc).__name__}: {exc}"})
            count("PushErrors")

    def _notify(self, user_id: str, message: PushMessage, deadline: float) -> None:
        if not self.claims.claim(message.job_id, message.seq,
                                 expiry(self.clock.now(), self.settings.retention_seconds)):
            log.info("push already sent", extra={"job_id": message.job_id, "seq": message.seq})
            return
        subs = self.store.list(user_id)
        if not subs:
            return
        body = payload_bytes(message)
        sends = [self.shares.submit(user_id, lambda sub=sub: self._send(user_id, sub, body, deadline, message))
                 for sub in subs]
        # Wait for them all, within the budget: what is left of it for each (``_send`` never raises).
        for done in sends:
            if not done.wait(max(0.0, deadline - self.clock.monotonic())):
                return

    def _send(self, user_id: str, sub: PushSubscription, body: bytes, deadline: float,
              message: PushMessage) -> None:
        where = {"job_id": message.job_id, "seq": message.seq, "endpoint_id": endpoint_id(sub.endpoint)}
        try:
            self._send_one(user_id, sub, body, deadline, where)
        except Exception as exc:  # a bad stored key, a store error on removal: this subscription only
            log.warning("push not sent", extra={**where, "error": f"{type(exc).__name__}: {exc}"})
            count("PushErrors")

    def _request_deadline(self, deadline: float) -> float:
        return min(deadline, self.clock.monotonic() + REQUEST_SECONDS)

    def _send_one(self, user_id: str, sub: PushSubscription, body: bytes, deadline: float,
                  where: dict[str, Any]) -> None:
        if deadline - self.clock.monotonic() <= 0.05:
            log.warning("push out of time", extra=where)  # it waited behind its user's other sends
            return
        # The first request's deadline covers its lookup too.
        first = self._request_deadline(deadline)
        try:
            target = check_endpoint(sub.endpoint, self.allow,
                                    lambda host, port: self.resolver(host, port, first - self.clock.monotonic()))
        except InvalidInput as exc:
            log.warning("push endpoint refused", extra={**where, "error": exc.message})
            return
        headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "aes128gcm",
                   "TTL": str(self.settings.push_ttl_seconds), "Urgency": "high",
                   "Authorization": vapid_authorization(self.key, sub.endpoint, self.clock.now())}
        for attempt in range(RETRIES + 1):
            until = first if attempt == 0 else self._request_deadline(deadline)
            remaining = until - self.clock.monotonic()
            if remaining <= 0.05:
                log.warning("push out of time", extra=where)
                return
            try:
                # Encrypted again for each try: a key and salt are never used twice.
                status = self.transport(target, headers, encrypt(body, sub.p256dh, sub.auth), remaining)
            except (OSError, http.client.HTTPException) as exc:
                status, error = 0, f"{type(exc).__name__}: {exc}"
            else:
                error = f"HTTP {status}"
            if 200 <= status < 300:
                count("PushesSent")
                return
            if status in (404, 410):
                log.info("push subscription gone, removed", extra={**where, "status": status})
                self.store.remove(user_id, sub.endpoint)
                return
            if (status == 0 or status >= 500) and attempt < RETRIES:
                self.clock.sleep(min(BACKOFF_SECONDS * 2 ** attempt, max(0.0, deadline - self.clock.monotonic())))
                continue
            log.warning("push refused", extra={**where, "error": error})
            return


def aws_push(settings: Settings, clients: AwsClients, clock: Clock | None = None,
             ) -> tuple[DynamoPushStore, WebPushNotifier | None]:
    """The store, and the notifier where a VAPID key is configured (the composition root's), on
    ``clock``. The notifier's sends get a pool of their own, its lookups tasks of their own (see
    ``WebPushNotifier``)."""
    store = DynamoPushStore(clients, settings, clock)
    key = vapid_key(settings)
    return store, (WebPushNotifier(settings, store, clients, key=key, clock=clock) if key is not None else None)


__all__: Sequence[str] = ["DynamoClaims", "DynamoPushStore", "WebPushNotifier", "aws_push", "encrypt",
                          "http_post", "payload_bytes", "vapid_authorization"]
