"""The Bedrock agent's Converse transport through the real runner, with botocore's Stubber on a real
client (no network). The model is Amazon Nova 2 Lite: Converse is the path for every family but
Claude (Claude takes the Messages API: tests/unit/test_bedrock_wire.py runs both on the wire).

Every call is ``converse_stream``, which returns an event stream, which the Stubber
cannot express (it validates the response as a plain structure): the stub answers with a valid
one-event structure and an ``after-call`` hook swaps in a real botocore ``EventStream`` over
encoded event-stream frames, so the agent parses exactly what it would get from Bedrock.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.eventstream import EventStream
from botocore.parsers import EventStreamJSONParser
from botocore.stub import ANY, Stubber

from alfred_jobs.adapters.memory import MemoryJobStore, memory_deps
from alfred_jobs.agents.bedrock import (
    DEFAULT_MODEL_ID,
    PLAN_TOOL,
    BedrockAgent,
    BedrockConfig,
    MemoryKitchenStore,
)
from alfred_jobs.domain.agent import AgentContext, Plan
from alfred_jobs.domain.models import ChatRequest, JobStatus
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.exceptions import RetryableAgentError, TerminalAgentError
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings

USER = "alice"
USAGE = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}
MODEL = "us.amazon.nova-2-lite-v1:0"


# ---- event-stream frames (what Bedrock sends on the wire) -----------------------------------


def _headers(pairs: dict[str, str]) -> bytes:
    out = b""
    for name, value in pairs.items():
        n, v = name.encode(), value.encode()
        out += bytes([len(n)]) + n + bytes([7]) + struct.pack(">H", len(v)) + v  # 7: string
    return out


def frame(event_type: str, payload: dict[str, Any], *, exception: bool = False) -> bytes:
    """One event-stream message: prelude, prelude CRC, headers, JSON payload, message CRC."""
    kind = {":message-type": "exception", ":exception-type": event_type} if exception else \
        {":message-type": "event", ":event-type": event_type}
    headers = _headers({**kind, ":content-type": "application/json"})
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(headers) + len(body) + 4, len(headers))
    msg = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return msg + struct.pack(">I", zlib.crc32(msg))


def text_frames(*chunks: str, usage: dict[str, int] | None = None) -> list[bytes]:
    """The frames of an answer made of ``chunks``."""
    out = [frame("messageStart", {"role": "assistant"})]
    out += [frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": c}}) for c in chunks]
    out += [frame("contentBlockStop", {"contentBlockIndex": 0}),
            frame("messageStop", {"stopReason": "end_turn"}),
            frame("metadata", {"usage": usage or USAGE, "metrics": {"latencyMs": 5}})]
    return out


def tool_frames(tool_input: Any, stop: str = "tool_use") -> list[bytes]:
    """The frames of a make_plan call, its input JSON in 16-character pieces."""
    raw = json.dumps(tool_input)
    return [frame("messageStart", {"role": "assistant"}),
            frame("contentBlockStart", {"contentBlockIndex": 0, "start": {
                "toolUse": {"toolUseId": "tu-1", "name": PLAN_TOOL}}}),
            *(frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": raw[k:k + 16]}}})
              for k in range(0, len(raw), 16)),
            frame("contentBlockStop", {"contentBlockIndex": 0}),
            frame("messageStop", {"stopReason": stop}),
            frame("metadata", {"usage": USAGE, "metrics": {"latencyMs": 5}})]


class RawStream:
    """Stands for the HTTP body: yields frames, may run a hook before each, records ``close``."""

    def __init__(self, frames: list[bytes], before: Any = None) -> None:
        self.frames = frames
        self.before = before
        self.sent = 0
        self.closed = False

    def stream(self) -> Iterator[bytes]:
        for i, f in enumerate(self.frames):
            if self.closed:
                return
            if self.before:
                self.before(i)
            self.sent += 1
            yield f

    def close(self) -> None:
        self.closed = True


# ---- the stubbed model -----------------------------------------------------------------------


class Model:
    """A real ``bedrock-runtime`` client with a Stubber; unexpected calls fail the call."""

    def __init__(self) -> None:
        self.client = boto3.client("bedrock-runtime", region_name="us-east-1")
        self.stubber = Stubber(self.client)
        self.streams: list[RawStream] = []
        self._pending: list[RawStream] = []
        self.client.meta.events.register("after-call.bedrock-runtime.ConverseStream", self._swap_stream)
        self.stubber.activate()

    def _swap_stream(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if "Error" in parsed:
            return  # a stubbed error: no stream
        raw = self._pending.pop(0)
        self.streams.append(raw)
        parsed["stream"] = EventStream(raw, model.output_shape.members["stream"], EventStreamJSONParser(),
                                       "ConverseStream")

    def plan(self, *steps: dict[str, Any]) -> None:
        """The next ``converse`` returns a make_plan call with ``steps``."""
        self.plan_input({"steps": list(steps)})

    def plan_input(self, tool_input: Any, stop: str = "tool_use") -> None:
        """The next call streams a make_plan call whose input arrives in pieces."""
        self.stream(tool_frames(tool_input, stop=stop), tools=True)

    def text(self, text: str) -> None:
        """The next call (a model step) streams ``text``."""
        self.stream(text_frames(text))

    def error(self, method: str, code: str, status: int) -> None:
        self.stubber.add_client_error(method, service_error_code=code, service_message=code,
                                      http_status_code=status)

    def stream(self, frames: list[bytes], before: Any = None, tools: bool = False) -> RawStream:
        """The next ``converse_stream`` streams ``frames``."""
        raw = RawStream(frames, before)
        self._pending.append(raw)
        self.stubber.add_response("converse_stream", {"stream": {"messageStart": {"role": "assistant"}}},
                                  {"modelId": MODEL, "messages": ANY, "system": ANY, "inferenceConfig": ANY,
                                   **({"toolConfig": ANY} if tools else {})})
        return raw

    def done(self) -> None:
        self.stubber.assert_no_pending_responses()


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        monkeypatch.delenv(name, raising=False)


class World:
    """In-memory deps, the Bedrock agent on a stubbed client, and the real runner."""

    def __init__(self, **settings: Any) -> None:
        base: dict[str, Any] = {"agent": "bedrock", "retry_base_seconds": 0, "cancel_poll_seconds": 0.05,
                                "delta_flush_seconds": 0.01, "bedrock_model_id": MODEL}
        self.deps: Deps = memory_deps(Settings(**{**base, **settings}))
        self.model = Model()
        self.kitchen = MemoryKitchenStore()
        self.agent = BedrockAgent.from_deps(self.deps, client=self.model.client, kitchen=self.kitchen)
        self.runner = JobRunner(self.deps, self.agent)
        self.service = JobService(self.deps)

    def submit(self, message: str) -> str:
        return self.service.submit(USER, ChatRequest(message=message), idempotency_key=None).job.job_id

    def run(self, job_id: str) -> Any:
        return self.runner.run(Delivery(job_id=job_id))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [e.public() for e in self.service.journal.read_all(job_id)]

    def job(self, job_id: str) -> Any:
        return self.deps.jobs.get(job_id)


def ctx(job_id: str = "job-1", cancelled: Any = lambda: False, **kw: Any) -> AgentContext:
    return AgentContext(job_id=job_id, user_id=USER, conversation_id="c1", message=kw.pop("message", "hi"),
                        history=kw.pop("history", []), attempt=1, step_outputs=kw.pop("step_outputs", {}),
                        cancelled=cancelled)


PANTRY_ADD = {"kind": "add_to_pantry", "label": "Add eggs to the pantry", "name": "Eggs", "quantity": 6}
CHOOSE = {"kind": "model", "label": "Choose a recipe", "prompt": "Pick one recipe that uses eggs."}


# ---- full jobs through the runner --------------------------------------------------------------


def test_full_job_completes_with_plan_steps_reply_and_usage() -> None:
    # GIVEN a model that plans two steps (a kitchen write and a model call), then streams a reply
    w = World()
    w.model.plan(PANTRY_ADD, CHOOSE)
    w.model.text("A frittata.")
    raw = w.model.stream(text_frames("Make ", "a frittata ", "tonight."))
    job_id = w.submit("I bought 6 eggs, what should I cook?")

    # WHEN a worker runs the job
    result = w.run(job_id)

    # THEN it completes with the streamed reply, every call was expected, the stream was closed
    assert result.outcome is Outcome.DONE and result.status is JobStatus.COMPLETE
    w.model.done()
    assert raw.closed
    events = w.events(job_id)
    types = [e["type"] for e in events]
    assert types[0] == "status" and types[-1] == "complete"
    plan = next(e for e in events if e["type"] == "plan")["data"]
    assert [s["label"] for s in plan["steps"]] == ["Add eggs to the pantry", "Choose a recipe"]
    done = {e["data"]["index"]: e["data"]["output"] for e in events
            if e["type"] == "step" and e["data"]["status"] == "completed"}
    assert done[1] == {"item": {"name": "eggs", "quantity": 6.0, "unit": ""}}
    assert done[2] == {"text": "A frittata.", "usage": {**USAGE, "cacheReadInputTokens": 0,
                                                         "cacheWriteInputTokens": 0}}
    assert "".join(e["data"]["text"] for e in events if e["type"] == "delta") == "Make a frittata tonight."
    output = events[-1]["data"]["output"]
    assert output["reply"] == "Make a frittata tonight."
    # think + model step + reply, each USAGE
    assert output["usage"] == {**{k: 3 * v for k, v in USAGE.items()}, "cacheReadInputTokens": 0,
                               "cacheWriteInputTokens": 0}
    assert w.kitchen.items(USER, w.job(job_id).conversation_id, "pantry")[0]["quantity"] == 6.0
    # AND each event that made a call carries that call's usage, in the events' snake_case (issue 27)
    one = {"input_tokens": USAGE["inputTokens"], "output_tokens": USAGE["outputTokens"],
           "cache_read_tokens": 0, "cache_write_tokens": 0, "model": MODEL}
    assert plan["usage"] == one
    steps = [e["data"] for e in events if e["type"] == "step" and e["data"]["status"] == "completed"]
    assert [s.get("usage") for s in steps] == [None, one]  # the kitchen step made no call
    assert events[-1]["data"]["usage"] == one
    # AND the turn is committed to the conversation
    msgs = w.deps.conversations.messages(USER, w.job(job_id).conversation_id, 10)
    assert [m["role"] for m in msgs] == ["user", "assistant"]


class WorkerDied(BaseException):
    """Stands for the process dying (not an error the runner could catch)."""


class CrashOnceKitchen(MemoryKitchenStore):
    """Applies the first pantry write, then the worker dies before the step is checkpointed."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    def add_quantity(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = super().add_quantity(*args, **kwargs)
        if not self.crashed:
            self.crashed = True
            raise WorkerDied()
        return out


