"""Fuzzing request bodies by shape, not only by value: nesting depth and chunked uploads (issue 17).

- Depth: JSON nested to any depth, of arrays and objects, anywhere in a request, with brackets,
  quotes and backslashes inside strings; the one parser (``common.parse_json``) and the job API.
  Too deep is always a 400 ``invalid_json``, never a 5xx; at most the limit deep, the body is
  parsed exactly as ``json.loads`` parses it.
- Size: chunked uploads (no ``Content-Length``) through a real uvicorn server. Over the limit,
  the answer is a 413 and the server stops reading: the client's generator of a 1 GiB body is
  never drained, only what the sockets' buffers held when the server closed the connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.entry.http.common import parse_json
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.exceptions import InvalidInput
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.settings import Settings
from tests.support.servers import serve

# Many submits of one user and no worker: the per-user limit of active jobs is not what this fuzzes.
SETTINGS = Settings(demo_step_seconds=0, max_active_per_user=1000)
LIMIT = SETTINGS.max_body_bytes
DEPTH = SETTINGS.max_json_depth
AUTH = {"Authorization": f"Bearer {issue_local_token(SETTINGS, 'fuzzer')}"}
ONE_GIB = 2**30
TOO_MUCH = 64 * 2**20  # read past this, the server is not stopping at the limit
SHARED = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow])


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


# Strings full of what a naive depth scan would trip on.
tricky_text = st.text(alphabet=st.sampled_from(list('[]{}"\\:,ab é\n')), max_size=30)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), tricky_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(tricky_text, inner, max_size=4)),
    max_leaves=40)


@given(json_values, st.integers(1, 8))
@SHARED
def test_the_parser_is_json_loads_up_to_the_depth_and_refuses_past_it(value: Any, max_depth: int) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode()
    if depth_of(value) <= max_depth:
        assert parse_json(raw, max_depth) == json.loads(raw)
    else:
        with pytest.raises(InvalidInput) as refused:
            parse_json(raw, max_depth)
        assert refused.value.code == "invalid_json"


@given(st.binary(max_size=2000) | st.text(alphabet=st.sampled_from(list('[]{}"\\:,1 ')), max_size=2000)
       .map(str.encode))
@SHARED
def test_the_parser_refuses_garbage_as_invalid_json_and_nothing_else(raw: bytes) -> None:
    try:
        parse_json(raw, DEPTH)
    except InvalidInput as exc:
        assert exc.code == "invalid_json"


OPENERS = {"array": ("[", "]"), "object": ('{"k":', "}")}
nestings = st.tuples(
    st.one_of(st.integers(0, 2 * DEPTH), st.integers(0, 40_000)),  # around the limit, and far past it
    st.lists(st.sampled_from(sorted(OPENERS)), min_size=1, max_size=4),  # the pattern of containers
    st.sampled_from(["top", "message", "conversation_id", "extra", "unclosed"]),
    tricky_text,
)


def nested_body(depth: int, kinds: list[str], where: str, text: str) -> str:
    opens = [OPENERS[kinds[i % len(kinds)]] for i in range(depth)]
    inner = json.dumps(text)
    value = "".join(o for o, _ in opens) + inner + ("" if where == "unclosed" else
                                                    "".join(c for _, c in reversed(opens)))
    if where in ("top", "unclosed"):
        return value
    if where == "extra":
        return f'{{"message": "soup", "extra": {value}}}'
    return f'{{"message": {value}}}' if where == "message" else f'{{"message": "x", "conversation_id": {value}}}'


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    with TestClient(create_app(memory_deps(SETTINGS)), raise_server_exceptions=False) as client:
        yield client


@given(nestings)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_any_nesting_with_a_4xx_in_the_one_shape(api: TestClient,
                                                                 nesting: tuple[int, list[str], str, str]) -> None:
    depth, kinds, where, text = nesting
    body = nested_body(depth, kinds, where, text).encode()
    resp = api.post("/api/chat", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code < 500, resp.text
    error = resp.json().get("error")
    if len(body) > LIMIT:
        assert resp.status_code == 413 and error["code"] == "payload_too_large", resp.text
        return
    # The whole depth of the body: the request object itself is one level.
    total = depth + (0 if where in ("top", "unclosed") else 1)
    if total > DEPTH:
        assert resp.status_code == 400 and error["code"] == "invalid_json", (total, resp.text)
    elif where == "unclosed" and depth > 0:
        assert resp.status_code == 400 and error["code"] == "invalid_json", resp.text
    else:
        assert resp.status_code == 202 or error["code"] == "invalid_input" or error["code"] == "message_too_long", \
            (total, resp.text)


# ---- chunked uploads on a real server ------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(create_app(memory_deps(SETTINGS))) as base:
        yield base


@given(st.integers(512, 1024 * 1024), st.booleans())
# No shrinking: any chunk size that is read past the limit is the bug, and a server that reads
# everything takes seconds per example.
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
def test_a_chunked_upload_past_the_limit_is_cut_off(server: str, chunk_size: int, valid_start: bool) -> None:
    drawn = 0

    def upload() -> Iterator[bytes]:  # a 1 GiB body, in chunks of any size, never declared
        nonlocal drawn
        if valid_start:
            yield b'{"message": "'
        chunk = b"a" * chunk_size
        while drawn < ONE_GIB:
            if drawn >= TOO_MUCH:
                return  # the server is reading it all: end here, the assertion below says so
            drawn += chunk_size
            yield chunk

    resp = httpx.post(f"{server}/api/chat", content=upload(), headers=AUTH, timeout=60)
    assert resp.status_code == 413, resp.text
    # The generator stopped where the server closed the connection: the limit, plus what the
    # two sockets' buffers took meanwhile (a few MiB on loopback), never the gigabyte.
    assert drawn < TOO_MUCH, f"{drawn / 2**20:.0f} MiB of a 1 GiB upload was read past a {LIMIT}-byte limit"
    assert resp.json() == {"error": {"code": "payload_too_large",
                                     "message": f"body is larger than {LIMIT} bytes"}}
    assert resp.headers["connection"] == "close"


@given(st.integers(0, LIMIT - 40), st.lists(st.integers(1, LIMIT), max_size=6))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_chunked_upload_within_the_limit_goes_through(server: str, padding: int, cuts: list[int]) -> None:
    body = b'{"message": "soup"' + b" " * padding + b"}"
    assert len(body) <= LIMIT
    points = sorted({c % len(body) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in pairwise(points)]
    resp = httpx.post(f"{server}/api/chat", content=iter(chunks), headers=AUTH, timeout=30)
    assert resp.status_code == 202, resp.text
    assert resp.headers.get("connection") != "close", "a body read whole keeps the connection"
