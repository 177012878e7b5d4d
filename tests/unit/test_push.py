"""Web Push, in process: the SSRF rule, the subscription's parse, the VAPID key, the RFC 8291
payload (the RFC's own test vector), the notifier (claim once, 404/410 drop, 5xx retry, bounded
time, never raises) and the routes."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.adapters.push import MAX_PLAINTEXT, WebPushNotifier, encrypt, payload_bytes, vapid_authorization
from alfred_jobs.adapters.push_memory import MemoryClaims, MemoryPushStore, RecordingNotifier
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.models import ChatRequest, JobStatus
from alfred_jobs.domain.push import PushMessage, PushSubscription, preview
from alfred_jobs.durability.runner import Delivery, JobRunner
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.exceptions import ConfigurationError, InvalidInput
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.push import (
    P256_ORDER,
    IPAddress,
    Target,
    VapidKey,
    b64url,
    check_endpoint,
    derive_private_key,
    load_private_key,
    parse_subscription,
    vapid_key,
)
from alfred_jobs.settings import Settings
from tests.support.clocks import RecordingSleepClock
from tests.support.push_receiver import Browser, decrypt, unb64u, verify_vapid

# ---- the endpoint rule ---------------------------------------------------------------------------


def resolving_to(*addresses: str):  # type: ignore[no-untyped-def]
    def resolver(host: str, port: int, wait: float | None = None) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in addresses]
    return resolver


REFUSED_ADDRESSES = [
    "127.0.0.1", "127.8.9.10",            # loopback
    "10.0.0.1", "172.16.5.4", "192.168.1.1",  # private
    "169.254.169.254",                    # link-local (the cloud metadata service)
    "100.64.0.1",                         # carrier-grade NAT
    "0.0.0.0", "0.1.2.3",                 # unspecified, "this network"
    "224.0.0.1", "239.255.255.250",       # multicast
    "240.0.0.1", "255.255.255.255",       # reserved, broadcast
    "192.0.2.10", "198.51.100.1", "203.0.113.9", "198.18.0.1",  # documentation, benchmarking
    "::1", "::",                          # IPv6 loopback, unspecified
    "fe80::1", "fc00::1", "fd12:3456::1",  # link-local, unique local
    "fec0::1",                            # site-local (deprecated)
    "ff02::1",                            # multicast
    "2001:db8::1",                        # documentation
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped, private inside
    "::127.0.0.1",                        # IPv4-compatible (deprecated)
    "2002:7f00:1::1", "2002:a00:1::1",    # 6to4 of 127.0.0.1, 10.0.0.1
    "64:ff9b::a00:1", "64:ff9b::808:808",  # NAT64
    "2001::1",                            # Teredo
]
PUBLIC_ADDRESSES = ["8.8.8.8", "142.250.74.110", "2606:4700:4700::1111", "2a00:1450:4001::200e",
                    "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_an_endpoint_that_resolves_to_a_non_public_address_is_refused(address: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_endpoint("https://push.example.com/send/abc", frozenset(), resolving_to(address))
    assert err.value.code == "invalid_subscription" and err.value.status == 400


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_an_https_endpoint_on_a_public_address_is_accepted(address: str) -> None:
    target = check_endpoint("https://push.example.com:8443/send/abc?x=1", frozenset(), resolving_to(address))
    assert target == Target("https://push.example.com:8443/send/abc?x=1", "https", "push.example.com", 8443,
                            (ipaddress.ip_address(address),))


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    with pytest.raises(InvalidInput):
        check_endpoint("https://push.example.com/x", frozenset(), resolving_to("8.8.8.8", "10.0.0.1"))


@pytest.mark.parametrize("url", [
    "http://push.example.com/x",          # not https
    "ftp://push.example.com/x", "javascript:alert(1)", "push.example.com/x", "", "https://",
    "https://user:pw@push.example.com/x",  # credentials
    "https://push.example.com/x#frag",
    "https://push.example.com:99999/x",   # a port out of range
    "https://push.example.com/a b",       # a space
    "https://push.example.com/\u00e9",    # not ASCII
    "https://push.example.com/" + "a" * 2100,
])
def test_malformed_or_plain_http_endpoints_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_endpoint(url, frozenset(), resolving_to("8.8.8.8"))
    assert err.value.code == "invalid_subscription"


def test_an_allowed_host_may_be_http_and_private_and_nothing_else_may() -> None:
    allow = frozenset({"127.0.0.1", "::1"})
    assert check_endpoint("http://127.0.0.1:9000/p", allow, resolving_to("127.0.0.1")).scheme == "http"
    assert check_endpoint("http://[::1]:9000/p", allow, resolving_to("::1")).host == "::1"
    with pytest.raises(InvalidInput):  # localhost is another host than 127.0.0.1
        check_endpoint("http://localhost:9000/p", allow, resolving_to("127.0.0.1"))


def test_a_host_that_does_not_resolve_is_refused() -> None:
    def nowhere(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        raise OSError("no such host")

    with pytest.raises(InvalidInput):
        check_endpoint("https://push.example.invalid/x", frozenset(), nowhere)
    with pytest.raises(InvalidInput):
        check_endpoint("https://push.example.com/x", frozenset(), resolving_to())


def test_an_ip_literal_endpoint_is_judged_by_its_address_with_the_real_resolver() -> None:
    with pytest.raises(InvalidInput):
        check_endpoint("https://127.0.0.1/x", frozenset())
    with pytest.raises(InvalidInput):
        check_endpoint("https://[::ffff:7f00:1]/x", frozenset())
    assert check_endpoint("https://8.8.8.8/x", frozenset()).addresses == (ipaddress.ip_address("8.8.8.8"),)


# ---- the subscription ----------------------------------------------------------------------------


def browser(endpoint: str = "https://push.example.com/send/1") -> Browser:
    return Browser(endpoint, ec.generate_private_key(ec.SECP256R1()), b"0123456789abcdef")


def test_a_browsers_subscription_parses() -> None:
    b = browser()
    assert parse_subscription(b.json()) == b.subscription
    assert parse_subscription({"endpoint": b.endpoint, "keys": b.json()["keys"]}) == b.subscription


@pytest.mark.parametrize("mutate", [
    lambda d: [],
    lambda d: {**d, "extra": 1},
    lambda d: {**d, "endpoint": 5},
    lambda d: {**d, "expirationTime": "soon"},
    lambda d: {**d, "expirationTime": True},
    lambda d: {**d, "keys": None},
    lambda d: {**d, "keys": {**d["keys"], "more": "x"}},
    lambda d: {**d, "keys": {"p256dh": d["keys"]["p256dh"]}},
    lambda d: {**d, "keys": {**d["keys"], "auth": "not base64!"}},
    lambda d: {**d, "keys": {**d["keys"], "auth": b64url(b"short")}},
    lambda d: {**d, "keys": {**d["keys"], "p256dh": b64url(b"\x04" + b"\x01" * 64)}},  # not on the curve
    lambda d: {**d, "keys": {**d["keys"], "p256dh": b64url(b"\x02" + b"\x01" * 32)}},  # compressed
    lambda d: {**d, "keys": {**d["keys"], "p256dh": 7}},
])
def test_anything_but_a_browsers_subscription_is_invalid(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as err:
        parse_subscription(mutate(browser().json()))
    assert err.value.code == "invalid_subscription"


# ---- the VAPID key --------------------------------------------------------------------------------


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_the_key_loads_from_pem_or_raw_and_derives_from_a_secret_deterministically() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    for text in (pem(key), raw):
        assert load_private_key(text).private_numbers() == key.private_numbers()
    a, b = derive_private_key("s3cret-from-secrets-manager"), derive_private_key("s3cret-from-secrets-manager")
    assert a.private_numbers() == b.private_numbers()
    assert 1 <= a.private_numbers().private_value < P256_ORDER
    assert derive_private_key("another").private_numbers() != a.private_numbers()
    public = vapid_key(Settings(vapid_secret="s3cret-from-secrets-manager"))
    assert public is not None and len(unb64u(public.public_key)) == 65 and unb64u(public.public_key)[0] == 4
    assert vapid_key(Settings()) is None


@pytest.mark.parametrize("text", ["", "abc", b64url(b"\x00" * 32), b64url(b"\xff" * 32), "-----BEGIN nonsense"])
def test_a_bad_key_stops_the_process_at_start(text: str) -> None:
    with pytest.raises(ConfigurationError):
        load_private_key(text)


def test_a_pem_key_on_another_curve_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        load_private_key(pem(ec.generate_private_key(ec.SECP384R1())))


def test_the_subject_must_be_a_contact_url() -> None:
    with pytest.raises(ConfigurationError):
        vapid_key(Settings(vapid_secret="x", vapid_subject="admin@example.com"))


def test_the_vapid_token_is_signed_by_the_key_for_the_push_services_origin() -> None:
    key = VapidKey(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com")
    header = vapid_authorization(key, "https://fcm.googleapis.com:443/wp/abc?x=y", time.time())
    claims = verify_vapid(header, "https://fcm.googleapis.com:443", expected_key=key.public_key)
    assert claims["sub"] == "mailto:ops@example.com"
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    other = VapidKey(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com")
    with pytest.raises(ValueError):
        verify_vapid(header, "https://fcm.googleapis.com:443", expected_key=other.public_key)


# ---- the payload (RFC 8291) ------------------------------------------------------------------------


def test_encryption_reproduces_rfc_8291_appendix_a() -> None:
    # RFC 8291, Appendix A: every input fixed, the output byte for byte.
    plaintext = unb64u("V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24")
    as_private = ec.derive_private_key(int.from_bytes(unb64u("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"),
                                       ec.SECP256R1())
    ua_private = ec.derive_private_key(int.from_bytes(unb64u("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"), "big"),
                                       ec.SECP256R1())
    p256dh = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    auth = "BTBZMqHH6r4Tts7J_aSIgg"
    body = encrypt(plaintext, p256dh, auth, salt=unb64u("DGv6ra1nlYgDCS1FRnbzlw"), server_key=as_private)
    assert b64url(body) == (
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK"
        "6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")
    # and the test receiver's decryption, written apart, reads it back
    assert decrypt(body, ua_private, unb64u(auth)) == plaintext


def test_the_payload_is_the_five_fields_encrypted_fresh_for_each_push() -> None:
    b = browser()
    message = PushMessage("a" * 32, "complete", 9, "Alfred finished", "Chicken and rice: 3 steps done")
    raw = payload_bytes(message)
    one, two = (encrypt(raw, b.subscription.p256dh, b.subscription.auth) for _ in range(2))
    assert one != two, "a fresh salt and key for every push"
    for body in (one, two):
        assert json.loads(decrypt(body, b.private_key, b.auth)) == {
            "job_id": "a" * 32, "status": "complete", "seq": 9, "title": "Alfred finished",
            "body": "Chicken and rice: 3 steps done"}


def test_a_long_body_is_shortened_to_fit_one_push() -> None:
    message = PushMessage("a" * 32, "complete", 3, "Alfred finished", "é" * 5000)
    raw = payload_bytes(message)
    assert len(raw) <= MAX_PLAINTEXT
    data = json.loads(raw)
    assert data["body"].endswith("…") and data["job_id"] == "a" * 32 and data["seq"] == 3
    b = browser()
    assert len(encrypt(raw, b.subscription.p256dh, b.subscription.auth)) <= 4096


# ---- the notifier ------------------------------------------------------------------------------------

KEY = VapidKey(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com")
MESSAGE = PushMessage("b" * 32, "complete", 7, "Alfred finished", "Done")


@dataclass
class FakeService:
    """A push service for the notifier's transport: answers per endpoint from a script."""

    scripts: dict[str, list[int | Exception]] = field(default_factory=dict)
    posts: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0

    def __call__(self, target: Target, headers: dict[str, str], body: bytes, timeout: float) -> int:
        self.posts.append((target.url, body, headers))
        if self.delay:
            time.sleep(min(self.delay, timeout))
        script = self.scripts.get(target.url, [])
        answer = script.pop(0) if script else 201
        if isinstance(answer, Exception):
            raise answer
        return answer

    def to(self, url: str) -> int:
        return sum(1 for u, _, _ in self.posts if u == url)


