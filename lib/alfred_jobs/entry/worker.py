"""The worker's SQS handler: Powertools batch processing with partial batch failures.

The same ``handler`` serves AWS (SQS event source mapping) and the local poller (``alfred-jobs
worker``), which builds a Lambda-shaped event. Each record runs one job delivery through the
runner; a delivery that should be retried sets its message's visibility to the backoff and is
reported as a batch item failure, so only it comes back.

The invocation's time (``budget.deadline``: the context's remaining time, or a local worker's
``ALFRED_WORKER_INVOCATION_SECONDS``) goes with each delivery, so a job hands itself on before a
part it cannot finish. The same check keeps a batch from starting a record it cannot get through
its first part: such a record is made visible again at once and reported as a batch item failure,
so another invocation picks it up now, not after the visibility timeout. The batch's first record
always starts (the invocation has all its time for it): a batch always makes progress.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from alfred_jobs.agents import build_agent
from alfred_jobs.domain.ids import is_job_id
from alfred_jobs.durability.budget import deadline, expected_seconds, fits
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome, RunResult
from alfred_jobs.entry.wiring import aws_deps, get_settings
from alfred_jobs.exceptions import RetryLater
from alfred_jobs.observability import get_logger, observe_lambda
from alfred_jobs.ports import Deps

log = get_logger()


_runtime: tuple[Deps, JobRunner] | None = None


def runtime() -> tuple[Deps, JobRunner]:
    """Ports and runner, built once per process (a Lambda container) from the environment."""
    global _runtime
    if _runtime is None:
        deps = aws_deps(get_settings())
        _runtime = deps, JobRunner(deps, build_agent(deps))
    return _runtime


def use_deps(deps: Deps) -> None:
    """Run this process's deliveries over ``deps`` (a local worker with clients of its own)."""
    global _runtime
    _runtime = deps, JobRunner(deps, build_agent(deps))


def handle_message(deps: Deps, runner: JobRunner, body: str, receipt_handle: str | None,
                   receive_count: int, until: float | None = None) -> RunResult | None:
    """Run one message, within the invocation's time ``until`` (on ``deps.clock.monotonic()``;
    None: no budget). Raises ``RetryLater`` when the job should be tried again later."""
    try:
        message = json.loads(body)
        job_id = message["job_id"]
        if not is_job_id(job_id):
            raise ValueError("bad job id")
        next_up = message.get("next_up") is True
    except (ValueError, KeyError, TypeError):
        log.error("malformed queue message parked in the DLQ")
        deps.queue.dead_letter("-", body[:1024], "malformed_message")
        return None
    result = runner.run(Delivery(job_id, receipt_handle, receive_count, body, next_up, deadline=until))
    if result.outcome is Outcome.RETRY:
        if receipt_handle:
            deps.queue.change_visibility(receipt_handle, result.retry_after)
        raise RetryLater(f"{job_id}: {result.reason}, retry in {result.retry_after}s")
    return result


def may_start(deps: Deps, runner: JobRunner, until: float | None) -> bool:
    """Whether a record can still get through its first part (the agent's generic step) and hand
    its job on, in the invocation's time ``until``."""
    s = deps.settings
    return fits(deps.clock, until, expected_seconds(runner.agent, s, "step"), s.handoff_margin_seconds)


def _record_handler(until: float | None, started: list[str], record: SQSRecord) -> str:
    deps, runner = runtime()
    if started and not may_start(deps, runner, until):
        # Not started: back on the queue at once (its visibility, 720 s, is what the event source
        # mapping would otherwise wait), reported as a batch item failure.
        deps.queue.change_visibility(record.receipt_handle, 0)
        raise RetryLater(f"{record.message_id}: not started, the invocation's time is nearly up")
    started.append(record.message_id)
    count = int(record.attributes.approximate_receive_count or 1)
    result = handle_message(deps, runner, record.body, record.receipt_handle, count, until)
    return result.outcome.value if result else "parked"


@observe_lambda
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point for the SQS event source mapping (metrics are flushed by the decorator)."""
    # A processor per call: it holds per-batch state, and the local pool runs batches on threads.
    # A batch whose every record asks for a retry is still a normal partial response: raising
    # would also fail the invocation and count as a Lambda error.
    # Built before the batch, outside the per-record handler: a worker that cannot start (bad
    # configuration, a secret it cannot read) must fail the invocation, a Lambda error that
    # WorkerErrorsAlarm sees, not report every record as a batch item failure while jobs wait.
    deps, _ = runtime()
    until = deadline(deps.clock, deps.settings, context)
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event=event, record_handler=partial(_record_handler, until, []),
                                         processor=processor, context=context))
