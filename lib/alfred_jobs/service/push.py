"""Web Push, the part the API and the notifier share: the VAPID key, the SSRF rule for a
subscription's endpoint, the strict parse of a browser's subscription, and the use cases behind
``/api/push/*`` (docs/notifications.md).

The endpoint rule (SPEC, "Notifications when the user is away"): a subscription's endpoint is a URL
the server will call, so it must be ``https://`` to a public address (every address its host
resolves to: not private, loopback, link-local, multicast, reserved or unspecified, IPv4 or IPv6,
an IPv4 address inside IPv6 judged as the IPv4 address it is), unless its host is listed in
``ALFRED_PUSH_ENDPOINT_ALLOW`` (then http and private addresses are fine: local tests). The check
runs when a subscription is stored and again right before each push, and the push connects to
the very addresses it checked (no second lookup for a rebinding name to answer differently).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from alfred_jobs.clock import Clock, Signal, Tasks
from alfred_jobs.domain.push import PushSubscription
from alfred_jobs.exceptions import ConfigurationError, InvalidInput, NotFound
from alfred_jobs.ports import Deps
from alfred_jobs.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[IPAddress]]  # (host, port[, wait seconds]) -> addresses

MAX_ENDPOINT_CHARS = 2048
RESOLVE_TIMEOUT_SECONDS = 2.0
# The order of P-256's group: a private key is a scalar in [1, n - 1].
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url (padding optional); ``ValueError`` for anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


# ---- the VAPID key (RFC 8292) -----------------------------------------------------------------


@dataclass(frozen=True)
class VapidKey:
    """The application server's P-256 key pair and its contact (``sub``)."""

    private_key: ec.EllipticCurvePrivateKey
    subject: str

    @property
    def public_bytes(self) -> bytes:
        """The uncompressed point (65 bytes): what browsers call the applicationServerKey."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                          serialization.PublicFormat.UncompressedPoint)

    @property
    def public_key(self) -> str:
        return b64url(self.public_bytes)


def load_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM (PKCS#8 or SEC1) or from its 32-byte scalar in base64url."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            raise ConfigurationError(f"ALFRED_VAPID_PRIVATE_KEY is not a readable PEM key: {type(exc).__name__}"
                                     ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ConfigurationError("ALFRED_VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key")
        return key
    try:
        raw = b64url_decode(text)
    except ValueError:
        raw = b""
    scalar = int.from_bytes(raw, "big")
    if len(raw) != 32 or not 1 <= scalar < P256_ORDER:
        raise ConfigurationError("ALFRED_VAPID_PRIVATE_KEY must be PEM or a 32-byte P-256 scalar in base64url")
    return ec.derive_private_key(scalar, ec.SECP256R1())


def derive_private_key(seed: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 key of a secret's random string, the same every time.

    Secrets Manager's ``GenerateSecretString`` makes random text, not EC keys, so the template's
    secret holds 64 random characters and every function derives the one key from them:
    SHA-256 of a domain-separation prefix and the text, read as a big-endian integer h, gives the
    scalar ``h mod (n - 1) + 1`` (n the group order): never zero, and within 2^-128 of uniform.
    Rotating the secret rotates the key (browsers must subscribe again; docs/notifications.md).
    """
    if not seed:
        raise ConfigurationError("the VAPID secret is empty")
    digest = hashlib.sha256(b"alfred-jobs vapid p256 v1\x00" + seed.encode("utf-8")).digest()
    scalar = int.from_bytes(digest, "big") % (P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


@lru_cache(maxsize=8)
def _key(private_key: str | None, secret: str | None, subject: str) -> VapidKey | None:
    if private_key:
        return VapidKey(load_private_key(private_key), subject)
    if secret:
        return VapidKey(derive_private_key(secret), subject)
    return None


def vapid_key(settings: Settings) -> VapidKey | None:
    """The configured VAPID key (``vapid_private_key``, else derived from ``vapid_secret``), or None."""
    subject = settings.vapid_subject
    if not (subject.startswith("mailto:") or subject.startswith("https://")):
        raise ConfigurationError("ALFRED_VAPID_SUBJECT must be a mailto: or https: URL (RFC 8292)")
    return _key(settings.vapid_private_key, settings.vapid_secret, subject)


# ---- the endpoint rule (no SSRF) -----------------------------------------------------------------


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """``ALFRED_PUSH_ENDPOINT_ALLOW``: comma-separated hosts (IPv6 with or without brackets)."""
    return frozenset(h.strip().strip("[]").lower() for h in settings.push_endpoint_allow.split(",") if h.strip())


def is_public(address: IPAddress) -> bool:
    """Whether a push may go to ``address``: a globally routable unicast address.

    An IPv4 address carried in IPv6 is judged as the IPv4 address it is (IPv4-mapped
    ``::ffff:a.b.c.d``; 6to4 ``2002::/16``, whose embedded address must be public too); Teredo
    (``2001::/32``) and NAT64 (``64:ff9b::/96``, ``64:ff9b:1::/48``) name addresses on the far side
    of a relay or translator and are refused, as are the other special-purpose ranges.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
        if address.teredo is not None or any(address in n for n in _TRANSLATED):
            return False
        if address.is_site_local:
            return False
    bad = (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
           or address.is_reserved or address.is_unspecified)
    return address.is_global and not bad


_TRANSLATED = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def lookup(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (TCP), in the calling task and without a time limit
    (getaddrinfo has none of its own): ``check_endpoint``'s default, for addresses written out."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if addr not in out:
            out.append(addr)
    return out


MAX_LOOKUPS_IN_FLIGHT = 256  # names being resolved at once, across every user


class _Lookup:
    def __init__(self, done: Signal) -> None:
        self.done = done
        self.addresses: list[IPAddress] | None = None
        self.error: BaseException | None = None


def detached_resolver(tasks: Tasks, clock: Clock, timeout: float = RESOLVE_TIMEOUT_SECONDS,
                      lookup: Callable[[str, int], list[IPAddress]] = lookup) -> Resolver:
    """A resolver no name can hold (issue 26): each lookup runs as a task of its own
    (``tasks.start``, never a bounded pool others need), its caller waits at most ``timeout``
    seconds (or the ``timeout`` it passes, if shorter) and gets an ``OSError`` after that, and a
    name already being resolved is not looked up again: its callers wait on the one lookup. So a
    ``getaddrinfo`` that hangs (it has no time limit of its own) costs one thread per name until
    the system's resolver gives up, and delays nobody else. At most ``MAX_LOOKUPS_IN_FLIGHT``
    names at once; past that a lookup fails at once."""
    lock = threading.Lock()
    in_flight: dict[tuple[str, int], _Lookup] = {}

    def run(key: tuple[str, int], job: _Lookup) -> None:
        try:
            job.addresses = lookup(*key)
        except BaseException as exc:  # handed to the callers
            job.error = exc
        finally:
            with lock:
                in_flight.pop(key, None)
            job.done.set()

    def resolve(host: str, port: int, wait: float | None = None) -> list[IPAddress]:
        key = (host, port)
        with lock:
            job = in_flight.get(key)
            fresh = job is None
            if job is None:
                if len(in_flight) >= MAX_LOOKUPS_IN_FLIGHT:
                    raise OSError("too many names being resolved at once")
                job = in_flight[key] = _Lookup(clock.signal())
        if fresh:
            tasks.start(lambda: run(key, job), name="push-resolve")
        limit = timeout if wait is None else max(0.0, min(timeout, wait))
        if not job.done.wait(limit):
            raise OSError(f"resolving {host} took longer than {limit:g}s")
        if job.error is not None:
            raise OSError(f"resolving {host} failed: {job.error}")
        return list(job.addresses or [])

    return resolve


@dataclass(frozen=True)
class Target:
    """A checked endpoint: where to connect (the checked addresses) and what to call it (TLS, Host)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def _invalid(why: str) -> InvalidInput:
    return InvalidInput(f"invalid subscription: {why}", code="invalid_subscription")


def check_endpoint(url: str, allow: Collection[str], resolver: Resolver | None = None) -> Target:
    """The endpoint if a push may go there (see the module), else ``InvalidInput``
    (400 ``invalid_subscription``). ``resolver`` looks the host up: the runtime's callers pass a
    ``detached_resolver`` (bounded in time); without one, ``lookup`` (for addresses written out)."""
    if not isinstance(url, str) or not url or len(url) > MAX_ENDPOINT_CHARS:
        raise _invalid(f"endpoint must be a URL of at most {MAX_ENDPOINT_CHARS} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise _invalid("endpoint must be an ASCII URL without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid("endpoint is not a URL") from None
    host = (parts.hostname or "").lower()
    if not host or "@" in parts.netloc or parts.fragment:
        raise _invalid("endpoint must be https://host/path, without credentials or fragment")
    listed = host in allow
    if parts.scheme != "https" and not (listed and parts.scheme == "http"):
        raise _invalid("endpoint must be https")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = (resolver or lookup)(host, port)
    except (OSError, UnicodeError, ValueError):
        raise _invalid(f"endpoint host {host!r} does not resolve") from None
    if not addresses:
        raise _invalid(f"endpoint host {host!r} does not resolve")
    if not listed:
        for address in addresses:
            if not is_public(address):
                raise _invalid("endpoint must be a public address")
    return Target(url=url, scheme=parts.scheme, host=host, port=port, addresses=tuple(addresses))


# ---- a browser's subscription -------------------------------------------------------------------


def parse_subscription(payload: Any) -> PushSubscription:
    """A browser's ``PushSubscription.toJSON()`` (``endpoint``, ``keys.p256dh``, ``keys.auth``,
    optionally ``expirationTime``), checked strictly: nothing else, and keys that are a P-256 point
    and a 16-byte secret. Does not look at where the endpoint points (``check_endpoint``)."""
    if not isinstance(payload, dict):
        raise _invalid("body must be a JSON object: {\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}}")
    extra = set(payload) - {"endpoint", "keys", "expirationTime"}
    if extra:
        raise _invalid(f"unknown field {sorted(extra)[0]!r}")
    endpoint, keys = payload.get("endpoint"), payload.get("keys")
    expiration = payload.get("expirationTime")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, int | float)):
        raise _invalid("expirationTime must be null or a number")
    if not isinstance(endpoint, str) or not endpoint:
        raise _invalid("endpoint must be a string")
    if not isinstance(keys, dict) or set(keys) != {"p256dh", "auth"}:
        raise _invalid("keys must be {\"p256dh\", \"auth\"}")
    p256dh, auth = keys["p256dh"], keys["auth"]
    try:
        point = b64url_decode(p256dh)
        secret = b64url_decode(auth)
    except ValueError:
        raise _invalid("keys must be base64url") from None
    if len(point) != 65 or point[0] != 4:
        raise _invalid("keys.p256dh must be an uncompressed P-256 point (65 bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise _invalid("keys.p256dh is not a point on P-256") from None
    if len(secret) != 16:
        raise _invalid("keys.auth must be 16 bytes")
    return PushSubscription(endpoint=endpoint, p256dh=p256dh, auth=auth)


def endpoint_id(endpoint: str) -> str:
    """A subscription's key in its user's item: a hash of the endpoint (bounded, any characters)."""
    return hashlib.sha256(endpoint.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# ---- the use cases -------------------------------------------------------------------------------


class PushService:
    """``GET /api/push/key``, ``POST`` and ``DELETE /api/push/subscriptions``."""

    def __init__(self, deps: Deps, resolver: Resolver | None = None) -> None:
        self.deps = deps
        # Lookups on the process's tasks, bounded in time (a name that never answers costs a
        # subscribe two seconds, not a request thread for as long as the resolver hangs).
        self.resolver = resolver or detached_resolver(deps.tasks, deps.clock)

    def public_key(self) -> str:
        key = vapid_key(self.deps.settings)
        if key is None:
            raise NotFound("push notifications are not configured here", code="push_disabled")
        return key.public_key

    def _store(self) -> Any:
        if self.deps.push is None:
            raise NotFound("push notifications are not configured here", code="push_disabled")
        return self.deps.push

    def subscribe(self, user_id: str, payload: Any) -> PushSubscription:
        store = self._store()
        sub = parse_subscription(payload)
        check_endpoint(sub.endpoint, allowed_hosts(self.deps.settings), self.resolver)
        store.add(user_id, sub)
        return sub

    def unsubscribe(self, user_id: str, endpoint: str) -> None:
        if not endpoint or len(endpoint) > MAX_ENDPOINT_CHARS:
            raise _invalid(f"endpoint must be 1-{MAX_ENDPOINT_CHARS} characters")
        self._store().remove(user_id, endpoint)
