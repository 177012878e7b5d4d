"""The shapes of ids the API accepts, in one place (the API, the worker, auth and the models use them).

Validate with the functions here, never with ``PATTERN_RE.match``: in a Python regex ``$`` also
matches *before* a trailing newline, so ``re.match(r"^[a-z]+$", "alice\\n")`` succeeds and
``alice\\n`` would be an identity of its own (and ``/api/conversations/abc%0A`` an id). The
functions use ``re.fullmatch``, which must consume the whole string.

The ``*_PATTERN`` strings keep their ``^...$`` anchors for JSON Schema and pydantic (whose regex
engine, like JSON Schema's, reads ``$`` as the end of the input and matches unanchored otherwise).
"""

from __future__ import annotations

import re
from typing import TypeGuard

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"  # uuid4 hex, or the first 32 hex digits of sha256(user, key)
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
USER_NAME_PATTERN = r"^[A-Za-z0-9_.@:|+-]{1,128}$"  # a token's ``sub``; a local user name
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
CONVERSATION_ID_RE = re.compile(CONVERSATION_ID_PATTERN)
USER_NAME_RE = re.compile(USER_NAME_PATTERN)
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def valid(shape: re.Pattern[str], value: object) -> TypeGuard[str]:
    """True if ``value`` is a string that is *all* of ``shape`` (no trailing newline, no prefix)."""
    return isinstance(value, str) and shape.fullmatch(value) is not None


def is_job_id(value: object) -> TypeGuard[str]:
    return valid(JOB_ID_RE, value)


def is_conversation_id(value: object) -> TypeGuard[str]:
    return valid(CONVERSATION_ID_RE, value)


def is_user_name(value: object) -> TypeGuard[str]:
    return valid(USER_NAME_RE, value)


def is_idempotency_key(value: object) -> TypeGuard[str]:
    return valid(IDEMPOTENCY_KEY_RE, value)