def test_resumed_job_does_not_call_the_model_again_for_completed_steps() -> None:
    # GIVEN a job whose worker died inside step 2 (after step 2's write), with step 1 a model call
    w = World(lease_seconds=0.3)
    w.kitchen = CrashOnceKitchen()
    w.agent = BedrockAgent.from_deps(w.deps, client=w.model.client, kitchen=w.kitchen)
    w.runner = JobRunner(w.deps, w.agent)
    w.model.plan(CHOOSE, PANTRY_ADD)
    w.model.text("An omelette.")
    job_id = w.submit("Eggs again?")
    with pytest.raises(WorkerDied):
        w.run(job_id)
    w.model.done()  # think and step 1 were called once each

    # WHEN the lease runs out and another delivery resumes the job, stubbed for the reply only
    jobs = w.deps.jobs
    assert isinstance(jobs, MemoryJobStore)
    jobs.items[job_id] = replace(jobs.items[job_id], lease_expires=0.0)  # the dead worker's lease ran out
    w.model.stream(text_frames("Omelette it is."))
    result = w.run(job_id)

    # THEN the job completes without calling think or step 1 again (the Stubber has nothing else)
    assert result.status is JobStatus.COMPLETE
    w.model.done()
    events = w.events(job_id)
    assert any(e["type"] == "resumed" for e in events)
    assert [e["type"] for e in events].count("plan") == 1
    # step 2 was cut off mid-way and ran again; its write applied once (idempotency key)
    assert w.deps.agent_data.step_effects(job_id) == {1: 1, 2: 2}
    assert w.kitchen.items(USER, w.job(job_id).conversation_id, "pantry")[0]["quantity"] == 6.0
    assert events[-1]["data"]["output"]["reply"] == "Omelette it is."


