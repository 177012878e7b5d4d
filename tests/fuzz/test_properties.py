"""Property tests (hypothesis): cursors, job ids, tokens and pagination."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import string
import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alfred_jobs.adapters.memory import MemoryConversationStore, MemoryJobQueue, MemoryJobStore, memory_deps
from alfred_jobs.domain.ids import (
    CONVERSATION_ID_RE,
    IDEMPOTENCY_KEY_RE,
    JOB_ID_RE,
    USER_NAME_RE,
    is_conversation_id,
    is_idempotency_key,
    is_job_id,
    is_user_name,
)
from alfred_jobs.domain.models import ChatRequest, Job, iso
from alfred_jobs.entry.worker import handle_message
from alfred_jobs.exceptions import InvalidInput, Unauthorized
from alfred_jobs.service.auth import (
    USER_RE,
    issue_local_token,
    issue_stream_token,
    verify_local_token,
    verify_stream_token,
)
from alfred_jobs.service.cursor import decode_cursor, encode_cursor
from alfred_jobs.service.jobs import JobService, validate_job_id
from alfred_jobs.settings import Settings

SETTINGS = Settings()
users = st.from_regex(USER_RE, fullmatch=True)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=40))
keys = st.dictionaries(st.text(min_size=1, max_size=20), json_scalars, max_size=5)


# ---- cursors ---------------------------------------------------------------------------------


@given(users, keys)
def test_cursor_round_trips_for_its_user(user: str, key: dict[str, object]) -> None:
    cursor = encode_cursor("s3cret", user, key)
    assert decode_cursor("s3cret", user, cursor) == key
    assert set(cursor) <= set(string.ascii_letters + string.digits + "-_"), "URL-safe"


@given(users, users, keys)
def test_cursor_of_another_user_or_secret_is_refused(user: str, other: str, key: dict[str, object]) -> None:
    cursor = encode_cursor("s3cret", user, key)
    if other != user:
        with pytest.raises(InvalidInput):
            decode_cursor("s3cret", other, cursor)
    with pytest.raises(InvalidInput):
        decode_cursor("other-secret", user, cursor)


@given(users, keys, st.data())
def test_any_edit_of_a_cursor_is_refused(user: str, key: dict[str, object], data: st.DataObject) -> None:
    cursor = encode_cursor("s3cret", user, key)
    pos = data.draw(st.integers(0, len(cursor) - 1))
    char = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_").filter(lambda c: c != cursor[pos]))
    edited = cursor[:pos] + char + cursor[pos + 1:]
    if _raw(edited) == _raw(cursor):
        # Only an edit of the last character's unused padding bits decodes to the same bytes.
        assert decode_cursor("s3cret", user, edited) == key
    else:
        with pytest.raises(InvalidInput):
            decode_cursor("s3cret", user, edited)


def _raw(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


@given(st.text(max_size=2000))
def test_garbage_cursors_are_invalid_input_never_a_crash(garbage: str) -> None:
    try:
        decode_cursor("s3cret", "alice", garbage)
    except InvalidInput:
        pass


# ---- job ids -------------------------------------------------------------------------------


@given(st.text(max_size=64))
def test_only_32_lowercase_hex_are_job_ids(text: str) -> None:
    ok = len(text) == 32 and all(c in "0123456789abcdef" for c in text)
    try:
        assert validate_job_id(text) == text and ok
    except InvalidInput:
        assert not ok


@given(st.uuids())
def test_generated_job_ids_validate(u: object) -> None:
    assert validate_job_id(getattr(u, "hex")) == getattr(u, "hex")  # noqa: B009


def sign(claims: dict[str, object], secret: str) -> str:
    """An HS256 JWT with any claims at all (PyJWT's encoder refuses some, e.g. a non-string iss)."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest())


# ---- tokens ---------------------------------------------------------------------------------


@given(users)
@settings(max_examples=50)
def test_local_tokens_round_trip(user: str) -> None:
    assert verify_local_token(SETTINGS, issue_local_token(SETTINGS, user)) == user


@given(st.text(max_size=500))
def test_garbage_tokens_are_unauthorized_never_a_crash(garbage: str) -> None:
    with pytest.raises(Unauthorized):
        verify_local_token(SETTINGS, garbage)
    with pytest.raises(Unauthorized):
        verify_stream_token(SETTINGS, garbage, "a" * 32)


@given(st.dictionaries(st.sampled_from(["sub", "iss", "aud", "exp", "typ", "iat", "job"]),
                       st.one_of(st.text(max_size=20), st.integers(0, 2**40), st.none(),
                                 st.lists(st.text(max_size=5), max_size=2)), max_size=7))
def test_arbitrary_claims_signed_with_the_key_never_crash(claims: dict[str, object]) -> None:
    token = sign(claims, SETTINGS.jwt_secret)
    try:
        user = verify_local_token(SETTINGS, token)
    except Unauthorized:
        return
    assert claims.get("typ") == "api" and claims.get("sub") == user
    assert claims.get("aud") == SETTINGS.jwt_audience and claims.get("iss") == SETTINGS.jwt_issuer
    assert isinstance(claims.get("exp"), int) and claims["exp"] > time.time()  # type: ignore[operator]


@given(users, st.uuids(), st.uuids())
@settings(max_examples=50)
def test_stream_tokens_are_bound_to_their_job(user: str, a: object, b: object) -> None:
    ja, jb = getattr(a, "hex"), getattr(b, "hex")  # noqa: B009
    token = issue_stream_token(SETTINGS, user, ja)
    assert verify_stream_token(SETTINGS, token, ja) == user
    if ja != jb:
        with pytest.raises(Unauthorized):
            verify_stream_token(SETTINGS, token, jb)
    with pytest.raises(Unauthorized):
        verify_local_token(SETTINGS, token)


# ---- pagination ------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["alice", "bob"])), min_size=0, max_size=40),
       st.integers(1, 7), st.sampled_from([None, "pending", "active", "complete"]))
