"""The one settings object. Every environment variable the system reads is declared here."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY = 24 * 3600


class ModelPrice(BaseModel):
    """A model's on-demand prices, in USD per million tokens; cache reads and writes apart."""

    model_config = ConfigDict(frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float = Field(default=0.0, ge=0)
    cache_write: float = Field(default=0.0, ge=0)


# Amazon Bedrock on-demand prices of the Claude models this project names (us-east-1 and the US
# cross-region inference profiles; the same as Anthropic's list prices, cache writes at the 5-minute
# rate): the figures the bench prices the model with (``alfred_tools/benchmarks/prices.toml``, which
# cites https://www.anthropic.com/pricing; Bedrock's own page was not read for them). A model id
# not listed here is looked up without its geographic prefix (``us.``, ``eu.``, ``apac.``,
# ``global.``); one not found has no cost.
HAIKU_4_5 = ModelPrice(input=1.00, output=5.00, cache_read=0.10, cache_write=1.25)
SONNET = ModelPrice(input=3.00, output=15.00, cache_read=0.30, cache_write=3.75)
DEFAULT_MODEL_PRICES: dict[str, ModelPrice] = {
    "us.anthropic.claude-haiku-4-5-20251001-v1:0": HAIKU_4_5,
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0": SONNET,
    "us.anthropic.claude-sonnet-4-20250514-v1:0": SONNET,
    "us.anthropic.claude-3-7-sonnet-20250219-v1:0": SONNET,
    "us.anthropic.claude-3-5-haiku-20241022-v1:0": ModelPrice(input=0.80, output=4.00, cache_read=0.08,
                                                             cache_write=1.00),
    # The demo agent's made-up usage (agents/demo.py), priced as the default model so that a local
    # timeline shows what such a job would cost.
    "demo": HAIKU_4_5,
}


class Settings(BaseSettings):
    """Configuration, read from the environment (prefix ``ALFRED_``) and validated once at start."""

    model_config = SettingsConfigDict(env_prefix="ALFRED_", extra="ignore")

    # --- where things are -------------------------------------------------------------
    region: str = Field(default="us-east-1", validation_alias="AWS_DEFAULT_REGION")
    jobs_table: str = "alfred-jobs"
    events_table: str = "alfred-job-events"
    conversations_table: str = "alfred-conversations"
    agent_data_table: str = "alfred-agent-data"
    stream_slots_table: str = "alfred-stream-slots"
    queue_name: str = "alfred-jobs"
    dlq_name: str = "alfred-jobs-dlq"
    queue_url: str | None = None
    dlq_url: str | None = None

    # --- durability knobs -------------------------------------------------------------
    # The template keeps deployments at 60 s or more; a few seconds let tests watch retention end.
    retention_seconds: int = Field(default=7 * DAY, ge=2)
    lease_seconds: float = Field(default=30.0, gt=0)
    sweep_seconds: float = Field(default=60.0, gt=0)
    # A pending job whose message has not been picked up after this long is re-enqueued.
    pending_grace_seconds: float = Field(default=30.0, gt=0)
    cancel_poll_seconds: float = Field(default=0.5, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_base_seconds: float = Field(default=2.0, ge=0)
    retry_max_seconds: float = Field(default=300.0, ge=0)
    # The worker's time budget (docs/deploy.md, "Batches and the function timeout"). On Lambda an
    # invocation's time is the context's remaining time; a local worker has none unless this is
    # set (seconds per batch it receives). Before each think, step or reply, the runner checks it
    # can finish that part (the agent's ``expected_seconds`` hint, else ``step_expected_seconds``)
    # and still hand the job on (``handoff_margin_seconds``: a few writes and a send); if not, the
    # attempt ends at the boundary and the job goes on at once in another invocation.
    worker_invocation_seconds: float | None = Field(default=None, gt=0)
    step_expected_seconds: float = Field(default=65.0, gt=0)
    handoff_margin_seconds: float = Field(default=5.0, ge=0)
    # Reply text is written as `delta` events at most this often (coalescing).
    delta_flush_seconds: float = Field(default=0.1, gt=0)
    delta_flush_chars: int = Field(default=400, gt=0)

    # --- the agent ---------------------------------------------------------------------
    agent: Literal["demo", "bedrock"] = "demo"
    demo_step_seconds: float = Field(default=1.0, ge=0)
    # Claude Haiku 4.5 through the US cross-region inference profile: the fastest, cheapest Claude
    # Bedrock opens to every customer (docs/agents.md, "Choosing a model").
    bedrock_model_id: str = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
    bedrock_region: str | None = None  # None: the same region as everything else
    # The API: "auto" is the Anthropic Messages API for Claude and Converse for every other family.
    bedrock_api: Literal["auto", "messages", "converse"] = "auto"
    bedrock_max_tokens: int = Field(default=2048, gt=0)  # a model step's answer, the reply
    bedrock_plan_max_tokens: int = Field(default=4096, gt=0)  # the plan (may carry a pasted recipe)
    # Every model call is streamed: the read timeout is the longest silence allowed between two
    # events of a stream (an idle timeout), not a bound on the whole call; botocore makes one
    # attempt and the runner retries with backoff.
    bedrock_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    bedrock_read_timeout_seconds: float = Field(default=60.0, gt=0)
    # Mark the stable prefix (system prompt, tools, the conversation so far) for prompt caching.
    bedrock_prompt_caching: bool = True
    # An AccessDeniedException this soon after the job was created is retried, not terminal: Bedrock
    # access can lag a grant (or an account's first subscription) by up to about 2 minutes.
    bedrock_access_denied_grace_seconds: float = Field(default=120.0, ge=0)
    bedrock_temperature: float = Field(default=0.2, ge=0, le=1)
    bedrock_max_steps: int = Field(default=6, ge=1, le=20)
    bedrock_history_messages: int = Field(default=20, ge=0)
    # What a job's timeline prices its tokens at, by model id (``ALFRED_MODEL_PRICES``: a JSON
    # object of ``{"input", "output", "cache_read", "cache_write"}`` per model, USD per million
    # tokens; it replaces the defaults, so list every model you use).
    model_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_MODEL_PRICES))

    # --- limits on input ---------------------------------------------------------------
    max_message_chars: int = 8000
    # Messages one job takes by steering (``multitask: steer``); past it a steer becomes a new job.
    # Its turn is one BatchWriteItem of at most 25 items: the message, these, the reply.
    max_steers_per_job: int = Field(default=20, ge=0, le=23)
    # Bodies: read no further than this (a 413 at once, chunked or not); JSON nested no deeper.
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    max_json_depth: int = Field(default=32, ge=1, le=256)
    max_wait_seconds: float = 20.0
    max_list_limit: int = 100

    # --- asking the user ------------------------------------------------------------------
    # A question unanswered this long fails its job (``input_timeout``), enforced by the sweeper.
    input_timeout_seconds: float = Field(default=24 * 3600.0, gt=0)

    # --- per user (guarantee 12 and fairness; see docs/architecture.md, "The gate") -----------
    # Jobs of one user that run at once; the others wait pending, holding no worker or message.
    max_running_per_user: int = Field(default=2, ge=1)
    # Active (pending, running) jobs of one user; past it a submit is a 429 too_many_jobs. The
    # gate item holds one entry per active job (~120 bytes), so it is bounded far below 400 KB.
    max_active_per_user: int = Field(default=20, ge=1, le=1000)
    # While the queue holds a backlog, a job that was sent but never picked up is presumed
    # queued, not lost: once per send (then the sweeper sends it again), and after the sweeper's
    # own send for up to this long since its creation (then it sends it again anyway).
    max_queue_wait_seconds: float = Field(default=900.0, gt=0)
    # How often the sweeper looks over a gate that holds entries for entries whose job has ended
    # or is gone (an enroll that landed late, a removal that failed): such an entry blocks
    # nobody, but it must not outlive its job. An enroll puts its gate on the sweeper's check
    # index due this long after (an earlier check time stays); a check that finds the gate empty
    # takes it off (docs/architecture.md, "The gate").
    gate_check_seconds: float = Field(default=300.0, gt=0)

    # --- the stream function ---------------------------------------------------------------
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    stream_poll_min_seconds: float = Field(default=0.05, gt=0)
    stream_poll_max_seconds: float = Field(default=0.2, gt=0)
    # "host:port" (issue 28): where event writers send a wake-up (a UDP datagram with the job id)
    # after each event they write, and where a stream process listens for them, so a watched job's
    # poller reads at once instead of at its next poll. Only where the writers can reach the stream
    # process: on one machine (``alfred-jobs dev``, the bench), or a service stream in the workers'
    # network. Best effort: a lost datagram leaves the poll as it was. Unset: no wake-ups.
    stream_wake_address: str | None = None
    # Open SSE streams + long-polls at once (a 429 too_many_streams past them; see
    # docs/streaming.md, "Limits"): per user across every process (a slot in the stream slots
    # table, see service/stream_slots.py), and per stream token in one process.
    max_streams_per_user: int = Field(default=20, ge=1, le=1000)
    max_streams_per_token: int = Field(default=5, ge=1)
    # A stream's slot is a lease its stream renews every third of this: a process that dies
    # without giving its slots back (SIGKILL, a Lambda timeout) has them back within it.
    stream_slot_lease_seconds: float = Field(default=30.0, ge=0.5, le=3600.0)

    # --- auth --------------------------------------------------------------------------
    # "local": verify HS256 bearer tokens in-process (dev, tests).
    # "apigw": trust the claims API Gateway's JWT authorizer put in the request context.
    auth_mode: Literal["local", "apigw"] = "local"
    jwt_secret: str = "alfred-local-dev-secret-change-me"
    jwt_issuer: str = "alfred-jobs-local"
    jwt_audience: str = "alfred-jobs"
    stream_token_secret: str = "alfred-local-stream-secret-change-me"
    stream_token_secret_arn: str | None = None  # on AWS: resolved from Secrets Manager at start
    cursor_secret_arn: str | None = None
    stream_token_seconds: int = Field(default=15 * 60, gt=0)
    cursor_secret: str = "alfred-local-cursor-secret-change-me"
    cors_origins: list[str] = Field(default_factory=list)

    # "aws": a deployment (Lambda, a container service); "local": a laptop or a test run, the only
    # place the public development secrets are accepted (see check_deployable).
    deployment: Literal["aws", "local"] = "aws"

    # --- Web Push (docs/notifications.md) ------------------------------------------------------
    # The VAPID key (RFC 8292): a P-256 private key as PEM, or its 32-byte scalar in base64url. On
    # AWS the template-managed secret (ALFRED_VAPID_SECRET_ARN, resolved at start into
    # ``vapid_secret``) holds a random string the key is derived from (service/push.py). None of
    # them: no pushes are sent and GET /api/push/key answers 404 push_disabled.
    vapid_private_key: str | None = None
    vapid_secret: str | None = None
    vapid_secret_arn: str | None = None
    vapid_subject: str = "mailto:alfred-jobs@example.com"  # the sender's contact, in every VAPID token
    # Comma-separated hosts a subscription endpoint may name even over http or on a private
    # address (local tests: "127.0.0.1"); every other endpoint is https to a public address.
    push_endpoint_allow: str = ""
    max_push_subscriptions: int = Field(default=10, ge=1, le=50)  # per user; the oldest is dropped
    push_budget_seconds: float = Field(default=5.0, gt=0)  # all of one notify, retries included
    push_ttl_seconds: int = Field(default=24 * 3600, ge=0)  # how long a push service keeps a push
    # What a push says on a lock screen: "none" (just "Alfred"), "title" ("Alfred finished",
    # "Alfred has a question": no reply or question text), "full" (the title and the start of
    # the reply or the question). Anyone holding the phone reads it.
    push_preview: Literal["none", "title", "full"] = "title"
    # The sender's threads per worker process, shared between users: one user's sends take at
    # most threads // (active users + 1) of them at a time (adapters/push_shares.py).
    push_send_threads: int = Field(default=16, ge=2, le=256)

    # --- drills --------------------------------------------------------------------------
    # Fault injection at the AWS client layer (see faults.py for the format); never set in production.
    faults: str | None = None

    log_level: str = "INFO"
    # Which custom metrics are published on Lambda (template MetricsProfile, docs/observability.md):
    # every one, the essential ones the alarms and the dashboard read, or only the alarms' (each
    # is $0.30 a month; observability.METRIC_PROFILES).
    metrics_profile: Literal["all", "essential", "alarms"] = "all"
    web_dir: str | None = None  # the static web client served by `alfred-jobs dev` (default: web/)

    # --- client (CLI) -------------------------------------------------------------------
    api_url: str = "http://127.0.0.1:8000"
    stream_url: str | None = None
    token: str | None = None
    # How the user runs the CLI, for the commands its hints print: run.sh exports "./run.sh" (as
    # it was invoked), so a hint runs as printed for someone who never activated the venv.
    cli_command: str = "alfred-jobs"


    def check_deployable(self, uses: Collection[str]) -> None:
        """Refuse to serve users with the public development secrets, whatever the auth mode.

        ``uses`` names the secret fields this process signs or verifies with (``"stream_token_secret"``,
        ``"cursor_secret"``); in ``local`` auth mode the bearer tokens' ``jwt_secret`` too. Each
        function checks only its own: the template hands each function only the secrets it uses (the
        worker and the sweeper none), so checking all of them would stop the functions that have no
        business reading them. Their defaults are public (they are in this repository): anyone could
        forge a token with them. Only ``ALFRED_DEPLOYMENT=local`` (a laptop, the tests) runs on them,
        and then says so loudly.
        """
        names = [*uses, *(["jwt_secret"] if self.auth_mode == "local" else [])]
        defaults = Settings.model_fields
        public = [n for n in names if getattr(self, n) == defaults[n].default]
        if not public:
            return
        wanted = ", ".join(f"ALFRED_{n.upper()}_ARN (or ALFRED_{n.upper()})" if n != "jwt_secret"
                           else "ALFRED_JWT_SECRET" for n in public)
        if self.deployment != "local":
            raise RuntimeError(f"refusing to start on the public development secrets: set {wanted}, "
                               "or ALFRED_DEPLOYMENT=local on a laptop")
        logging.getLogger("alfred_jobs").warning(
            "LOCAL MODE: signing with the public development secrets (%s); anyone can forge tokens. "
            "Never expose this process beyond this machine.", ", ".join(public))


SUBMIT_SECRETS = ("stream_token_secret", "cursor_secret")  # mints stream links, signs list cursors
STREAM_SECRETS = ("stream_token_secret",)  # verifies stream tokens
