"""The Bedrock agent against a local Bedrock that speaks the real wire formats (issue 19).

``alfred_tools.bedrock_standin`` answers a real ``bedrock-runtime`` client over HTTP: Converse as
JSON, ConverseStream as ``application/vnd.amazon.eventstream`` frames (CRCs and all), errors as
Bedrock sends them; it stalls, resets, ends streams early and checks requests the way Bedrock does
(retired models, bare ids that need an inference profile, toolChoice on models without it, blank
text, unanswered tool calls, maxTokens). The jobs run through the real runner on in-memory ports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from alfred_jobs.adapters.memory import MemoryJobStore, memory_deps
from alfred_jobs.agents.bedrock import (
    CLIENT_ATTEMPTS,
    DEFAULT_MODEL_ID,
    PLAN_TOOL,
    TRUNCATED_NOTE,
    BedrockAgent,
    BedrockConfig,
    DynamoKitchenStore,
    KitchenStore,
    MemoryKitchenStore,
    build_client,
)
from alfred_jobs.domain.agent import AgentContext, Plan
from alfred_jobs.domain.models import ChatRequest, JobStatus
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.exceptions import TerminalAgentError
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings
from alfred_tools.bedrock_standin import (
    RETIRED,
    Answer,
    BedrockStandIn,
    End,
    Exception_,
    HttpError,
    Reset,
    Stall,
    text,
    tool_use,
)
from alfred_tools.bootstrap import load_template

USER = "alice"
MODEL = "us.anthropic.claude-sonnet-4-6"  # pinned: only the defaults test runs on the defaults
ROOT = Path(__file__).resolve().parents[2]
U_THINK = {"inputTokens": 100, "outputTokens": 20, "totalTokens": 120}
U_REPLY = {"inputTokens": 200, "outputTokens": 40, "totalTokens": 240}


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bedrock() -> Iterator[BedrockStandIn]:
    with BedrockStandIn() as standin:
        yield standin


class World:
    """In-memory deps, the real runner, the Bedrock agent on a real client pointed at the stand-in."""

    def __init__(self, bedrock: BedrockStandIn, read_timeout: float = 5, **settings: Any) -> None:
        base: dict[str, Any] = {"agent": "bedrock", "retry_base_seconds": 0, "cancel_poll_seconds": 0.05,
                                "delta_flush_seconds": 0.01, "bedrock_model_id": MODEL}
        self.bedrock = bedrock
        self.read_timeout = read_timeout
        self.deps: Deps = memory_deps(Settings(**{**base, **settings}))
        self.kitchen = MemoryKitchenStore()
        self.service = JobService(self.deps)
        self.agent, self.runner = self.process()

    def process(self) -> tuple[BedrockAgent, JobRunner]:
        """A fresh worker process: a new agent and runner on the same stores."""
        agent = BedrockAgent.from_deps(self.deps, client=self.bedrock.client(read_timeout=self.read_timeout),
                                       kitchen=self.kitchen)
        return agent, JobRunner(self.deps, agent)

    def submit(self, message: str, conversation_id: str | None = None) -> str:
        request = ChatRequest(message=message, conversation_id=conversation_id)
        return self.service.submit(USER, request, idempotency_key=None).job.job_id

    def run(self, job_id: str, runner: JobRunner | None = None) -> Any:
        return (runner or self.runner).run(Delivery(job_id=job_id))

    def runner_ctx(self, job_id: str) -> AgentContext:
        """Enough of the job's context to find its usage records."""
        job = self.deps.jobs.get(job_id)
        assert job is not None
        return AgentContext(job_id=job_id, user_id=USER, conversation_id=job.conversation_id, message="",
                            history=[], attempt=1, step_outputs={}, cancelled=lambda: False,
                            created_at=job.created_at)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [e.public() for e in self.service.journal.read_all(job_id)]

    def last(self, job_id: str) -> dict[str, Any]:
        return self.events(job_id)[-1]


def plan(*steps: dict[str, Any], usage: dict[str, int] | None = None) -> Answer:
    return tool_use((PLAN_TOOL, {"steps": list(steps)}), usage=usage)