def test_throttled_call_is_retried_by_the_runner() -> None:
    # GIVEN a model that throttles the first think
    w = World()
    w.model.error("converse_stream", "ThrottlingException", 429)
    job_id = w.submit("What can I cook?")

    # WHEN the worker runs it
    result = w.run(job_id)

    # THEN the runner schedules a retry and the job waits, pending, with the error visible
    assert result.outcome is Outcome.RETRY and result.reason == "model_throttled"
    assert w.job(job_id).status is JobStatus.PENDING
    pending = w.events(job_id)[-1]
    assert pending["data"]["status"] == "pending" and pending["data"]["error"]["code"] == "model_throttled"

    # AND the next delivery completes it
    w.model.plan()
    w.model.stream(text_frames("Pasta."))
    assert w.run(job_id).status is JobStatus.COMPLETE
    w.model.done()
    assert w.job(job_id).attempts == 2


def test_throttled_stream_mid_reply_is_retryable() -> None:
    # GIVEN a reply stream that fails with a throttling event after its first chunk
    w = World()
    w.model.plan()
    w.model.stream([frame("messageStart", {"role": "assistant"}),
                    frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Pas"}}),
                    frame("throttlingException", {"message": "slow down"}, exception=True)])
    job_id = w.submit("Dinner?")
    # WHEN it runs THEN the attempt is retried, and the next one replaces the partial text
    assert w.run(job_id).outcome is Outcome.RETRY
    w.model.stream(text_frames("Pasta."))
    assert w.run(job_id).status is JobStatus.COMPLETE
    w.model.done()
    assert w.events(job_id)[-1]["data"]["output"]["reply"] == "Pasta."


