"""AWS clients for tooling processes (local workers, the sweeper loop, `dev`, tests, bench).

The runtime takes its clients injected (``AwsClients(settings, factory=...)``); these are the
runtime's own boto3 clients with two differences:

- where AWS is comes from an explicit environment mapping (``env``): ``endpoint_url``,
  credentials and region are passed to boto3, never read by boto3 from ``os.environ``. So one
  process can hold clients of several stacks, and nothing needs to rewrite its environment.
  Without a mapping (``env=None``), boto3 resolves everything itself, as in a Lambda function:
  right for a child process whose own environment was built for it;
- the seeded fault injector that ``ALFRED_FAULTS`` configures (``alfred_tools.faults``) is
  installed when ``settings.faults`` is set, for drills and chaos tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config

from alfred_jobs.adapters.aws import DEFAULT_CONFIG, AwsClients, ClientFactory
from alfred_jobs.entry.wiring import aws_deps
from alfred_jobs.ports import Deps
from alfred_jobs.settings import Settings
from alfred_tools import faults

_CREDENTIALS = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
                "aws_session_token": "AWS_SESSION_TOKEN"}
# With a mapping that names no endpoint, boto3 must not fall back to this process's AWS_ENDPOINT_URL*.
# (botocore >= 1.31; the type stubs do not know the option yet)
_IGNORE_ENDPOINT_VARS: dict[str, Any] = {"ignore_configured_endpoint_urls": True}
_NO_CONFIGURED_ENDPOINTS = DEFAULT_CONFIG.merge(Config(**_IGNORE_ENDPOINT_VARS))


def endpoint_for(service: str, env: Mapping[str, str]) -> str | None:
    """The endpoint ``env`` names for ``service`` (a boto3 service name): ``AWS_ENDPOINT_URL_<SERVICE>``
    over ``AWS_ENDPOINT_URL``, as boto3 reads them; None for AWS itself."""
    specific = f"AWS_ENDPOINT_URL_{service.upper().replace('-', '_').replace(' ', '_')}"
    return env.get(specific) or env.get("AWS_ENDPOINT_URL") or None


def client_factory(settings: Settings, env: Mapping[str, str] | None = None, **client_kwargs: Any) -> ClientFactory:
    """Service name → boto3 client in ``settings.region`` with ``DEFAULT_CONFIG`` and the fault injector
    of ``settings.faults``; endpoint and credentials from ``env`` when given (see the module
    docstring). ``client_kwargs`` (e.g. other credentials) win over what ``env`` says."""
    snapshot = None if env is None else dict(env)

    def factory(service: str) -> Any:
        kwargs: dict[str, Any] = {"region_name": settings.region, "config": DEFAULT_CONFIG}
        session: Any  # Any: the stubs type client() per literal service name
        if snapshot is None:
            session = boto3.session.Session()
        else:
            session = boto3.session.Session(profile_name=snapshot.get("AWS_PROFILE") or None)
            kwargs.update({arg: snapshot[var] for arg, var in _CREDENTIALS.items() if snapshot.get(var)})
            endpoint = endpoint_for(service, snapshot)
            if endpoint:
                kwargs["endpoint_url"] = endpoint
            else:
                kwargs["config"] = _NO_CONFIGURED_ENDPOINTS
        kwargs.update(client_kwargs)
        return faults.install(session.client(service, **kwargs), settings.faults)

    return factory


def tool_clients(settings: Settings, env: Mapping[str, str] | None = None, **client_kwargs: Any) -> AwsClients:
    """Clients for ``settings`` over ``client_factory(settings, env, **client_kwargs)``."""
    return AwsClients(settings, factory=client_factory(settings, env, **client_kwargs))


def tool_deps(settings: Settings, env: Mapping[str, str] | None = None, **client_kwargs: Any) -> Deps:
    """The ports over ``tool_clients``."""
    return aws_deps(settings, tool_clients(settings, env, **client_kwargs))
