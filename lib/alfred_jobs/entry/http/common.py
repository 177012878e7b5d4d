"""What every HTTP app shares: the one error shape, identity, the per-app dependencies, and the
edge every request passes (the body limit, the JSON parser, the response headers)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alfred_jobs.exceptions import (
    ClientError,
    ConversationBusy,
    InvalidInput,
    PayloadTooLarge,
    TooManyRequests,
    TransientStoreError,
    Unauthorized,
)
from alfred_jobs.observability import get_logger
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import user_from_apigw_event, verify_local_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings

log = get_logger()
MAX_AUTH_HEADER = 8192


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   ) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               429: "too_many_requests"}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the one shape; bad input is a 4xx, never a 5xx."""

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after)}
        body = error_body(exc.code, exc.message)
        if isinstance(exc, ConversationBusy):
            body["error"]["job_id"] = exc.job_id  # the active job the caller may watch or interrupt
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
        return error_response(400, "invalid_input", "; ".join(parts) or "invalid input")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "not found"
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), message)

    @app.exception_handler(TransientStoreError)
    async def _unavailable(request: Request, exc: TransientStoreError) -> JSONResponse:
        # Throttling or a storage blip: retrying helps, so say so (503 + Retry-After) instead of the
        # generic 500 path, which logs a stack trace and drops the keep-alive connection.
        log.warning("storage unavailable", extra={"path": request.url.path, "error": str(exc)})
        return error_response(503, "unavailable", "storage is briefly unavailable; retry shortly",
                              {"Retry-After": "1"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client left before its body arrived (a tab closed just after Send): nothing was done,
        # its outbox sends it again. Not a server error, and no one is there to read the answer.
        log.info("client left before its request was read", extra={"path": request.url.path})
        return error_response(400, "client_disconnected", "the request ended before its body was read")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal", "internal error; the request may be retried")


def add_cors(app: FastAPI, settings: Settings) -> None:
    """CORS only for the configured origins (none by default: the local stack is same-origin)."""
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                          "Last-Event-ID"],
                           # A page on another origin reads how long to wait after a 429 or 503.
                           expose_headers=["Retry-After"],
                           max_age=600)


def get_deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def get_service(request: Request) -> JobService:
    svc: JobService = request.app.state.service
    return svc


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    if len(header) > MAX_AUTH_HEADER:
        raise Unauthorized("authorization header too large", code="invalid_token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected 'Authorization: Bearer <token>'", code="invalid_token")
    return token.strip()


def current_user(request: Request) -> str:
    """The verified identity: API Gateway's authorizer claims on AWS, a local HS256 token otherwise."""
    deps = get_deps(request)
    if deps.settings.auth_mode == "apigw":
        event = request.scope.get("aws.event")
        if not isinstance(event, dict):
            raise Unauthorized("no verified identity", code="unauthenticated")
        return user_from_apigw_event(event)
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("sign in: send 'Authorization: Bearer <token>' (alfred-jobs token --user NAME)",
                           code="unauthenticated")
    return verify_local_token(deps.settings, token, clock=deps.clock)


CurrentUser = Annotated[str, Depends(current_user)]
Service = Annotated[JobService, Depends(get_service)]


# ---- the edge: what a request may send, what every response says -----------------------------

API_HEADERS = {
    # Job objects carry private text and stream tokens: no cache (browser, proxy, CDN) keeps them.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ResponseHeaders:
    """ASGI middleware: add ``headers`` to every HTTP response that does not set them itself.

    Pure ASGI (no buffering), so server-sent events pass through as they are written.
    """

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI middleware, the one body-size limit: nothing past ``max_bytes`` is ever read.

    A ``Content-Length`` over the limit is answered at once, before any of the body is read. A
    body without one (chunked) is counted as the app receives it: the read that passes the
    limit raises ``PayloadTooLarge`` and the answer is the 413, whatever the app made of the
    error. Either way the 413 says ``Connection: close``, so the server closes the connection
    rather than reading (and discarding) the rest of the upload. So does any response sent
    before the app read the whole body (a route that ignores a body): the server never goes on
    reading an upload nobody asked for.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"body is larger than {self.max_bytes} bytes")

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await error_response(413, "payload_too_large", self._too_large().message,
                             {"Connection": "close"})(scope, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _declared_body(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0
        body_done = not chunked and not declared  # nothing (more) to read
        over = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, body_done, over
            if over:  # never read past the limit, however often the app asks
                if started:
                    return {"type": "http.disconnect"}
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    if started:  # too late for a 413 (a stream is under way): cut the client off
                        return {"type": "http.disconnect"}
                    raise self._too_large()
                body_done = body_done or not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if over and not started:  # the app's answer to a cut-off body is the 413
                    started = True
                    await self._refuse(scope, send)
                    return
                started = True
                if not body_done:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            elif over:
                return  # the rest of an answer replaced by the 413
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except PayloadTooLarge:
            if not over:
                raise
            if not started:
                await self._refuse(scope, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _declared_body(scope: Scope) -> tuple[int | None, bool]:
    """``(Content-Length, chunked?)`` of the request (servers refuse malformed lengths)."""
    length, chunked = None, False
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def harden(app: FastAPI, settings: Settings) -> None:
    """The edge of every app: the body limit, and the API's response headers (outermost, so that
    the limit's own 413 has them too). Call after every other middleware."""
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ResponseHeaders, headers=API_HEADERS)


async def request_body(request: Request) -> bytes:
    """The raw body (under ``BodyLimit``: a body over the limit is never read whole)."""
    return await request.body()


RawBody = Annotated[bytes, Depends(request_body)]

# A whole string (skipped at C speed), an unterminated one, or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|"|[\[\]{}]', re.DOTALL)


def json_too_deep(text: str, max_depth: int) -> bool:
    """Whether arrays and objects in ``text`` nest deeper than ``max_depth`` (brackets inside
    strings do not count). One linear scan, no recursion."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif token in "]}":
            depth -= 1  # below zero the text is not JSON: the parser refuses it at that point
        elif token == '"':
            return False  # a string never closed: not JSON, and the parser reads no deeper
    return False


def parse_json(raw: bytes, max_depth: int) -> Any:
    """The API's one JSON body parser: ``InvalidInput`` (400 ``invalid_json``) for anything that is
    not JSON nested at most ``max_depth`` deep, never a RecursionError (a 500)."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads(bytes) does
        if json_too_deep(text, max_depth):
            raise InvalidInput(f"body must be JSON nested at most {max_depth} levels deep",
                               code="invalid_json")
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("body must be JSON: {\"message\": \"...\"}", code="invalid_json") from None
