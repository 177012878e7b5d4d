"""Signing secrets are read by ARN from Secrets Manager once per process, and only when set."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from alfred_jobs.adapters.secrets import forget_secrets, resolve_secrets
from alfred_jobs.exceptions import SecretUnavailable
from alfred_jobs.settings import Settings


class DeployedSettings(Settings):
    """Settings with the ARN fields the template sets (declared here until settings.py has them)."""

    stream_token_secret_arn: str | None = None
    cursor_secret_arn: str | None = None


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    forget_secrets()


def test_without_arns_settings_are_unchanged_and_nothing_is_called() -> None:
    settings = DeployedSettings()
    assert resolve_secrets(settings, client=object()) is settings


def test_arns_are_replaced_by_their_values_once() -> None:
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        stream = sm.create_secret(Name="stream", SecretString="s" * 64)["ARN"]
        cursor = sm.create_secret(Name="cursor", SecretString="c" * 64)["ARN"]
        settings = DeployedSettings(stream_token_secret_arn=stream, cursor_secret_arn=cursor)
        resolved = resolve_secrets(settings, sm)
        assert resolved.stream_token_secret == "s" * 64 and resolved.cursor_secret == "c" * 64
        sm.put_secret_value(SecretId=stream, SecretString="rotated")
        assert resolve_secrets(settings, sm).stream_token_secret == "s" * 64  # cached per process
        forget_secrets()
        assert resolve_secrets(settings, sm).stream_token_secret == "rotated"


def test_an_unreadable_secret_is_a_domain_error_without_its_value() -> None:
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf"
        with pytest.raises(SecretUnavailable, match="missing"):
            resolve_secrets(DeployedSettings(cursor_secret_arn=arn), sm)


def test_a_cold_start_fetches_every_secret_once_with_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import alfred_jobs.adapters.secrets as secrets

    class Fake:
        def __init__(self) -> None:
            self.asked: list[str] = []
            self.lock = threading.Lock()

        def get_secret_value(self, SecretId: str) -> dict[str, str]:
            with self.lock:
                self.asked.append(SecretId)
            return {"SecretString": f"value-of-{SecretId}"}

    made: list[Fake] = []
    monkeypatch.setattr(secrets, "_client", lambda settings: made.append(Fake()) or made[-1])
    arns = {"stream_token_secret_arn": "arn:s", "cursor_secret_arn": "arn:c", "vapid_secret_arn": "arn:v"}
    settings = resolve_secrets(Settings().model_copy(update=arns))
    assert len(made) == 1 and sorted(made[0].asked) == ["arn:c", "arn:s", "arn:v"]
    assert (settings.stream_token_secret, settings.cursor_secret, settings.vapid_secret) == (
        "value-of-arn:s", "value-of-arn:c", "value-of-arn:v")
    resolve_secrets(Settings().model_copy(update=arns))  # cached: no client, no call
    assert len(made) == 1 and len(made[0].asked) == 3
