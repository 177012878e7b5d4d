"""Structured logs, metrics and tracing (AWS Lambda Powertools). See docs/observability.md.

Logs: every module logs through the stdlib logger ``alfred_jobs`` (``get_logger()``) or a child of
it (``logging.getLogger(__name__)``). One handler on ``alfred_jobs`` formats them:

- on Lambda (``AWS_LAMBDA_FUNCTION_NAME`` set) as Powertools JSON, one object per line, with
  ``service: alfred-jobs``, the X-Ray trace id and, under ``observe_lambda``, the request id;
- anywhere else as one readable console line: ``12:00:01.123 INFO  runner  job finished
  job_id=... attempt=1 user=... status=complete``.

``bind_job`` puts ``job_id``, ``attempt`` and ``user`` on every record of the current thread (or
asyncio task: it is a ``ContextVar``) until ``clear_job``; a filter on the handler adds them, so
child loggers and pytest's ``caplog`` see them too. Never log message text, replies or tokens:
only ids, counts, codes and durations (docs/observability.md).

Metrics: ``count`` adds a data point to the namespace ``AlfredJobs`` (dimension ``service``, plus
any low-cardinality ``**dimensions``); on Lambda they are printed as CloudWatch EMF by
``flush_metrics`` (dimensioned ones at once). Locally they are only totalled in memory
(``metrics_snapshot``) and logged at DEBUG.

Nothing here reads the environment or builds an AWS client at import: configuration happens on
the first call.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

SERVICE = "alfred-jobs"
NAMESPACE = "AlfredJobs"
LOGGER_NAME = "alfred_jobs"
JOB_KEYS = ("job_id", "attempt", "user")

_log = logging.getLogger(LOGGER_NAME)
_job: ContextVar[dict[str, Any]] = ContextVar("alfred_job", default={})  # noqa: B039 - never mutated
_lock = threading.RLock()
_configured = False
_local_totals: dict[str, float] = {}
_metrics: Any = None  # aws_lambda_powertools.Metrics, built on first use on Lambda
_json_formatter: Any = None  # the Powertools formatter, to add per-invocation keys

# Attributes every LogRecord has: whatever else a record carries came from `extra=` or the filter.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}

F = TypeVar("F", bound=Callable[..., Any])


def in_lambda() -> bool:
    """Whether this process is a Lambda function (the runtime sets AWS_LAMBDA_FUNCTION_NAME)."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


# ---- logs ----------------------------------------------------------------------------------


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """A StreamHandler on whatever ``sys.stdout`` is at emit time (pytest swaps it per test)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class JobContextFilter(logging.Filter):
    """Adds the bound job_id / attempt / user to a record, unless the call passed its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _job.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class ConsoleFormatter(logging.Formatter):
    """One readable line per record: time, level, module, message, then key=value extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as ``HH:MM:SS.mmm LEVEL module message k=v ...``."""
        # The record's own time (``logging`` took it when the record was made), formatted in local
        # time: this reads no clock and decides nothing, so it needs no ``Clock``.
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S") + f".{int(record.msecs):03d}"
        name = record.name.removeprefix(LOGGER_NAME + ".") if record.name != LOGGER_NAME else "alfred"
        extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}
        ordered = [k for k in JOB_KEYS if k in extras] + sorted(k for k in extras if k not in JOB_KEYS)
        tail = " ".join(f"{k}={extras[k]}" for k in ordered)
        line = f"{stamp} {record.levelname:<7} {name:<12} {record.getMessage()}"
        if tail:
            line += "  " + tail
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_wanted_level = logging.INFO


def _parse_level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    return level if isinstance(level, int) else logging.INFO


def set_level(name: str) -> None:
    """The project logger's level (``Settings.log_level``, set when the settings are loaded)."""
    global _wanted_level
    _wanted_level = _parse_level(name)
    _log.setLevel(_wanted_level)


def configure(stream: Any = None, *, json_logs: bool | None = None, force: bool = False,
              level: str | None = None) -> logging.Handler:
    """Attach the one handler to ``alfred_jobs`` (idempotent; ``force`` replaces it, for tests)."""
    global _configured, _json_formatter, _wanted_level
    if level is not None:
        _wanted_level = _parse_level(level)
    with _lock:
        if _configured and not force:
            return _log.handlers[0]
        for old in [h for h in _log.handlers if getattr(h, "_alfred", False)]:
            _log.removeHandler(old)
        handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StdoutHandler()
        handler._alfred = True  # type: ignore[attr-defined]
        handler.addFilter(JobContextFilter())
        use_json = in_lambda() if json_logs is None else json_logs
        if use_json:
            from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

            _json_formatter = LambdaPowertoolsFormatter(service=SERVICE, utc=True, use_rfc3339=True)
            handler.setFormatter(_json_formatter)
        else:
            _json_formatter = None
            handler.setFormatter(ConsoleFormatter())
        _log.addHandler(handler)
        _log.setLevel(_wanted_level)
        # On Lambda the runtime's root handler would print every line a second time, unformatted.
        # Elsewhere records still reach the root logger, so pytest's caplog sees them.
        _log.propagate = not use_json
        _configured = True
        return handler


def get_logger() -> logging.Logger:
    """The project logger (``alfred_jobs``), its handler attached on the first call."""
    configure()
    return _log