@settings(max_examples=60, deadline=None)
def test_pages_cover_each_job_once_newest_first(specs: list[tuple[int, str]], limit: int,
                                                status: str | None) -> None:
    deps = memory_deps(SETTINGS)
    svc = JobService(deps)
    store = deps.jobs
    assert isinstance(store, MemoryJobStore)
    base = time.time()
    mine: list[Job] = []
    for n, (tick, user) in enumerate(specs):  # several jobs may share a creation time (tick)
        job = Job(job_id=f"{n:032x}", user_id=user, message="m", conversation_id="c",
                  created_at=base + tick, expires_at=int(base + 3600))
        store.create(job)
        if user == "alice":
            mine.append(job)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(len(specs) + 2):
        page, cursor = svc.list_jobs("alice", status, limit, cursor)
        assert len(page) <= limit
        seen += [j.job_id for j in page]
        if cursor is None:
            break
    expect = [j for j in mine if status in (None, "pending", "active")]
    assert sorted(seen) == sorted(j.job_id for j in expect), "every job exactly once"
    assert len(seen) == len(set(seen))
    created = {j.job_id: j.created_at for j in mine}
    assert [created[i] for i in seen] == sorted((created[i] for i in seen), reverse=True), "newest first"


def test_a_cursor_cannot_move_to_another_users_listing() -> None:
    deps = replace(memory_deps(SETTINGS))
    svc = JobService(deps)
    for n in range(3):
        deps.jobs.create(Job(job_id=f"{n:032x}", user_id="alice", message="m", conversation_id="c",
                             created_at=time.time() + n, expires_at=int(time.time() + 60)))
    _, cursor = svc.list_jobs("alice", None, 1, None)
    assert cursor is not None
    with pytest.raises(InvalidInput):
        svc.list_jobs("bob", None, 1, cursor)


# ---- ids and user names: the whole string or nothing (issue 17, finding 6) -------------------

ID_SHAPES = {"job id": (JOB_ID_RE, is_job_id), "conversation id": (CONVERSATION_ID_RE, is_conversation_id),
             "user name": (USER_NAME_RE, is_user_name), "idempotency key": (IDEMPOTENCY_KEY_RE, is_idempotency_key)}
# Every control character (C0, DEL, C1) and the other line breaks Python's str.splitlines knows.
control_chars = st.one_of(st.characters(categories=["Cc"]), st.sampled_from("\u2028\u2029\x85"))