# ---- 1. the default model, and a model that cannot be used ------------------------------------


def test_the_default_model_is_a_current_claude_inference_profile_and_runs_a_job(bedrock: BedrockStandIn) -> None:
    # GIVEN the defaults (settings and agent agree)
    assert Settings().bedrock_model_id == DEFAULT_MODEL_ID
    assert DEFAULT_MODEL_ID not in RETIRED
    assert DEFAULT_MODEL_ID.split(".", 1)[0] in ("us", "eu", "apac", "global", "jp", "au")
    assert BedrockConfig().forced_tool_choice
    # WHEN a job runs on them against Bedrock's rules
    w = World(bedrock, bedrock_model_id=Settings().bedrock_model_id)
    bedrock.stream(plan())
    bedrock.stream(text("Hello ", "there."))
    job_id = w.submit("hi")
    # THEN it completes (3.5 Haiku, the old default, is past its end of life: every job failed)
    assert w.run(job_id).status is JobStatus.COMPLETE
    assert {r.model_id for r in bedrock.requests} == {DEFAULT_MODEL_ID}
    assert bedrock.unexpected == []


@pytest.mark.parametrize(("model", "says"), [
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "end of its life"),
    ("anthropic.claude-sonnet-4-6", "inference profile"),
])
def test_a_model_that_cannot_be_used_fails_the_first_job_saying_which_and_what_to_do(
        bedrock: BedrockStandIn, model: str, says: str) -> None:
    w = World(bedrock, bedrock_model_id=model)
    job_id = w.submit("hi")
    result = w.run(job_id)
    assert result.status is JobStatus.FAILED  # terminal: at once, no retries with backoff
    error = w.last(job_id)["data"]["error"]
    assert error["code"] == "model_not_available"
    assert model in error["message"] and says in error["message"]
    assert "ALFRED_BEDROCK_MODEL_ID" in error["message"] and "BedrockModelId" in error["message"]
    # AND the start-up check says the same before any job
    with pytest.raises(TerminalAgentError) as info:
        w.agent.check_model()
    assert info.value.code == "model_not_available"


def test_the_model_check_passes_on_a_usable_model(bedrock: BedrockStandIn) -> None:
    w = World(bedrock)
    bedrock.stream(text("p"))
    w.agent.check_model()
    assert bedrock.requests[-1].body["max_tokens"] == 1
    assert bedrock.requests[-1].operation == "invoke-with-response-stream"


# ---- 2. forced tool choice only where Bedrock supports it ---------------------------------------


def test_a_model_without_forced_tool_choice_plans_with_auto(bedrock: BedrockStandIn) -> None:
    w = World(bedrock, bedrock_model_id="mistral.mistral-large-2407-v1:0")
    bedrock.stream(plan({"kind": "list_pantry", "label": "Look"}))
    bedrock.stream(text("Empty."))
    job_id = w.submit("What do I have?")
    assert w.run(job_id).status is JobStatus.COMPLETE
    think = bedrock.calls("converse-stream")[0].body["toolConfig"]
    assert "toolChoice" not in think and think["tools"][0]["toolSpec"]["name"] == PLAN_TOOL


def test_claude_is_forced_to_call_make_plan(bedrock: BedrockStandIn) -> None:
    w = World(bedrock)
    bedrock.stream(plan())
    bedrock.stream(text("Hi."))
    assert w.run(w.submit("hi")).status is JobStatus.COMPLETE
    think = bedrock.calls("invoke-with-response-stream")[0].body
    assert think["tool_choice"] == {"type": "tool", "name": PLAN_TOOL}
    assert think["anthropic_version"] == "bedrock-2023-05-31"


# ---- 3. one pantry contract for both stores -------------------------------------------------------


@pytest.fixture(params=["memory", "dynamodb"])
def kitchen(request: pytest.FixtureRequest) -> Iterator[KitchenStore]:
    if request.param == "memory":
        yield MemoryKitchenStore()
        return
    from moto import mock_aws

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName="agent-data", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}])
        yield DynamoKitchenStore("agent-data", client=ddb)


