"""Wiring: the ports a process needs, built from settings (the composition root)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .ports import AgentDataStore, ConversationStore, EventLog, JobQueue, JobStore
from .settings import Settings


@dataclass
class Deps:
    """Everything the services use. Tests build one from in-memory fakes (``adapters.memory``)."""

    settings: Settings
    jobs: JobStore
    log: EventLog
    conversations: ConversationStore
    queue: JobQueue
    agent_data: AgentDataStore
    sleep: Callable[[float], None] = field(default=time.sleep)


def aws_deps(settings: Settings) -> Deps:
    """Ports backed by DynamoDB and SQS (real AWS, LocalStack or moto, by endpoint variables)."""
    from .adapters.aws import (
        AwsClients,
        DynamoAgentDataStore,
        DynamoConversationStore,
        DynamoEventLog,
        DynamoJobStore,
        SqsJobQueue,
    )

    clients = AwsClients(settings)
    return Deps(settings=settings, jobs=DynamoJobStore(clients, settings),
                log=DynamoEventLog(clients, settings),
                conversations=DynamoConversationStore(clients, settings),
                queue=SqsJobQueue(clients), agent_data=DynamoAgentDataStore(clients, settings))
