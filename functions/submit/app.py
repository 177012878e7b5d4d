"""Submit Lambda: the job API (FastAPI) behind API Gateway HTTP API, through Mangum."""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.observability import observe_lambda

_handler: Mangum | None = None


@observe_lambda
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point; the app is built on the first call, not at import (no clients at import)."""
    global _handler
    if _handler is None:
        _handler = Mangum(create_app(), lifespan="off")
    return _handler(event, context)