def bind_job(job_id: str | None = None, attempt: int | None = None, user: str | None = None) -> None:
    """Attach job_id / attempt / user to every following log line of this thread (or task).

    A new ``job_id`` starts afresh; the same (or no) ``job_id`` adds to what is bound.
    """
    current = _job.get()
    base = {} if job_id is not None and current.get("job_id") not in (None, job_id) else current
    new = {k: v for k, v in (("job_id", job_id), ("attempt", attempt), ("user", user)) if v is not None}
    _job.set({**base, **new})


def clear_job() -> None:
    """Forget what ``bind_job`` attached."""
    _job.set({})


def bound_job() -> dict[str, Any]:
    """What ``bind_job`` attached in this thread (a copy)."""
    return dict(_job.get())


@contextmanager
def job_context(job_id: str | None = None, attempt: int | None = None,
                user: str | None = None) -> Iterator[None]:
    """``bind_job`` for the duration of a ``with`` block, restoring what was bound before."""
    token = _job.set(_job.get())
    bind_job(job_id, attempt, user)
    try:
        yield
    finally:
        _job.reset(token)


# ---- metrics -------------------------------------------------------------------------------

# MetricsProfile (template.yaml): each published metric is a custom metric billed by the month
# ($0.30), whatever its traffic, so a deployment can publish only what is read: "alarms" what the
# template's alarms read, "essential" that and docs/observability.md's dashboard. The rest are
# still totalled in the process (``metrics_snapshot``) and logged at DEBUG.
ALARM_METRICS = frozenset({"StuckJobs"})                # StuckJobsAlarm
ESSENTIAL_METRICS = ALARM_METRICS | {
    "JobsSubmitted", "JobsCompleted", "JobsFailed",     # the dashboard: how many, how they end
    "QueueToStartSeconds", "StepDuration",              # the dashboard: how long they wait and take
}
METRIC_PROFILES: dict[str, frozenset[str] | None] = {"all": None, "essential": ESSENTIAL_METRICS,
                                                     "alarms": ALARM_METRICS}
_published: frozenset[str] | None = None  # None: every metric


def set_metrics_profile(profile: str) -> None:
    """Which metrics ``count`` publishes (``Settings.metrics_profile``): "all", "essential" or
    "alarms" (``METRIC_PROFILES``)."""
    global _published
    _published = METRIC_PROFILES[profile]


def _powertools_metrics() -> Any:
    global _metrics
    if _metrics is None:
        from aws_lambda_powertools import Metrics

        _metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    return _metrics


def count(metric: str, value: float = 1, unit: str = "Count", **dimensions: Any) -> None:
    """Add a metric data point (CloudWatch EMF on AWS).

    ``dimensions`` must be low-cardinality (a phase, an error code), never a job or user id.
    """
    with _lock:
        _local_totals[metric] = _local_totals.get(metric, 0.0) + float(value)
    if not in_lambda() or (_published is not None and metric not in _published):
        _log.debug("metric %s=%s %s", metric, value, unit, extra={"metric_dimensions": dimensions or None})
        return
    try:
        from aws_lambda_powertools.metrics import MetricUnit

        metric_unit = MetricUnit(unit)
        if dimensions:
            from aws_lambda_powertools.metrics import single_metric

            with single_metric(name=metric, unit=metric_unit, value=float(value), namespace=NAMESPACE,
                               default_dimensions={"service": SERVICE}) as one:
                for name, dim in dimensions.items():
                    one.add_dimension(name=name, value=str(dim))
        else:
            with _lock:
                _powertools_metrics().add_metric(name=metric, unit=metric_unit, value=float(value))
    except Exception:  # a metric must never fail a job (bad unit, >100 metrics, ...)
        _log.warning("metric dropped", exc_info=True, extra={"metric": metric})


def flush_metrics() -> None:
    """Write buffered metrics (end of a Lambda invocation)."""
    if _metrics is None:
        return
    with _lock:
        try:
            if _metrics.metric_set:
                _metrics.flush_metrics()
        except Exception:
            _log.warning("metrics flush failed", exc_info=True)


def metrics_snapshot() -> dict[str, float]:
    """Totals of every metric counted in this process (local runs, tests, benchmarks)."""
    with _lock:
        return dict(_local_totals)


def reset_metrics() -> None:
    """Forget the in-process totals (tests)."""
    with _lock:
        _local_totals.clear()


# ---- Lambda handlers -------------------------------------------------------------------------

_cold_start = True


def observe_lambda(handler: F) -> F:
    """Decorate a Lambda handler: request id and cold start on every log line, X-Ray tracing
    (when the X-Ray SDK is installed), metrics flushed at the end, the job context cleared."""
    traced: list[Callable[..., Any]] = []

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> Any:
        global _cold_start
        configure()
        if not traced:  # built on the first call: patching botocore is not an import side effect
            traced.append(_traced(handler))
        if _json_formatter is not None:
            _json_formatter.append_keys(
                cold_start=_cold_start,
                function_name=getattr(context, "function_name", None),
                function_request_id=getattr(context, "aws_request_id", None))
        _cold_start = False
        try:
            return traced[0](event, context)
        finally:
            clear_job()
            flush_metrics()

    return wrapper  # type: ignore[return-value]


def _traced(handler: Callable[..., Any]) -> Callable[..., Any]:
    if not in_lambda():
        return handler
    try:
        import aws_xray_sdk  # noqa: F401 - only to know whether tracing is possible
        from aws_lambda_powertools import Tracer
    except ImportError:
        return handler
    # capture_response=False: responses hold replies, which must not reach traces either.
    return Tracer(service=SERVICE).capture_lambda_handler(handler, capture_response=False)
