"""Every model that is not Claude through the Converse API, streamed (``ConverseStream``).

Events: ``messageStart``; ``contentBlockStart`` (a tool call's id and name) and
``contentBlockDelta`` (``text``, or ``toolUse.input`` as a piece of JSON), ``contentBlockStop``;
``messageStop`` (the stop reason); ``metadata`` last (the usage, cache reads and writes included).

Two things only some models take, by AWS's documentation, and sent to no other (a model that does
not take them answers ``ValidationException``):

- ``toolResult.status`` (the Converse API reference's ToolResultBlock: "only supported by Anthropic
  Claude 3 and Amazon Nova models") -- on any other model a failed tool call's result is plain text;
- ``cachePoint`` (prompt caching: Claude and Amazon Nova).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from alfred_jobs.agents.bedrock.transport import Answer, Call, parse_tool_input

_CACHE_POINT = {"cachePoint": {"type": "default"}}
_PROFILE_PREFIXES = ("us", "eu", "apac", "global", "jp", "au", "ca", "us-gov")


def base_model(model_id: str) -> str:
    """The model an id, ARN or inference profile id names (``us.amazon.x`` -> ``amazon.x``)."""
    model = model_id.rsplit("/", 1)[-1]
    head, _, rest = model.partition(".")
    return rest if head in _PROFILE_PREFIXES and rest else model


def takes_tool_status(model_id: str) -> bool:
    return base_model(model_id).startswith(("anthropic.claude", "amazon.nova"))


def takes_cache_points(model_id: str) -> bool:
    return base_model(model_id).startswith(("anthropic.claude", "amazon.nova"))


def takes_forced_tool_choice(model_id: str) -> bool:
    """``toolChoice: {tool}``: Anthropic Claude 3 and later, Amazon Nova (the ToolChoice API reference)."""
    return base_model(model_id).startswith((
        "anthropic.claude-3", "anthropic.claude-sonnet", "anthropic.claude-haiku", "anthropic.claude-opus",
        "anthropic.claude-fable", "amazon.nova"))


def _without_status(block: dict[str, Any]) -> dict[str, Any]:
    if "toolResult" not in block:
        return block
    return {"toolResult": {k: v for k, v in block["toolResult"].items() if k != "status"}}


def request(model_id: str, call: Call) -> dict[str, Any]:
    """The ConverseStream request for ``call``."""
    status = takes_tool_status(model_id)
    messages = [{"role": m["role"], "content": [c if status else _without_status(c) for c in m["content"]]}
                for m in call.messages]
    system: list[dict[str, Any]] = [{"text": s} for s in call.system]
    cache = call.cache and takes_cache_points(model_id)
    out: dict[str, Any] = {"modelId": model_id, "messages": messages, "system": system,
                           "inferenceConfig": {"maxTokens": call.max_tokens, "temperature": call.temperature}}
    if call.tools:
        tools: list[dict[str, Any]] = [{"toolSpec": {"name": t["name"], "description": t["description"],
                                                     "inputSchema": {"json": t["schema"]}}} for t in call.tools]
        if cache:
            tools.append(_CACHE_POINT)
        out["toolConfig"] = {"tools": tools}
        if call.force_tool and takes_forced_tool_choice(model_id):
            out["toolConfig"]["toolChoice"] = {"tool": {"name": call.force_tool}}
    if cache:
        system.append(_CACHE_POINT)
        if len(messages) > 1:
            messages[-2] = {**messages[-2], "content": [*messages[-2]["content"], _CACHE_POINT]}
    return out


class ConverseTransport:
    """The Converse API, streamed."""

    name = "converse"

    def stream(self, client: Any, model_id: str, call: Call, answer: Answer) -> Iterator[str]:
        response = client.converse_stream(**request(model_id, call))
        stream = response["stream"]
        tools: dict[int, dict[str, Any]] = {}
        try:
            for event in stream:
                if "contentBlockStart" in event:
                    start = event["contentBlockStart"]
                    use = (start.get("start") or {}).get("toolUse")
                    if use:
                        tools[int(start.get("contentBlockIndex", 0))] = {**use, "raw": ""}
                elif "contentBlockDelta" in event:
                    body = event["contentBlockDelta"]
                    delta = body.get("delta") or {}
                    if delta.get("text"):
                        answer.add_text(delta["text"])
                        yield delta["text"]
                    elif "toolUse" in delta:
                        piece = str((delta["toolUse"] or {}).get("input") or "")
                        tools.setdefault(int(body.get("contentBlockIndex", 0)), {"raw": ""})["raw"] += piece
                        answer.output_chars += len(piece)
                    elif "reasoningContent" in delta:
                        answer.output_chars += len(str(delta["reasoningContent"].get("text") or ""))
                elif "contentBlockStop" in event:
                    use = tools.pop(int(event["contentBlockStop"].get("contentBlockIndex", 0)), None)
                    if use is not None:
                        answer.tool_uses.append({"toolUseId": use.get("toolUseId", ""), "name": use.get("name", ""),
                                                 "input": parse_tool_input(use["raw"])})
                elif "messageStop" in event:
                    answer.stop = str(event["messageStop"].get("stopReason") or "end_turn")
                elif "metadata" in event:
                    raw = event["metadata"].get("usage") or {}
                    answer.usage = {k: int(raw.get(k, 0) or 0) for k in (
                        "inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")}
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
