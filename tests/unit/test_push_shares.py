"""The push sender under a hostile endpoint (issue 26): a total deadline per request, a share of
the sender's threads per user, a resolver nobody can hold. Real sockets: a local endpoint that
answers one byte every 2 s (``tests/support/slow_endpoint.py``) and a local push service that
decrypts what it gets (``tests/support/push_receiver.py``)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alfred_jobs.adapters import push_http
from alfred_jobs.adapters.push import WebPushNotifier, http_post
from alfred_jobs.adapters.push_memory import MemoryClaims, MemoryPushStore
from alfred_jobs.clock import SystemClock, ThreadTasks
from alfred_jobs.domain.push import PushMessage, PushSubscription
from alfred_jobs.service.push import IPAddress, Target, VapidKey, detached_resolver
from alfred_jobs.settings import Settings
from tests.support.push_receiver import PushReceiver
from tests.support.slow_endpoint import SlowEndpoint

KEY = VapidKey(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com")
BUDGET = 5.0


def message(job: str, seq: int = 7) -> PushMessage:
    return PushMessage(job * 32, "complete", seq, "Alfred finished", "Done")


def notifier(**settings: object) -> WebPushNotifier:
    s = Settings.model_validate({"push_endpoint_allow": "127.0.0.1", "push_budget_seconds": BUDGET, **settings})
    return WebPushNotifier(s, MemoryPushStore(limit=s.max_push_subscriptions), key=KEY, claims=MemoryClaims())


@pytest.fixture
def slow() -> Iterator[SlowEndpoint]:
    with SlowEndpoint(interval=2.0) as endpoint:
        yield endpoint


@pytest.fixture
def receiver() -> Iterator[PushReceiver]:
    with PushReceiver(expected_key=KEY.public_key) as r:
        yield r


def hostile_subscription(slow: SlowEndpoint, i: int, like: PushSubscription) -> PushSubscription:
    return PushSubscription(f"{slow.origin}/push/{i}", like.p256dh, like.auth)


def test_a_user_whose_endpoints_dribble_stalls_nobody_else(slow: SlowEndpoint, receiver: PushReceiver) -> None:
    n = notifier()
    keys = receiver.subscribe().subscription
    for i in range(10):
        n.store.add("mallory", hostile_subscription(slow, i, keys))
    alice = receiver.subscribe()
    n.store.add("alice", alice.subscription)
    # GIVEN mallory's job ended and her pushes are under way to endpoints that dribble
    started = time.monotonic()
    mallory = threading.Thread(target=n.notify, args=("mallory", message("m")), daemon=True)
    mallory.start()
    slow.wait_for(5)
    # WHEN alice's job ends
    ended = time.monotonic()
    n.notify("alice", message("a"))
    # THEN her notify returns promptly, her push delivered (notify waits for its sends)
    assert time.monotonic() - ended < 1.0, f"alice's notify took {time.monotonic() - ended:.2f}s"
    assert [d.endpoint for d in receiver.accepted()] == [alice.endpoint]
    # AND mallory's own pushes give up on time: her notify returns at its budget, every request
    # she started hung up by then (not held open by the dribble)
    mallory.join(timeout=BUDGET + 2)
    assert not mallory.is_alive(), "mallory's notify outlived its budget"
    assert time.monotonic() - started < BUDGET + 0.5
    slow.wait_hung_up(len(slow.arrived), timeout=1.0)
    assert max(slow.hung_up) - started < BUDGET + 0.5
    # AND a later push from the same process still goes out (nothing left held)
    n.notify("alice", message("a", seq=8))
    assert len(receiver.accepted()) == 2


def test_one_request_gives_up_at_its_total_deadline_whatever_the_endpoint_dribbles() -> None:
    # A byte every 0.3 s: a timeout per socket read (1 s) would never fire, the headers would take 12 s.
    with SlowEndpoint(interval=0.3) as slow:
        port = int(slow.origin.rsplit(":", 1)[1])
        target = Target(f"{slow.origin}/push/x", "http", "127.0.0.1", port, (ipaddress.ip_address("127.0.0.1"),))
        started = time.monotonic()
        with pytest.raises(OSError):
            http_post(target, {"TTL": "60"}, b"x" * 100, 1.0)
        took = time.monotonic() - started
    assert 0.9 < took < 1.5, f"the request took {took:.2f}s for a 1s deadline"


def test_a_user_gets_at_most_a_share_of_the_senders_threads(slow: SlowEndpoint, receiver: PushReceiver) -> None:
    n = notifier(push_send_threads=4, push_budget_seconds=1.0)
    keys = receiver.subscribe().subscription
    for i in range(10):
        n.store.add("mallory", hostile_subscription(slow, i, keys))
    done = threading.Event()
    threading.Thread(target=lambda: (n.notify("mallory", message("m")), done.set()), daemon=True).start()
    slow.wait_for(2)
    assert done.wait(timeout=3.0)
    # Alone, she had half the pool (4 // 2): two requests at a time, each held until the budget.
    assert len(slow.arrived) == 2, slow.arrived


def test_a_lookup_that_hangs_holds_no_thread_anyone_else_needs() -> None:
    release = threading.Event()
    calls: list[str] = []

    def lookup(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        if host == "hangs.example":
            release.wait(30)
        return [ipaddress.ip_address("8.8.8.8")]

    resolve = detached_resolver(ThreadTasks(max_workers=1, name="t-resolve"), SystemClock(), lookup=lookup)
    try:
        for _ in range(5):  # a hostile name, asked again and again
            started = time.monotonic()
            with pytest.raises(OSError):
                resolve("hangs.example", 443, 0.2)
            assert time.monotonic() - started < 1.0
        # Others resolve at once, though the hung lookup still runs (and one pool worker would be taken).
        assert resolve("push.example.com", 443, 1.0) == [ipaddress.ip_address("8.8.8.8")]
        assert calls.count("hangs.example") == 1, "one lookup per name in flight, however often asked"
    finally:
        release.set()


# ---- TLS: the same deadline over memory buffers ---------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("push.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_a_push_over_tls_is_answered_and_a_handshake_that_never_comes_ends_at_the_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(push_http, "_TLS", trust)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    got: list[bytes] = []

    def serve_tls(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with server_side.wrap_socket(conn, server_side=True) as tls:
            data = b""
            while not data.endswith(b"\r\n\r\nsealed"):  # the headers and the body, all read
                data += tls.recv(65536)
            got.append(data)
            tls.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

    def target(listener: socket.socket) -> Target:
        port = listener.getsockname()[1]
        return Target(f"https://push.test:{port}/p", "https", "push.test", port, (ipaddress.ip_address("127.0.0.1"),))

    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=serve_tls, args=(listener,), daemon=True).start()
        assert http_post(target(listener), {"TTL": "60"}, b"sealed", 5.0) == 201
        assert got and got[0].startswith(b"POST /p HTTP/1.1")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never says a word of TLS
        started = time.monotonic()
        with pytest.raises(OSError):
            http_post(target(silent), {"TTL": "60"}, b"sealed", 0.8)
        assert time.monotonic() - started < 1.3
