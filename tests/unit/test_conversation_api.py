"""``GET /api/conversations/{id}``: the latest page at once, older pages by a signed cursor (issue 17,
finding 7: the route used to read the whole conversation for every request)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from alfred_jobs.adapters.memory import MemoryConversationStore, memory_deps
from alfred_jobs.domain.models import iso
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.settings import Settings

SETTINGS = Settings(demo_step_seconds=0, max_list_limit=10)
CONV = "kitchen"


@pytest.fixture
def deps() -> Deps:
    return memory_deps(SETTINGS)


@pytest.fixture
def client(deps: Deps) -> Iterator[TestClient]:
    with TestClient(create_app(deps)) as c:
        yield c


def auth(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_local_token(SETTINGS, user)}"}


def commit(deps: Deps, turns: int, user: str = "alice", conv: str = CONV) -> list[str]:
    texts: list[str] = []
    base = time.time() - 10_000
    for i in range(turns):
        deps.conversations.commit_turn(user, conv, f"{i:032x}", f"m{i}", f"r{i}", iso(base + i),
                                       int(time.time()) + 3600)
        texts += [f"m{i}", f"r{i}"]
    return texts


def error_code(resp: object, status: int) -> str:
    from httpx import Response

    assert isinstance(resp, Response)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    return str(body["error"]["code"])


def test_the_latest_page_keeps_the_shape_the_web_client_reads(client: TestClient, deps: Deps) -> None:
    texts = commit(deps, 3)
    body = client.get(f"/api/conversations/{CONV}", headers=auth()).json()
    assert body == {"conversation_id": CONV, "next_cursor": None,
                    "messages": [{"role": r, "text": t, "job_id": f"{i // 2:032x}", "at": body["messages"][i]["at"]}
                                 for i, (r, t) in enumerate(zip(["user", "assistant"] * 3, texts, strict=True))]}


def test_older_pages_by_cursor_cover_each_message_once(client: TestClient, deps: Deps) -> None:
    texts = commit(deps, 12)  # 24 messages, pages of at most max_list_limit (10)
    seen: list[str] = []
    url = f"/api/conversations/{CONV}"
    pages = 0
    while url:
        body = client.get(url, headers=auth()).json()
        assert 1 <= len(body["messages"]) <= SETTINGS.max_list_limit
        seen = [m["text"] for m in body["messages"]] + seen  # each page is oldest first
        pages += 1
        url = f"/api/conversations/{CONV}?cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert seen == texts and pages == 3
    small = client.get(f"/api/conversations/{CONV}?limit=4", headers=auth()).json()
    assert [m["text"] for m in small["messages"]] == texts[-4:]
    before = client.get(f"/api/conversations/{CONV}?limit=4&cursor={small['next_cursor']}", headers=auth()).json()
    assert [m["text"] for m in before["messages"]] == texts[-8:-4]


def test_a_request_reads_one_page_whatever_the_conversation_holds(client: TestClient, deps: Deps) -> None:
    commit(deps, 500)
    store = deps.conversations
    assert isinstance(store, MemoryConversationStore)
    store.items_read = 0
    client.get(f"/api/conversations/{CONV}?limit=5", headers=auth())
    assert store.items_read == 6


def test_limits_and_cursors_are_checked(client: TestClient, deps: Deps) -> None:
    commit(deps, 8)
    commit(deps, 8, conv="other")
    url = f"/api/conversations/{CONV}"
    for bad in ("0", "-1", str(SETTINGS.max_list_limit + 1), "x"):
        assert error_code(client.get(f"{url}?limit={bad}", headers=auth()), 400) in ("invalid_limit", "invalid_input")
    assert error_code(client.get(f"{url}?cursor=garbage", headers=auth()), 400) == "invalid_cursor"
    cursor = client.get(f"{url}?limit=2", headers=auth()).json()["next_cursor"]
    assert cursor
    # Bound to its user and its conversation: not another user's, not another conversation's.
    assert error_code(client.get(f"{url}?cursor={cursor}", headers=auth("mallory")), 400) == "invalid_cursor"
    assert error_code(client.get(f"/api/conversations/other?cursor={cursor}", headers=auth()), 400) \
        == "invalid_cursor"
    edited = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    assert error_code(client.get(f"{url}?cursor={edited}", headers=auth()), 400) == "invalid_cursor"


# ---- GET /api/conversations: the caller's conversations, most recently active first (issue 27) ----


def chat(client: TestClient, message: str, conv: str | None = None, user: str = "alice") -> str:
    body: dict[str, str] = {"message": message}
    if conv:
        body["conversation_id"] = conv
    resp = client.post("/api/chat", json=body, headers=auth(user))
    assert resp.status_code == 202, resp.text
    return str(resp.json()["conversation_id"])


def test_the_list_has_each_conversation_once_newest_first_titled_by_its_first_message(
        client: TestClient) -> None:
    tofu = chat(client, "Stir fry with the tofu from my pantry, please: something quick for tonight's dinner")
    risotto = chat(client, "mushroom risotto")
    chat(client, "and a salad on the side", conv=tofu)  # the tofu conversation is active again
    chat(client, "bob's own", user="bob")
    body = client.get("/api/conversations", headers=auth()).json()
    assert set(body) == {"conversations", "next_cursor"} and body["next_cursor"] is None
    assert [c["conversation_id"] for c in body["conversations"]] == [tofu, risotto]
    first = body["conversations"][0]
    assert set(first) == {"conversation_id", "updated_at", "title"}
    assert first["title"] == "Stir fry with the tofu from my pantry, please: something…"
    assert body["conversations"][1]["title"] == "mushroom risotto"


def test_the_list_pages_by_a_signed_cursor(client: TestClient) -> None:
    convs = [chat(client, f"recipe {i}") for i in range(5)]
    seen: list[str] = []
    url = "/api/conversations?limit=2"
    while url:
        body = client.get(url, headers=auth()).json()
        assert len(body["conversations"]) <= 2
        seen += [c["conversation_id"] for c in body["conversations"]]
        url = f"/api/conversations?limit=2&cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert seen == convs[::-1]
    cursor = client.get("/api/conversations?limit=2", headers=auth()).json()["next_cursor"]
    assert error_code(client.get(f"/api/conversations?cursor={cursor}", headers=auth("bob")), 400) == "invalid_cursor"


@pytest.mark.parametrize("query", ["limit=0", "limit=11", "limit=x", "cursor=nope", "cursor="])
def test_a_bad_limit_or_cursor_is_a_400_in_the_one_error_shape(client: TestClient, query: str) -> None:
    code = error_code(client.get(f"/api/conversations?{query}", headers=auth()), 400)
    assert code in {"invalid_limit", "invalid_cursor", "invalid_input"}


def test_a_message_pages_cursor_is_no_list_cursor(client: TestClient, deps: Deps) -> None:
    commit(deps, 12)
    cursor = client.get(f"/api/conversations/{CONV}", headers=auth()).json()["next_cursor"]
    assert error_code(client.get(f"/api/conversations?cursor={cursor}", headers=auth()), 400) == "invalid_cursor"


def test_an_expired_conversation_is_not_listed(deps: Deps, client: TestClient) -> None:
    deps.conversations.touch("alice", "gone", iso(time.time() - 10), "old", int(time.time()) - 1)
    assert client.get("/api/conversations", headers=auth()).json()["conversations"] == []


def test_a_submit_whose_list_update_fails_still_answers_202(client: TestClient, deps: Deps,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from alfred_jobs.exceptions import TransientStoreError

    def broken(*args: object) -> None:
        raise TransientStoreError("throttled")

    monkeypatch.setattr(deps.conversations, "touch", broken)
    chat(client, "the list is a view")
