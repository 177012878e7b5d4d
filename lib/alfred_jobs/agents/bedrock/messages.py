"""Claude through the Anthropic Messages API on ``bedrock-runtime`` (``InvokeModelWithResponseStream``).

The body is the Messages API's (``"anthropic_version": "bedrock-2023-05-31"``); the answer is
Bedrock's event stream whose ``chunk`` events each carry one Messages API event as JSON bytes:
``message_start`` (the input usage, cache reads and writes included), ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``) /
``content_block_stop``, ``message_delta`` (the stop reason and the output usage), ``message_stop``
(with ``amazon-bedrock-invocationMetrics``). Errors mid-stream arrive as event-stream exceptions
(``throttlingException``, ``modelStreamErrorException``, ...), which botocore raises as
``EventStreamError``, or as a Messages API ``error`` event.

Why ``bedrock-runtime`` and not ``bedrock-mantle``: the same SigV4 credentials and IAM actions
(``bedrock:InvokeModelWithResponseStream``) as the rest of the worker, boto3 (already in the
Lambda), invocation logging, and AWS's Messages API page recommends it for new applications
(docs/agents.md, "Two transports").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from alfred_jobs.agents.bedrock.transport import Answer, Call, parse_tool_input
from alfred_jobs.exceptions import RetryableAgentError, TerminalAgentError

ANTHROPIC_VERSION = "bedrock-2023-05-31"
_CACHE = {"type": "ephemeral"}
# The Messages API's stop reasons, named as the agent knows them (Converse's names).
_STOPS = {"refusal": "content_filtered", "pause_turn": "end_turn", "stop_sequence": "end_turn"}
_RETRYABLE_ERRORS = ("overloaded_error", "api_error", "rate_limit_error", "timeout_error")


def _content(block: dict[str, Any]) -> dict[str, Any]:
    """One Converse-shaped content block as the Messages API writes it."""
    if "text" in block:
        return {"type": "text", "text": block["text"]}
    if "toolUse" in block:
        use = block["toolUse"]
        return {"type": "tool_use", "id": use["toolUseId"], "name": use["name"], "input": use.get("input") or {}}
    if "toolResult" in block:
        result = block["toolResult"]
        out: dict[str, Any] = {"type": "tool_result", "tool_use_id": result["toolUseId"],
                               "content": [_content(c) for c in result.get("content", [])]}
        if result.get("status") == "error":
            out["is_error"] = True
        return out
    raise ValueError(f"no Messages API form for the content block {sorted(block)}")


def body(call: Call) -> dict[str, Any]:
    """The InvokeModel body for ``call``; with ``call.cache``, ``cache_control`` on the stable prefix:
    the tools, the system prompt, and the conversation before the new user turn."""
    messages = [{"role": m["role"], "content": [_content(c) for c in m["content"]]} for m in call.messages]
    system: list[dict[str, Any]] = [{"type": "text", "text": s} for s in call.system]
    tools = [{"name": t["name"], "description": t["description"], "input_schema": t["schema"]} for t in call.tools]
    if call.cache:
        for blocks in (tools, system, messages[-2]["content"] if len(messages) > 1 else []):
            if blocks:
                blocks[-1] = {**blocks[-1], "cache_control": _CACHE}
    out: dict[str, Any] = {"anthropic_version": ANTHROPIC_VERSION, "max_tokens": call.max_tokens,
                           "temperature": call.temperature, "system": system, "messages": messages}
    if tools:
        out["tools"] = tools
        out["tool_choice"] = {"type": "tool", "name": call.force_tool} if call.force_tool else {"type": "auto"}
    return out


class MessagesTransport:
    """The Anthropic Messages API, streamed, on ``bedrock-runtime``."""

    name = "messages"

    def stream(self, client: Any, model_id: str, call: Call, answer: Answer) -> Iterator[str]:
        response = client.invoke_model_with_response_stream(
            modelId=model_id, body=json.dumps(body(call)), contentType="application/json",
            accept="application/json")
        stream = response["body"]
        raw: dict[int, str] = {}  # a tool call's input as its deltas arrive, by block index
        blocks: dict[int, dict[str, Any]] = {}
        try:
            for event in stream:
                if "chunk" not in event:
                    continue
                data = json.loads(event["chunk"]["bytes"])
                kind = data.get("type")
                if kind == "message_start":
                    u = (data.get("message") or {}).get("usage") or {}
                    answer.input_seen = {"inputTokens": int(u.get("input_tokens", 0) or 0),
                                         "cacheReadInputTokens": int(u.get("cache_read_input_tokens", 0) or 0),
                                         "cacheWriteInputTokens": int(u.get("cache_creation_input_tokens", 0) or 0)}
                    answer.output_seen = int(u.get("output_tokens", 0) or 0)
                elif kind == "content_block_start":
                    block = data.get("content_block") or {}
                    blocks[int(data.get("index", 0))] = block
                    if block.get("type") == "tool_use":
                        raw[int(data.get("index", 0))] = ""
                elif kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    dtype = delta.get("type")
                    if dtype == "text_delta" and delta.get("text"):
                        answer.add_text(delta["text"])
                        yield delta["text"]
                    elif dtype == "input_json_delta":
                        index = int(data.get("index", 0))
                        raw[index] = raw.get(index, "") + str(delta.get("partial_json") or "")
                        answer.output_chars += len(str(delta.get("partial_json") or ""))
                    elif dtype == "thinking_delta":
                        answer.output_chars += len(str(delta.get("thinking") or ""))  # billed, not shown
                elif kind == "content_block_stop":
                    index = int(data.get("index", 0))
                    block = blocks.get(index) or {}
                    if block.get("type") == "tool_use":
                        answer.tool_uses.append({"toolUseId": block.get("id", f"tool-{index}"),
                                                 "name": block.get("name", ""),
                                                 "input": parse_tool_input(raw.pop(index, ""))})
                elif kind == "message_delta":
                    stop = (data.get("delta") or {}).get("stop_reason")
                    answer.output_seen = int((data.get("usage") or {}).get("output_tokens", 0) or 0)
                    if stop:
                        answer.stop = _STOPS.get(stop, stop)
                        answer.usage = {**(answer.input_seen or {}), "outputTokens": answer.output_seen}
                elif kind == "message_stop":
                    metrics = data.get("amazon-bedrock-invocationMetrics") or {}
                    if metrics:
                        answer.usage = {"inputTokens": int(metrics.get("inputTokenCount", 0) or 0),
                                        "outputTokens": int(metrics.get("outputTokenCount", 0) or 0),
                                        "cacheReadInputTokens": int(metrics.get("cacheReadInputTokenCount", 0) or 0),
                                        "cacheWriteInputTokens": int(metrics.get("cacheWriteInputTokenCount", 0)
                                                                     or 0)}
                    if answer.stop is None:
                        answer.stop = "end_turn"
                elif kind == "error":
                    error = data.get("error") or {}
                    etype, text = str(error.get("type", "error")), str(error.get("message", ""))
                    if etype in _RETRYABLE_ERRORS:
                        raise RetryableAgentError(f"{etype}: {text}", code="model_unavailable")
                    raise TerminalAgentError(f"{etype}: {text}", code="model_rejected")
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
