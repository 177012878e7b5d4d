"""The job API (the submit function): create, read, list, cancel jobs; events; conversations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from alfred_jobs.domain.models import ChatRequest, ErrorResponse, InputAnswer, Job
from alfred_jobs.entry.http.common import (
    CurrentUser,
    RawBody,
    Service,
    add_cors,
    harden,
    install_error_handlers,
    parse_json,
)
from alfred_jobs.entry.http.push_api import router as push_router
from alfred_jobs.entry.http.stream_api import events_router
from alfred_jobs.entry.wiring import aws_deps, get_settings
from alfred_jobs.exceptions import InvalidInput
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import issue_stream_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import SUBMIT_SECRETS

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 429)}


def job_links(deps: Deps, user_id: str, job: Job) -> dict[str, str]:
    settings = deps.settings
    base = f"/api/jobs/{job.job_id}"
    token = issue_stream_token(settings, user_id, job.job_id, clock=deps.clock)
    stream_base = (settings.stream_url or "").rstrip("/")
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel", "input": f"{base}/input",
            "stream": f"{stream_base}{base}/stream?token={token}"}


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """Liveness."""
    return {"ok": True}


# The handler parses the raw body itself (the one parser, which bounds nesting), so FastAPI cannot
# see it: declare it, so that clients and fuzzers (tests/fuzz) know the body.
CHAT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ChatRequest.model_json_schema()}}}}


@router.post("/api/chat", status_code=202, responses=ERRORS, openapi_extra=CHAT_BODY)
def submit_chat(user: CurrentUser, svc: Service, raw: RawBody,
                idempotency_key: Annotated[str | None, Header(max_length=128)] = None) -> JSONResponse:
    """Create a job; returns at once with its id and links (202)."""
    # A sync handler: FastAPI runs it in its threadpool, so the blocking store and queue calls
    # never hold the event loop. The body was read (within the body limit) by ``RawBody``.
    payload = parse_json(raw, svc.settings.max_json_depth)
    try:
        req = ChatRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"{where or 'body'}: {first.get('msg')}", code="invalid_input") from None
    result = svc.submit(user, req, idempotency_key)
    body = result.job.public(job_links(svc.deps, user, result.job))
    if req.multitask == "steer":
        body["steered"] = result.steered  # which happened: joined the active job, or queued as a new one
    return JSONResponse(body, status_code=202, headers={"Location": f"/api/jobs/{result.job.job_id}"})


@router.get("/api/jobs/{job_id}", responses=ERRORS)
def get_job(job_id: str, user: CurrentUser, svc: Service) -> dict[str, Any]:
    """One job's status, progress and result."""
    job = svc.get(user, job_id)
    return job.public(job_links(svc.deps, user, job))


@router.get("/api/jobs", responses=ERRORS)
def list_jobs(user: CurrentUser, svc: Service,
              status: Annotated[str | None, Query(max_length=16)] = None,
              limit: Annotated[int, Query()] = 20,  # 1..settings.max_list_limit, checked by the service
              cursor: Annotated[str | None, Query(max_length=1024)] = None,
              conversation_id: Annotated[str | None, Query(max_length=1024)] = None) -> dict[str, Any]:
    """The caller's jobs, newest first; with ``conversation_id``, only that conversation's."""
    jobs, nxt = svc.list_jobs(user, status, limit, cursor, conversation_id)
    return {"jobs": [j.public(job_links(svc.deps, user, j)) for j in jobs], "next_cursor": nxt}


@router.post("/api/jobs/{job_id}/cancel", responses=ERRORS)
def cancel_job(job_id: str, user: CurrentUser, svc: Service) -> JSONResponse:
    """Request cancellation: 200 once cancelled, 202 while it takes effect, 409 if already over."""
    job, done = svc.cancel(user, job_id)
    return JSONResponse(job.public(job_links(svc.deps, user, job)), status_code=200 if done else 202)


@router.get("/api/jobs/{job_id}/timeline", responses=ERRORS)
def job_timeline(job_id: str, user: CurrentUser, svc: Service) -> dict[str, Any]:
    """The job's attempts, spans, waits, tokens and cost, folded from its log (owner only)."""
    return svc.timeline(user, job_id)


@router.post("/api/jobs/{job_id}/input", responses=ERRORS)
def answer_job(job_id: str, body: InputAnswer, user: CurrentUser, svc: Service) -> JSONResponse:
    """Answer the job's question: 202 when the answer continues the job, 200 for the same answer
    again, 409 for another answer or a question that is not the one waiting, 400 for an answer
    that does not fit the question."""
    if isinstance(body.answer, str) and len(body.answer) > svc.settings.max_message_chars:
        raise InvalidInput(f"answer is longer than {svc.settings.max_message_chars} characters",
                           code="invalid_answer")
    job, taken = svc.answer(user, job_id, body.input_id, body.answer)
    return JSONResponse(job.public(job_links(svc.deps, user, job)), status_code=202 if taken else 200)


@router.get("/api/conversations", responses=ERRORS)
def conversations(user: CurrentUser, svc: Service,
                  limit: Annotated[int | None, Query()] = None,  # 1..settings.max_list_limit (default 20)
                  cursor: Annotated[str | None, Query(max_length=1024)] = None) -> dict[str, Any]:
    """The caller's conversations, most recently active first, each with its title (the first
    message, shortened). ``next_cursor`` is null on the last page."""
    items, nxt = svc.conversations(user, limit, cursor)
    return {"conversations": items, "next_cursor": nxt}


@router.get("/api/conversations/{conversation_id}", responses=ERRORS)
def conversation(conversation_id: str, user: CurrentUser, svc: Service,
                 limit: Annotated[int | None, Query()] = None,  # 1..settings.max_list_limit (the default)
                 cursor: Annotated[str | None, Query(max_length=1024)] = None) -> dict[str, Any]:
    """The committed messages of a conversation, oldest first: the latest page, or with
    ``cursor`` (a ``next_cursor``) the page before it. ``next_cursor`` is null on the oldest page."""
    messages, nxt = svc.conversation(user, conversation_id, limit, cursor)
    return {"conversation_id": conversation_id, "messages": messages, "next_cursor": nxt}


def create_app(deps: Deps | None = None, routers_first: Sequence[APIRouter] = ()) -> FastAPI:
    """The job API app. ``deps`` defaults to DynamoDB/SQS from the environment.

    ``routers_first`` take precedence over the job API's own routes (the dev server puts the stream
    function's async long-poll in front of the Lambda's blocking one).
    """
    if deps is None:
        settings = get_settings()
        settings.check_deployable(SUBMIT_SECRETS)
        deps = aws_deps(settings)
    app = FastAPI(title="alfred-jobs", version="0.1.0",
                  description="Durable background jobs for the Alfred agent")
    app.state.deps = deps
    app.state.service = JobService(deps)
    install_error_handlers(app)
    add_cors(app, deps.settings)
    harden(app, deps.settings)
    for first in routers_first:
        app.include_router(first)
    app.include_router(router)
    # The long-poll is the stream function's own (one long-poll, one shared poller per job).
    app.include_router(events_router)
    app.include_router(push_router)  # Web Push: the key, the subscriptions
    return app
