"""Structured logs and metrics (Powertools). Placeholder API; see docs/observability.md.

The core calls only these functions, so the implementation can change without touching it.
Never log message text or tokens: only ids, counts, codes and durations.
"""

from __future__ import annotations

import logging
from typing import Any

_log = logging.getLogger("alfred_jobs")


def get_logger() -> logging.Logger:
    """The project logger."""
    return _log


def bind_job(job_id: str | None = None, attempt: int | None = None, user: str | None = None) -> None:
    """Attach job_id / attempt / user to every following log line of this thread."""


def clear_job() -> None:
    """Forget what ``bind_job`` attached."""


def count(metric: str, value: float = 1, unit: str = "Count", **dimensions: Any) -> None:
    """Add a metric data point (CloudWatch EMF on AWS)."""


def flush_metrics() -> None:
    """Write buffered metrics (end of a Lambda invocation)."""