EXP = 2_000_000_000


def test_kitchen_pantry_floors_at_zero(kitchen: KitchenStore) -> None:
    assert kitchen.add_quantity(USER, "c1", "Flour", 4, "kg", "j:1", EXP)["quantity"] == 4.0
    assert kitchen.add_quantity(USER, "c1", "flour", -10, "", "j:2", EXP)["quantity"] == 0.0
    assert kitchen.add_quantity(USER, "c1", "flour", 6, "", "j:3", EXP) == {"name": "flour", "quantity": 6.0,
                                                                            "unit": "kg"}
    assert kitchen.items(USER, "c1", "pantry") == [{"name": "flour", "quantity": 6.0, "unit": "kg"}]


def test_kitchen_applies_each_pantry_write_once_per_key(kitchen: KitchenStore) -> None:
    kitchen.add_quantity(USER, "c1", "Eggs", 6, "", "j:1", EXP)
    kitchen.add_quantity(USER, "c1", "eggs", -4, "", "j:2", EXP)
    assert kitchen.add_quantity(USER, "c1", "eggs", -4, "", "j:2", EXP)["quantity"] == 2.0  # run again
    assert kitchen.add_quantity(USER, "c1", "Eggs", 6, "", "j:1", EXP)["quantity"] == 2.0
    assert kitchen.items(USER, "c2", "pantry") == []


def test_kitchen_recipe_step_run_again_does_not_overwrite_a_newer_save(kitchen: KitchenStore) -> None:
    old = {"title": "Frittata", "ingredients": ["eggs"], "instructions": "Bake."}
    new = {"title": "Frittata", "ingredients": ["eggs", "feta"], "instructions": "Bake with feta."}
    kitchen.put_recipe(USER, "c1", old, "job-a:1", EXP)
    kitchen.put_recipe(USER, "c1", new, "job-b:1", EXP)
    kitchen.put_recipe(USER, "c1", old, "job-a:1", EXP)  # job a's step, cut off after its write, runs again
    assert kitchen.items(USER, "c1", "recipe") == [new]


# ---- 4. stream failures ----------------------------------------------------------------------


def _reply_fails(bedrock: BedrockStandIn, w: World, answer: Answer) -> tuple[str, Any]:
    bedrock.stream(plan())
    bedrock.stream(answer)
    job_id = w.submit("Dinner?")
    return job_id, w.run(job_id)


def test_a_stall_past_the_read_timeout_is_retryable_model_unavailable(bedrock: BedrockStandIn) -> None:
    w = World(bedrock, read_timeout=0.5)
    t0 = time.monotonic()
    job_id, result = _reply_fails(bedrock, w, Answer(content=[{"text": "Pasta with peas."}],
                                                      steps={2: [Stall(60)]}))
    # It gave up at the read timeout, not at the stall's end (a minute): a wide margin for a busy machine.
    assert time.monotonic() - t0 < 30
    assert result.outcome is Outcome.RETRY and result.reason == "model_unavailable"  # not agent_crashed
    assert "ReadTimeoutError" in w.last(job_id)["data"]["error"]["message"]
    bedrock.stream(text("Pasta."))
    assert w.run(job_id).status is JobStatus.COMPLETE


def test_a_connection_reset_mid_stream_is_retryable_model_unavailable(bedrock: BedrockStandIn) -> None:
    w = World(bedrock)
    job_id, result = _reply_fails(bedrock, w, Answer(content=[{"text": "Pasta with peas."}],
                                                      steps={2: [Reset()]}))
    assert result.outcome is Outcome.RETRY and result.reason == "model_unavailable"
    assert "ProtocolError" in w.last(job_id)["data"]["error"]["message"]


