"""A local Amazon Bedrock Runtime that speaks the real wire formats, scriptable per test.

An HTTP server (one thread per connection) that answers what a ``bedrock-runtime`` client sends:

- ``POST /model/{modelId}/converse``: a JSON ``ConverseResponse``;
- ``POST /model/{modelId}/converse-stream``: ``application/vnd.amazon.eventstream``, chunked, each
  event one event-stream message (prelude with total and header lengths, prelude CRC32, headers
  ``:event-type`` / ``:message-type`` / ``:content-type``, JSON payload, message CRC32), so botocore
  parses it exactly as it parses Bedrock;
- ``POST /model/{modelId}/invoke-with-response-stream``: the Anthropic Messages API on Bedrock
  (``InvokeModelWithResponseStream``): event-stream ``chunk`` events, each carrying one Messages API
  event as base64 JSON bytes (``message_start``, ``content_block_start/delta/stop`` with
  ``text_delta``, ``input_json_delta`` and ``thinking_delta``, ``message_delta`` with the stop
  reason and usage, ``message_stop`` with ``amazon-bedrock-invocationMetrics``);
- errors as Bedrock's REST-JSON protocol sends them (status, ``x-amzn-ErrorType``, ``{"message"}``),
  and mid-stream errors as ``:message-type: exception`` messages (``throttlingException``, ...).

Point a real client at it (``endpoint_url=standin.url``, or ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``) and
queue what the next calls answer (``standin.converse(...)``; ``standin.stream(...)`` for both
streamed operations, in either wire format). A stream is a
list of steps: an event (``{"messageStart": {...}}``), ``Stall(seconds)`` (nothing is sent for that
long: a read timeout on the client), ``Reset()`` (the TCP connection is reset), ``Exception_(type,
message)`` (an exception message), or ``End()`` (the body ends cleanly, wherever the script is).

Before the script, the stand-in checks a request the way Bedrock does, with Bedrock's messages:

- a retired model id: ``ResourceNotFoundException`` (404, end of life);
- a model that needs an inference profile, called by its bare id: ``ValidationException``
  ("on-demand throughput isn't supported");
- ``toolChoice.tool`` / ``any`` on a model other than Anthropic Claude 3+ or Amazon Nova:
  ``ValidationException``;
- a blank text block, a first turn that is not the user's, two turns of one role in a row, a
  ``toolUse`` not answered by a ``toolResult`` for each of its ids in the next user turn:
  ``ValidationException``.

Prompt caching: a request's cache breakpoints (``cache_control`` on the Messages API, ``cachePoint``
on Converse) are remembered for ``cache_ttl`` seconds; a later request whose prefix up to a
breakpoint is the same reads it (``cache_read_input_tokens`` / ``cacheReadInputTokens``), the rest up
to its last breakpoint is written (``cache_creation_input_tokens`` / ``cacheWriteInputTokens``), and
a prefix shorter than ``cache_min_tokens`` is not cached (Claude Haiku 4.5: 4,096). Pacing: every
wait (``Answer.delay``, ``Stall``) is multiplied by ``time_scale``, so a test can play a minute-long
generation in a second against a read timeout scaled the same way.

And it honours ``inferenceConfig.maxTokens`` (``max_tokens``): an answer longer than that (a token is 4 characters
here) is cut there with ``stopReason: max_tokens``. Usage is computed the same way unless scripted.
Every request is recorded (``standin.requests``); a call with nothing scripted is answered with a
500 and recorded in ``standin.unexpected``.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

CHARS_PER_TOKEN = 4
CACHE_LOOKBACK = 20  # blocks before a breakpoint where Bedrock looks for an earlier cached prefix

# Bedrock's own words (as its API answers them).
END_OF_LIFE = ("This model version has reached the end of its life. Please refer to the AWS documentation "
               "for more details.")
NEEDS_PROFILE = ("Invocation of model ID {model} with on-demand throughput isn\u2019t supported. Retry your "
                 "request with the ID or ARN of an inference profile that contains this model.")
NO_TOOL_CHOICE = ("This model doesn't support the toolConfig.toolChoice.{kind} field. Remove "
                  "toolConfig.toolChoice.{kind} and try again.")
BLANK_TEXT = ("The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to "
              "the text field, and try again.")
MISSING_RESULTS = ("Expected toolResult blocks at messages.{i}.content for the following Ids: {ids}")
NO_TOOL_STATUS = ("This model doesn't support the toolResult.status field. Remove toolResult.status and "
                  "try again.")
NO_CACHE_POINT = "This model doesn't support prompt caching (cachePoint). Remove cachePoint and try again."
BAD_VERSION = "anthropic_version: Invalid value; expected bedrock-2023-05-31."

RETIRED = frozenset({
    "anthropic.claude-3-5-haiku-20241022-v1:0", "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "anthropic.claude-3-7-sonnet-20250219-v1:0", "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "anthropic.claude-v2", "anthropic.claude-v2:1", "anthropic.claude-instant-v1",
})
# Called by their bare id these answer "use an inference profile" (as Claude 4+ does in us-east-1).
PROFILE_ONLY_PREFIXES = ("anthropic.claude-sonnet-4", "anthropic.claude-haiku-4", "anthropic.claude-opus-4")


# ---- script steps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """Send nothing for ``seconds`` (longer than the client's read timeout: it gives up)."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Reset the TCP connection (RST) here, mid-body."""


@dataclass(frozen=True)
class End:
    """End the body cleanly here (the chunked body's last chunk), whatever the script says next."""


@dataclass(frozen=True)
class Exception_:
    """A mid-stream exception message, e.g. ``Exception_("throttlingException", "slow down")``."""

    type: str
    message: str = "error"


@dataclass(frozen=True)
class HttpError:
    """An error answer to the request itself (before any stream)."""

    code: str
    status: int
    message: str = ""


@dataclass
class Answer:
    """A model answer: ``content`` blocks (``{"text"}`` / ``{"toolUse"}``), its stop reason and usage.

    Served as a ``converse`` response or, to ``converse-stream``, as the events Bedrock sends for it
    (text in ``chunks``-sized deltas, a tool call as ``contentBlockStart`` + input deltas). ``steps``
    inserts stream steps (``Stall``, ``Reset``, ``Exception_``, ``End``, raw events) before the event
    of that index; ``drop`` leaves events out by name (``{"messageStop"}``, ``{"metadata"}``).
    """

    content: list[dict[str, Any]]
    stop: str = "end_turn"
    usage: dict[str, int] | None = None
    chunk: int = 8
    steps: dict[int, list[Any]] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    delay: float = 0.0  # between events
    parts: list[str] | None = None  # the text deltas, when streamed (one text block)
    thinking: str = ""  # a thinking block before the content (Messages API only)


def text(*parts: str, **kw: Any) -> Answer:
    """An answer made of text; each part one delta when streamed."""
    return Answer(content=[{"text": "".join(parts)}], parts=list(parts), **kw)


def tool_use(*calls: tuple[str, Any], **kw: Any) -> Answer:
    """An answer calling tools: ``(name, input)`` pairs, each with a fresh ``toolUseId``."""
    return Answer(content=[{"toolUse": {"toolUseId": f"tooluse_{uuid.uuid4().hex[:20]}", "name": n,
                                        "input": i}} for n, i in calls], stop="tool_use", **kw)


# ---- the wire format -------------------------------------------------------------------------


def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return bytes([len(n)]) + n + bytes([7]) + struct.pack(">H", len(v)) + v  # 7: string


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total, headers length), prelude CRC, headers, payload, CRC."""
    head = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(head) + len(payload) + 4, len(head))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event: dict[str, Any]) -> bytes:
    """``{"contentBlockDelta": {...}}`` as the message Bedrock sends for it."""
    ((name, payload),) = event.items()
    return frame({":event-type": name, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(payload).encode())


def exception_frame(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
                 json.dumps({"message": message}).encode())


# ---- the rules Bedrock applies ---------------------------------------------------------------


def tokens(chars: int) -> int:
    return max(1, math.ceil(chars / CHARS_PER_TOKEN)) if chars else 0


def _base(model_id: str) -> str:
    """The model an id or inference profile id names (``us.anthropic.x`` -> ``anthropic.x``)."""
    model = model_id.rsplit("/", 1)[-1]
    head, _, rest = model.partition(".")
    return rest if head in ("us", "eu", "apac", "global", "jp", "au", "ca", "us-gov") and rest else model


def forced_tool_choice_supported(model_id: str) -> bool:
    """ToolChoice ``any`` / ``tool``: Anthropic Claude 3 and later, Amazon Nova (the API reference)."""
    base = _base(model_id)
    return base.startswith(("anthropic.claude-3", "anthropic.claude-sonnet", "anthropic.claude-haiku",
                            "anthropic.claude-opus", "amazon.nova"))


def check_request(model_id: str, body: dict[str, Any]) -> HttpError | None:
    """What Bedrock would refuse, with its code, status and message; None if it would serve it."""
    if model_id in RETIRED:
        return HttpError("ResourceNotFoundException", 404, END_OF_LIFE)
    if model_id.startswith(PROFILE_ONLY_PREFIXES):
        return HttpError("ValidationException", 400, NEEDS_PROFILE.format(model=model_id))
    choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
    for kind in ("tool", "any"):
        if kind in choice and not forced_tool_choice_supported(model_id):
            return HttpError("ValidationException", 400, NO_TOOL_CHOICE.format(kind=kind))
    messages = body.get("messages") or []
    takes_extras = _base(model_id).startswith(("anthropic.claude", "amazon.nova"))
    for m in messages:
        for block in m.get("content") or []:
            if "status" in (block.get("toolResult") or {}) and not takes_extras:
                return HttpError("ValidationException", 400, NO_TOOL_STATUS)
    blocks = [*(body.get("system") or []), *((body.get("toolConfig") or {}).get("tools") or []),
              *(b for m in messages for b in m.get("content") or [])]
    if any("cachePoint" in b for b in blocks) and not takes_extras:
        return HttpError("ValidationException", 400, NO_CACHE_POINT)
    pending: list[str] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if i == 0 and role != "user":
            return HttpError("ValidationException", 400, "A conversation must start with a user message. "
                             "Try again with a conversation that starts with a user message.")
        if i and messages[i - 1].get("role") == role:
            return HttpError("ValidationException", 400, "A conversation must alternate between user and "
                             "assistant roles. Make sure the conversation alternates between user and "
                             "assistant roles and try again.")
        for j, block in enumerate(m.get("content") or []):
            if "text" in block and not str(block["text"]).strip():
                return HttpError("ValidationException", 400, BLANK_TEXT.format(i=i, j=j))
        if pending:
            answered = {b["toolResult"].get("toolUseId") for b in m.get("content") or [] if "toolResult" in b}
            missing = [t for t in pending if t not in answered]
            if missing:
                return HttpError("ValidationException", 400, MISSING_RESULTS.format(i=i, ids=", ".join(missing)))
        pending = [b["toolUse"].get("toolUseId") for b in m.get("content") or []
                   if "toolUse" in b] if role == "assistant" else []
    return None


def check_messages_request(model_id: str, body: dict[str, Any]) -> HttpError | None:
    """What Bedrock would refuse of a Messages API body (InvokeModel), as ``check_request`` does."""
    if model_id in RETIRED:
        return HttpError("ResourceNotFoundException", 404, END_OF_LIFE)
    if model_id.startswith(PROFILE_ONLY_PREFIXES):
        return HttpError("ValidationException", 400, NEEDS_PROFILE.format(model=model_id))
    if body.get("anthropic_version") != "bedrock-2023-05-31":
        return HttpError("ValidationException", 400, BAD_VERSION)
    if not isinstance(body.get("max_tokens"), int):
        return HttpError("ValidationException", 400, "max_tokens: Field required")
    messages = body.get("messages") or []
    pending: list[str] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if i == 0 and role != "user":
            return HttpError("ValidationException", 400, "messages: first message must use the \"user\" role")
        if i and messages[i - 1].get("role") == role:
            return HttpError("ValidationException", 400, "messages: roles must alternate between \"user\" and "
                             "\"assistant\"")
        for j, block in enumerate(m.get("content") or []):
            if block.get("type") == "text" and not str(block.get("text", "")).strip():
                return HttpError("ValidationException", 400,
                                 f"messages.{i}.content.{j}.text: text content blocks must be non-empty")
        if pending:
            answered = {b.get("tool_use_id") for b in m.get("content") or [] if b.get("type") == "tool_result"}
            missing = [t for t in pending if t not in answered]
            if missing:
                return HttpError("ValidationException", 400, f"messages.{i}: tool_use ids were found without "
                                 f"tool_result blocks immediately after: {', '.join(missing)}")
        pending = [b.get("id") for b in m.get("content") or []
                   if b.get("type") == "tool_use"] if role == "assistant" else []
    return None


def _segments(operation: str, body: dict[str, Any]) -> tuple[list[str], list[int]]:
    """A request's prompt as ordered pieces (tools, system, message blocks) and the indices of the
    pieces that end a cache breakpoint, in either wire format."""
    pieces: list[str] = []
    marks: list[int] = []
    if operation == "invoke-with-response-stream":
        blocks = [*(body.get("tools") or []), *(body.get("system") or []),
                  *({**b, "role": m.get("role")} for m in body.get("messages") or [] for b in m.get("content") or [])]
        for b in blocks:
            pieces.append(json.dumps({k: v for k, v in b.items() if k != "cache_control"}, sort_keys=True))
            if "cache_control" in b:
                marks.append(len(pieces) - 1)
        return pieces, marks
    blocks = [*((body.get("toolConfig") or {}).get("tools") or []), *(body.get("system") or []),
              *({**b, "role": m.get("role")} for m in body.get("messages") or [] for b in m.get("content") or [])]
    for b in blocks:
        if "cachePoint" in b:
            if pieces:
                marks.append(len(pieces) - 1)
            continue
        pieces.append(json.dumps(b, sort_keys=True))
    return pieces, marks


def _within(answer: Answer, max_tokens: int) -> Answer:
    """The answer cut at ``max_tokens`` (``stopReason: max_tokens``), as a model runs out of them."""
    budget = max_tokens * CHARS_PER_TOKEN
    out: list[dict[str, Any]] = []
    for block in answer.content:
        size = len(block["text"]) if "text" in block else len(json.dumps(block["toolUse"].get("input")))
        if size <= budget:
            out.append(block)
            budget -= size
            continue
        if "text" in block and budget:
            out.append({"text": block["text"][:budget]})
        # a tool call cut mid-input is not a tool call: Bedrock sends what text there was
        return Answer(content=out or [{"text": "{"}], stop="max_tokens", usage=answer.usage, chunk=answer.chunk,
                      steps=answer.steps, drop=answer.drop, delay=answer.delay, thinking=answer.thinking)
    return answer


def _output_chars(answer: Answer) -> int:
    return len(answer.thinking) + sum(len(b["text"]) if "text" in b else len(json.dumps(b["toolUse"].get("input")))
                                      for b in answer.content)


def _usage(body: dict[str, Any], answer: Answer, cached: tuple[int, int] = (0, 0),
           operation: str = "converse") -> dict[str, int]:
    """The call's usage (Converse's names): scripted, or counted 4 characters a token, cache included."""
    if answer.usage is not None:
        return answer.usage
    pieces, _ = _segments(operation, body)
    read, write = cached
    total = tokens(sum(len(p) for p in pieces))
    i, o = max(0, total - read - write), tokens(_output_chars(answer))
    return {"inputTokens": i, "outputTokens": o, "totalTokens": i + o + read + write,
            "cacheReadInputTokens": read, "cacheWriteInputTokens": write}


def stream_events(answer: Answer, usage: dict[str, int]) -> list[dict[str, Any]]:
    """The events of ``converse-stream`` for an answer, in Bedrock's order (metadata last)."""
    events: list[dict[str, Any]] = [{"messageStart": {"role": "assistant"}}]
    for index, block in enumerate(answer.content):
        if "text" in block:
            parts = answer.parts if len(answer.content) == 1 else None
            if not parts or "".join(parts) != block["text"]:
                size = answer.chunk or 8
                parts = [block["text"][k:k + size] for k in range(0, len(block["text"]), size)]
            events += [{"contentBlockDelta": {"contentBlockIndex": index, "delta": {"text": p}}} for p in parts]
        else:
            use = block["toolUse"]
            events.append({"contentBlockStart": {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}})
            raw = json.dumps(use.get("input"))
            events += [{"contentBlockDelta": {"contentBlockIndex": index,
                                              "delta": {"toolUse": {"input": raw[k:k + 40]}}}}
                       for k in range(0, len(raw), 40)]
        events.append({"contentBlockStop": {"contentBlockIndex": index}})
    events.append({"messageStop": {"stopReason": answer.stop}})
    events.append({"metadata": {"usage": usage, "metrics": {"latencyMs": 5}}})
    return [e for e in events if next(iter(e)) not in answer.drop]


