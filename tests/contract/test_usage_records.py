"""AgentDataStore usage records (the Bedrock agent's per-call token usage), on the fake and on DynamoDB."""

from __future__ import annotations

from tests.contract.support import Backend, live, past, uid

U = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}


def test_usage_records_are_one_per_call_and_recording_again_replaces(backend: Backend) -> None:
    job = uid("job")
    assert backend.agent_data.usage_records(job) == {}
    backend.agent_data.record_usage(job, "a1.think.1", U, live())
    backend.agent_data.record_usage(job, "a1.reply", {**U, "estimated": 1}, live())
    backend.agent_data.record_usage(job, "a1.think.1", U, live())  # the same call recorded again
    assert backend.agent_data.usage_records(job) == {"a1.think.1": U, "a1.reply": {**U, "estimated": 1}}
    assert backend.agent_data.usage_records(uid("job")) == {}


def test_expired_usage_records_are_hidden(backend: Backend) -> None:
    job = uid("job")
    backend.agent_data.record_usage(job, "a1.think.1", U, past())
    backend.agent_data.record_usage(job, "a2.reply", U, live())
    assert backend.agent_data.usage_records(job) == {"a2.reply": U}