def test_a_stream_that_ends_without_message_stop_is_not_a_complete_reply(bedrock: BedrockStandIn) -> None:
    w = World(bedrock)
    job_id, result = _reply_fails(bedrock, w, Answer(content=[{"text": "Pasta with pe"}], steps={3: [End()]}))
    assert result.outcome is Outcome.RETRY and result.reason == "model_unavailable"
    bedrock.stream(text("Pasta with peas."))
    assert w.run(job_id).status is JobStatus.COMPLETE
    assert w.last(job_id)["data"]["output"]["reply"] == "Pasta with peas."


def test_a_reply_stopped_by_max_tokens_says_it_was_cut_off(bedrock: BedrockStandIn) -> None:
    w = World(bedrock, bedrock_max_tokens=5)  # 20 characters here
    bedrock.stream(plan())
    bedrock.stream(text("Cook the pasta, then add the peas and the cream."))
    job_id = w.submit("Dinner?")
    assert w.run(job_id).status is JobStatus.COMPLETE
    reply = w.last(job_id)["data"]["output"]["reply"]
    assert reply == "Cook the pasta, then" + TRUNCATED_NOTE


@pytest.mark.parametrize(("event", "outcome", "code"), [
    ("throttlingException", Outcome.RETRY, "model_throttled"),
    ("modelStreamErrorException", Outcome.RETRY, "model_unavailable"),
    ("internalServerException", Outcome.RETRY, "model_unavailable"),
    ("serviceUnavailableException", Outcome.RETRY, "model_unavailable"),
    ("validationException", Outcome.DONE, "model_rejected"),
])
def test_error_events_mid_stream_map_like_errors(bedrock: BedrockStandIn, event: str, outcome: Outcome,
                                                 code: str) -> None:
    w = World(bedrock)
    job_id, result = _reply_fails(bedrock, w, Answer(content=[{"text": "Pasta with peas."}],
                                                      steps={2: [Exception_(event, "boom")]}))
    assert result.outcome is outcome
    assert w.last(job_id)["data"]["error"]["code"] == code


def test_two_tool_calls_in_one_answer_are_both_answered_in_the_repair_turn(bedrock: BedrockStandIn) -> None:
    # GIVEN an answer with two make_plan calls (Bedrock wants a toolResult for each toolUseId)
    w = World(bedrock)
    bedrock.stream(tool_use((PLAN_TOOL, {"steps": []}), (PLAN_TOOL, {"steps": []})), plan())
    bedrock.stream(text("Hi."))
    job_id = w.submit("hi")
    # WHEN it runs THEN the repair turn answers both and the second plan runs
    assert w.run(job_id).status is JobStatus.COMPLETE
    repair = bedrock.calls()[1].body["messages"][-1]["content"]
    assert len(repair) == 2 and all(b["type"] == "tool_result" and b["is_error"] for b in repair)
    assert bedrock.unexpected == []


# ---- 5. usage, exact across attempts and processes ----------------------------------------------


class WorkerDied(BaseException):
    """The process dying (not an error the runner catches)."""


def test_usage_counts_a_lost_attempt_and_is_the_same_in_a_fresh_process(bedrock: BedrockStandIn) -> None:
    w = World(bedrock, lease_seconds=0.3)
    # attempt 1 plans (120 tokens) and dies before the plan is recorded
    bedrock.stream(plan(usage=U_THINK))
    job_id = w.submit("hi")
    real_think = w.agent.think

    def think_then_die(ctx: AgentContext) -> Plan:
        real_think(ctx)
        raise WorkerDied()

    w.agent.think = think_then_die  # type: ignore[method-assign]
    with pytest.raises(WorkerDied):
        w.run(job_id)
    jobs = w.deps.jobs
    assert isinstance(jobs, MemoryJobStore)
    jobs.items[job_id] = replace(jobs.items[job_id], lease_expires=0.0)
    # attempt 2, in a fresh process, plans again and its reply stream is reset mid-way (no metadata)
    bedrock.stream(plan(usage=U_THINK))
    bedrock.stream(Answer(content=[{"text": "Pasta with peas."}], steps={2: [Reset()]}, usage=U_REPLY))
    _, runner = w.process()
    assert w.run(job_id, runner).outcome is Outcome.RETRY
    # attempt 3, in yet another process, replies
    bedrock.stream(text("Pasta.", usage=U_REPLY))
    _, runner = w.process()
    assert w.run(job_id, runner).status is JobStatus.COMPLETE
    usage = w.last(job_id)["data"]["output"]["usage"]
    # both thinks, the reply, and the reset stream's estimate: its request, and the text shown
    # before the reset ("Pasta wi", 2 tokens, unless the reset discarded it unread)
    assert usage["estimatedCalls"] == 1
    assert usage["outputTokens"] - (2 * 20 + 40) in (0, 2)
    assert usage["inputTokens"] > 2 * 100 + 200
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]