_MESSAGES_STOPS = {"content_filtered": "refusal", "guardrail_intervened": "refusal"}


def messages_events(answer: Answer, usage: dict[str, int], model_id: str = "") -> list[dict[str, Any]]:
    """The Messages API events of ``invoke-with-response-stream`` for an answer, in Anthropic's order."""
    read, write = usage.get("cacheReadInputTokens", 0), usage.get("cacheWriteInputTokens", 0)
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": f"msg_bdrk_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model_id,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": usage.get("inputTokens", 0), "output_tokens": 1,
                  "cache_creation_input_tokens": write, "cache_read_input_tokens": read}}}]
    blocks = ([{"thinking": answer.thinking}] if answer.thinking else []) + list(answer.content)
    for index, block in enumerate(blocks):
        if "thinking" in block:
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "thinking", "thinking": ""}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": block["thinking"][k:k + 40]}}
                       for k in range(0, len(block["thinking"]), 40)]
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}})
        elif "text" in block:
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "text", "text": ""}})
            parts = answer.parts if len(answer.content) == 1 else None
            if not parts or "".join(parts) != block["text"]:
                size = answer.chunk or 8
                parts = [block["text"][k:k + size] for k in range(0, len(block["text"]), size)]
            events += [{"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}}
                       for p in parts]
        else:
            use = block["toolUse"]
            events.append({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": use["toolUseId"], "name": use["name"], "input": {}}})
            raw = json.dumps(use.get("input"))
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": raw[k:k + 40]}}
                       for k in range(0, len(raw), 40)]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": _MESSAGES_STOPS.get(answer.stop, answer.stop),
                                                      "stop_sequence": None},
                   "usage": {"output_tokens": usage.get("outputTokens", 0)}})
    events.append({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": usage.get("inputTokens", 0), "outputTokenCount": usage.get("outputTokens", 0),
        "invocationLatency": 5, "firstByteLatency": 2,
        "cacheReadInputTokenCount": read, "cacheWriteInputTokenCount": write}})
    # ``drop`` names Converse's events; the Messages API's end is dropped with them
    names = {"messageStop": "message_delta", "metadata": "message_stop"}
    dropped = {names.get(d, d) for d in answer.drop}
    return [e for e in events if e["type"] not in dropped]


