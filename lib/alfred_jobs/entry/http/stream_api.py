"""The stream function: SSE and long-poll over a job's event log (see docs/streaming.md).

Both endpoints are the same operation, "events after seq, waiting up to a deadline", served by
the process's ``WatchHub`` (one poller per job, fanned out in memory). Everything that can go
wrong with a request (identity, the per-user and per-token caps, job, cursor) is checked before a
stream starts, so a refused request is always a JSON error in the one shape, never a half-open
stream. Each open stream and long-poll holds a slot of the hub (``WatchHub.admit``) until it ends,
and each that can hold its process (a stream, a long-poll that waits) also a slot of its user's
in the stream slots table (``service/stream_slots.py``: the per-user cap across processes),
which the stream's heartbeat renews.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from alfred_jobs.domain.models import ErrorResponse, Event, Job
from alfred_jobs.entry.http.common import add_cors, current_user, get_deps, harden, install_error_handlers
from alfred_jobs.entry.wiring import aws_deps, get_settings
from alfred_jobs.exceptions import EventsExpired, InvalidInput, Unauthorized
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import verify_stream_token
from alfred_jobs.service.jobs import JobService, validate_job_id
from alfred_jobs.service.stream_slots import StreamCap, StreamLease
from alfred_jobs.service.watch import Slot, WatchHub
from alfred_jobs.settings import STREAM_SECRETS

RETRY_MS = 2000  # EventSource reconnect delay hint
MAX_CURSOR = 10**9
MAX_TOKEN_CHARS = 4096
BATCH = 500
_CURSOR_RE = re.compile(r"^[0-9]{1,10}$")

router = APIRouter()  # SSE and long-poll: the stream function
events_router = APIRouter()  # the long-poll alone, which the job API serves too (one long-poll)
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 410, 429)}


def get_hub(request: Request) -> WatchHub:
    """The process's hub (made on first use, so the router also works mounted in another app)."""
    state = request.app.state
    hub: WatchHub | None = getattr(state, "stream_hub", None)
    if hub is None:
        hub = make_hub(get_deps(request))
        state.stream_hub = hub
    return hub


def make_hub(deps: Deps) -> WatchHub:
    """A hub over ``deps``, polling as often and admitting as many as the settings say."""
    s = deps.settings
    return WatchHub(deps.log, s.retention_seconds, min_interval=s.stream_poll_min_seconds,
                    max_interval=s.stream_poll_max_seconds, max_per_user=s.max_streams_per_user,
                    max_per_token=s.max_streams_per_token, clock=deps.clock,
                    wake_address=s.stream_wake_address)


def get_cap(request: Request) -> StreamCap | None:
    """The per-user cap across processes, over ``deps.stream_slots`` (None: none is configured)."""
    state = request.app.state
    cap: StreamCap | None = getattr(state, "stream_cap", None)
    if cap is None:
        deps = get_deps(request)
        if deps.stream_slots is None:
            return None
        s = deps.settings
        cap = StreamCap(deps.stream_slots, s.max_streams_per_user, s.stream_slot_lease_seconds, deps.clock,
                        deps.new_id)
        state.stream_cap = cap
    return cap


def _service(request: Request) -> JobService:
    svc: JobService | None = getattr(request.app.state, "service", None)
    if svc is None:
        svc = JobService(get_deps(request))
        request.app.state.service = svc
    return svc


def parse_cursor(value: str | None, name: str) -> int | None:
    """A cursor (a seq, 0..1e9) from a header or the query; ``InvalidInput`` if malformed."""
    if value is None:
        return None
    value = value.strip()
    if not _CURSOR_RE.fullmatch(value) or int(value) > MAX_CURSOR:
        raise InvalidInput(f"{name} must be an event seq (an integer 0..{MAX_CURSOR})", code="invalid_after")
    return int(value)


async def admit(request: Request, job_id: str, token: str | None,
                hold: float | None) -> tuple[Job, Slot, StreamLease | None]:
    """The caller's job and a slot to watch it: identity from a stream token or the usual
    bearer/apigw identity, then the caps, then the job (the caps first: a refused request costs no
    store read). ``hold``: the request may hold its process (a stream: 0; a long-poll: its wait),
    so it takes a slot of the per-user cap across processes too, for that much past a lease
    period; None (a long-poll with ``wait=0``, answered at once like any read): it takes none.

    Malformed id → 400, bad token → 401, over the user's or the token's cap → 429, unknown or
    another user's job → 404. The caller must release the slot (``with slot:``, or ``SSEResponse``):
    that gives the cap's slot back too.
    """
    validate_job_id(job_id)
    deps = get_deps(request)
    if token is not None:
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("invalid stream token", code="invalid_token")
        user = verify_stream_token(deps.settings, token, job_id, clock=deps.clock)
    else:
        user = current_user(request)
    slot = get_hub(request).admit(user, token)
    lease: StreamLease | None = None
    try:
        cap = get_cap(request)
        if cap is not None and hold is not None:
            taken: StreamLease = await asyncio.to_thread(partial(cap.take, user, extra_seconds=hold))
            slot.also(partial(deps.tasks.submit, taken.release))  # no store call on the event loop
            lease = taken
        job = await asyncio.to_thread(_service(request).owned, user, job_id)
    except BaseException:
        slot.release()
        raise
    return job, slot, lease