def test_usage_of_a_retried_job_does_not_depend_on_the_process(bedrock: BedrockStandIn) -> None:
    totals = []
    for fresh in (False, True):
        w = World(bedrock)
        bedrock.stream(plan(usage=U_THINK))
        bedrock.stream(Answer(content=[{"text": "Pasta"}], usage=U_REPLY,
                              steps={2: [Exception_("throttlingException", "slow down")]}))
        job_id = w.submit("hi")
        assert w.run(job_id).outcome is Outcome.RETRY
        bedrock.stream(text("Pasta.", usage=U_REPLY))
        runner = w.process()[1] if fresh else w.runner
        assert w.run(job_id, runner).status is JobStatus.COMPLETE
        totals.append(w.last(job_id)["data"]["output"]["usage"])
    assert totals[0] == totals[1]
    # think, reply, and the throttled stream: the Messages API announced its input at message_start
    # (exact: 200) and 1 output token before the error (event 2 is the first text delta)
    assert totals[0]["outputTokens"] == 20 + 40 + 1
    assert totals[0]["inputTokens"] == 100 + 200 + 200 and totals[0]["estimatedCalls"] == 1


def test_the_agent_keeps_no_usage_in_the_process(bedrock: BedrockStandIn) -> None:
    w = World(bedrock)
    bedrock.stream(HttpError("ValidationException", 400, "bad"))
    w.run(w.submit("hi"))
    assert not any("usage" in name for name in vars(w.agent))


# ---- 6. smaller -------------------------------------------------------------------------------


def test_history_messages_zero_sends_no_history(bedrock: BedrockStandIn) -> None:
    w = World(bedrock, bedrock_history_messages=0)
    w.deps.conversations.commit_turn(USER, "c1", "j0", "old question", "old answer", "2026-01-01", EXP)
    bedrock.stream(plan())
    bedrock.stream(text("Hi."))
    assert w.run(w.submit("new question", "c1")).status is JobStatus.COMPLETE
    for call in bedrock.requests:
        assert [m["role"] for m in call.body["messages"]] == ["user"]
        assert "old" not in str(call.body["messages"])


def test_blank_text_is_never_sent(bedrock: BedrockStandIn) -> None:
    w = World(bedrock)
    w.deps.conversations.commit_turn(USER, "c1", "j0", "hi", "  \n", "2026-01-01", EXP)
    bedrock.stream(plan())
    bedrock.stream(text("Hello?"))
    job_id = w.submit(" ", "c1")
    assert w.run(job_id).status is JobStatus.COMPLETE, w.last(job_id)  # Bedrock refuses blank text, terminally


def test_a_plan_carrying_a_pasted_recipe_fits_the_plan_token_limit(bedrock: BedrockStandIn) -> None:
    steps = {"kind": "save_recipe", "label": "Save your recipe", "title": "Grandma's stew",
             "ingredients": ["beef", "carrots", "onions"], "instructions": "Simmer slowly. " * 266}
    assert len(steps["instructions"]) <= 4000
    w = World(bedrock)
    bedrock.stream(plan(steps))
    bedrock.stream(text("Saved."))
    job_id = w.submit("save this recipe: ...")
    assert w.run(job_id).status is JobStatus.COMPLETE, w.last(job_id)
    assert bedrock.calls()[0].body["max_tokens"] == 4096


