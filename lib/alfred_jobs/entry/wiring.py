"""The composition root: settings and the ports a process needs, built once per process.

Entry points (the Lambda handlers, the stream app) call ``get_settings`` and ``aws_deps``; the
tooling (``alfred_tools``) passes clients of its own (``AwsClients(settings, factory=...)``) and
never rewrites the environment.
"""

from __future__ import annotations

from functools import lru_cache

from alfred_jobs.adapters.aws import (
    AwsClients,
    DynamoAgentDataStore,
    DynamoConversationStore,
    DynamoEventLog,
    DynamoGateStore,
    DynamoJobStore,
    DynamoStreamSlots,
    SqsJobQueue,
)
from alfred_jobs.adapters.secrets import resolve_secrets
from alfred_jobs.adapters.wake import WakingEventLog
from alfred_jobs.clock import Clock, SystemClock, Tasks, ThreadTasks
from alfred_jobs.observability import set_level, set_metrics_profile
from alfred_jobs.ports import Deps, EventLog
from alfred_jobs.settings import Settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment with secrets resolved from their ARNs, built once per process.

    Each entry point that serves users checks its own secrets (``Settings.check_deployable``).
    """
    settings = resolve_secrets(Settings())
    set_level(settings.log_level)  # ALFRED_LOG_LEVEL, read once, here
    set_metrics_profile(settings.metrics_profile)  # ALFRED_METRICS_PROFILE, likewise
    return settings


def aws_deps(settings: Settings, clients: AwsClients | None = None, clock: Clock | None = None,
             tasks: Tasks | None = None) -> Deps:
    """Ports backed by DynamoDB and SQS (AWS, LocalStack or moto, by endpoint variables), over
    ``clients`` if given (injected boto3 clients), else clients built from ``settings``; every
    adapter on ``clock``, background work on ``tasks`` (the real ones by default)."""
    # Imported here, not at the module's import: the Web Push adapter brings the crypto and HTTP
    # of the sends, which a function's init need not load before its first request (issue 28).
    from alfred_jobs.adapters.push import aws_push

    c = clients or AwsClients(settings)
    t = clock or SystemClock()
    # The notifier only where a VAPID key is configured.
    push, notifier = aws_push(settings, c, t)
    log: EventLog = DynamoEventLog(c, settings, t)
    if settings.stream_wake_address:  # the writers wake the stream process (adapters/wake.py)
        log = WakingEventLog(log, settings.stream_wake_address)
    return Deps(settings=settings, jobs=DynamoJobStore(c, settings, t), log=log,
                conversations=DynamoConversationStore(c, settings, t), queue=SqsJobQueue(c),
                agent_data=DynamoAgentDataStore(c, settings, t), gates=DynamoGateStore(c, settings, t),
                push=push, notifier=notifier, stream_slots=DynamoStreamSlots(c, settings, t),
                clock=t, tasks=tasks or ThreadTasks())
