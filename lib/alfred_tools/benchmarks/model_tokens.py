"""``model_tokens_per_job``: the model tokens one job is billed for, with and without prompt caching.

One conversation of ``TURNS`` jobs runs twice through the real runner and the Bedrock agent on the
default model (Claude Haiku 4.5, the Messages API), against the Bedrock stand-in
(``alfred_tools.bedrock_standin``: tokens counted 4 characters each, prompt caching modelled with
the model's minimum of 4,096 tokens a checkpoint and a 5-minute TTL): once with
``ALFRED_BEDROCK_PROMPT_CACHING`` on, once off. Each job plans (one kitchen step), lists the
pantry and streams a reply of about 400 tokens, so the history grows as a real conversation's does.

Figures, per job (the mean over the conversation): the input, cache write, cache read and output
tokens; ``billed_with_caching`` / ``billed_without_caching`` (input-token equivalents plus output
tokens); ``billed_input_equivalent`` (input + 1.25 x cache writes + 0.1 x cache reads: Bedrock's
cache prices relative to input) and the cost at Haiku 4.5's list price ($1 / $5 per million input
/ output tokens). ``cached_cost_ratio`` is cost with caching / without.
"""

from __future__ import annotations

import os
from typing import Any

TURNS = 12
CACHE_MIN_TOKENS = 4096  # Claude Haiku 4.5's minimum per cache checkpoint (its Bedrock model card)
PRICE_IN, PRICE_OUT = 1.0, 5.0  # USD per million tokens, Claude Haiku 4.5 (Anthropic's list price)
REPLY = "Simmer the onions slowly until golden, then add the stock and the herbs. " * 22  # ~400 tokens


def _conversation(caching: bool, turns: int) -> list[dict[str, int]]:
    from alfred_jobs.adapters.memory import memory_deps
    from alfred_jobs.agents.bedrock import PLAN_TOOL, BedrockAgent, MemoryKitchenStore
    from alfred_jobs.domain.models import ChatRequest
    from alfred_jobs.durability.runner import Delivery, JobRunner
    from alfred_jobs.service.jobs import JobService
    from alfred_jobs.settings import Settings
    from alfred_tools.bedrock_standin import BedrockStandIn, text, tool_use

    usages: list[dict[str, int]] = []
    with BedrockStandIn(cache_min_tokens=CACHE_MIN_TOKENS) as bedrock:
        deps = memory_deps(Settings(agent="bedrock", retry_base_seconds=0, delta_flush_seconds=0.01,
                                    bedrock_prompt_caching=caching))
        agent = BedrockAgent.from_deps(deps, client=bedrock.client(), kitchen=MemoryKitchenStore())
        runner, service = JobRunner(deps, agent), JobService(deps)
        for turn in range(turns):
            bedrock.stream(tool_use((PLAN_TOOL, {"steps": [{"kind": "list_pantry", "label": "Look"}]})),
                           text(f"Turn {turn}: {REPLY}"))
            job = service.submit("bench", ChatRequest(message=f"What can I cook tonight? ({turn})",
                                                      conversation_id="c1"), idempotency_key=None).job
            runner.run(Delivery(job_id=job.job_id))
            usage = agent.usage(None) or {}
            usages.append({k: int(v) for k, v in usage.items()})
    return usages


def _summary(usages: list[dict[str, int]]) -> dict[str, Any]:
    n = max(1, len(usages))
    mean = {k: round(sum(u.get(k, 0) for u in usages) / n, 1) for k in (
        "inputTokens", "cacheWriteInputTokens", "cacheReadInputTokens", "outputTokens")}
    billed_in = mean["inputTokens"] + 1.25 * mean["cacheWriteInputTokens"] + 0.1 * mean["cacheReadInputTokens"]
    return {**mean, "billed_input_equivalent": round(billed_in, 1),
            "usd_per_million_jobs": round((billed_in * PRICE_IN + mean["outputTokens"] * PRICE_OUT), 1)}


def scenario(turns: int = TURNS) -> dict[str, Any]:
    """Both runs; the figures for the bench's JSON and table."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    on, off = _summary(_conversation(True, turns)), _summary(_conversation(False, turns))
    ratio = on["usd_per_million_jobs"] / off["usd_per_million_jobs"] if off["usd_per_million_jobs"] else None
    return {"model_tokens_per_job": {
                "billed_with_caching": on["billed_input_equivalent"] + on["outputTokens"],
                "billed_without_caching": off["billed_input_equivalent"] + off["outputTokens"],
                "cached_cost_ratio": round(ratio, 3) if ratio else None,
                "caching": on, "no_caching": off},
            "model_tokens_detail": f"{turns} turns of one conversation, Claude Haiku 4.5 on the Messages API "
                                   f"(stand-in), cache minimum {CACHE_MIN_TOKENS} tokens a checkpoint; billed = "
                                   "input + 1.25 x cache writes + 0.1 x cache reads + output"}
