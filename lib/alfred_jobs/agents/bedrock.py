"""An agent backed by Amazon Bedrock's Converse API (``bedrock-runtime``).

    think  one ``converse`` call; the model must call the ``make_plan`` tool, whose input is a plan
           of steps validated with pydantic (see "Malformed plans" below)
    act    a step is a *kitchen tool* (the conversation's pantry and recipes, writes idempotent on
           ``ctx.idempotency_key(step.index)``) or a *model call* (one ``converse``)
    reply  ``converse_stream``; text chunks are yielded as they arrive, a cancel closes the stream

Errors: every botocore error is turned into ``RetryableAgentError`` or ``TerminalAgentError`` here
(``_mapped_errors``); this is the only module of the agents that imports botocore.

Malformed plans: a plan that does not validate is sent back to the model once, in the same
``think``, with the validation error (a repair turn). If the second answer is still malformed,
``think`` raises ``TerminalAgentError(code="bad_plan")``. Why terminal: the runner's retry would
ask the same model the same question after a backoff, and a model that failed twice with its own
error in front of it is a prompt or model problem, not a transient one; failing fast shows the
user an error within seconds instead of after every attempt's backoff. A plan cut off by the token
limit (``stopReason == "max_tokens"``) is terminal too (``plan_truncated``: raise
``ALFRED_BEDROCK_MAX_TOKENS``), and so is a refusal (``content_filtered`` / ``guardrail_intervened``:
``refused``). Throttling and service errors during ``think`` are retryable like anywhere else.

Token usage: model-call steps put their usage in their (checkpointed) output; ``think`` and
``reply`` usage is counted per job in this process. ``usage(ctx)`` returns the job's total, which
the runner merges into the ``complete`` output as ``{"usage": {...}}``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as BotoClientError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from alfred_jobs.domain.agent import AgentContext, Plan, PlanStep
from alfred_jobs.exceptions import MalformedPlan, RetryableAgentError, TerminalAgentError

if TYPE_CHECKING:
    from alfred_jobs.ports import AgentDataStore, Deps
    from alfred_jobs.settings import Settings

DEFAULT_MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
DEFAULT_MAX_TOKENS = 1024
DEFAULT_TEMPERATURE = 0.2
DEFAULT_MAX_STEPS = 6
DEFAULT_HISTORY_MESSAGES = 20
PLAN_TOOL = "make_plan"
USAGE_KEYS = ("inputTokens", "outputTokens", "totalTokens")

# Error codes as Bedrock sends them. Mid-stream errors arrive as camelCase event names
# (``throttlingException``), so codes are compared case-insensitively.
_RETRYABLE_CODES = frozenset(c.lower() for c in (
    "ThrottlingException", "ServiceUnavailableException", "ServiceUnavailable",
    "ModelTimeoutException", "InternalServerException", "ModelNotReadyException",
    "ModelStreamErrorException", "ServiceQuotaExceededException", "ModelErrorException",
    # DynamoDB, for the kitchen tools
    "ProvisionedThroughputExceededException", "RequestLimitExceeded", "TransactionConflictException",
))
_TERMINAL_CODES = frozenset(c.lower() for c in (
    "ValidationException", "AccessDeniedException", "ResourceNotFoundException",
    "UnrecognizedClientException", "ConflictException",
))


# ---- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class BedrockConfig:
    """The Bedrock agent's knobs, read from Settings (``ALFRED_BEDROCK_*``) with defaults."""

    model_id: str = DEFAULT_MODEL_ID
    region: str = "us-east-1"
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    max_steps: int = DEFAULT_MAX_STEPS
    history_messages: int = DEFAULT_HISTORY_MESSAGES
    retention_seconds: int = 7 * 24 * 3600

    @classmethod
    def from_settings(cls, settings: Settings) -> BedrockConfig:
        """The config from settings."""
        return cls(
            model_id=settings.bedrock_model_id or DEFAULT_MODEL_ID,
            region=settings.bedrock_region or settings.region,
            max_tokens=settings.bedrock_max_tokens,
            temperature=settings.bedrock_temperature,
            max_steps=settings.bedrock_max_steps,
            history_messages=settings.bedrock_history_messages,
            retention_seconds=settings.retention_seconds,
        )