def test_cancel_stops_the_reply_stream_within_a_second() -> None:
    # GIVEN a slow reply stream (50 ms a chunk, 200 chunks = 10 s) and a cancel after chunk 5
    w = World()
    w.model.plan()
    cancelled_at: list[float] = []
    job_id = w.submit("Tell me a long story")

    def before(i: int) -> None:
        if i == 6:
            w.service.cancel(USER, job_id)
            cancelled_at.append(time.monotonic())
        time.sleep(0.05)

    raw = w.model.stream(text_frames(*(f"word{i} " for i in range(200))), before=before)

    # WHEN the job runs
    result = w.run(job_id)
    stopped_at = time.monotonic()

    # THEN it ends cancelled within about a second, the HTTP stream closed, most chunks never read
    assert result.status is JobStatus.CANCELLED
    assert stopped_at - cancelled_at[0] < 1.0
    assert raw.closed and raw.sent < 40
    assert w.events(job_id)[-1]["type"] == "cancelled"


def test_malformed_plan_is_repaired_once_then_fails_terminally() -> None:
    # GIVEN a model that answers make_plan with an unknown step kind, twice
    w = World()
    w.model.plan({"kind": "teleport", "label": "Go to Paris"})
    w.model.plan_input({"steps": "all of them"})
    job_id = w.submit("Plan my dinner")

    # WHEN the job runs
    result = w.run(job_id)

    # THEN (as docs/agents.md says) it fails at once, not retried: code bad_plan, message dead-lettered
    assert result.outcome is Outcome.DONE and result.status is JobStatus.FAILED
    w.model.done()  # exactly two think calls: the plan and one repair turn
    failed = w.events(job_id)[-1]
    assert failed["type"] == "failed" and failed["data"]["error"]["code"] == "bad_plan"
    assert w.job(job_id).error["code"] == "bad_plan"
    assert [j for j, _ in w.deps.queue.dead] == [job_id]