def chunk_event(event: dict[str, Any]) -> dict[str, Any]:
    """A Messages API event as InvokeModelWithResponseStream wraps it: a ``chunk`` of base64 bytes."""
    return {"chunk": {"bytes": base64.b64encode(json.dumps(event).encode()).decode()}}


# ---- the server ------------------------------------------------------------------------------


@dataclass
class Request:
    operation: str  # "converse", "converse-stream" or "invoke-with-response-stream"
    model_id: str
    body: dict[str, Any]
    at: float


class BedrockStandIn:
    """The stand-in: ``with BedrockStandIn() as bedrock: client = bedrock.client(); bedrock.converse(...)``."""

    def __init__(self, region: str = "us-east-1", *, time_scale: float = 1.0, cache_min_tokens: int = 1024,
                 cache_ttl: float = 300.0) -> None:
        self.region = region
        self.time_scale = time_scale
        self.cache_min_tokens = cache_min_tokens
        self.cache_ttl = cache_ttl
        self.requests: list[Request] = []
        self.unexpected: list[Request] = []
        self.usages: list[dict[str, int]] = []  # what each served call reported, in order
        self._cache: dict[str, float] = {}  # a cached prefix (its pieces joined) -> when it expires
        self._script: dict[str, list[Answer | HttpError]] = {"converse": [], "stream": []}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                standin._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bedrock-standin", daemon=True)

    # -- life ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> BedrockStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> BedrockStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, *, read_timeout: float = 10, max_attempts: int = 1) -> Any:
        """A real ``bedrock-runtime`` client pointed here (dummy credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client("bedrock-runtime", region_name=self.region, endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(connect_timeout=2, read_timeout=read_timeout,
                                          retries={"mode": "standard", "total_max_attempts": max_attempts}))

    # -- scripting -------------------------------------------------------------------------

    def converse(self, *answers: Answer | HttpError) -> None:
        """What the next ``converse`` calls answer, in order."""
        with self._lock:
            self._script["converse"].extend(answers)

    def stream(self, *answers: Answer | HttpError) -> None:
        """What the next streamed calls answer, in order: ``converse-stream`` (Converse's events) or
        ``invoke-with-response-stream`` (the Messages API's), whichever the client calls."""
        with self._lock:
            self._script["stream"].extend(answers)

    def pending(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._script.values())

    def calls(self, operation: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if operation is None or r.operation == operation]

    # -- serving ---------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        parts = h.path.split("?")[0].strip("/").split("/")
        if len(parts) != 3 or parts[0] != "model" or parts[2] not in (
                "converse", "converse-stream", "invoke-with-response-stream"):
            self._error(h, HttpError("UnknownOperationException", 404, f"no route {h.path}"))
            return
        operation, model_id = parts[2], unquote(parts[1])
        body = json.loads(raw or b"{}")
        request = Request(operation, model_id, body, time.monotonic())
        with self._lock:
            self.requests.append(request)
        messages_api = operation == "invoke-with-response-stream"
        refused = check_messages_request(model_id, body) if messages_api else check_request(model_id, body)
        if refused is not None:
            self._error(h, refused)
            return
        with self._lock:
            queue = self._script["converse" if operation == "converse" else "stream"]
            scripted = queue.pop(0) if queue else None
            if scripted is None:
                self.unexpected.append(request)
        if scripted is None:
            self._error(h, HttpError("InternalServerException", 500, f"stand-in: nothing scripted for {operation}"))
            return
        if isinstance(scripted, HttpError):
            self._error(h, scripted)
            return
        limit = body.get("max_tokens") if messages_api else (body.get("inferenceConfig") or {}).get("maxTokens")
        answer = _within(scripted, int(limit or 4096))
        usage = _usage(body, answer, self._cached(operation, body), operation)
        with self._lock:
            self.usages.append(usage)
        if operation == "converse":
            self._json(h, 200, {"output": {"message": {"role": "assistant", "content": answer.content}},
                                "stopReason": answer.stop, "usage": usage, "metrics": {"latencyMs": 5}})
        elif messages_api:
            events = [chunk_event(e) for e in messages_events(answer, usage, model_id)]
            self._stream(h, answer, events)
        else:
            self._stream(h, answer, stream_events(answer, usage))

    def _cached(self, operation: str, body: dict[str, Any]) -> tuple[int, int]:
        """(tokens read from the cache, tokens written to it) for a request's breakpoints.

        As Bedrock does, a breakpoint hits on the longest cached prefix ending at any block boundary
        up to ``CACHE_LOOKBACK`` blocks before it (so the conversation cached by the previous turn
        is read though this turn's breakpoint sits further on); the rest up to the last breakpoint is
        written. A prefix shorter than ``cache_min_tokens`` is neither read nor written.
        """
        pieces, marks = _segments(operation, body)
        if not marks:
            return 0, 0
        now = time.monotonic()
        sizes = [len(x) for x in pieces]

        def prefix(end: int) -> tuple[str, int]:
            return "\n".join(pieces[:end + 1]), tokens(sum(sizes[:end + 1]))

        with self._lock:
            read = 0
            for m in marks:
                for end in range(m, max(-1, m - CACHE_LOOKBACK - 1), -1):
                    key, n = prefix(end)
                    if n >= self.cache_min_tokens and self._cache.get(key, 0) > now:
                        read = max(read, n)
                        self._cache[key] = now + self.cache_ttl  # a hit refreshes the entry
                        break
            written = [prefix(m) for m in marks if prefix(m)[1] >= self.cache_min_tokens]
            for key, _ in written:
                self._cache[key] = now + self.cache_ttl
            longest = written[-1][1] if written else 0
        return read, max(0, longest - read)

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _error(self, h: BaseHTTPRequestHandler, error: HttpError) -> None:
        self._json(h, error.status, {"message": error.message or error.code},
                   {"x-amzn-ErrorType": f"{error.code}:http://internal.amazon.com/coral/com.amazon.bedrock/"})

    def _stream(self, h: BaseHTTPRequestHandler, answer: Answer, events: list[dict[str, Any]]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/vnd.amazon.eventstream")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        h.end_headers()

        def chunk(data: bytes) -> None:
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        try:
            for step in self._steps(answer, events):
                if isinstance(step, Stall):
                    self._stop.wait(step.seconds * self.time_scale)
                elif isinstance(step, Reset):
                    h.wfile.flush()
                    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    h.connection.close()
                    h.close_connection = True
                    return
                elif isinstance(step, End):
                    break
                elif isinstance(step, Exception_):
                    chunk(exception_frame(step.type, step.message))
                    break  # Bedrock ends the stream after an exception message
                else:
                    if answer.delay:
                        self._stop.wait(answer.delay * self.time_scale)
                    chunk(event_frame(step))
            chunk(b"")  # the last chunk: the body ends here
        except OSError:
            h.close_connection = True  # the client went away (a cancel, a read timeout): fine

    @staticmethod
    def _steps(answer: Answer, events: list[dict[str, Any]]) -> Iterator[Any]:
        for i, event in enumerate(events):
            yield from answer.steps.get(i, [])
            yield event
        yield from answer.steps.get(-1, [])
