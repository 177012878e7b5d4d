"""The per-user and per-token caps on open streams and long-polls (issue 17, finding 3): the hub's
admission, and its 429 in the one error shape. A real server's disconnects are in
tests/security/test_attacks.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.domain.models import ChatRequest
from alfred_jobs.entry.http.stream_api import create_stream_app
from alfred_jobs.exceptions import ClientError, TooManyRequests
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import issue_local_token, issue_stream_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.watch import MAX_PER_TOKEN, MAX_PER_USER, WatchHub
from alfred_jobs.settings import Settings


def hub(per_user: int = 3, per_token: int = 2) -> WatchHub:
    return WatchHub(memory_deps().log, 60, max_per_user=per_user, max_per_token=per_token)


def test_defaults_are_the_settings_defaults() -> None:
    s = Settings()
    assert (s.max_streams_per_user, s.max_streams_per_token) == (MAX_PER_USER, MAX_PER_TOKEN) == (20, 5)
    assert issubclass(TooManyRequests, ClientError) and TooManyRequests("x").status == 429


def test_a_user_gets_its_cap_and_no_more_then_a_slot_again_once_one_is_released() -> None:
    h = hub(per_user=3)
    slots = [h.admit("alice") for _ in range(3)]
    with pytest.raises(TooManyRequests) as refused:
        h.admit("alice")
    assert refused.value.code == "too_many_streams" and refused.value.retry_after >= 1
    assert h.admit("bob").user == "bob", "another user has caps of its own"
    slots[0].release()
    slots[0].release()  # idempotent: a second release gives nothing back twice
    assert h.open_slots("alice") == 2
    slots.append(h.admit("alice"))
    with pytest.raises(TooManyRequests):
        h.admit("alice")
    for s in slots:
        s.release()
    assert h.open_slots("alice") == 0 and h.open_slots() == 1


def test_a_stream_token_gets_its_own_smaller_cap() -> None:
    h = hub(per_user=10, per_token=2)
    a, b = h.admit("alice", "token-a"), h.admit("alice", "token-a")
    with pytest.raises(TooManyRequests):
        h.admit("alice", "token-a")
    h.admit("alice", "token-b")
    h.admit("alice")  # the bearer identity: the user's cap only
    with a:
        pass  # leaving the block releases
    h.admit("alice", "token-a")
    assert h.open_slots("alice") == 4
    b.release()


def test_refused_admissions_take_nothing() -> None:
    h = hub(per_user=1, per_token=1)
    h.admit("alice", "t")
    for _ in range(10):
        with pytest.raises(TooManyRequests):
            h.admit("alice", "t")
        with pytest.raises(TooManyRequests):
            h.admit("alice", "u")
    assert h.open_slots("alice") == 1


# ---- over HTTP ---------------------------------------------------------------------------------

SETTINGS = Settings(max_streams_per_user=2, max_streams_per_token=1, max_wait_seconds=5)


@pytest.fixture
def deps() -> Deps:
    return memory_deps(SETTINGS)


@pytest.fixture
def client(deps: Deps) -> Iterator[TestClient]:
    with TestClient(create_stream_app(deps, heartbeat_seconds=0.2)) as c:
        yield c


def bearer(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_local_token(SETTINGS, user)}"}


def test_the_stream_app_takes_its_caps_from_the_settings(client: TestClient) -> None:
    h: WatchHub = client.app.state.stream_hub  # type: ignore[attr-defined]
    assert (h.max_per_user, h.max_per_token) == (2, 1)


def test_over_the_cap_is_a_429_in_the_one_shape_with_retry_after(client: TestClient, deps: Deps) -> None:
    job = JobService(deps).submit("alice", ChatRequest(message="soup"), None).job
    h: WatchHub = client.app.state.stream_hub  # type: ignore[attr-defined]
    held = [h.admit("alice"), h.admit("alice")]  # two streams open elsewhere in this process
    for resp in (client.get(f"/api/jobs/{job.job_id}/events", headers=bearer()),
                 client.get(f"/api/jobs/{job.job_id}/stream", headers=bearer())):
        assert resp.status_code == 429, resp.text
        assert resp.json() == {"error": {"code": "too_many_streams", "message": resp.json()["error"]["message"]}}
        assert int(resp.headers["retry-after"]) >= 1
    for s in held:
        s.release()
    assert client.get(f"/api/jobs/{job.job_id}/events", headers=bearer()).status_code == 200
    assert h.open_slots() == 0, "a long-poll gives its slot back when it answers"


def test_requests_refused_for_other_reasons_give_their_slot_back(client: TestClient, deps: Deps) -> None:
    job = JobService(deps).submit("alice", ChatRequest(message="soup"), None).job
    h: WatchHub = client.app.state.stream_hub  # type: ignore[attr-defined]
    for _ in range(5):  # more than the cap of 2: a leak would turn these into 429s
        assert client.get(f"/api/jobs/{'0' * 32}/events", headers=bearer()).status_code == 404
        assert client.get(f"/api/jobs/{job.job_id}/events", headers=bearer("mallory")).status_code == 404
        assert client.get(f"/api/jobs/{'0' * 32}/stream", headers=bearer()).status_code == 404
    assert h.open_slots() == 0
    token = issue_stream_token(SETTINGS, "alice", job.job_id)
    assert client.get(f"/api/jobs/{job.job_id}/events?token={token}").status_code == 200
    assert client.get(f"/api/jobs/{job.job_id}/events?token={token}").status_code == 200, \
        "the token's one slot came back with the first answer"
