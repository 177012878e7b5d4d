"""What the agent asks a model and what it gets back, whichever Bedrock API carries it.

The agent builds a ``Call`` (system text, Converse-shaped messages, tools, a forced tool, a token
limit); a transport (``messages.py``: the Anthropic Messages API for Claude; ``converse.py``: the
Converse API for every other family) sends it *streamed* and fills an ``Answer`` as events arrive,
yielding text deltas on the way. Every model call is streamed: botocore's read timeout is per socket
read, so on a stream it bounds the *idle gap* between events, not the whole generation (a long plan
no longer times out while the model is still writing it).

Usage: an ``Answer`` holds the usage the stream reported (exact), or enough to estimate it when the
stream was cut off (the input the stream announced or the request's size; the output seen so far).
``usage_of`` returns the exact figures or an estimate marked ``estimated: 1``; a *cancelled* call is
estimated at its ceiling (the full ``max_tokens`` of output): closing a Bedrock stream is not known
to stop the billing (litellm#34147), so the generation is presumed to run to its limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# Counted per call and summed per job (``usage()``); cache reads and writes are billed apart from
# plain input (a read at about a tenth of the input price, a write at about 1.25 times it).
USAGE_KEYS = ("inputTokens", "outputTokens", "totalTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
CHARS_PER_TOKEN = 4  # for estimates (a cut-off stream's output, a request whose input was not announced)

# Stop reasons, named as Converse names them (the Messages API's are mapped onto these).
REFUSALS = ("content_filtered", "guardrail_intervened")
TRUNCATED = "max_tokens"
CONTEXT_EXCEEDED = "model_context_window_exceeded"
MALFORMED = ("malformed_model_output", "malformed_tool_use")


@dataclass(frozen=True)
class Call:
    """One model call: system prompt parts, Converse-shaped messages, optional tools."""

    system: list[str]
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    tools: list[dict[str, Any]] = field(default_factory=list)  # {"name", "description", "schema"}
    force_tool: str | None = None  # the tool the model must call (where the model takes that)
    cache: bool = False  # mark the stable prefix for prompt caching


@dataclass
class Answer:
    """What one streamed call said, filled as events arrive (so a cut-off call still shows what it got)."""

    parts: list[str] = field(default_factory=list)
    tool_uses: list[dict[str, Any]] = field(default_factory=list)  # {"toolUseId", "name", "input"}
    stop: str | None = None
    usage: dict[str, int] | None = None  # exact, once the stream reported it
    input_seen: dict[str, int] | None = None  # the input usage announced at the start (Messages API)
    output_seen: int | None = None  # output tokens reported so far (Messages API ``message_delta``)
    output_chars: int = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add_text(self, chunk: str) -> None:
        self.parts.append(chunk)
        self.output_chars += len(chunk)

    def message(self) -> dict[str, Any]:
        """The answer as a Converse-shaped assistant turn (for a repair turn)."""
        content: list[dict[str, Any]] = [{"text": self.text}] if self.text.strip() else []
        content += [{"toolUse": {**u, "input": u["input"] if u.get("input") is not None else {}}}
                    for u in self.tool_uses]
        return {"role": "assistant", "content": content or [{"text": "(no answer)"}]}


class Transport(Protocol):
    """One Bedrock API: sends a ``Call`` streamed, fills ``answer``, yields the text deltas."""

    name: str

    def stream(self, client: Any, model_id: str, call: Call, answer: Answer) -> Iterator[str]:
        """Send ``call``; yield text as it arrives; fill ``answer`` (stop reason, tool uses, usage)."""


def parse_tool_input(raw: str) -> Any:
    """A tool call's input, assembled from its deltas; None if it is not JSON (a malformed call)."""
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None


def empty_usage() -> dict[str, int]:
    return {k: 0 for k in USAGE_KEYS}


def with_total(usage: dict[str, int]) -> dict[str, int]:
    out = {k: int(usage.get(k, 0) or 0) for k in USAGE_KEYS if k != "totalTokens"}
    out["totalTokens"] = sum(out.values())
    return {k: out[k] for k in USAGE_KEYS}


def request_chars(call: Call) -> int:
    return len(json.dumps(call.messages)) + len(json.dumps(call.system)) + len(json.dumps(call.tools))


def usage_of(call: Call, answer: Answer, *, cancelled: bool = False) -> dict[str, int]:
    """The call's usage: exact if the stream reported it, else an estimate marked ``estimated: 1``.

    A cancelled call is estimated at its ceiling: the input, and ``max_tokens`` of output (or what
    was reported, if more), since the generation is presumed to go on and be billed after we close.
    """
    if answer.usage is not None and not cancelled:
        return with_total(answer.usage)
    base = dict(answer.input_seen) if answer.input_seen else {
        "inputTokens": -(-request_chars(call) // CHARS_PER_TOKEN)}
    seen = answer.usage.get("outputTokens", 0) if answer.usage else 0
    output = max(seen, answer.output_seen or 0, -(-answer.output_chars // CHARS_PER_TOKEN))
    if cancelled:
        output = max(output, call.max_tokens)
    return {**with_total({**base, "outputTokens": output}), "estimated": 1}
