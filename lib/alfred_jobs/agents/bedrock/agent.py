"""The agent: think -> act -> reply with a model on Amazon Bedrock (``bedrock-runtime``).

    think  one streamed call; the model must call the ``make_plan`` tool, whose input (assembled
           from its deltas) is a plan of steps validated with pydantic (see "Malformed plans")
    act    a step is a *kitchen tool* (the conversation's pantry and recipes, writes idempotent on
           ``ctx.idempotency_key(step.index)``) or a *model call* (one streamed call)
    reply  one streamed call; text chunks are yielded as they arrive, a cancel closes the stream

Two transports behind this one agent, chosen by the model id (``BedrockConfig.api``): Claude
through the Anthropic Messages API (``messages.py``, ``InvokeModelWithResponseStream``), every
other family through Converse (``converse.py``, ``ConverseStream``). Every call is streamed, so
the client's read timeout is an idle timeout (the longest silence between two events), not a
bound on the whole generation.

Errors: every botocore error is turned into ``RetryableAgentError`` or ``TerminalAgentError`` here
(``_mapped_errors``). An ``AccessDeniedException`` within ``access_denied_grace_seconds`` of the
job's creation is retried (``model_access_pending``): Bedrock's access can lag up to about two
minutes behind a permission granted or a first subscription; after that it is terminal.

Malformed plans: a plan that does not validate is sent back to the model once, in the same
``think``, with the validation error (a repair turn). If the second answer is still malformed,
``think`` raises ``TerminalAgentError(code="bad_plan")``. A plan cut off by the token limit is
terminal (``plan_truncated``); a refusal is terminal (``refused``); a model that reports
``malformed_model_output`` / ``malformed_tool_use`` failed to answer (retryable
``model_malformed_output``, never taken as an answer); a call stopped by the context window
(``model_context_window_exceeded``) is made again with half the history, down to none.

Token usage: every call's usage is recorded in the agent data store when its stream ends, whichever
way (one record per job, attempt and call, expiring with the job): exact when the stream reported
it, otherwise estimated and marked (``transport.usage_of``); a cancelled call is estimated at its
ceiling, since closing the stream is not known to stop the billing. ``usage(ctx)`` sums the records
(cache reads and writes apart); the runner merges the total into the ``complete`` output.

Truncation: a reply whose stream ends without a stop reason was cut off in transit (retryable
``model_unavailable``); one that stops on ``max_tokens`` ends with a visible note saying so.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as BotoClientError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from urllib3.exceptions import HTTPError as Urllib3Error

from alfred_jobs.agents.bedrock.converse import ConverseTransport, base_model, takes_forced_tool_choice
from alfred_jobs.agents.bedrock.messages import MessagesTransport
from alfred_jobs.agents.bedrock.transport import (
    CONTEXT_EXCEEDED,
    MALFORMED,
    REFUSALS,
    TRUNCATED,
    USAGE_KEYS,
    Answer,
    Call,
    Transport,
    usage_of,
)
from alfred_jobs.clock import Clock, SystemClock
from alfred_jobs.domain.agent import AgentContext, Plan, PlanStep
from alfred_jobs.exceptions import MalformedPlan, RetryableAgentError, TerminalAgentError

if TYPE_CHECKING:
    from alfred_jobs.ports import AgentDataStore, Deps
    from alfred_jobs.settings import Settings

# Claude Haiku 4.5 through the US cross-region inference profile, on the Messages API: the fastest
# and cheapest Claude that Bedrock opens to every customer (docs/agents.md, "Choosing a model").
DEFAULT_MODEL_ID = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
DEFAULT_MAX_TOKENS = 2048
DEFAULT_PLAN_MAX_TOKENS = 4096
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_TEMPERATURE = 0.2
DEFAULT_MAX_STEPS = 6
DEFAULT_HISTORY_MESSAGES = 20
DEFAULT_ACCESS_DENIED_GRACE = 120.0
PLAN_TOOL = "make_plan"
TRUNCATED_NOTE = "\n\n[Alfred's answer was cut off here: it reached its length limit.]"
# Bedrock's answers that mean "this model cannot be used here", whatever the request.
_MODEL_UNUSABLE = ("end of its life", "end-of-life", "on-demand throughput", "inference profile",
                   "model identifier is invalid", "provided model identifier", "doesn't support tool use",
                   "does not support tool use", "model is not supported", "isn't supported in this region",
                   "marked by provider as legacy")
log = logging.getLogger("alfred_jobs.agents.bedrock")

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
    plan_max_tokens: int = DEFAULT_PLAN_MAX_TOKENS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT  # streamed: the longest silence between two events
    api_choice: Literal["auto", "messages", "converse"] = "auto"
    prompt_caching: bool = True
    access_denied_grace: float = DEFAULT_ACCESS_DENIED_GRACE

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
            plan_max_tokens=settings.bedrock_plan_max_tokens,
            connect_timeout=settings.bedrock_connect_timeout_seconds,
            read_timeout=settings.bedrock_read_timeout_seconds,
            api_choice=settings.bedrock_api,
            prompt_caching=settings.bedrock_prompt_caching,
            access_denied_grace=settings.bedrock_access_denied_grace_seconds,
        )

    @property
    def base_model(self) -> str:
        """The model an id, ARN or inference profile id names (``us.anthropic.x`` -> ``anthropic.x``)."""
        return base_model(self.model_id)

    @property
    def api(self) -> Literal["messages", "converse"]:
        """The transport: the Messages API for Anthropic Claude, Converse for every other family."""
        if self.api_choice != "auto":
            return self.api_choice
        return "messages" if self.base_model.startswith("anthropic.claude") else "converse"

    @property
    def forced_tool_choice(self) -> bool:
        """Whether the model takes a forced tool choice: every Claude on the Messages API; on Converse,
        Anthropic Claude 3 and later and Amazon Nova (the ToolChoice API reference)."""
        return self.api == "messages" or takes_forced_tool_choice(self.model_id)

    def transport(self) -> Transport:
        return MessagesTransport() if self.api == "messages" else ConverseTransport()


CLIENT_ATTEMPTS = 1


def build_client(config: BedrockConfig) -> Any:
    """A ``bedrock-runtime`` client (endpoint from ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` if set).

    One attempt per call: the runner owns retries with backoff (a Lambda should not sleep through a
    throttle). Every call is streamed, so the read timeout is per socket read: it bounds the
    silence between two events of a stream (a stalled model, a dead connection), not the whole
    generation; a long plan that keeps sending completes.
    """
    import boto3
    from botocore.config import Config

    return boto3.client("bedrock-runtime", region_name=config.region, config=Config(
        connect_timeout=config.connect_timeout, read_timeout=config.read_timeout,
        retries={"mode": "standard", "total_max_attempts": CLIENT_ATTEMPTS}))


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
        """Save a recipe by title once per ``key``: a step run again does not overwrite a newer save."""


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
            at = (user_id, conversation_id, "recipe", recipe["title"].lower())
            applied = list(self.data.get(at, {}).get("applied", []))
            if key not in applied:
                self.data[at] = {**recipe, "applied": [*applied, key]}
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
        """Read, compute the floored quantity, write it only if nobody changed it meanwhile.

        ``ADD`` cannot floor at 0 (+4, -10, +6 would end at 0 while the in-memory store says 6), so
        the new quantity is computed here and written under a condition on the quantity read and on
        the key not being applied yet; a lost race reads again. Same contract as the memory store.
        """
        name = name.lower()
        item_key = {"pk": {"S": self._pk(user_id, conversation_id)}, "sk": {"S": f"pantry#{name}"}}
        with _mapped_errors("kitchen", "kitchen"):
            for _ in range(8):
                got = self.client.get_item(TableName=self._table, Key=item_key, ConsistentRead=True).get("Item")
                if got is not None and key in got.get("applied", {}).get("SS", []):
                    return self._pantry_item(got)  # already applied by an earlier run of this step
                old = got["quantity"]["N"] if got is not None and "quantity" in got else None
                new = max(0.0, (float(old) if old is not None else 0.0) + delta)
                item_unit = unit or (got or {}).get("unit", {}).get("S", "")
                try:
                    self.client.update_item(
                        TableName=self._table, Key=item_key,
                        UpdateExpression="SET quantity = :q, #n = :n, #u = :u, expires_at = :e ADD applied :ks",
                        ConditionExpression=("attribute_not_exists(pk)" if got is None else
                                             "quantity = :old AND NOT contains(applied, :k)"),
                        ExpressionAttributeNames={"#n": "name", "#u": "unit"},
                        ExpressionAttributeValues={
                            ":q": {"N": repr(new)}, ":ks": {"SS": [key]}, ":n": {"S": name},
                            ":u": {"S": item_unit}, ":e": {"N": str(expires_at)},
                            **({":old": {"N": old}, ":k": {"S": key}} if got is not None else {})})
                    return {"name": name, "quantity": new, "unit": item_unit}
                except BotoClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                        raise
                    # changed meanwhile (another step, or this one's earlier write): read again
        raise RetryableAgentError(f"the pantry item {name!r} kept changing", code="kitchen_unavailable")

    @staticmethod
    def _pantry_item(raw: dict[str, Any]) -> dict[str, Any]:
        return {"name": raw["name"]["S"], "quantity": max(0.0, float(raw.get("quantity", {}).get("N", 0))),
                "unit": raw.get("unit", {}).get("S", "")}

    def put_recipe(self, user_id: str, conversation_id: str, recipe: dict[str, Any], key: str,
                   expires_at: int) -> dict[str, Any]:
        """A write guarded by the step's key: run again (even after a newer save of the same title),
        it changes nothing."""
        item_key = {"pk": {"S": self._pk(user_id, conversation_id)},
                    "sk": {"S": f"recipe#{recipe['title'].lower()}"}}
        with _mapped_errors("kitchen", "kitchen"):
            try:
                self.client.update_item(
                    TableName=self._table, Key=item_key,
                    UpdateExpression="SET doc = :d, expires_at = :e ADD applied :ks",
                    ConditionExpression="attribute_not_exists(applied) OR NOT contains(applied, :k)",
                    ExpressionAttributeValues={":d": {"S": json.dumps(recipe)}, ":e": {"N": str(expires_at)},
                                               ":ks": {"SS": [key]}, ":k": {"S": key}})
            except BotoClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
        return dict(recipe)


# ---- errors --------------------------------------------------------------------------------


def _what_to_do(config: BedrockConfig) -> str:
    return (f"Set ALFRED_BEDROCK_MODEL_ID (the template's BedrockModelId, now {config.model_id!r}) to a "
            f"current model or inference profile offered in {config.region}, with model access enabled "
            "for the account: docs/agents.md, 'Choosing a model'.")


@contextmanager
def _mapped_errors(what: str, source: str = "model", config: BedrockConfig | None = None) -> Iterator[None]:
    """Turn botocore (and urllib3) errors into the runner's retryable / terminal agent errors.

    Codes: ``{source}_throttled`` / ``{source}_unavailable`` (retryable), ``{source}_access_denied``
    / ``{source}_rejected`` (terminal); ``source`` is ``model`` (Bedrock) or ``kitchen`` (DynamoDB).
    With ``config``, an answer that means the configured model cannot be used at all (end of life,
    an id that needs an inference profile, no such model, no tool use) is the terminal
    ``model_not_available``, and its message names the model and says what to do.
    """
    try:
        yield
    except BotoClientError as exc:  # includes EventStreamError (an error event mid-stream)
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = str(err.get("Message", ""))
        message = f"{what}: {code or status}: {text}".rstrip(": ")
        low = code.lower()
        if low in _RETRYABLE_CODES or (low not in _TERMINAL_CODES and (status >= 500 or status == 429)):
            kind = "throttled" if any(w in low for w in ("throttl", "throughput", "quota")) else "unavailable"
            raise RetryableAgentError(message, code=f"{source}_{kind}") from exc
        if config is not None and (low == "resourcenotfoundexception" or (
                low in ("validationexception", "accessdeniedexception")
                and any(p in text.lower() for p in _MODEL_UNUSABLE))):
            raise TerminalAgentError(
                f"the Bedrock model {config.model_id!r} is not available in {config.region}: {code}: {text} "
                f"{_what_to_do(config)}", code="model_not_available") from exc
        if low == "accessdeniedexception":
            hint = f" (model {config.model_id!r}: check the worker role and model access)" if config else ""
            raise TerminalAgentError(message + hint, code=f"{source}_access_denied") from exc
        raise TerminalAgentError(message, code=f"{source}_rejected") from exc
    except (BotoCoreError, Urllib3Error, ConnectionError) as exc:
        # Connection errors and read timeouts: another attempt may work. A stall or a reset in the
        # middle of a stream surfaces as urllib3's ReadTimeoutError / ProtocolError, not botocore's.
        raise RetryableAgentError(f"{what}: {type(exc).__name__}: {str(exc)[:200]}",
                                  code=f"{source}_unavailable") from exc


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
_EMPTY_MESSAGE = "(an empty message)"


@dataclass
class BedrockAgent:
    """Think → Act → Reply with a Bedrock model. ``client`` is a ``bedrock-runtime`` client."""

    config: BedrockConfig
    agent_data: AgentDataStore
    kitchen: KitchenStore
    client_factory: Callable[[], Any] | None = None
    _client: Any = None
    # The context of the job this thread is running: lets ``usage()`` without arguments find its job
    # (the runner runs think, act and reply of one job on one thread; jobs may share the agent).
    _local: threading.local = field(default_factory=threading.local)
    clock: Clock = field(default_factory=SystemClock)  # the process's (``from_deps``: ``deps.clock``)

    def __post_init__(self) -> None:
        self.transport: Transport = self.config.transport()
        if not self.config.forced_tool_choice:
            log.warning("Bedrock model %s: forced tool choice is for Anthropic Claude 3+ and Amazon Nova; "
                        "planning asks for make_plan with toolChoice auto", self.config.model_id)

    @classmethod
    def from_deps(cls, deps: Deps, *, client: Any = None,
                  kitchen: KitchenStore | None = None) -> BedrockAgent:
        """The agent wired from deps; the client is built on first use unless one is given."""
        config = BedrockConfig.from_settings(deps.settings)
        return cls(config=config, agent_data=deps.agent_data,
                   kitchen=kitchen or _default_kitchen(deps), _client=client,
                   client_factory=lambda: build_client(config), clock=deps.clock)

    @property
    def client(self) -> Any:
        """The ``bedrock-runtime`` client, built on first use (never at import)."""
        if self._client is None:
            self._client = (self.client_factory or (lambda: build_client(self.config)))()
        return self._client

    def check_model(self) -> None:
        """One tiny streamed call (1 token) to tell at start whether the model can be used here.

        Raises ``TerminalAgentError(code="model_not_available" / "model_access_denied")`` with what to
        do; retryable errors (throttling, a timeout) say nothing about the model and are raised as is.
        """
        self._ask(self._call([{"role": "user", "content": [{"text": "ping"}]}], max_tokens=1), "model check")

    # -- think ----------------------------------------------------------------------------

    def think(self, ctx: AgentContext) -> Plan:
        """One streamed call made to call ``make_plan``; one repair turn if the plan is malformed."""
        self._local.ctx = ctx
        keep = self.config.history_messages
        tools = [{"name": PLAN_TOOL, "description": "Record the plan of steps that answers the user.",
                  "schema": PlanSpec.model_json_schema()}]
        system = [_SYSTEM, _THINK.format(max_steps=self.config.max_steps)]
        repairs: list[dict[str, Any]] = []
        turn = 0
        while True:
            messages = [*self._conversation(ctx, ctx.message, keep), *repairs]
            call = self._call(messages, system=system, tools=tools, max_tokens=self.config.plan_max_tokens,
                              force_tool=PLAN_TOOL if self.config.forced_tool_choice else None)
            answer = self._plan_call(ctx, call, f"think.{turn + 1}" + (f".h{keep}" if keep else ""))
            if answer.stop == CONTEXT_EXCEEDED and keep > 0:
                keep //= 2  # the history must shrink: more output tokens would not help
                log.warning("job %s: the plan hit the context window; planning again with %d messages of "
                            "history", ctx.job_id, keep)
                continue
            self._check_stop(answer, "think")
            if answer.stop in (TRUNCATED, CONTEXT_EXCEEDED):
                hint = (f"raise ALFRED_BEDROCK_PLAN_MAX_TOKENS (now {self.config.plan_max_tokens})"
                        if answer.stop == TRUNCATED else "the message alone fills the model's context window")
                raise TerminalAgentError(f"the plan was cut off ({answer.stop}): {hint}", code="plan_truncated")
            uses = [u for u in answer.tool_uses if u.get("name") == PLAN_TOOL]
            try:
                if not uses:
                    raise MalformedPlan(f"no {PLAN_TOOL} tool call in the answer")
                if len(uses) > 1:
                    raise MalformedPlan(f"{len(uses)} {PLAN_TOOL} calls in one answer; call it exactly once")
                if uses[0].get("input") is None:
                    raise MalformedPlan(f"the {PLAN_TOOL} input is not JSON")
                return parse_plan(uses[0].get("input"), self.config.max_steps)
            except MalformedPlan as exc:
                if turn == 1:
                    raise TerminalAgentError(f"the model made no valid plan: {str(exc)[:500]}",
                                             code="bad_plan") from exc
                turn += 1
                repairs = [answer.message(), self._repair_turn(answer.tool_uses, str(exc))]

    def _plan_call(self, ctx: AgentContext, call: Call, name: str) -> Answer:
        """The planning call; a model that refuses the forced tool is asked again with ``auto``."""
        try:
            return self._ask(call, "think", ctx=ctx, name=name)
        except TerminalAgentError as exc:
            if call.force_tool is None or not any(w in str(exc).lower() for w in ("toolchoice", "tool_choice")):
                raise
            log.warning("Bedrock model %s refused a forced tool choice; planning with auto", self.config.model_id)
            auto = Call(system=call.system, messages=call.messages, max_tokens=call.max_tokens,
                        temperature=call.temperature, tools=call.tools, cache=call.cache)
            return self._ask(auto, "think", ctx=ctx, name=f"{name}.auto")

    @staticmethod
    def _repair_turn(uses: list[dict[str, Any]], error: str) -> dict[str, Any]:
        """The user turn that shows the model what was wrong with its plan.

        Bedrock wants a tool result for every tool call of the answer, whatever tool it named. The
        ``status`` is dropped by the Converse transport for models AWS does not document it for.
        """
        text = f"That plan is invalid: {error[:1500]}. Call {PLAN_TOOL} again with a valid plan."
        if not uses:
            return {"role": "user", "content": [{"text": text}]}
        return {"role": "user", "content": [{"toolResult": {
            "toolUseId": u.get("toolUseId", f"plan-{i}"), "status": "error", "content": [{"text": text}]}}
            for i, u in enumerate(uses)]}

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
        expires = self._expires(ctx)
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
        prompt = (f"The user asked: {self._message(ctx)}\n\nResults of the earlier steps (JSON):\n"
                  f"{json.dumps(self._earlier(ctx, step.index))}\n\nThis step: {spec.prompt}")
        call = self._call([{"role": "user", "content": [{"text": prompt}]}])
        answer = self._ask(call, f"step {step.index}", ctx=ctx, name=f"step.{step.index}")
        self._check_stop(answer, f"step {step.index}")
        result: dict[str, Any] = {"text": answer.text, "usage": usage_of(call, answer)}
        if answer.stop in (TRUNCATED, CONTEXT_EXCEEDED):
            result["truncated"] = True
        return result

    # -- reply ----------------------------------------------------------------------------

    def reply(self, plan: Plan, ctx: AgentContext) -> Iterator[str]:
        """Stream the answer; a cancel or the runner closing us closes the stream.

        The stream must end with a stop reason: one that just ends was cut off in transit
        (retryable). ``max_tokens`` is a real end, but of a truncated answer: it ends with a note.
        Usage is recorded when the stream ends, whichever way (estimated when it was not reported;
        at its ceiling when cancelled: closing the stream is not known to stop the billing).
        """
        self._local.ctx = ctx
        results = {str(s.index): {"label": s.label, "output": ctx.step_outputs.get(s.index)}
                   for s in plan.steps}
        message = self._message(ctx)
        text = message if not results else (
            f"{message}\n\n(Results of the steps you ran, JSON — use them, do not repeat them "
            f"verbatim: {json.dumps(results)})")
        call = self._call(self._conversation(ctx, text, self.config.history_messages))
        answer = Answer()
        yield from self._stream(call, "reply", answer, ctx=ctx, name="reply")
        if answer.stop is None:
            if ctx.cancelled():
                return
            raise RetryableAgentError("reply: the stream ended before its stop reason (cut off in transit)",
                                      code="model_unavailable")
        self._check_stop(answer, "reply")
        if answer.stop in (TRUNCATED, CONTEXT_EXCEEDED):
            log.warning("job %s: the reply stopped on %s", ctx.job_id, answer.stop)
            yield TRUNCATED_NOTE

    # -- usage ----------------------------------------------------------------------------

    def usage(self, ctx: AgentContext | None = None) -> dict[str, int] | None:
        """The job's token usage: the sum of every model call's record, whichever attempt or process
        made it. Estimated records (cut-off or cancelled streams) are counted and their number is
        given as ``estimatedCalls``. Without ``ctx``, the job this thread last ran is meant."""
        ctx = ctx or getattr(self._local, "ctx", None)
        if ctx is None:
            return None
        records = self.agent_data.usage_records(self._job_key(ctx))
        if not records:
            return None
        total = {k: 0 for k in USAGE_KEYS}
        estimated = 0
        for record in records.values():
            for k in USAGE_KEYS:
                total[k] += int(record.get(k, 0) or 0)
            estimated += 1 if record.get("estimated") else 0
        if estimated:
            total["estimatedCalls"] = estimated
        return total

    # -- calling the model ----------------------------------------------------------------

    def _call(self, messages: list[dict[str, Any]], *, system: list[str] | None = None,
              tools: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
              force_tool: str | None = None) -> Call:
        return Call(system=system or [_SYSTEM], messages=messages, max_tokens=max_tokens or self.config.max_tokens,
                    temperature=self.config.temperature, tools=tools or [], force_tool=force_tool,
                    cache=self.config.prompt_caching)

    def _stream(self, call: Call, what: str, answer: Answer, *, ctx: AgentContext | None = None,
                name: str = "") -> Iterator[str]:
        """Send ``call`` streamed, yield its text; record its usage when the stream ends, whichever way.

        A cancel (seen between events) stops reading and closes the stream; the call is then recorded
        at its ceiling (estimated), since the model is presumed to generate on and be billed.
        """
        cancelled = False
        try:
            with self._errors(what, ctx):
                for chunk in self.transport.stream(self.client, self.config.model_id, call, answer):
                    if ctx is not None and ctx.cancelled():
                        cancelled = True
                        return  # the transport's finally closes the HTTP stream
                    yield chunk
                if ctx is not None and answer.stop is None and ctx.cancelled():
                    cancelled = True
        finally:
            if ctx is not None:
                self._record(ctx, name, usage_of(call, answer, cancelled=cancelled))

    def _ask(self, call: Call, what: str, *, ctx: AgentContext | None = None, name: str = "") -> Answer:
        """One streamed call read to its end (think, a model step, the model check)."""
        answer = Answer()
        for _ in self._stream(call, what, answer, ctx=ctx, name=name):
            pass
        if answer.stop is None:
            raise RetryableAgentError(f"{what}: the stream ended before its stop reason (cut off in transit)",
                                      code="model_unavailable")
        return answer

    @staticmethod
    def _check_stop(answer: Answer, what: str) -> None:
        """A refusal is terminal; a malformed answer is a failed call (retryable), never an answer."""
        if answer.stop in REFUSALS:
            raise TerminalAgentError(f"{what}: the model refused ({answer.stop})", code="refused")
        if answer.stop in MALFORMED:
            raise RetryableAgentError(f"{what}: the model's answer was malformed ({answer.stop})",
                                      code="model_malformed_output")

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _job_key(ctx: AgentContext) -> str:
        """The job, told apart from an earlier job with the same id (reused after retention)."""
        return f"{ctx.job_id}.{int(ctx.created_at * 1000)}" if ctx.created_at else ctx.job_id

    def _expires(self, ctx: AgentContext) -> int:
        return ctx.expires_at or int(self.clock.now()) + self.config.retention_seconds

    def _record(self, ctx: AgentContext, call: str, usage: dict[str, int]) -> None:
        """Record one call's usage at once, keyed by attempt and call: exact across processes."""
        self.agent_data.record_usage(self._job_key(ctx), f"a{ctx.attempt}.{call}", usage, self._expires(ctx))

    @contextmanager
    def _errors(self, what: str, ctx: AgentContext | None = None) -> Iterator[None]:
        """Bedrock's errors mapped; a fresh ``AccessDeniedException`` (the job is younger than the
        grace) is retryable ``model_access_pending``: access can lag a grant by up to two minutes."""
        try:
            with _mapped_errors(what, "model", self.config):
                yield
        except TerminalAgentError as exc:
            age = self.clock.now() - ctx.created_at if ctx is not None and ctx.created_at else None
            if exc.code == "model_access_denied" and age is not None and age < self.config.access_denied_grace:
                raise RetryableAgentError(
                    f"{exc.message} (retried: Bedrock access can take up to about 2 minutes to apply after "
                    f"permissions are granted or the model is first subscribed; terminal after "
                    f"{self.config.access_denied_grace:.0f} s)", code="model_access_pending") from exc
            raise

    @staticmethod
    def _earlier(ctx: AgentContext, index: int) -> dict[str, Any]:
        return {str(i): o for i, o in sorted(ctx.step_outputs.items()) if i < index}

    @staticmethod
    def _message(ctx: AgentContext) -> str:
        """The user's message; Bedrock refuses a blank text block (terminally), so never send one."""
        return ctx.message if ctx.message.strip() else _EMPTY_MESSAGE

    @staticmethod
    def _conversation(ctx: AgentContext, last: str, keep: int) -> list[dict[str, Any]]:
        """The last ``keep`` messages of history plus the new user turn and the messages the user
        steered into the job since (``ctx.steers``: user turns after it), shaped as Bedrock wants:
        user first, roles alternating (consecutive user turns join), no blank text (a blank turn of
        the history is left out)."""
        history = ctx.history[-keep:] if keep > 0 else []  # [-0:] would be the whole history
        steered = [{"role": "user", "text": text} for text in ctx.steers]
        messages: list[dict[str, Any]] = []
        for m in [*history, {"role": "user", "text": last if last.strip() else _EMPTY_MESSAGE}, *steered]:
            role, text = m.get("role"), str(m.get("text", ""))
            if role not in ("user", "assistant") or not text.strip() or (not messages and role != "user"):
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