def notifier(service: FakeService, store: MemoryPushStore | None = None, **settings: object
             ) -> tuple[WebPushNotifier, MemoryPushStore, list[float]]:
    clock = RecordingSleepClock()  # backoffs are recorded, not slept
    store = store or MemoryPushStore()
    n = WebPushNotifier(Settings(**settings), store, key=KEY, claims=MemoryClaims(), transport=service,  # type: ignore[arg-type]
                        resolver=resolving_to("8.8.8.8"), clock=clock)
    return n, store, clock.sleeps


def subscribed(store: MemoryPushStore, *urls: str) -> list[Browser]:
    out = [browser(u) for u in urls]
    for b in out:
        store.add("alice", b.subscription)
    return out


def test_each_subscription_gets_one_decryptable_signed_push_and_a_repeat_gets_none() -> None:
    service = FakeService()
    n, store, _ = notifier(service)
    a, b = subscribed(store, "https://push.example.com/a", "https://push.example.com/b")
    n.notify("alice", MESSAGE)
    n.notify("alice", MESSAGE)  # a finalize run again: the claim is taken
    assert sorted(u for u, _, _ in service.posts) == [a.endpoint, b.endpoint]
    for url, body, headers in service.posts:
        who = a if url == a.endpoint else b
        assert json.loads(decrypt(body, who.private_key, who.auth)) == MESSAGE.payload()
        assert headers["Content-Encoding"] == "aes128gcm" and int(headers["TTL"]) > 0
        verify_vapid(headers["Authorization"], "https://push.example.com", expected_key=KEY.public_key)
    n.notify("alice", PushMessage(MESSAGE.job_id, "waiting", 8, "Alfred needs your answer", "?"))
    assert len(service.posts) == 4, "another event of the job is another push"


