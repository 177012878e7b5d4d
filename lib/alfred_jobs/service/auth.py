"""Identity: verified JWT claims. Locally an in-process HS256 check; on AWS the claims API Gateway's
JWT authorizer put in the request context. Also the short-lived, job-scoped stream tokens that
``EventSource`` carries in its URL (it cannot send headers).

Time is the caller's clock (``deps.clock``; the real one by default): the times a token carries
(``iat``, ``nbf``, ``exp``) are checked here against it, not by PyJWT against the wall clock, with
PyJWT's rules (an ``exp`` at or before now is expired; an ``iat`` or ``nbf`` after now is not yet
valid) after the signature, issuer and audience have been checked."""

from __future__ import annotations

from typing import Any

import jwt

from alfred_jobs.clock import Clock, SystemClock
from alfred_jobs.domain.ids import USER_NAME_RE, is_user_name
from alfred_jobs.exceptions import Unauthorized
from alfred_jobs.settings import Settings

USER_RE = USER_NAME_RE  # the shape; validate with ``is_user_name`` (fullmatch: no trailing newline)
ALGORITHMS = ["HS256"]  # pinned: "none" and asymmetric confusion are refused by PyJWT


def _time_fault(claims: dict[str, Any], now: float) -> str | None:
    """PyJWT's time rules at ``now``: ``"invalid"`` for a time that is not an integer or a token
    not valid yet (``iat``, ``nbf`` after now), ``"expired"`` once ``exp`` is reached, else None."""
    try:
        times = {name: int(claims[name]) for name in ("iat", "nbf", "exp") if name in claims}
    except (ValueError, TypeError, OverflowError):
        return "invalid"
    if times.get("iat", now) > now or times.get("nbf", now) > now:
        return "invalid"
    return "expired" if "exp" in times and times["exp"] <= now else None


def issue_local_token(settings: Settings, user: str, ttl_seconds: int = 30 * 24 * 3600, *,
                      clock: Clock | None = None) -> str:
    """A local API token for ``user`` (``alfred-jobs token --user NAME``), issued now by ``clock``."""
    if not is_user_name(user):
        raise ValueError("user names are 1-128 characters of letters, digits and _.@:|+-")
    now = int((clock or SystemClock()).now())
    claims = {"sub": user, "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "iat": now,
              "exp": now + ttl_seconds, "typ": "api"}
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def verify_local_token(settings: Settings, token: str, *, clock: Clock | None = None) -> str:
    """The ``sub`` of a valid local API token (valid now, by ``clock``), else ``Unauthorized``."""
    try:
        claims = jwt.decode(token, settings.jwt_secret, algorithms=ALGORITHMS,
                            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                            options={"require": ["exp", "sub", "iss", "aud"],  # the times: _time_fault's
                                     "verify_exp": False, "verify_iat": False, "verify_nbf": False})
    except jwt.PyJWTError:
        raise Unauthorized("invalid token", code="invalid_token") from None
    fault = _time_fault(claims, (clock or SystemClock()).now())
    if fault == "expired":
        raise Unauthorized("token expired", code="token_expired")
    if fault is not None:
        raise Unauthorized("invalid token", code="invalid_token")
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


def issue_stream_token(settings: Settings, user: str, job_id: str, *, clock: Clock | None = None) -> str:
    """A short-lived token that lets its bearer watch one job of one user, issued now by ``clock``."""
    now = int((clock or SystemClock()).now())
    claims = {"sub": user, "job": job_id, "typ": "stream", "iat": now,
              "exp": now + settings.stream_token_seconds}
    return jwt.encode(claims, settings.stream_token_secret, algorithm="HS256")


def verify_stream_token(settings: Settings, token: str, job_id: str, *, clock: Clock | None = None) -> str:
    """The user a stream token was issued to, if it is valid for ``job_id`` now (by ``clock``);
    else ``Unauthorized``."""
    try:
        claims = jwt.decode(token, settings.stream_token_secret, algorithms=ALGORITHMS,
                            options={"require": ["exp", "sub", "job"],  # the times: _time_fault's
                                     "verify_exp": False, "verify_iat": False, "verify_nbf": False})
    except jwt.PyJWTError:
        raise Unauthorized("invalid stream token", code="invalid_token") from None
    fault = _time_fault(claims, (clock or SystemClock()).now())
    if fault == "expired":
        raise Unauthorized("stream token expired", code="token_expired")
    if fault is not None:
        raise Unauthorized("invalid stream token", code="invalid_token")
    if claims.get("typ") != "stream" or claims.get("job") != job_id:
        raise Unauthorized("stream token not valid for this job", code="invalid_token")
    return _user(claims)


def _user(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not is_user_name(sub):
        raise Unauthorized("token has no usable subject", code="invalid_token")
    return sub
