"""The one local stack (``alfred_tools.localstack``): built from an explicit environment mapping,
it never reads its settings from, nor writes anything to, this process's ``os.environ``."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from alfred_tools.clients import endpoint_for, tool_clients
from alfred_tools.localstack import settings_from_env
from tests.integration.helpers import submit, wait_terminal
from tests.support.stack import make_stack

pytestmark = pytest.mark.integration


@pytest.mark.queue
def test_a_stack_runs_a_job_without_touching_the_process_environment(emulator: dict[str, str]) -> None:
    # GIVEN this process's environment
    before = dict(os.environ)
    # WHEN a stack is built, a job submitted here and run by a worker process
    with make_stack(emulator) as stack:
        assert dict(os.environ) == before
        stack.start_worker()
        events = wait_terminal(stack, submit(stack, "soup [steps=1]").job_id)
        assert events[-1].type.value == "complete"
        # THEN the stack's clients were given the endpoint, the children their environment
        endpoint = endpoint_for("dynamodb", stack.env)
        assert endpoint is None or stack.clients.dynamodb.meta.endpoint_url == endpoint
        assert stack.settings.jobs_table == stack.env["ALFRED_JOBS_TABLE"]
    # AND the environment is as it was, during and after
    assert dict(os.environ) == before


def test_settings_are_read_from_the_mapping_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a process environment with settings of its own
    monkeypatch.setenv("ALFRED_JOBS_TABLE", "from-the-process")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    # WHEN settings are read from a mapping (parsed as the runtime parses its environment)
    s = settings_from_env({"alfred_events_table": "ev", "AWS_DEFAULT_REGION": "eu-west-1",
                           "ALFRED_CORS_ORIGINS": '["https://a.example"]', "ALFRED_LEASE_SECONDS": "2",
                           "UNRELATED": "x"})
    # THEN only the mapping counts
    assert s.jobs_table == "alfred-jobs" and s.events_table == "ev" and s.region == "eu-west-1"
    assert s.cors_origins == ["https://a.example"] and s.lease_seconds == 2.0
    # and it is validated as the runtime validates it
    with pytest.raises(ValidationError):
        settings_from_env({"ALFRED_LEASE_SECONDS": "-1"})


def test_clients_take_the_service_endpoint_over_the_generic_one_and_never_the_process_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # this process's: never used
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:10", "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:11",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "key-from-mapping",
           "AWS_SECRET_ACCESS_KEY": "secret"}
    clients = tool_clients(settings_from_env(env), env)
    assert clients.dynamodb.meta.endpoint_url == "http://127.0.0.1:10"
    assert clients.sqs.meta.endpoint_url == "http://127.0.0.1:11"
    assert clients.sqs.meta.region_name == "eu-west-1"
    assert clients.sqs._request_signer._credentials.access_key == "key-from-mapping"
    # a mapping that names no endpoint means AWS itself, whatever this process's variables say
    aws = tool_clients(settings_from_env({"AWS_DEFAULT_REGION": "eu-west-1"}), {"AWS_DEFAULT_REGION": "eu-west-1"})
    assert aws.dynamodb.meta.endpoint_url == "https://dynamodb.eu-west-1.amazonaws.com"