@pytest.mark.parametrize("gone", [404, 410])
def test_a_subscription_the_push_service_says_is_gone_is_dropped(gone: int) -> None:
    url = "https://push.example.com/old"
    service = FakeService({url: [gone]})
    n, store, _ = notifier(service)
    _, keep = subscribed(store, url, "https://push.example.com/new")
    n.notify("alice", MESSAGE)
    assert service.to(url) == 1, "no retry of a 404/410"
    assert store.list("alice") == [keep.subscription]


def test_a_5xx_is_tried_again_after_a_short_backoff() -> None:
    url = "https://push.example.com/flaky"
    service = FakeService({url: [503, OSError("connection reset"), 201]})
    n, store, sleeps = notifier(service)
    (b,) = subscribed(store, url)
    n.notify("alice", MESSAGE)
    assert service.to(url) == 3 and sleeps == [0.25, 0.5]
    assert store.list("alice") == [b.subscription]
    bodies = [body for _, body, _ in service.posts]
    assert len(set(bodies)) == 3, "each try encrypted afresh"


def test_a_push_service_that_keeps_failing_is_given_up_and_kept() -> None:
    url = "https://push.example.com/down"
    service = FakeService({url: [500, 502, 503, 500]})
    n, store, _ = notifier(service)
    (b,) = subscribed(store, url)
    n.notify("alice", MESSAGE)
    assert service.to(url) == 3
    assert store.list("alice") == [b.subscription]