def test_malformed_plan_repaired_by_the_model_runs() -> None:
    w = World()
    w.model.plan({"kind": "model", "label": ""})  # empty label: invalid
    w.model.plan({"kind": "list_pantry", "label": "Look in the pantry"})
    w.model.stream(text_frames("Your pantry is empty."))
    job_id = w.submit("What do I have?")
    assert w.run(job_id).status is JobStatus.COMPLETE
    w.model.done()
    assert w.events(job_id)[-1]["data"]["output"]["reply"] == "Your pantry is empty."


# ---- the agent on its own ------------------------------------------------------------------------


def _agent(model: Model, **config: Any) -> BedrockAgent:
    deps = memory_deps(Settings())
    return BedrockAgent(config=BedrockConfig(**{"model_id": MODEL, **config}), agent_data=deps.agent_data,
                        kitchen=MemoryKitchenStore(), _client=model.client)


@pytest.mark.parametrize(("code", "status", "retryable"), [
    ("ThrottlingException", 429, True),
    ("ServiceUnavailableException", 503, True),
    ("ModelTimeoutException", 408, True),
    ("InternalServerException", 500, True),
    ("ValidationException", 400, False),
    ("AccessDeniedException", 403, False),
    ("ResourceNotFoundException", 404, False),
])
def test_bedrock_errors_map_to_retryable_or_terminal(code: str, status: int, retryable: bool) -> None:
    model = Model()
    model.error("converse_stream", code, status)
    expected = RetryableAgentError if retryable else TerminalAgentError
    with pytest.raises(expected) as info:
        _agent(model).think(ctx())
    assert info.value.retryable is retryable


def test_too_many_steps_and_truncated_plans_are_terminal() -> None:
    model = Model()
    model.plan(*[{"kind": "list_pantry", "label": f"look {i}"} for i in range(3)])
    model.plan(*[{"kind": "list_pantry", "label": f"look {i}"} for i in range(3)])
    with pytest.raises(TerminalAgentError) as info:
        _agent(model, max_steps=2).think(ctx())
    assert info.value.code == "bad_plan"

    model.stream([frame("messageStart", {"role": "assistant"}),
                  frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "{\"steps\": ["}}),
                  frame("contentBlockStop", {"contentBlockIndex": 0}),
                  frame("messageStop", {"stopReason": "max_tokens"}),
                  frame("metadata", {"usage": USAGE, "metrics": {"latencyMs": 5}})], tools=True)
    with pytest.raises(TerminalAgentError) as info:
        _agent(model).think(ctx())
    assert info.value.code == "plan_truncated"


def test_reply_stops_and_closes_the_stream_when_cancelled() -> None:
    model = Model()
    flag = threading.Event()
    raw = model.stream(text_frames(*(f"w{i} " for i in range(50))),
                       before=lambda i: flag.set() if i == 3 else None)
    agent = _agent(model)
    chunks = list(agent.reply(Plan(steps=[]), ctx(cancelled=flag.is_set)))
    assert chunks == ["w0 ", "w1 "]
    assert raw.closed and raw.sent <= 4


def test_reply_closes_the_stream_when_the_consumer_stops() -> None:
    model = Model()
    raw = model.stream(text_frames("a", "b", "c"))
    gen = _agent(model).reply(Plan(steps=[]), ctx())
    assert next(gen) == "a"
    gen.close()
    assert raw.closed


def test_history_is_shaped_for_converse() -> None:
    # GIVEN history that starts with an assistant turn and repeats a role
    model = Model()
    history = [{"role": "assistant", "text": "hello"}, {"role": "user", "text": "a"},
               {"role": "user", "text": "b"}, {"role": "assistant", "text": "c"}]
    expected = [{"role": "user", "content": [{"text": "a\n\nb"}]},
                {"role": "assistant", "content": [{"text": "c"}, {"cachePoint": {"type": "default"}}]},
                {"role": "user", "content": [{"text": "d"}]}]
    model.stubber.add_response("converse_stream", {"stream": {"messageStart": {"role": "assistant"}}},
                               {"modelId": MODEL, "messages": expected, "system": ANY,
                                "inferenceConfig": ANY})
    model._pending.append(RawStream(text_frames("ok")))
    assert "".join(_agent(model).reply(Plan(steps=[]), ctx(message="d", history=history))) == "ok"
    model.done()


