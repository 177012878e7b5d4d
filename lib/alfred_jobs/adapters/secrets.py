"""Signing secrets from Secrets Manager, resolved once per process (a Lambda cold start).

On AWS the template passes only ARNs (``ALFRED_STREAM_TOKEN_SECRET_ARN``,
``ALFRED_CURSOR_SECRET_ARN``); the values never appear in the environment, the template or the
logs. Locally no ARN is set and the settings' own values are used, so nothing here runs.

    settings = resolve_secrets(Settings())      # e.g. inside get_settings()
"""

from __future__ import annotations

import threading
from typing import Any

from alfred_jobs.clock import Tasks, ThreadTasks
from alfred_jobs.exceptions import SecretUnavailable
from alfred_jobs.settings import Settings

# settings field holding an ARN → settings field that receives the secret's value
SECRET_FIELDS = {
    "stream_token_secret_arn": "stream_token_secret",
    "cursor_secret_arn": "cursor_secret",
    "vapid_secret_arn": "vapid_secret",  # the VAPID key's seed (service/push.py derives the key)
}

_cache: dict[str, str] = {}
_lock = threading.Lock()


def resolve_secrets(settings: Settings, client: Any = None, tasks: Tasks | None = None) -> Settings:
    """``settings`` with every ``*_secret_arn`` that is set replaced by the secret's value.

    A cold start fetches them with one client, at the same time: one round trip's wait, not three,
    and one client made, not three (measured: a third of the submit function's first request).
    The fetches run on ``tasks`` (this runs before any ``Deps`` exists: by default a pool made for
    them, left to the garbage collector once they are done).
    """
    wanted = {value_field: str(arn) for arn_field, value_field in SECRET_FIELDS.items()
              if (arn := getattr(settings, arn_field, None))}
    if not wanted:
        return settings
    with _lock:
        missing = [arn for arn in wanted.values() if arn not in _cache]
    if missing and client is None:
        client = _client(settings)
    if len(missing) > 1:
        pool = tasks or ThreadTasks(max_workers=len(missing), name="secrets")
        fetches = [pool.submit(secret_value, arn, settings, client) for arn in missing]
        failures: list[Exception] = []
        for fetch in fetches:  # every fetch ends before the first failure is raised
            try:
                fetch.result()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
    updates = {field: secret_value(arn, settings, client) for field, arn in wanted.items()}
    return settings.model_copy(update=updates)


def _client(settings: Settings) -> Any:
    import boto3  # only when a secret is configured: never at import

    return boto3.session.Session().client("secretsmanager", region_name=settings.region)


def secret_value(arn: str, settings: Settings, client: Any = None) -> str:
    """The SecretString of ``arn``, fetched once per process."""
    with _lock:
        if arn in _cache:
            return _cache[arn]
    if client is None:
        client = _client(settings)
    try:
        value = client.get_secret_value(SecretId=arn)["SecretString"]
    except Exception as exc:  # botocore stays out of this module: any failure is the same to callers
        # The ARN is not secret; the exception text may name it, never the value.
        raise SecretUnavailable(f"cannot read secret {arn}: {type(exc).__name__}") from exc
    if not isinstance(value, str) or not value:
        raise SecretUnavailable(f"secret {arn} has no SecretString")
    with _lock:
        _cache[arn] = value
    return value


def forget_secrets() -> None:
    """Drop the cached values (tests, or after a rotation in a long-running process)."""
    with _lock:
        _cache.clear()