def test_a_4xx_other_than_404_410_is_neither_retried_nor_dropped() -> None:
    url = "https://push.example.com/bad"
    service = FakeService({url: [400]})
    n, store, _ = notifier(service)
    subscribed(store, url)
    n.notify("alice", MESSAGE)
    assert service.to(url) == 1 and len(store.list("alice")) == 1


def test_a_stored_endpoint_that_now_resolves_to_a_private_address_gets_nothing() -> None:
    service = FakeService()
    n, store, _ = notifier(service)
    n.resolver = resolving_to("169.254.169.254")  # the name was rebound since it was stored
    subscribed(store, "https://push.example.com/a")
    n.notify("alice", MESSAGE)
    assert service.posts == []


def test_notify_stays_within_its_budget_and_never_raises() -> None:
    slow = FakeService(delay=60.0)
    n, store, _ = notifier(slow, push_budget_seconds=0.3)
    subscribed(store, *(f"https://push.example.com/{i}" for i in range(4)))
    started = time.monotonic()
    n.notify("alice", MESSAGE)
    # It returned at its budget, not when the (minute-long) service answered: a wide margin.
    assert time.monotonic() - started < 30

    class Broken(MemoryPushStore):
        def list(self, user_id: str) -> list[PushSubscription]:
            raise RuntimeError("store down")

    n2, _, _ = notifier(FakeService(), store=Broken())
    n2.notify("alice", MESSAGE)  # logged, swallowed


