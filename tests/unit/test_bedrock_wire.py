"""The Bedrock agent against a local Bedrock that speaks the real wire formats (issue 19).

``alfred_tools.bedrock_standin`` answers a real ``bedrock-runtime`` client over HTTP: Converse as
JSON, ConverseStream as ``application/vnd.amazon.eventstream`` frames (CRCs and all), errors as
Bedrock sends them; it stalls, resets, ends streams early and checks requests the way Bedrock does
(retired models, bare ids that need an inference profile, toolChoice on models without it, blank
text, unanswered tool calls, maxTokens). The jobs run through the real runner on in-memory ports.
"""

from __future__ import annotations

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