def build_client(config: BedrockConfig) -> Any:
    """A ``bedrock-runtime`` client (endpoint from ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` if set).

    botocore's own retries are kept to one extra try: the runner owns retries with backoff and a
    Lambda should not sleep through a throttle. The read timeout bounds a stalled stream.
    """
    import boto3
    from botocore.config import Config

    return boto3.client("bedrock-runtime", region_name=config.region, config=Config(
        connect_timeout=5, read_timeout=60, retries={"mode": "standard", "total_max_attempts": 2}))


# ---- the plan the model makes --------------------------------------------------------------


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=120, description="What this step does, for the user")


class ListPantry(_Step):
    kind: Literal["list_pantry"]


class AddToPantry(_Step):
    kind: Literal["add_to_pantry"]
    name: str = Field(min_length=1, max_length=80)
    quantity: float = Field(gt=0, le=100_000)
    unit: str = Field(default="", max_length=20)


class RemoveFromPantry(_Step):
    kind: Literal["remove_from_pantry"]
    name: str = Field(min_length=1, max_length=80)
    quantity: float = Field(gt=0, le=100_000)


class ListRecipes(_Step):
    kind: Literal["list_recipes"]


class SaveRecipe(_Step):
    kind: Literal["save_recipe"]
    title: str = Field(min_length=1, max_length=120)
    ingredients: list[str] = Field(min_length=1, max_length=50)
    instructions: str = Field(min_length=1, max_length=4000)


class AskUser(_Step):
    """The ``ask_user`` tool: ask the user and wait (durably) for the answer."""

    kind: Literal["ask_user"]
    prompt: str = Field(min_length=1, max_length=500, description="The question, as the user will read it")
    answer_kind: Literal["confirm", "choice", "text"] = Field(
        default="confirm", description="confirm: yes/no; choice: one of options; text: free text")
    options: list[str] | None = Field(default=None, max_length=10, description="The choices (choice only)")


class ModelCall(_Step):
    kind: Literal["model"]
    prompt: str = Field(min_length=1, max_length=4000, description="The instruction for this step")


StepSpec = Annotated[
    ListPantry | AddToPantry | RemoveFromPantry | ListRecipes | SaveRecipe | AskUser | ModelCall,
    Field(discriminator="kind"),
]
_STEP = TypeAdapter(StepSpec)


class PlanSpec(BaseModel):
    """The input of the ``make_plan`` tool."""

    model_config = ConfigDict(extra="forbid")
    steps: list[StepSpec] = Field(default_factory=list, description="Steps in order; may be empty")


def parse_plan(tool_input: Any, max_steps: int) -> Plan:
    """Validate the ``make_plan`` input into a Plan; ``MalformedPlan`` if it does not fit."""
    try:
        spec = PlanSpec.model_validate(tool_input)
    except ValidationError as exc:
        raise MalformedPlan(str(exc)) from exc
    if len(spec.steps) > max_steps:
        raise MalformedPlan(f"the plan has {len(spec.steps)} steps; at most {max_steps} are allowed")
    return Plan(steps=[PlanStep(index=i, label=s.label, spec=s.model_dump(mode="json"))
                       for i, s in enumerate(spec.steps, start=1)])


# ---- the conversation's kitchen (what tool steps read and write) ---------------------------


class KitchenStore(Protocol):
    """A conversation's pantry and saved recipes. Writes apply once per idempotency key."""

    def items(self, user_id: str, conversation_id: str, kind: str) -> list[dict[str, Any]]:
        """Every item of one kind (``pantry`` or ``recipe``), by name."""

    def add_quantity(self, user_id: str, conversation_id: str, name: str, delta: float, unit: str,
                     key: str, expires_at: int) -> dict[str, Any]:
        """Add ``delta`` (may be negative; floors at 0) to a pantry item once per ``key``."""

    def put_recipe(self, user_id: str, conversation_id: str, recipe: dict[str, Any], key: str,
                   expires_at: int) -> dict[str, Any]:
        """Save a recipe by title (a put: idempotent by nature; ``key`` is recorded)."""