def test_one_model_call_fits_in_the_worker_timeout() -> None:
    worker = load_template(ROOT / "template.yaml")["Resources"]["WorkerFunction"]["Properties"]
    config = BedrockConfig.from_settings(Settings())
    one_call = (config.connect_timeout + config.read_timeout) * CLIENT_ATTEMPTS
    assert one_call + 30 <= worker["Timeout"], "a call and its retries must leave time to checkpoint"


def test_the_built_client_makes_one_attempt_per_call(bedrock: BedrockStandIn,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.url)
    client = build_client(BedrockConfig(read_timeout=0.5))
    bedrock.stream(HttpError("ServiceUnavailableException", 503, "busy"))
    agent = BedrockAgent(config=BedrockConfig(), agent_data=memory_deps().agent_data,
                         kitchen=MemoryKitchenStore(), _client=client)
    with pytest.raises(Exception) as info:
        agent.check_model()
    assert getattr(info.value, "code", "") == "model_unavailable"
    assert len(bedrock.requests) == 1  # the runner retries, with backoff; botocore does not


# ---- 7. two transports, streamed end to end (issue 25) -----------------------------------------

NOVA = "us.amazon.nova-2-lite-v1:0"
STREAMED = {MODEL: "invoke-with-response-stream", NOVA: "converse-stream"}


@pytest.mark.parametrize("model", [MODEL, DEFAULT_MODEL_ID, NOVA])
def test_a_job_plans_acts_asks_and_replies_streamed_on_either_transport(bedrock: BedrockStandIn,
                                                                       model: str) -> None:
    # GIVEN a plan that adds to the pantry, asks, removes, and has the model choose
    w = World(bedrock, bedrock_model_id=model)
    w.kitchen.add_quantity(USER, "c1", "eggs", 6, "", "seed", EXP)
    bedrock.stream(plan({"kind": "add_to_pantry", "label": "Add milk", "name": "milk", "quantity": 1},
                        {"kind": "ask_user", "label": "Check", "prompt": "Use 2 of your eggs?"},
                        {"kind": "remove_from_pantry", "label": "Take 2 eggs", "name": "eggs", "quantity": 2},
                        {"kind": "model", "label": "Choose", "prompt": "Pick a dish."}),
                   text("An omelette."), Answer(content=[{"text": "Omelette it is."}], thinking="The user..."))
    job_id = w.service.submit(USER, ChatRequest(message="omelette?", conversation_id="c1"), None).job.job_id
    # WHEN it runs, waits for the answer, and resumes
    assert w.run(job_id).status is JobStatus.WAITING
    question = w.last(job_id)
    w.service.answer(USER, job_id, question["data"]["input_id"], True)
    assert w.run(job_id).status is JobStatus.COMPLETE, w.last(job_id)
    # THEN every call was streamed on the model's transport, and the thinking was not shown
    assert {r.operation for r in bedrock.requests} == {STREAMED.get(model, "invoke-with-response-stream")}
    assert len(bedrock.requests) == 3 and bedrock.unexpected == [] and bedrock.pending() == 0
    assert w.last(job_id)["data"]["output"]["reply"] == "Omelette it is."
    assert {i["name"]: i["quantity"] for i in w.kitchen.items(USER, "c1", "pantry")} == {"eggs": 4.0, "milk": 1.0}
    usage = w.last(job_id)["data"]["output"]["usage"]
    assert "estimatedCalls" not in usage and usage["outputTokens"] > 0


