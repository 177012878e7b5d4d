"""AWS clients for tooling processes (local workers, the sweeper loop, `dev`, tests, bench).

The runtime takes its clients injected (``AwsClients(settings, factory=...)``); these are the
runtime's own boto3 clients with one addition the runtime never has: the seeded fault injector
that ``ALFRED_FAULTS`` configures (``alfred_tools.faults``), for drills and chaos tests.
"""

from __future__ import annotations

from typing import Any

import boto3

from alfred_jobs.adapters.aws import DEFAULT_CONFIG, AwsClients
from alfred_jobs.entry.wiring import aws_deps
from alfred_jobs.ports import Deps
from alfred_jobs.settings import Settings
from alfred_tools import faults


def tool_clients(settings: Settings, **client_kwargs: Any) -> AwsClients:
    """Clients built from ``settings`` (and e.g. explicit credentials in ``client_kwargs``), with the
    fault injector of ``settings.faults`` installed if set."""

    def factory(service: str) -> Any:
        session: Any = boto3.session.Session()
        client = session.client(service, region_name=settings.region, config=DEFAULT_CONFIG, **client_kwargs)
        return faults.install(client, settings.faults)

    return AwsClients(settings, factory=factory)


def tool_deps(settings: Settings, **client_kwargs: Any) -> Deps:
    """The ports over ``tool_clients``."""
    return aws_deps(settings, tool_clients(settings, **client_kwargs))