class MemoryKitchenStore:
    """The kitchen in a dict (tests, in-memory deps)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def items(self, user_id: str, conversation_id: str, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            found = [v for (u, c, k, _), v in sorted(self.data.items())
                     if (u, c, k) == (user_id, conversation_id, kind)]
        hidden = ("applied", "key")  # bookkeeping, as the DynamoDB store keeps it out of its answers
        return [{k: v for k, v in item.items() if k not in hidden} for item in found]

    def add_quantity(self, user_id: str, conversation_id: str, name: str, delta: float, unit: str,
                     key: str, expires_at: int) -> dict[str, Any]:
        with self._lock:
            item = self.data.setdefault((user_id, conversation_id, "pantry", name.lower()),
                                        {"name": name.lower(), "quantity": 0.0, "unit": unit, "applied": []})
            if key not in item["applied"]:
                item["quantity"] = max(0.0, item["quantity"] + delta)
                item["applied"].append(key)
                if unit:
                    item["unit"] = unit
            return {k: item[k] for k in ("name", "quantity", "unit")}

    def put_recipe(self, user_id: str, conversation_id: str, recipe: dict[str, Any], key: str,
                   expires_at: int) -> dict[str, Any]:
        with self._lock:
            self.data[(user_id, conversation_id, "recipe", recipe["title"].lower())] = {**recipe, "key": key}
            return dict(recipe)


class DynamoKitchenStore:
    """The kitchen in the agent data table: pk ``KITCHEN#{user}#{conversation}``, sk ``{kind}#{name}``.

    A pantry change is an ``ADD`` guarded by ``NOT contains(applied, :key)``: the step's idempotency
    key goes into a string set in the same write, so a step cut off after its write and run again
    finds its key and changes nothing.
    """

    def __init__(self, table: str, client: Any = None, region: str | None = None) -> None:
        self._table = table
        self._client = client
        self._region = region

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("dynamodb", region_name=self._region)
        return self._client

    @staticmethod
    def _pk(user_id: str, conversation_id: str) -> str:
        return f"KITCHEN#{user_id}#{conversation_id}"

    def items(self, user_id: str, conversation_id: str, kind: str) -> list[dict[str, Any]]:
        from boto3.dynamodb.types import TypeDeserializer

        de = TypeDeserializer()
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :p AND begins_with(sk, :k)",
            "ExpressionAttributeValues": {":p": {"S": self._pk(user_id, conversation_id)},
                                          ":k": {"S": f"{kind}#"}}}
        with _mapped_errors("kitchen", "kitchen"):
            while True:
                page = self.client.query(**kwargs)
                for raw in page.get("Items", []):
                    item = {k: de.deserialize(v) for k, v in raw.items()}
                    out.append(json.loads(item["doc"]) if "doc" in item else
                               {"name": item["name"], "quantity": max(0.0, float(item.get("quantity", 0))),
                                "unit": item.get("unit", "")})
                if "LastEvaluatedKey" not in page:
                    return out
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def add_quantity(self, user_id: str, conversation_id: str, name: str, delta: float, unit: str,
                     key: str, expires_at: int) -> dict[str, Any]:
        name = name.lower()
        item_key = {"pk": {"S": self._pk(user_id, conversation_id)}, "sk": {"S": f"pantry#{name}"}}
        with _mapped_errors("kitchen", "kitchen"):
            try:
                self.client.update_item(
                    TableName=self._table, Key=item_key,
                    UpdateExpression="ADD quantity :d, applied :ks SET #n = :n, expires_at = :e"
                                     + (", #u = :u" if unit else ""),
                    ConditionExpression="attribute_not_exists(applied) OR NOT contains(applied, :k)",
                    ExpressionAttributeNames={"#n": "name", **({"#u": "unit"} if unit else {})},
                    ExpressionAttributeValues={
                        ":d": {"N": repr(delta)}, ":ks": {"SS": [key]}, ":k": {"S": key},
                        ":n": {"S": name}, ":e": {"N": str(expires_at)},
                        **({":u": {"S": unit}} if unit else {})})
            except BotoClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                # Already applied by an earlier run of this step: fall through and read it.
            got = self.client.get_item(TableName=self._table, Key=item_key, ConsistentRead=True)["Item"]
        # A removal may take the stored quantity below zero; readers see the floor.
        return {"name": name, "quantity": max(0.0, float(got["quantity"]["N"])),
                "unit": got.get("unit", {}).get("S", "")}

    def put_recipe(self, user_id: str, conversation_id: str, recipe: dict[str, Any], key: str,
                   expires_at: int) -> dict[str, Any]:
        with _mapped_errors("kitchen", "kitchen"):
            self.client.put_item(TableName=self._table, Item={
                "pk": {"S": self._pk(user_id, conversation_id)},
                "sk": {"S": f"recipe#{recipe['title'].lower()}"},
                "doc": {"S": json.dumps(recipe)}, "key": {"S": key}, "expires_at": {"N": str(expires_at)}})
        return dict(recipe)


# ---- errors --------------------------------------------------------------------------------


@contextmanager
def _mapped_errors(what: str, source: str = "model") -> Iterator[None]:
    """Turn botocore errors into the runner's retryable / terminal agent errors.

    Codes: ``{source}_throttled`` / ``{source}_unavailable`` (retryable), ``{source}_access_denied``
    / ``{source}_rejected`` (terminal); ``source`` is ``model`` (Bedrock) or ``kitchen`` (DynamoDB).
    """
    try:
        yield
    except BotoClientError as exc:  # includes EventStreamError (an error event mid-stream)
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: {code or status}: {err.get('Message', '')}".rstrip(": ")
        low = code.lower()
        if low in _RETRYABLE_CODES or (low not in _TERMINAL_CODES and (status >= 500 or status == 429)):
            kind = "throttled" if any(w in low for w in ("throttl", "throughput", "quota")) else "unavailable"
            raise RetryableAgentError(message, code=f"{source}_{kind}") from exc
        kind = "access_denied" if low == "accessdeniedexception" else "rejected"
        raise TerminalAgentError(message, code=f"{source}_{kind}") from exc
    except BotoCoreError as exc:  # connection errors, read timeouts: another attempt may work
        raise RetryableAgentError(f"{what}: {type(exc).__name__}", code=f"{source}_unavailable") from exc


# ---- the agent -----------------------------------------------------------------------------

_SYSTEM = (
    "You are Alfred, a friendly kitchen assistant. The user has a pantry and saved recipes in this "
    "conversation; tools read and change them. Be concise and practical."
)
_THINK = (
    "Plan how to answer the user's latest message. Call the make_plan tool exactly once. Each step is "
    "either a kitchen tool (list_pantry, add_to_pantry, remove_from_pantry, list_recipes, save_recipe), "
    "an 'ask_user' step (a question for the user, answered later: put one before any step that removes "
    "something from the pantry, or when a choice is the user's to make), "
    "or a 'model' step with a prompt for work that needs thinking (e.g. choosing a recipe). Use at most "
    "{max_steps} steps and no step that is not needed; an empty plan is fine for small talk. "
    "The final answer is written after the steps; do not add a step for it."
)


def _usage_of(raw: Any) -> dict[str, int]:
    raw = raw or {}
    return {k: int(raw.get(k, 0) or 0) for k in USAGE_KEYS}


def _add_usage(total: dict[str, int], more: Any) -> None:
    for k, v in _usage_of(more).items():
        total[k] = total.get(k, 0) + v


@dataclass
class BedrockAgent:
    """Think → Act → Reply with a Bedrock model. ``client`` is a ``bedrock-runtime`` client."""

    config: BedrockConfig
    agent_data: AgentDataStore
    kitchen: KitchenStore
    client_factory: Callable[[], Any] | None = None
    _client: Any = None
    _usage: dict[str, dict[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # The context of the job this thread is running: lets ``usage()`` without arguments find its job
    # (the runner runs think, act and reply of one job on one thread; jobs may share the agent).
    _local: threading.local = field(default_factory=threading.local)

    @classmethod
    def from_deps(cls, deps: Deps, *, client: Any = None,
                  kitchen: KitchenStore | None = None) -> BedrockAgent:
        """The agent wired from deps; the client is built on first use unless one is given."""
        config = BedrockConfig.from_settings(deps.settings)
        return cls(config=config, agent_data=deps.agent_data,
                   kitchen=kitchen or _default_kitchen(deps), _client=client,
                   client_factory=lambda: build_client(config))

    @property
    def client(self) -> Any:
        """The ``bedrock-runtime`` client, built on first use (never at import)."""
        if self._client is None:
            self._client = (self.client_factory or (lambda: build_client(self.config)))()
        return self._client

    # -- think ----------------------------------------------------------------------------

    def think(self, ctx: AgentContext) -> Plan:
        """One Converse call forced to call ``make_plan``; one repair turn if the plan is malformed."""
        self._local.ctx = ctx
        messages = self._conversation(ctx, ctx.message)
        tool_config = {
            "tools": [{"toolSpec": {
                "name": PLAN_TOOL, "description": "Record the plan of steps that answers the user.",
                "inputSchema": {"json": PlanSpec.model_json_schema()}}}],
            "toolChoice": {"tool": {"name": PLAN_TOOL}},
        }
        system = [{"text": _SYSTEM}, {"text": _THINK.format(max_steps=self.config.max_steps)}]
        for turn in range(2):
            out = self._converse(messages, system=system, toolConfig=tool_config, what="think")
            self._count(ctx.job_id, out.get("usage"))
            stop = out.get("stopReason")
            if stop in ("content_filtered", "guardrail_intervened"):
                raise TerminalAgentError(f"the model refused to plan ({stop})", code="refused")
            if stop == "max_tokens":
                raise TerminalAgentError("the plan was cut off by the token limit", code="plan_truncated")
            content = out.get("output", {}).get("message", {}).get("content", [])
            uses = [c["toolUse"] for c in content if "toolUse" in c and c["toolUse"].get("name") == PLAN_TOOL]
            try:
                if not uses:
                    raise MalformedPlan(f"no {PLAN_TOOL} tool call in the answer")
                return parse_plan(uses[0].get("input"), self.config.max_steps)
            except MalformedPlan as exc:
                if turn == 1:
                    raise TerminalAgentError(f"the model made no valid plan: {str(exc)[:500]}",
                                             code="bad_plan") from exc
                answer = out.get("output", {}).get("message") or {"role": "assistant",
                                                                   "content": [{"text": "(no answer)"}]}
                messages = [*messages, answer, self._repair_turn(uses, str(exc))]
        raise AssertionError("unreachable")

    @staticmethod
    def _repair_turn(uses: list[dict[str, Any]], error: str) -> dict[str, Any]:
        """The user turn that shows the model what was wrong with its plan."""
        text = f"That plan is invalid: {error[:1500]}. Call {PLAN_TOOL} again with a valid plan."
        if not uses:
            return {"role": "user", "content": [{"text": text}]}
        # A toolUse must be answered by a toolResult in the next user turn.
        return {"role": "user", "content": [{"toolResult": {
            "toolUseId": uses[0].get("toolUseId", "plan"), "status": "error", "content": [{"text": text}]}}]}

    # -- act ------------------------------------------------------------------------------

    def act(self, step: PlanStep, ctx: AgentContext) -> Any:
        """Run one step: a kitchen tool or a model call. Returns its JSON output."""
        self._local.ctx = ctx
        try:
            spec = _STEP.validate_python(step.spec)
        except ValidationError as exc:
            raise TerminalAgentError(f"step {step.index} is not a step this agent knows: {exc}",
                                     code="bad_step") from exc
        if isinstance(spec, AskUser):
            # Before anything else in the step: after the answer the step runs again from its start.
            options = spec.options if spec.answer_kind == "choice" else None
            if spec.answer_kind == "choice" and not options:
                raise TerminalAgentError(f"step {step.index} asks a choice without options", code="bad_step")
            return {"question": spec.prompt, "answer": ctx.ask(spec.prompt, spec.answer_kind, options)}
        key = ctx.idempotency_key(step.index)
        expires = ctx.expires_at or int(time.time()) + self.config.retention_seconds
        # Recorded first, so "never executed twice" can be checked like the demo agent's steps.
        self.agent_data.record_step_effect(ctx.job_id, step.index, ctx.attempt, {"kind": spec.kind}, expires)
        u, c = ctx.user_id, ctx.conversation_id
        if isinstance(spec, ListPantry):
            return {"pantry": self.kitchen.items(u, c, "pantry")}
        if isinstance(spec, AddToPantry):
            item = self.kitchen.add_quantity(u, c, spec.name, spec.quantity, spec.unit, key, expires)
            return {"item": item}
        if isinstance(spec, RemoveFromPantry):
            return {"item": self.kitchen.add_quantity(u, c, spec.name, -spec.quantity, "", key, expires)}
        if isinstance(spec, ListRecipes):
            return {"recipes": self.kitchen.items(u, c, "recipe")}
        if isinstance(spec, SaveRecipe):
            recipe = {"title": spec.title, "ingredients": spec.ingredients, "instructions": spec.instructions}
            return {"recipe": self.kitchen.put_recipe(u, c, recipe, key, expires)}
        return self._model_step(spec, step, ctx)

    def _model_step(self, spec: ModelCall, step: PlanStep, ctx: AgentContext) -> dict[str, Any]:
        prompt = (f"The user asked: {ctx.message}\n\nResults of the earlier steps (JSON):\n"
                  f"{json.dumps(self._earlier(ctx, step.index))}\n\nThis step: {spec.prompt}")
        out = self._converse([{"role": "user", "content": [{"text": prompt}]}],
                             system=[{"text": _SYSTEM}], what=f"step {step.index}")
        text = "".join(c.get("text", "") for c in out.get("output", {}).get("message", {}).get("content", []))
        return {"text": text, "usage": _usage_of(out.get("usage"))}

    # -- reply ----------------------------------------------------------------------------

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        """Stream the answer with ``converse_stream``; a cancel or the runner closing us closes the stream."""
        self._local.ctx = ctx
        results = {str(s.index): {"label": s.label, "output": ctx.step_outputs.get(s.index)}
                   for s in plan.steps}
        text = ctx.message if not results else (
            f"{ctx.message}\n\n(Results of the steps you ran, JSON — use them, do not repeat them "
            f"verbatim: {json.dumps(results)})")
        with _mapped_errors("reply"):
            response = self.client.converse_stream(**self._request(self._conversation(ctx, text),
                                                                    system=[{"text": _SYSTEM}]))
        stream = response["stream"]
        try:
            with _mapped_errors("reply"):
                for event in stream:
                    if ctx.cancelled():
                        return  # the finally closes the HTTP stream: no more tokens are billed
                    if "contentBlockDelta" in event:
                        chunk = event["contentBlockDelta"].get("delta", {}).get("text")
                        if chunk:
                            yield chunk
                    elif "metadata" in event:
                        self._count(ctx.job_id, event["metadata"].get("usage"))
                    elif "messageStop" in event and event["messageStop"].get("stopReason") in (
                            "content_filtered", "guardrail_intervened"):
                        raise TerminalAgentError("the model refused to answer", code="refused")
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    # -- usage ----------------------------------------------------------------------------

    def usage(self, ctx: AgentContext | None = None) -> dict[str, int] | None:
        """The job's token usage: recorded model steps plus think and reply run in this process.

        Call once, after ``reply`` finished; it forgets the job's in-process counters. Without
        ``ctx``, the job this thread last ran is meant.
        """
        ctx = ctx or getattr(self._local, "ctx", None)
        if ctx is None:
            return None
        with self._lock:
            total = dict(self._usage.pop(ctx.job_id, {}))
        for output in ctx.step_outputs.values():
            if isinstance(output, dict) and "usage" in output:
                _add_usage(total, output["usage"])
        return total or None

    # -- helpers --------------------------------------------------------------------------

    def _count(self, job_id: str, usage: Any) -> None:
        with self._lock:
            _add_usage(self._usage.setdefault(job_id, {}), usage)

    def _request(self, messages: list[dict[str, Any]], *, system: list[dict[str, Any]],
                 **extra: Any) -> dict[str, Any]:
        return {"modelId": self.config.model_id, "messages": messages, "system": system,
                "inferenceConfig": {"maxTokens": self.config.max_tokens,
                                    "temperature": self.config.temperature}, **extra}

    def _converse(self, messages: list[dict[str, Any]], *, system: list[dict[str, Any]], what: str,
                  **extra: Any) -> dict[str, Any]:
        with _mapped_errors(what):
            out: dict[str, Any] = self.client.converse(**self._request(messages, system=system, **extra))
        return out

    @staticmethod
    def _earlier(ctx: AgentContext, index: int) -> dict[str, Any]:
        return {str(i): o for i, o in sorted(ctx.step_outputs.items()) if i < index}

    def _conversation(self, ctx: AgentContext, last: str) -> list[dict[str, Any]]:
        """History plus the new user turn, shaped as Converse wants: user first, roles alternating."""
        messages: list[dict[str, Any]] = []
        for m in [*ctx.history[-self.config.history_messages:], {"role": "user", "text": last}]:
            role, text = m.get("role"), str(m.get("text", ""))
            if role not in ("user", "assistant") or not text or (not messages and role != "user"):
                continue
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"][0]["text"] += "\n\n" + text
            else:
                messages.append({"role": role, "content": [{"text": text}]})
        return messages


def _default_kitchen(deps: Deps) -> KitchenStore:
    """The kitchen in the agent data table (the deployed default; tests pass a ``MemoryKitchenStore``).

    Chosen here, not by looking at which adapter ``deps`` holds: an agent knows ports, not adapters.
    """
    return DynamoKitchenStore(deps.settings.agent_data_table, region=deps.settings.region)
