"""The bench's model-token figure (issue 25): a conversation on the default model through the
Bedrock stand-in, billed with and without prompt caching."""

from __future__ import annotations

import pytest

from alfred_tools.benchmarks import model_tokens


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        monkeypatch.delenv(name, raising=False)


def test_caching_reads_the_conversation_once_it_passes_the_models_minimum() -> None:
    figure = model_tokens.scenario()["model_tokens_per_job"]
    on, off = figure["caching"], figure["no_caching"]
    # the same answers: output is the same; without caching nothing is read or written
    assert on["outputTokens"] == off["outputTokens"] > 0
    assert off["cacheReadInputTokens"] == off["cacheWriteInputTokens"] == 0
    # with caching, the history past 4,096 tokens is read back at a tenth of the price
    assert on["cacheReadInputTokens"] > 0 and on["cacheWriteInputTokens"] > 0
    assert on["inputTokens"] + on["cacheReadInputTokens"] + on["cacheWriteInputTokens"] == pytest.approx(
        off["inputTokens"], rel=0.02)
    assert figure["billed_with_caching"] < figure["billed_without_caching"]
    assert figure["cached_cost_ratio"] < 1


def test_below_the_minimum_nothing_is_cached() -> None:
    figure = model_tokens.scenario(turns=2)["model_tokens_per_job"]
    assert figure["caching"]["cacheReadInputTokens"] == figure["caching"]["cacheWriteInputTokens"] == 0
    assert figure["cached_cost_ratio"] == 1