def test_a_plan_longer_than_the_read_timeout_completes_while_it_keeps_streaming() -> None:
    # GIVEN a stand-in whose second is 1/100 of ours, and a client read timeout of 60 of its seconds
    with BedrockStandIn(time_scale=0.01) as bedrock:
        w = World(bedrock, read_timeout=0.6)
        steps = [{"kind": "list_pantry", "label": f"Look {i}"} for i in range(6)]
        # a plan written over ~2 stand-in minutes: an event every 8 s, no gap near the 60 s timeout
        bedrock.stream(Answer(content=plan(*steps).content, stop="tool_use", delay=8.0))
        bedrock.stream(text("Done."))
        job_id = w.submit("look six times")
        t0 = time.monotonic()
        result = w.run(job_id)
        # THEN it completes: the read timeout bounds the silence between events, not the call
        assert result.status is JobStatus.COMPLETE, w.last(job_id)
        assert time.monotonic() - t0 > 0.6  # the plan alone took longer than the read timeout
        # AND a gap longer than the read timeout still fails fast, retryable
        bedrock.stream(Answer(content=[{"text": "Hm"}], steps={2: [Stall(120)]}))
        job2 = w.submit("hi")
        bedrock.requests.clear()
        bedrock.stream(plan())
        assert w.run(job2).outcome is Outcome.RETRY


def test_a_failed_plan_call_is_still_counted(bedrock: BedrockStandIn) -> None:
    # GIVEN a plan stream reset after message_start (the input was announced, then the connection died)
    w = World(bedrock)
    bedrock.stream(Answer(content=plan().content, stop="tool_use", usage=U_THINK, steps={3: [Reset()]}),
                   plan(usage=U_THINK), text("Hi.", usage=U_REPLY))
    job_id = w.submit("hi")
    assert w.run(job_id).outcome is Outcome.RETRY
    assert w.run(job_id).status is JobStatus.COMPLETE
    usage = w.last(job_id)["data"]["output"]["usage"]
    # THEN the lost call is counted: its input exactly (from message_start), its output estimated
    assert usage["inputTokens"] == 100 + 100 + 200
    assert usage["estimatedCalls"] == 1 and usage["outputTokens"] >= 20 + 40 + 1


# ---- 8. the defects of issue 25 ------------------------------------------------------------------


def test_tool_result_status_is_sent_only_to_models_documented_for_it(bedrock: BedrockStandIn) -> None:
    # GIVEN a Converse model AWS does not document toolResult.status for, and a malformed first plan
    w = World(bedrock, bedrock_model_id="mistral.mistral-large-2407-v1:0")
    bedrock.stream(tool_use((PLAN_TOOL, {"steps": [{"kind": "nope"}]})), plan(), text("Hi."))
    job_id = w.submit("hi")
    # WHEN it runs THEN the repair turn carries no status and the job completes (not model_rejected)
    assert w.run(job_id).status is JobStatus.COMPLETE, w.last(job_id)
    repair = bedrock.requests[1].body["messages"][-1]["content"]
    assert repair and all("toolResult" in b and "status" not in b["toolResult"] for b in repair)


def test_nova_still_gets_the_error_status(bedrock: BedrockStandIn) -> None:
    w = World(bedrock, bedrock_model_id=NOVA)
    bedrock.stream(tool_use((PLAN_TOOL, {"steps": [{"kind": "nope"}]})), plan(), text("Hi."))
    assert w.run(w.submit("hi")).status is JobStatus.COMPLETE
    assert bedrock.requests[1].body["messages"][-1]["content"][0]["toolResult"]["status"] == "error"


@pytest.mark.parametrize("stop", ["malformed_model_output", "malformed_tool_use"])
def test_a_malformed_answer_is_a_failure_to_retry_not_an_answer(bedrock: BedrockStandIn, stop: str) -> None:
    w = World(bedrock, bedrock_model_id=NOVA)
    bedrock.stream(plan(), text("garbled", stop=stop))
    job_id = w.submit("hi")
    result = w.run(job_id)
    assert result.outcome is Outcome.RETRY and result.reason == "model_malformed_output"
    bedrock.stream(text("Hello."))
    assert w.run(job_id).status is JobStatus.COMPLETE
    assert w.last(job_id)["data"]["output"]["reply"] == "Hello."


