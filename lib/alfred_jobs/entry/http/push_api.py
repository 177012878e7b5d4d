"""Web Push routes of the job API (SPEC, "Notifications when the user is away"):
``GET /api/push/key``, ``POST /api/push/subscriptions``, ``DELETE /api/push/subscriptions``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from alfred_jobs.domain.models import ErrorResponse
from alfred_jobs.entry.http.common import CurrentUser, RawBody, get_deps, parse_json
from alfred_jobs.service.push import MAX_ENDPOINT_CHARS, PushService

router = APIRouter(tags=["push"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413)}


class PushKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p256dh: str = Field(description="the browser's P-256 ECDH public key, base64url (65 bytes)")
    auth: str = Field(description="the 16-byte authentication secret, base64url")


class PushSubscriptionBody(BaseModel):
    """A browser's ``PushSubscription.toJSON()``."""

    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(max_length=MAX_ENDPOINT_CHARS,
                          description="https URL of the push service (a public address)")
    expirationTime: float | None = None  # the browser's own name
    keys: PushKeys


class PublicKey(BaseModel):
    public_key: str = Field(description="the VAPID application server key: base64url, uncompressed P-256 point")


class Subscribed(BaseModel):
    endpoint: str


def get_push_service(request: Request) -> PushService:
    return PushService(get_deps(request))


Push = Annotated[PushService, Depends(get_push_service)]

# Parsed by the one JSON parser (bounded nesting) and checked by the service; declared for clients.
SUBSCRIPTION_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": PushSubscriptionBody.model_json_schema()}}}}


@router.get("/api/push/key", responses=ERRORS, response_model=PublicKey)
def push_key(user: CurrentUser, push: Push) -> dict[str, str]:
    """The VAPID public key a browser subscribes with (404 ``push_disabled`` if none is configured)."""
    return {"public_key": push.public_key()}


@router.post("/api/push/subscriptions", status_code=201, responses=ERRORS, response_model=Subscribed,
             openapi_extra=SUBSCRIPTION_BODY)
def subscribe(user: CurrentUser, push: Push, raw: RawBody) -> JSONResponse:
    """Store the caller's browser subscription (201); the endpoint must be https to a public
    address (400 ``invalid_subscription``)."""
    payload = parse_json(raw, push.deps.settings.max_json_depth)
    sub = push.subscribe(user, payload)
    return JSONResponse({"endpoint": sub.endpoint}, status_code=201)


@router.delete("/api/push/subscriptions", status_code=204, responses=ERRORS)
def unsubscribe(user: CurrentUser, push: Push,
                endpoint: Annotated[str, Query(min_length=1, max_length=MAX_ENDPOINT_CHARS)]) -> Response:
    """Forget one of the caller's subscriptions (204, whether or not it was stored)."""
    push.unsubscribe(user, endpoint)
    return Response(status_code=204)
