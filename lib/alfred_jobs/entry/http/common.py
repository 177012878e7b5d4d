"""What every HTTP app shares: the one error shape, identity, and the per-app dependencies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from alfred_jobs.exceptions import ClientError, TooManyRequests, TransientStoreError, Unauthorized
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
        return error_response(exc.status, exc.code, exc.message, headers)

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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal", "internal error; the request may be retried")


def add_cors(app: FastAPI, settings: Settings) -> None:
    """CORS only for the configured origins (none by default: the local stack is same-origin)."""
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                          "Last-Event-ID"],
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
    return verify_local_token(deps.settings, token)


CurrentUser = Annotated[str, Depends(current_user)]
Service = Annotated[JobService, Depends(get_service)]
