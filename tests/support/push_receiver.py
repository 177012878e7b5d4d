"""A local push service for tests: what a browser's push service does with a push, checked.

``PushReceiver`` is an HTTP server (a thread, 127.0.0.1, a free port) that hands out
subscriptions (``subscribe()``: a fresh P-256 key pair and auth secret per browser, as a browser
makes them) and, for every POST to one of their endpoints:

- verifies the ``Authorization: vapid t=<JWT>, k=<key>`` header (RFC 8292): an ES256 signature by
  ``k`` (and by the expected application server key, if given), ``aud`` this origin, ``exp`` in
  the future and at most 24 h ahead, ``sub`` a mailto: or https: URL;
- decrypts the ``aes128gcm`` body (RFC 8291, RFC 8188) with that subscription's private key and
  auth secret;
- answers with the next status of that endpoint's script (``answer(endpoint, 500, 201)``; 201 once
  the script is used up) and records a ``Delivery`` (status, headers, the decrypted JSON or the
  error that made it unreadable).

The decryption here is written from the RFCs apart from the sender's, and checked against RFC
8291's own test vector in tests/unit/test_push.py.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alfred_jobs.domain.push import PushSubscription


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _hkdf(salt: bytes, ikm: bytes, info: bytes, n: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=salt, info=info).derive(ikm)


def decrypt(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """The plaintext of an ``aes128gcm`` Web Push body (RFC 8291 section 3.4, RFC 8188 section 2)."""
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    as_public = body[21:21 + idlen]
    if idlen != 65 or rs < 18:
        raise ValueError(f"bad header (idlen {idlen}, rs {rs})")
    ciphertext = body[21 + idlen:]
    ua_public = _point(ua_private.public_key())
    shared = ua_private.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public))
    ikm = _hkdf(auth_secret, shared, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    records = [ciphertext[i:i + rs] for i in range(0, len(ciphertext), rs)]
    out = b""
    for i, record in enumerate(records):
        seq_nonce = (int.from_bytes(nonce, "big") ^ i).to_bytes(12, "big")
        plain = AESGCM(cek).decrypt(seq_nonce, record, None).rstrip(b"\x00")
        last = i == len(records) - 1
        if not plain or plain[-1] != (2 if last else 1):
            raise ValueError("bad record delimiter")
        out += plain[:-1]
    return out


def verify_vapid(header: str, audience: str, expected_key: str | None = None) -> dict[str, Any]:
    """The claims of a valid ``vapid t=..., k=...`` header for ``audience`` (RFC 8292), else ValueError."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError(f"not a vapid authorization: {scheme!r}")
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    token, k = parts["t"], parts["k"]
    if expected_key is not None and k != expected_key:
        raise ValueError("signed with another key than the application server key")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64u(k))
    claims: dict[str, Any] = jwt.decode(token, public, algorithms=["ES256"], audience=audience,
                                        options={"require": ["aud", "exp", "sub"]})
    if claims["exp"] > time.time() + 24 * 3600 + 60:
        raise ValueError("exp more than 24 hours ahead")
    if not str(claims["sub"]).startswith(("mailto:", "https:")):
        raise ValueError(f"sub is not a contact URL: {claims['sub']!r}")
    return claims


@dataclass
class Browser:
    """One subscription's secrets, as the browser keeps them."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def subscription(self) -> PushSubscription:
        return PushSubscription(self.endpoint, b64u(_point(self.private_key.public_key())), b64u(self.auth))

    def json(self) -> dict[str, Any]:
        """``PushSubscription.toJSON()``."""
        s = self.subscription
        return {"endpoint": s.endpoint, "expirationTime": None, "keys": {"p256dh": s.p256dh, "auth": s.auth}}


@dataclass
class Delivery:
    endpoint: str
    status: int
    headers: dict[str, str]
    payload: dict[str, Any] | None = None
    error: str | None = None
    claims: dict[str, Any] | None = None


@dataclass
class PushReceiver:
    host: str = "127.0.0.1"
    expected_key: str | None = None  # the application server key every push must be signed with
    browsers: dict[str, Browser] = field(default_factory=dict)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.server_address[1]}"

    def subscribe(self) -> Browser:
        browser = Browser(f"{self.origin}/push/{uuid.uuid4().hex}", ec.generate_private_key(ec.SECP256R1()),
                          uuid.uuid4().bytes)
        with self.lock:
            self.browsers[browser.endpoint] = browser
        return browser

    def answer(self, endpoint: str, *statuses: int) -> None:
        """The statuses the next pushes to ``endpoint`` get, in order (then 201)."""
        with self.lock:
            self.scripts[endpoint] = list(statuses)

    def for_endpoint(self, endpoint: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.endpoint == endpoint]

    def accepted(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        endpoint = f"{self.origin}{path}"
        with self.lock:
            browser = self.browsers.get(endpoint)
            script = self.scripts.get(endpoint, [])
            status = script.pop(0) if script else (201 if browser else 404)
        delivery = Delivery(endpoint, status, headers)
        try:
            delivery.claims = verify_vapid(headers.get("authorization", ""), self.origin, self.expected_key)
            if headers.get("content-encoding") != "aes128gcm":
                raise ValueError(f"Content-Encoding {headers.get('content-encoding')!r}")
            if "ttl" not in headers:
                raise ValueError("no TTL header")
            if browser is None:
                raise ValueError("unknown endpoint")
            delivery.payload = json.loads(decrypt(body, browser.private_key, browser.auth))
        except Exception as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                status = delivery.status = 400  # a push service refuses what it cannot read
        with self.lock:
            self.deliveries.append(delivery)
        return status

    def start(self) -> PushReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver._handle(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> PushReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