def test_a_subscription_with_keys_that_cannot_be_used_does_not_stop_the_others() -> None:
    service = FakeService()
    n, store, _ = notifier(service)
    store.add("alice", PushSubscription("https://push.example.com/broken", "AAAA", "AAAA"))
    (good,) = subscribed(store, "https://push.example.com/good")
    n.notify("alice", MESSAGE)
    assert [u for u, _, _ in service.posts] == [good.endpoint]


def test_the_recording_notifier_keeps_one_message_per_event() -> None:
    r = RecordingNotifier()
    r.notify("alice", MESSAGE)
    r.notify("alice", MESSAGE)
    assert len(r.calls) == 2 and r.for_job(MESSAGE.job_id) == [MESSAGE]


def test_the_memory_store_keeps_the_newest_ten() -> None:
    store = MemoryPushStore(limit=10)
    subs = subscribed(store, *(f"https://push.example.com/{i}" for i in range(12)))
    assert store.list("alice") == [b.subscription for b in subs[2:]]


# ---- the routes ----------------------------------------------------------------------------------------

SERVER_KEY = ec.generate_private_key(ec.SECP256R1())
ROUTE_SETTINGS = Settings(vapid_private_key=pem(SERVER_KEY), push_endpoint_allow="127.0.0.1")


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(memory_deps(ROUTE_SETTINGS)), raise_server_exceptions=False) as c:
        yield c


def auth(user: str = "alice", settings: Settings = ROUTE_SETTINGS) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_local_token(settings, user)}"}


def error(resp: object, status: int) -> str:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


def test_the_key_route_gives_the_application_server_key(client: TestClient) -> None:
    r = client.get("/api/push/key", headers=auth())
    assert r.status_code == 200
    expected = SERVER_KEY.public_key().public_bytes(serialization.Encoding.X962,
                                                    serialization.PublicFormat.UncompressedPoint)
    assert r.json() == {"public_key": b64url(expected)}
    assert error(client.get("/api/push/key"), 401) == "unauthenticated"


def test_without_a_key_the_key_route_says_push_disabled() -> None:
    with TestClient(create_app(memory_deps(Settings())), raise_server_exceptions=False) as c:
        assert error(c.get("/api/push/key", headers=auth(settings=Settings())), 404) == "push_disabled"