def test_config_reads_settings_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    cfg = BedrockConfig.from_settings(Settings())
    assert cfg.model_id == DEFAULT_MODEL_ID
    assert cfg.region == "eu-west-1"
    assert cfg.max_steps >= 1 and cfg.max_tokens > 0


def test_client_is_built_lazily_from_settings() -> None:
    deps = memory_deps(Settings(agent="bedrock"))
    agent = BedrockAgent.from_deps(deps)
    assert agent._client is None
    assert agent.client.meta.region_name == "us-east-1"
    assert agent.client.meta.service_model.service_name == "bedrock-runtime"


def test_dynamo_kitchen_applies_each_write_once_per_key() -> None:
    # In-process moto (no network): the ADD + NOT contains(applied, :key) condition really holds.
    from moto import mock_aws

    from alfred_jobs.agents.bedrock import DynamoKitchenStore

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName="agent-data", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}])
        k = DynamoKitchenStore("agent-data", client=ddb)
        assert k.add_quantity(USER, "c1", "Eggs", 6, "pcs", "job:1", 2_000_000_000)["quantity"] == 6.0
        # the same step run again (cut off after its write): no change
        assert k.add_quantity(USER, "c1", "Eggs", 6, "pcs", "job:1", 2_000_000_000)["quantity"] == 6.0
        assert k.add_quantity(USER, "c1", "eggs", -2, "", "job:2", 2_000_000_000) == \
            {"name": "eggs", "quantity": 4.0, "unit": "pcs"}
        k.put_recipe(USER, "c1", {"title": "Frittata", "ingredients": ["eggs"], "instructions": "Bake."},
                     "job:3", 2_000_000_000)
        assert k.items(USER, "c1", "pantry") == [{"name": "eggs", "quantity": 4.0, "unit": "pcs"}]
        assert [r["title"] for r in k.items(USER, "c1", "recipe")] == ["Frittata"]
        assert k.items(USER, "other", "pantry") == []


def test_the_model_may_ask_the_user_before_a_destructive_step() -> None:
    # GIVEN a plan whose first step asks (the ask_user tool) before removing eggs from the pantry
    w = World()
    ask = {"kind": "ask_user", "label": "Check with you", "prompt": "Use 2 of your eggs?"}
    remove = {"kind": "remove_from_pantry", "label": "Take 2 eggs", "name": "Eggs", "quantity": 2}
    w.kitchen.add_quantity(USER, "c1", "eggs", 6, "", "seed", 2_000_000_000)
    w.model.plan(ask, remove)
    w.model.stream(text_frames("Omelette it is."))
    job_id = w.service.submit(USER, ChatRequest(message="omelette?", conversation_id="c1"), None).job.job_id
    # WHEN it runs: the job asks and waits, holding nothing
    assert w.run(job_id).status is JobStatus.WAITING
    question = w.events(job_id)[-1]
    assert question["type"] == "input_required" and question["data"]["prompt"] == "Use 2 of your eggs?"
    assert w.kitchen.items(USER, "c1", "pantry")[0]["quantity"] == 6.0, "nothing removed before the answer"
    # AND the user says yes: it resumes from its checkpoint (no second plan) and removes them once
    w.service.answer(USER, job_id, question["data"]["input_id"], True)
    assert w.run(job_id).status is JobStatus.COMPLETE
    w.model.done()
    done = {e["data"]["index"]: e["data"]["output"] for e in w.events(job_id)
            if e["type"] == "step" and e["data"]["status"] == "completed"}
    assert done[1] == {"question": "Use 2 of your eggs?", "answer": True}
    assert w.kitchen.items(USER, "c1", "pantry")[0]["quantity"] == 4.0