@given(st.sampled_from(sorted(ID_SHAPES)), st.data())
def test_no_id_or_user_with_a_control_character_validates(kind: str, data: st.DataObject) -> None:
    """``$`` in a Python regex also matches before a trailing newline: ``alice\\n`` was a user of
    its own and ``abc\\n`` a conversation. A valid value with a control character anywhere (at
    the end above all) is refused by the one validator."""
    shape, check = ID_SHAPES[kind]
    good = data.draw(st.from_regex(shape, fullmatch=True), label="valid")
    assert check(good)
    c = data.draw(control_chars, label="control")
    pos = data.draw(st.integers(0, len(good)), label="at")
    assert not check(good + c), f"{kind} {good + c!r}"
    assert not check(good[:pos] + c + good[pos:]), f"{kind} {good[:pos] + c + good[pos:]!r}"


@given(st.from_regex(JOB_ID_RE, fullmatch=True), st.from_regex(CONVERSATION_ID_RE, fullmatch=True),
       st.from_regex(USER_NAME_RE, fullmatch=True), st.sampled_from(["\n", "\r\n", "\r", "\x00", "\x0b"]))
@settings(max_examples=50)
def test_every_entry_point_refuses_a_trailing_newline(job_id: str, conv: str, user: str, tail: str) -> None:
    """Each place an id or a user name comes in: tokens (both kinds), the API's ids, the request
    body, the idempotency key, a queue message."""
    now = int(time.time())
    api_claims = {"sub": user + tail, "iss": SETTINGS.jwt_issuer, "aud": SETTINGS.jwt_audience,
                  "iat": now, "exp": now + 60, "typ": "api"}
    with pytest.raises(Unauthorized):
        verify_local_token(SETTINGS, sign(api_claims, SETTINGS.jwt_secret))
    with pytest.raises(Unauthorized):
        verify_stream_token(SETTINGS, sign({"sub": user + tail, "job": job_id, "typ": "stream", "exp": now + 60},
                                           SETTINGS.stream_token_secret), job_id)
    with pytest.raises(ValueError):
        issue_local_token(SETTINGS, user + tail)
    with pytest.raises(InvalidInput):
        validate_job_id(job_id + tail)
    deps = memory_deps(SETTINGS)
    svc = JobService(deps)
    with pytest.raises(InvalidInput):
        svc.conversation(user, conv + tail)
    with pytest.raises(InvalidInput):
        svc.submit(user, ChatRequest(message="m"), "key" + tail)
    with pytest.raises(ValueError):  # pydantic's ValidationError
        ChatRequest(message="m", conversation_id=conv + tail)
    assert handle_message(deps, None, json.dumps({"job_id": job_id + tail}), None, 1) is None  # type: ignore[arg-type]
    assert isinstance(deps.queue, MemoryJobQueue)
    assert deps.queue.dead == [("-", "malformed_message")]


# ---- conversation pages (issue 17, finding 7) --------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=40), st.integers(1, 9))
@settings(max_examples=80, deadline=None)
def test_conversation_pages_cover_each_live_message_once_in_order(turns: list[tuple[int, bool]],
                                                                   limit: int) -> None:
    """Turns at any times (several at the same second), some expired: walking back page by page
    gives every live message once, in order; each page costs its own size (plus the expired
    messages among it), never the conversation's."""
    deps = memory_deps(Settings(max_list_limit=9))
    svc = JobService(deps)
    store = deps.conversations
    assert isinstance(store, MemoryConversationStore)
    now = int(time.time())
    for n, (second, expired) in enumerate(turns):
        store.commit_turn("alice", "c", f"{n:032x}", f"m{n}", f"r{n}", iso(now - 1000 + second),
                          now - 5 if expired else now + 3600)
    want = [m["text"] for m in sorted(
        ({"text": t, "sk": f"{iso(now - 1000 + s)}#{n:032x}#{k}"}
         for n, (s, expired) in enumerate(turns) if not expired for k, t in enumerate((f"m{n}", f"r{n}"))),
        key=lambda m: m["sk"])]
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(2 * len(turns) + 2):
        store.items_read = 0
        page, cursor = svc.conversation("alice", "c", limit, cursor)
        assert len(page) <= limit and (page or cursor is None)
        assert store.items_read <= limit + 1 + 2 * sum(e for _, e in turns)
        seen = [str(m["text"]) for m in page] + seen
        if cursor is None:
            break
    assert seen == want
