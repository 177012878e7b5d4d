"""Identity: verified JWT claims. Locally an in-process HS256 check; on AWS the claims API Gateway's
JWT authorizer put in the request context. Also the short-lived, job-scoped stream tokens that
``EventSource`` carries in its URL (it cannot send headers)."""

from __future__ import annotations

import time
from typing import Any

import jwt

from alfred_jobs.domain.ids import USER_NAME_RE, is_user_name
from alfred_jobs.exceptions import Unauthorized
from alfred_jobs.settings import Settings

USER_RE = USER_NAME_RE  # the shape; validate with ``is_user_name`` (fullmatch: no trailing newline)
ALGORITHMS = ["HS256"]  # pinned: "none" and asymmetric confusion are refused by PyJWT


def issue_local_token(settings: Settings, user: str, ttl_seconds: int = 30 * 24 * 3600) -> str:
    """A local API token for ``user`` (``alfred-jobs token --user NAME``)."""
    if not is_user_name(user):
        raise ValueError("user names are 1-128 characters of letters, digits and _.@:|+-")
    now = int(time.time())
    claims = {"sub": user, "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "iat": now,
              "exp": now + ttl_seconds, "typ": "api"}
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def verify_local_token(settings: Settings, token: str) -> str:
    """The ``sub`` of a valid local API token, else ``Unauthorized``."""
    try:
        claims = jwt.decode(token, settings.jwt_secret, algorithms=ALGORITHMS,
                            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                            options={"require": ["exp", "sub", "iss", "aud"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("invalid token", code="invalid_token") from None
    if claims.get("typ") != "api":
        raise Unauthorized("invalid token", code="invalid_token")
    return _user(claims)


def user_from_apigw_event(event: dict[str, Any]) -> str:
    """The ``sub`` claim API Gateway's JWT authorizer verified (HTTP API payload 2.0)."""
    try:
        claims = event["requestContext"]["authorizer"]["jwt"]["claims"]
    except (KeyError, TypeError):
        raise Unauthorized("no verified identity", code="unauthenticated") from None
    return _user(claims)


def issue_stream_token(settings: Settings, user: str, job_id: str) -> str:
    """A short-lived token that lets its bearer watch one job of one user."""
    now = int(time.time())
    claims = {"sub": user, "job": job_id, "typ": "stream", "iat": now,
              "exp": now + settings.stream_token_seconds}
    return jwt.encode(claims, settings.stream_token_secret, algorithm="HS256")


def verify_stream_token(settings: Settings, token: str, job_id: str) -> str:
    """The user a stream token was issued to, if it is valid for ``job_id``; else ``Unauthorized``."""
    try:
        claims = jwt.decode(token, settings.stream_token_secret, algorithms=ALGORITHMS,
                            options={"require": ["exp", "sub", "job"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("stream token expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("invalid stream token", code="invalid_token") from None
    if claims.get("typ") != "stream" or claims.get("job") != job_id:
        raise Unauthorized("stream token not valid for this job", code="invalid_token")
    return _user(claims)


def _user(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not is_user_name(sub):
        raise Unauthorized("token has no usable subject", code="invalid_token")
    return sub