def test_subscribe_stores_for_the_caller_and_delete_forgets(client: TestClient) -> None:
    deps = client.app.state.deps  # type: ignore[attr-defined]
    b = browser("http://127.0.0.1:9/push/1")  # allowed by ALFRED_PUSH_ENDPOINT_ALLOW
    r = client.post("/api/push/subscriptions", json=b.json(), headers=auth())
    assert r.status_code == 201 and r.json() == {"endpoint": b.endpoint}
    assert client.post("/api/push/subscriptions", json=b.json(), headers=auth()).status_code == 201
    assert deps.push.list("alice") == [b.subscription] and deps.push.list("bob") == []
    r = client.delete("/api/push/subscriptions", params={"endpoint": b.endpoint}, headers=auth("bob"))
    assert r.status_code == 204 and deps.push.list("alice") == [b.subscription], "bob cannot remove alice's"
    r = client.delete("/api/push/subscriptions", params={"endpoint": b.endpoint}, headers=auth())
    assert r.status_code == 204 and r.content == b"" and deps.push.list("alice") == []
    assert client.delete("/api/push/subscriptions", params={"endpoint": b.endpoint},
                         headers=auth()).status_code == 204, "idempotent"


@pytest.mark.parametrize("endpoint", ["http://push.example.com/x", "https://127.0.0.2/x", "https://10.0.0.1/x",
                                      "https://[::1]/x", "https://[::ffff:169.254.169.254]/x",
                                      "http://localhost:9/x", "https://user@127.0.0.1/x"])
def test_subscribe_refuses_endpoints_the_server_must_not_call(client: TestClient, endpoint: str) -> None:
    r = client.post("/api/push/subscriptions", json=browser(endpoint).json(), headers=auth())
    assert error(r, 400) == "invalid_subscription"
    assert client.app.state.deps.push.list("alice") == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"endpoint": "https://x"}', b"[" * 100 + b"]" * 100])
def test_subscribe_refuses_what_is_not_a_subscription_in_the_one_shape(client: TestClient, body: bytes) -> None:
    r = client.post("/api/push/subscriptions", content=body, headers={**auth(), "Content-Type": "application/json"})
    assert error(r, 400) in {"invalid_subscription", "invalid_json"}


def test_delete_needs_an_endpoint(client: TestClient) -> None:
    assert error(client.delete("/api/push/subscriptions", headers=auth()), 400) == "invalid_input"


def test_the_openapi_schema_declares_the_push_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/api/push/subscriptions"]) == {"post", "delete"}
    post = paths["/api/push/subscriptions"]["post"]
    assert "201" in post["responses"] and "400" in post["responses"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["required"] == ["endpoint", "keys"]
    assert "204" in paths["/api/push/subscriptions"]["delete"]["responses"]
    assert "404" in paths["/api/push/key"]["get"]["responses"]


# ---- what a lock screen shows (ALFRED_PUSH_PREVIEW) -------------------------------------------------


def finished_push(**settings: object) -> tuple[PushMessage, str]:
    """The push a finished job sends (the runner's, through the recording notifier), and its reply."""
    deps = memory_deps(Settings.model_validate({"demo_step_seconds": 0, **settings}))
    job = JobService(deps).submit("alice", ChatRequest(message="chicken and rice [steps=2]"), None).job
    assert JobRunner(deps, DemoAgent(deps.agent_data, deps.settings)).run(Delivery(job.job_id)).status \
        is JobStatus.COMPLETE
    assert isinstance(deps.notifier, RecordingNotifier)
    (pushed,) = deps.notifier.for_job(job.job_id)
    reply = str((JobService(deps).get("alice", job.job_id).output or {})["reply"])
    return pushed, reply


def test_by_default_a_push_says_what_happened_and_nothing_of_the_reply() -> None:
    pushed, reply = finished_push()
    assert (pushed.title, pushed.body) == ("Alfred finished", "")
    assert reply and reply[:20] not in json.dumps(pushed.payload())


def test_the_preview_setting_shows_all_of_it_or_nothing() -> None:
    full, reply = finished_push(push_preview="full")
    assert full.title == "Alfred finished" and full.body and reply.startswith(full.body.rstrip("…"))
    bare, _ = finished_push(push_preview="none")
    assert (bare.title, bare.body) == ("Alfred", "")
    asking = PushMessage("b" * 32, "waiting", 4, "Alfred needs your answer", "Which pantry shelf?")
    assert (preview(asking, "title").title, preview(asking, "title").body) == ("Alfred has a question", "")
    assert preview(asking, "full") == asking