@pytest.mark.parametrize("model", [MODEL, NOVA])
def test_a_context_window_exceeded_plan_shrinks_the_history(bedrock: BedrockStandIn, model: str) -> None:
    # GIVEN a conversation with history, and a model whose first plan hits the context window
    w = World(bedrock, bedrock_model_id=model, bedrock_history_messages=8)
    for i in range(4):
        w.deps.conversations.commit_turn(USER, "c1", f"j{i}", f"question {i}", f"answer {i}", "2026-01-01", EXP)
    bedrock.stream(text("", stop="model_context_window_exceeded"), plan(), text("Hi."))
    job_id = w.submit("new question", "c1")
    # WHEN it runs THEN it plans again with half the history, and completes
    assert w.run(job_id).status is JobStatus.COMPLETE, w.last(job_id)
    sizes = [len(r.body["messages"]) for r in bedrock.requests[:2]]
    assert sizes[1] < sizes[0]
    assert "PLAN_MAX_TOKENS" not in str(w.events(job_id))


def test_a_fresh_access_denied_is_retried_then_terminal(bedrock: BedrockStandIn) -> None:
    denied = HttpError("AccessDeniedException", 403, "You don't have access to the model with the specified model ID.")
    # GIVEN a job younger than the grace: retryable, with what is going on
    w = World(bedrock)
    bedrock.stream(denied)
    job_id = w.submit("hi")
    result = w.run(job_id)
    assert result.outcome is Outcome.RETRY and result.reason == "model_access_pending"
    bedrock.stream(plan(), text("Hi."))
    assert w.run(job_id).status is JobStatus.COMPLETE
    # AND past the grace: terminal model_access_denied
    w = World(bedrock, bedrock_access_denied_grace_seconds=0)
    bedrock.stream(denied)
    job_id = w.submit("hi")
    assert w.run(job_id).status is JobStatus.FAILED
    assert w.last(job_id)["data"]["error"]["code"] == "model_access_denied"


def test_a_cancelled_reply_is_recorded_at_what_it_may_be_billed(bedrock: BedrockStandIn) -> None:
    # GIVEN a reply that is cancelled once it has started
    w = World(bedrock, bedrock_max_tokens=500)
    bedrock.stream(plan(usage=U_THINK),
                   Answer(content=[{"text": "word " * 200}], usage=U_REPLY, chunk=5, delay=0.01))
    job_id = w.submit("hi")
    agent_reply = w.agent.reply

    def reply_then_cancel(p: Plan, ctx: AgentContext) -> Iterator[str]:
        for i, chunk in enumerate(agent_reply(p, ctx)):
            if i == 3:
                w.service.cancel(USER, job_id)
            yield chunk

    w.agent.reply = reply_then_cancel  # type: ignore[method-assign]
    w.run(job_id)
    records = w.deps.agent_data.usage_records(w.agent._job_key(w.runner_ctx(job_id)))
    reply = next(r for k, r in records.items() if k.endswith(".reply"))
    # THEN it is an estimate at the ceiling: the announced input and max_tokens of output
    assert reply["estimated"] == 1 and reply["outputTokens"] == 500 and reply["inputTokens"] == 200


def test_prompt_caching_marks_the_stable_prefix_and_counts_reads_and_writes() -> None:
    with BedrockStandIn(cache_min_tokens=1) as bedrock:
        w = World(bedrock)
        for job in range(2):
            bedrock.stream(plan(), text(f"Answer {job}."))
            assert w.run(w.submit(f"question {job}", "c1")).status is JobStatus.COMPLETE
        think = bedrock.requests[2].body  # the second job's plan
        assert think["tools"][-1]["cache_control"] == {"type": "ephemeral"}
        assert think["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert think["messages"][-2]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert "cache_control" not in str(think["messages"][-1])
        assert bedrock.usages[2]["cacheReadInputTokens"] > 0  # the first job wrote tools + system
        assert bedrock.usages[0]["cacheWriteInputTokens"] > 0 and bedrock.usages[0]["cacheReadInputTokens"] == 0


def test_without_prompt_caching_nothing_is_marked(bedrock: BedrockStandIn) -> None:
    w = World(bedrock, bedrock_prompt_caching=False)
    bedrock.stream(plan(), text("Hi."))
    assert w.run(w.submit("hi")).status is JobStatus.COMPLETE
    assert "cache_control" not in json.dumps([r.body for r in bedrock.requests])
