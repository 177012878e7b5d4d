"""The job API over in-memory ports: error shape, limits, idempotency, isolation between users."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.settings import Settings

SETTINGS = Settings(demo_step_seconds=0)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(memory_deps(SETTINGS)), raise_server_exceptions=False) as c:
        yield c


def auth(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_local_token(SETTINGS, user)}"}


def assert_error(resp: object, status: int) -> dict[str, str]:
    r = resp  # an httpx.Response
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return dict(body["error"])


def test_healthz_needs_no_identity(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"ok": True}


def test_submit_returns_202_with_links(client: TestClient) -> None:
    r = client.post("/api/chat", json={"message": "chicken"}, headers=auth())
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "pending" and len(job["job_id"]) == 32
    assert set(job["links"]) == {"self", "events", "stream", "cancel", "input"}
    assert "token=" in job["links"]["stream"]


def test_idempotency_key_same_body_same_job_other_body_409_other_user_independent(client: TestClient) -> None:
    h = {**auth(), "Idempotency-Key": "draft-1"}
    a = client.post("/api/chat", json={"message": "soup"}, headers=h).json()
    b = client.post("/api/chat", json={"message": "soup"}, headers=h).json()
    assert a["job_id"] == b["job_id"]
    err = assert_error(client.post("/api/chat", json={"message": "stew"}, headers=h), 409)
    assert err["code"] == "idempotency_key_reused"
    other = client.post("/api/chat", json={"message": "soup"},
                        headers={**auth("bob"), "Idempotency-Key": "draft-1"}).json()
    assert other["job_id"] != a["job_id"]
    listed = client.get("/api/jobs", headers=auth()).json()["jobs"]
    assert [j["job_id"] for j in listed] == [a["job_id"]]


@pytest.mark.parametrize("limit", [100, 20_000])
def test_the_message_limit_is_the_configured_one(limit: int) -> None:
    """The limit is Settings.max_message_chars wherever it is set, not a number in the model."""
    settings = Settings(demo_step_seconds=0, max_message_chars=limit, max_body_bytes=64 * 1024)
    token = {"Authorization": f"Bearer {issue_local_token(settings, 'alice')}"}
    with TestClient(create_app(memory_deps(settings)), raise_server_exceptions=False) as c:
        assert c.post("/api/chat", json={"message": "x" * limit}, headers=token).status_code == 202
        too_long = c.post("/api/chat", json={"message": "x" * (limit + 1)}, headers=token)
        assert_error(too_long, 400)
        assert too_long.json()["error"]["code"] == "message_too_long"


@pytest.mark.parametrize("body,status", [
    (b"not json", 400), (b"[]", 400), (b"{}", 400), (b'{"message": ""}', 400),
    (b'{"message": 5}', 400), (b'{"message": "x", "extra": 1}', 400),
    (b'{"message": "x", "conversation_id": "../../etc"}', 400),
    (('{"message": "' + "x" * (SETTINGS.max_message_chars + 1) + '"}').encode(), 400),
    (b'{"message": "' + b"x" * 70000 + b'"}', 413),
])
def test_bad_bodies_are_4xx_in_the_error_shape(client: TestClient, body: bytes, status: int) -> None:
    assert_error(client.post("/api/chat", content=body, headers={**auth(), "Content-Type": "application/json"}),
                 status)


@pytest.mark.parametrize("path", [
    "/api/jobs/not-an-id", "/api/jobs?limit=0", "/api/jobs?limit=101", "/api/jobs?limit=abc",
    "/api/jobs?status=weird", "/api/jobs?cursor=garbage", "/api/jobs/" + "a" * 32 + "/events?after=-1",
    "/api/jobs/" + "a" * 32 + "/events?wait=21", "/api/jobs/" + "a" * 32 + "/events?after=x",
    "/api/conversations/bad%20id", "/api/jobs?conversation_id=bad%20id", "/api/jobs?conversation_id=",
    "/api/jobs?conversation_id=" + "c" * 65, "/api/jobs?conversation_id=" + "c" * 1025,
])
def test_bad_queries_are_400(client: TestClient, path: str) -> None:
    assert_error(client.get(path, headers=auth()), 400)


def test_bad_key_is_400(client: TestClient) -> None:
    h = {**auth(), "Idempotency-Key": "has space"}
    assert_error(client.post("/api/chat", json={"message": "x"}, headers=h), 400)


def test_missing_or_bad_token_is_401(client: TestClient) -> None:
    assert_error(client.get("/api/jobs"), 401)
    assert_error(client.get("/api/jobs", headers={"Authorization": "Bearer nope"}), 401)
    assert_error(client.get("/api/jobs", headers={"Authorization": "Basic abc"}), 401)


def test_another_users_job_is_404_everywhere(client: TestClient) -> None:
    job = client.post("/api/chat", json={"message": "x"}, headers=auth("alice")).json()
    jid = job["job_id"]
    for method, path in [("GET", f"/api/jobs/{jid}"), ("GET", f"/api/jobs/{jid}/events"),
                         ("POST", f"/api/jobs/{jid}/cancel")]:
        assert_error(client.request(method, path, headers=auth("mallory")), 404)
    assert client.get("/api/jobs", headers=auth("mallory")).json()["jobs"] == []
    assert client.get(f"/api/jobs/{jid}", headers=auth("alice")).status_code == 200


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope", headers=auth()), 404)
    assert_error(client.delete("/api/chat", headers=auth()), 405)


def test_list_pagination_newest_first_with_opaque_cursor(client: TestClient) -> None:
    ids = [client.post("/api/chat", json={"message": f"m{i}"}, headers=auth()).json()["job_id"]
           for i in range(5)]
    page1 = client.get("/api/jobs?limit=2", headers=auth()).json()
    page2 = client.get(f"/api/jobs?limit=2&cursor={page1['next_cursor']}", headers=auth()).json()
    page3 = client.get(f"/api/jobs?limit=2&cursor={page2['next_cursor']}", headers=auth()).json()
    got = [j["job_id"] for p in (page1, page2, page3) for j in p["jobs"]]
    assert got == list(reversed(ids)) and page3["next_cursor"] is None
    # a cursor is bound to its user and cannot be edited
    assert_error(client.get(f"/api/jobs?cursor={page1['next_cursor']}", headers=auth("bob")), 400)
    assert_error(client.get(f"/api/jobs?cursor={page1['next_cursor'][:-2]}xx", headers=auth()), 400)
    active = client.get("/api/jobs?status=active", headers=auth()).json()["jobs"]
    assert len(active) == 5


def test_list_of_one_conversation_pages_its_jobs_only_newest_first(client: TestClient) -> None:
    """``?conversation_id=``: that conversation's jobs, the caller's own only, paged like the
    list; its cursor goes on that list only."""
    def send(message: str, conv: str, user: str = "alice") -> str:
        body = {"message": message, "conversation_id": conv}
        return str(client.post("/api/chat", json=body, headers=auth(user)).json()["job_id"])

    ours = []
    for i in range(3):  # interleaved with another conversation's jobs
        ours.append(send(f"soup {i}", "conv-a"))
        send(f"stew {i}", "conv-b")
    send("bob's soup", "conv-a", "bob")  # another user's job under the same conversation id
    page1 = client.get("/api/jobs?conversation_id=conv-a&limit=2", headers=auth()).json()
    page2 = client.get(f"/api/jobs?conversation_id=conv-a&limit=2&cursor={page1['next_cursor']}",
                       headers=auth()).json()
    got = [j["job_id"] for p in (page1, page2) for j in p["jobs"]]
    assert got == ours[::-1] and page2["next_cursor"] is None
    assert {j["conversation_id"] for p in (page1, page2) for j in p["jobs"]} == {"conv-a"}
    assert client.get("/api/jobs?conversation_id=conv-c", headers=auth()).json() == {"jobs": [], "next_cursor": None}
    assert client.get("/api/jobs?conversation_id=conv-a&status=complete", headers=auth()).json()["jobs"] == []
    # a cursor of one conversation's list goes on neither another conversation's nor the whole list
    for other in ("/api/jobs?conversation_id=conv-b&", "/api/jobs?"):
        err = assert_error(client.get(f"{other}limit=2&cursor={page1['next_cursor']}", headers=auth()), 400)
        assert err["code"] == "invalid_cursor"
    whole = client.get("/api/jobs?limit=2", headers=auth()).json()["next_cursor"]
    assert_error(client.get(f"/api/jobs?conversation_id=conv-a&cursor={whole}", headers=auth()), 400)
    err = assert_error(client.get("/api/jobs?conversation_id=a.b", headers=auth()), 400)
    assert err["code"] == "invalid_conversation_id"


def test_cancel_pending_is_200_then_idempotent_and_events_show_it(client: TestClient) -> None:
    jid = client.post("/api/chat", json={"message": "x"}, headers=auth()).json()["job_id"]
    first = client.post(f"/api/jobs/{jid}/cancel", headers=auth())
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert client.post(f"/api/jobs/{jid}/cancel", headers=auth()).status_code == 200
    ev = client.get(f"/api/jobs/{jid}/events?after=0", headers=auth()).json()
    assert [e["type"] for e in ev["events"]] == ["cancelled"] and ev["done"] is True
    assert ev["status"] == "cancelled" and ev["next_after"] == 1


def test_a_client_gone_before_its_body_is_a_4xx_and_no_job() -> None:
    """A tab closed just after Send: the body never arrives. Nothing is done, and it is not a 5xx
    (the page's outbox sends the message again on the next visit)."""
    deps = memory_deps(SETTINGS)
    app = create_app(deps)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/chat", "raw_path": b"/api/chat", "query_string": b"",
             "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"content-length", b"20"),
                         (b"authorization", auth()["Authorization"].encode())]}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert json.loads(body)["error"]["code"] == "client_disconnected"
    with TestClient(app) as c:
        assert c.get("/api/jobs", headers=auth()).json()["jobs"] == []