def sse_frame(event: Event) -> str:
    """One SSE frame: ``id``, ``event`` and the whole event as one line of JSON."""
    data = json.dumps(event.public(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n"


async def sse_stream(hub: WatchHub, job: Job, after: int, heartbeat: float,
                     retry_ms: int = RETRY_MS, lease: StreamLease | None = None) -> AsyncIterator[str]:
    """Replay after ``after``, then live frames, a comment heartbeat when idle; ends after the terminal.

    ``lease``: the stream's slot of the per-user cap, renewed here every third of its lease
    period (so a stream that stops being served stops renewing it); a slot lost for good (its
    lease ran out meanwhile and the user is at the cap now) ends the stream.
    """
    async with hub.watch(job, after, stream=True) as watcher:
        yield f"retry: {retry_ms}\n\n"
        while not watcher.done:
            wait = heartbeat if lease is None else min(heartbeat, lease.seconds_to_renewal())
            try:
                events = await watcher.next_batch(wait, BATCH)
            except EventsExpired:
                # Past retention mid-stream: end it; the reconnect is told 404 (the job is gone).
                yield ": events expired\n\n"
                return
            if events:
                yield "".join(sse_frame(e) for e in events)
            elif not watcher.done:
                yield ": keepalive\n\n"
            if lease is not None and lease.due and not watcher.done and not await asyncio.to_thread(lease.renew):
                yield ": stream slot lost\n\n"  # the reconnect takes a slot again, or is told 429
                return


class SSEResponse(StreamingResponse):
    """A streaming response that closes its generator and gives its slot back as soon as the
    response ends.

    Starlette cancels the sending task on a client disconnect; a generator suspended at a
    ``yield`` would then only be closed when garbage-collected. Closing it here releases the
    watcher (and the poller, if it was the last one) and the caller's stream slot at once.
    """

    media_type = "text/event-stream"

    def __init__(self, stream: AsyncIterator[str], slot: Slot | None = None) -> None:
        super().__init__(stream, headers={"Cache-Control": "no-store, no-transform",
                                          "X-Accel-Buffering": "no"})
        self._stream = stream
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._slot is not None:
                self._slot.release()  # first, with no await before it: a cancellation cannot skip it
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()


@router.get("/api/jobs/{job_id}/stream", responses=ERRORS)
async def stream_job(request: Request, job_id: str,
                     after: Annotated[str | None, Query(max_length=16)] = None,
                     token: Annotated[str | None, Query()] = None) -> StreamingResponse:
    """SSE: events after the cursor (``Last-Event-ID`` or ``?after=``), then live; closes after the end."""
    header = request.headers.get("last-event-id")
    cursor = parse_cursor(header, "Last-Event-ID") if header else None
    if cursor is None:
        cursor = parse_cursor(after, "after") or 0
    job, slot, lease = await admit(request, job_id, token, hold=0.0)
    heartbeat = float(getattr(request.app.state, "stream_heartbeat_seconds", None)
                      or get_deps(request).settings.stream_heartbeat_seconds)
    return SSEResponse(sse_stream(get_hub(request), job, cursor, heartbeat, lease=lease), slot)


@events_router.get("/api/jobs/{job_id}/events", responses=ERRORS)
async def job_events(request: Request, job_id: str,
                     after: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
                     wait: Annotated[float, Query()] = 0,
                     token: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    """Events with seq > after; if none, wait up to ``wait`` seconds (long-poll)."""
    max_wait = get_deps(request).settings.max_wait_seconds  # the limit lives in settings, not here
    if not 0 <= wait <= max_wait:  # bad input is a 400 before anything is looked up
        raise InvalidInput(f"wait must be 0..{max_wait:g}", code="invalid_wait")
    job, slot, _ = await admit(request, job_id, token, hold=wait if wait > 0 else None)
    with slot:  # held while the long-poll waits, whether or not the client is still there
        events, watcher = await get_hub(request).events_after(job, after, wait, BATCH)
    return {"events": [e.public() for e in events], "status": str(watcher.status),
            "done": watcher.done, "next_after": events[-1].seq if events else after}


def create_stream_app(deps: Deps | None = None, *, heartbeat_seconds: float | None = None,
                      hub: WatchHub | None = None) -> FastAPI:
    """The stream app: healthz, SSE and long-poll. ``deps`` defaults to DynamoDB from the environment."""
    if deps is None:
        settings = get_settings()
        settings.check_deployable(STREAM_SECRETS)
        deps = aws_deps(settings)
    app = FastAPI(title="alfred-jobs stream", version="0.1.0",
                  description="Replay and live events of alfred-jobs jobs (SSE and long-poll)")
    app.state.deps = deps
    app.state.service = JobService(deps)
    app.state.stream_hub = hub or make_hub(deps)
    app.state.stream_heartbeat_seconds = (
        heartbeat_seconds if heartbeat_seconds is not None
        else deps.settings.stream_heartbeat_seconds)
    install_error_handlers(app)
    add_cors(app, deps.settings)
    harden(app, deps.settings)

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        """Liveness."""
        return {"ok": True}

    app.include_router(router)
    return app


router.include_router(events_router)
