"""Sweeper Lambda: on a schedule, re-enqueue jobs whose message was lost or whose worker died."""

from __future__ import annotations

from typing import Any

from alfred_jobs.entry.wiring import aws_deps, get_settings
from alfred_jobs.observability import observe_lambda
from alfred_jobs.service.sweeper import Sweeper


@observe_lambda
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled (EventBridge) entry point."""
    report = Sweeper(aws_deps(get_settings())).sweep()
    return {"requeued": len(report.requeued), "waiting": len(report.waiting), "queued": len(report.queued),
            "repaired": len(report.repaired), "timed_out": len(report.timed_out),
            "cancelled": len(report.cancelled), "finished": len(report.finished),
            "gates_checked": len(report.gates_checked), "errors": report.errors}
