"""The cost model: the whole bill of one Alfred job, ours and the peers', at list prices.

Every price and assumption is in ``prices.toml`` next to this file (with its source and the date
it was read); this module only does the arithmetic, in small functions a unit test can check.

Two figures come out of a bench run:

- ``cost_per_million_jobs_usd`` (the older, narrower one): the DynamoDB and SQS requests counted
  for the bench's 5 x 1 s job, against the Step Functions transitions of the same job.
- ``aws_cost_per_million_jobs_usd`` (the whole bill, issue 16): the same think + 5 steps +
  streamed reply, 15 s of agent work, watched end to end by one client, in five ways: ours with
  the stream as a Lambda (``lambda_stream``) or as a Fargate service behind an ALB
  (``service_stream``), and Step Functions Standard, Lambda durable functions and Temporal Cloud.
  The bench measures a 5 x 1 s job; what grows with time (the stream poller's and the lease
  keeper's reads, the heartbeats) is scaled to 15 s at the rate measured in the same run,
  between the zero-step job and the 5 x 1 s job.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices.toml")
MB = 1024 * 1024
GB = 1024 ** 3
STREAM_FREE_BYTES_PER_REQUEST = 6 * MB
# Local table names are "<prefix>-<role>" (alfred_tools.localstack.resource_env).
AGENT_TABLE_ROLE = "agent-data"
EVENTS_TABLE_ROLE = "events"
WRITE_OPS = ("dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.DeleteItem", "dynamodb.BatchWriteItem")


def load_prices(path: Path = PRICES_FILE) -> dict[str, Any]:
    """The price file, parsed."""
    with path.open("rb") as fh:
        return tomllib.load(fh)


def usd(cfg: dict[str, Any], name: str) -> float:
    """One price in USD per its unit."""
    return float(cfg["price"][name]["usd"])


# ---- counted units --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Units:
    """AWS billing units of one job, as counted (or scaled) from the bench.

    Reads are kept in full units by consistency: an eventually consistent read is billed half a
    read unit, which the pricing applies (``rru_billed``).
    """

    wru: float = 0.0            # write units, all tables but the agent's own
    rru_strong: float = 0.0     # strongly consistent read units (the worker's: lease, cancel poll, gate, replay)
    rru_eventual: float = 0.0   # eventually consistent read units (the stream's probes, GSI queries)
    sqs: float = 0.0            # SQS requests (send, receive with a message, delete, visibility)
    event_wru: float = 0.0      # of ``wru``: the event log's writes (what a peer needs to feed the same stream)

    @property
    def rru_billed(self) -> float:
        return self.rru_strong + self.rru_eventual / 2

    def scaled(self, other: Units, factor: float) -> Units:
        """self + factor x other, field by field."""
        return Units(*(getattr(self, f) + factor * getattr(other, f) for f in _FIELDS))

    def minus(self, other: Units) -> Units:
        """self - other, never below zero per field (noise must not make a rate negative)."""
        return Units(*(max(0.0, getattr(self, f) - getattr(other, f)) for f in _FIELDS))

    def rounded(self) -> dict[str, float]:
        return {f: round(getattr(self, f), 3) for f in _FIELDS}


_FIELDS = ("wru", "rru_strong", "rru_eventual", "sqs", "event_wru")


def _role(target: str) -> str:
    """The table's role from its local name ("b1234abcd-events" → "events")."""
    for role in (AGENT_TABLE_ROLE, "conversations", EVENTS_TABLE_ROLE, "jobs"):
        if target.endswith("-" + role) or target == role:
            return role
    return target


def units_from_counts(requests: dict[str, dict[str, float]], agent_table: str = "") -> Units:
    """Billing units from the counters' per-job snapshot (``counting.RequestCounter``), without
    the agent's own table (its side effects cost the same whoever orchestrates the agent)."""
    wru = event_wru = strong = eventual = 0.0
    for key, n in requests.get("wru_by_target", {}).items():
        _, _, target = key.partition(" ")
        role = _role(target)
        if role == AGENT_TABLE_ROLE or target == agent_table:
            continue
        wru += n
        if role == EVENTS_TABLE_ROLE:
            event_wru += n
    for key, n in requests.get("rru_by_target", {}).items():
        _, _, rest = key.partition(" ")
        target, _, consistency = rest.rpartition(" ")
        if _role(target) == AGENT_TABLE_ROLE or target == agent_table:
            continue
        if consistency == "eventual":
            eventual += n
        else:
            strong += n
    sqs = sum(n for op, n in requests.get("calls", {}).items() if op.startswith("sqs."))
    return Units(wru=wru, rru_strong=strong, rru_eventual=eventual, sqs=sqs, event_wru=event_wru)


def scale_to(seconds: float, short: Units, short_s: float, long: Units, long_s: float) -> tuple[Units, Units]:
    """(units of a job of ``seconds``, units per second) by a straight line through two measured
    jobs: the zero-step job (``short``) and the 5 x 1 s job (``long``), same events, same run.

    The per-second rate is an upper bound for longer steps: the stream's poller backs off while
    nothing new comes (50 ms to 250 ms), so a 15 s job of fewer, longer gaps polls less per second
    than the 1 s steps measured.
    """
    span = long_s - short_s
    if span <= 0.1:  # no usable second point: all of the long job's units are taken per second
        rate = Units(*(getattr(long, f) / max(long_s, 1e-3) for f in _FIELDS))
        return Units().scaled(rate, seconds), rate
    rate = Units().scaled(long.minus(short), 1 / span)
    # what only happens at a job's edges (the events, submit, the queue) stays as counted
    rate = Units(wru=rate.wru, rru_strong=rate.rru_strong, rru_eventual=rate.rru_eventual, sqs=rate.sqs,
                 event_wru=0.0)
    return short.scaled(rate, max(0.0, seconds - short_s)), rate


# ---- template.yaml ---------------------------------------------------------------------------------


def function_memory_gb(template: dict[str, Any]) -> dict[str, float]:
    """MemorySize of each function in GB (its own, else the Globals'), by logical id."""
    default = float(template.get("Globals", {}).get("Function", {}).get("MemorySize", 128))
    out: dict[str, float] = {}
    for name, res in template.get("Resources", {}).items():
        if isinstance(res, dict) and res.get("Type") == "AWS::Serverless::Function":
            mem = res.get("Properties", {}).get("MemorySize", default)
            out[name] = (float(mem) if isinstance(mem, int | float) else default) / 1024  # a !Ref: the default
    return out


def ticks_per_hour(schedule: str) -> float:
    """Ticks an hour of an EventBridge ``rate(N unit)`` expression (a cron counts as one a minute)."""
    m = re.fullmatch(r"\s*rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)\s*", schedule or "")
    if not m:
        return 60.0
    n, unit = int(m.group(1)), m.group(2)
    per = {"minute": 60.0, "hour": 1.0, "day": 1 / 24}[unit.rstrip("s")]
    return per / n


def template_facts(template: dict[str, Any]) -> dict[str, Any]:
    """What the bill reads from template.yaml: each function's memory and the sweep schedule."""
    schedule = template.get("Parameters", {}).get("SweepSchedule", {}).get("Default", "rate(1 minute)")
    mem = function_memory_gb(template)
    default = float(template.get("Globals", {}).get("Function", {}).get("MemorySize", 128)) / 1024
    return {"memory_gb": {k: mem.get(f"{k.capitalize()}Function", default)
                          for k in ("submit", "worker", "sweeper", "stream")},
            "sweep_schedule": schedule, "sweeper_ticks_per_hour": ticks_per_hour(str(schedule))}


# ---- the five bills ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """Everything a bill needs besides the prices: the job's units and durations, the template."""

    units: Units                # at the priced job length (15 s)
    job_seconds: float          # the agent's work
    overhead_seconds: float     # what a durable job adds to it end to end (measured: durable - inline)
    memory_gb: dict[str, float]
    sweeper_ticks_per_hour: float


def _lambda(cfg: dict[str, Any], gb_seconds: float, requests: float) -> float:
    return gb_seconds * usd(cfg, "lambda_gb_second_x86") + requests * usd(cfg, "lambda_request")


def _dynamodb(cfg: dict[str, Any], wru: float, rru_billed: float) -> float:
    return wru * usd(cfg, "dynamodb_wru") + rru_billed * usd(cfg, "dynamodb_rru")


def _per_million(parts: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1e6, 2) for k, v in parts.items()}


def submit_parts(cfg: dict[str, Any], inp: Inputs) -> dict[str, float]:
    """Per job: the API request(s) and the submit function (every option has them)."""
    job = cfg["job"]
    gbs = cfg["lambda"]["submit_seconds"] * inp.memory_gb["submit"]
    return {"api_gateway": job["api_requests"] * usd(cfg, "apigw_http_request"),
            "lambda_submit": _lambda(cfg, gbs, job["api_requests"])}


def stream_lambda_parts(cfg: dict[str, Any], inp: Inputs) -> dict[str, float]:
    """Per job: the stream as a Lambda behind its Function URL, open for the whole job."""
    job = cfg["job"]
    seconds = inp.job_seconds + inp.overhead_seconds
    billable = max(0.0, job["sse_bytes"] - STREAM_FREE_BYTES_PER_REQUEST) * job["stream_connections"]
    return {"lambda_stream": _lambda(cfg, seconds * inp.memory_gb["stream"] * job["stream_connections"],
                                     job["stream_connections"]),
            "lambda_streamed_bytes": billable / GB * usd(cfg, "lambda_streamed_gb")}


def sweeper_and_idle_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """Per job: the fixed hourly costs of ours shared over the load (sweeper ticks, idle queue polls)."""
    lam = cfg["lambda"]
    ticks = inp.sweeper_ticks_per_hour / jobs_per_hour
    gbs = lam["sweeper_tick_seconds"] * inp.memory_gb["sweeper"]
    idle = cfg["sqs_idle"]["empty_receives_per_hour"] / jobs_per_hour
    return {"lambda_sweeper": ticks * _lambda(cfg, gbs, 1),
            "dynamodb_sweeper": ticks * _dynamodb(cfg, 0, lam["sweeper_queries_per_tick"] / 2),
            "sqs_sweeper_and_idle_polls": (ticks * lam["sweeper_sqs_requests_per_tick"] + idle)
            * usd(cfg, "sqs_request")}


def ours_core_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """Per job, ours without the stream's hosting: submit, the worker (the agent's compute), the
    storage and queue requests counted, the sweeper's share."""
    u = inp.units
    worker_gbs = (inp.job_seconds + inp.overhead_seconds) * inp.memory_gb["worker"]
    return {**submit_parts(cfg, inp),
            "lambda_worker": _lambda(cfg, worker_gbs, 1),
            "dynamodb": _dynamodb(cfg, u.wru, u.rru_billed),
            "sqs": u.sqs * usd(cfg, "sqs_request"),
            **sweeper_and_idle_parts(cfg, inp, jobs_per_hour)}


def service_hourly(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """USD an hour of the stream as a Fargate service behind an ALB at ``jobs_per_hour``."""
    svc, job = cfg["service_stream"], cfg["job"]
    open_seconds = inp.job_seconds + inp.overhead_seconds
    concurrent = jobs_per_hour * job["stream_connections"] * open_seconds / 3600
    tasks = max(svc["min_tasks"], math.ceil(concurrent / svc["watched_jobs_per_task"]))
    task_hour = svc["task_vcpu"] * usd(cfg, "fargate_vcpu_hour") + svc["task_gb"] * usd(cfg, "fargate_gb_hour")
    requests_per_s = jobs_per_hour * job["stream_connections"] / 3600
    lcu = max(requests_per_s / 25,                                   # new connections a second
              concurrent / 3000,                                     # active connections a minute
              jobs_per_hour * job["sse_bytes"] * job["stream_connections"] / GB,  # GB processed an hour
              max(0, svc["alb_rule_evaluations_per_request"] - 10) * requests_per_s / 1000)  # 10 rules free
    return {"fargate_tasks": tasks * task_hour, "alb_hour": usd(cfg, "alb_hour"),
            "alb_lcu": lcu * usd(cfg, "alb_lcu_hour"), "tasks": float(tasks)}


def service_stream_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """Per job: the service's hourly cost shared over the load."""
    h = service_hourly(cfg, inp, jobs_per_hour)
    return {"fargate_stream_tasks": h["fargate_tasks"] / jobs_per_hour,
            "alb": (h["alb_hour"] + h["alb_lcu"]) / jobs_per_hour}


def break_even_jobs_per_hour(cfg: dict[str, Any], inp: Inputs) -> float:
    """The load above which the service stream costs less per job than the Lambda stream.

    With the minimum tasks the service costs A + b x N an hour (A: tasks and ALB hours, b: the
    LCUs, linear in the load); the Lambda stream costs c per job: N = A / (c - b).
    """
    c = sum(stream_lambda_parts(cfg, inp).values())
    h1 = service_hourly(cfg, inp, 1.0)
    b = h1["alb_lcu"]
    a = h1["fargate_tasks"] + h1["alb_hour"]
    return math.inf if c <= b else a / (c - b)


def watch_parts(cfg: dict[str, Any], inp: Inputs) -> dict[str, float]:
    """Per job, for a peer: the client watches through the same stream (a Lambda, as ours), fed
    by the same event writes; the stream's reads are the eventually consistent ones counted."""
    u = inp.units
    return {**stream_lambda_parts(cfg, inp),
            "dynamodb_events_and_stream": _dynamodb(cfg, u.event_wru + 1, u.rru_eventual / 2)}


def agent_compute(cfg: dict[str, Any], inp: Inputs, invocations: float) -> float:
    """The agent's 15 s as Lambda task functions at the worker's memory."""
    return _lambda(cfg, inp.job_seconds * inp.memory_gb["worker"], invocations)


def step_functions_parts(cfg: dict[str, Any], inp: Inputs) -> dict[str, float]:
    sf, steps = cfg["step_functions"], cfg["job"]["steps"]
    transitions = sf["transitions_fixed"] + sf["transitions_per_step"] * steps
    tasks = sf["task_invocations_fixed"] + sf["task_invocations_per_step"] * steps
    return {**submit_parts(cfg, inp),
            "state_transitions": transitions * usd(cfg, "sfn_standard_transition"),
            "lambda_tasks": agent_compute(cfg, inp, tasks),
            **watch_parts(cfg, inp)}


def durable_functions_parts(cfg: dict[str, Any], inp: Inputs) -> dict[str, float]:
    df, steps = cfg["durable_functions"], cfg["job"]["steps"]
    ops = df["operations_fixed"] + df["operations_per_step"] * steps
    written_gb = ops * df["checkpoint_bytes_per_operation"] / GB
    return {**submit_parts(cfg, inp),
            "durable_operations": ops * usd(cfg, "lambda_durable_operation"),
            "durable_data_written": written_gb * usd(cfg, "lambda_durable_data_written_gb"),
            "durable_data_retained": written_gb * df["retention_days"] / 30
            * usd(cfg, "lambda_durable_data_retained_gb_month"),
            "lambda_durable_function": agent_compute(cfg, inp, 1),
            **watch_parts(cfg, inp)}


def temporal_parts(cfg: dict[str, Any], inp: Inputs, action_price: str = "temporal_cloud_action") -> dict[str, float]:
    t, ts, steps = cfg["temporal"], cfg["temporal_storage"], cfg["job"]["steps"]
    actions = t["actions_fixed"] + t["actions_per_step"] * steps + t["heartbeat_actions"]
    usage = (actions * usd(cfg, action_price)
             + ts["history_bytes"] / GB * ts["retention_days"] * 24 * usd(cfg, "temporal_cloud_retained_gbh"))
    return {**submit_parts(cfg, inp),
            "temporal_actions_and_storage": usage,
            "temporal_plan": usage * ts["plan_fraction"],
            # A Temporal worker is a long-lived poller (Fargate, EC2): its compute is priced here as
            # the same GB-seconds as the agent's on Lambda, like for like, not as a fleet.
            "worker_compute": agent_compute(cfg, inp, 0),
            **watch_parts(cfg, inp)}


def whole_bill(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, dict[str, float]]:
    """USD per million jobs of each option, by component."""
    core = ours_core_parts(cfg, inp, jobs_per_hour)
    return {"lambda_stream": _per_million({**core, **stream_lambda_parts(cfg, inp)}),
            "service_stream": _per_million({**core, **service_stream_parts(cfg, inp, jobs_per_hour)}),
            "step_functions_standard": _per_million(step_functions_parts(cfg, inp)),
            "lambda_durable_functions": _per_million(durable_functions_parts(cfg, inp)),
            "temporal_cloud": _per_million(temporal_parts(cfg, inp))}


def totals(bill: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(parts.values()), 2) for k, parts in bill.items()}


# ---- the older, narrower figure ------------------------------------------------------------------


def ours_per_job(requests: dict[str, dict[str, float]], agent_table: str = "") -> dict[str, float]:
    """WRU, billed RRU and SQS requests per job of the counted job (the agent's table left out)."""
    u = units_from_counts(requests, agent_table)
    return {"dynamodb_wru": round(u.wru, 2), "dynamodb_rru": round(u.rru_billed, 2),
            "dynamodb_rru_strong": round(u.rru_strong, 2), "dynamodb_rru_eventual": round(u.rru_eventual, 2),
            "sqs_requests": round(u.sqs, 2)}


def cost_per_million_jobs(units: dict[str, float], cfg: dict[str, Any] | None = None) -> dict[str, float]:
    """USD per million jobs: ours from counted requests, Step Functions from its transitions alone."""
    cfg = cfg or load_prices()
    sf, steps = cfg["step_functions"], cfg["job"]["steps"]
    ours = (units["dynamodb_wru"] * usd(cfg, "dynamodb_wru") + units["dynamodb_rru"] * usd(cfg, "dynamodb_rru")
            + units["sqs_requests"] * usd(cfg, "sqs_request"))
    transitions = sf["transitions_fixed"] + sf["transitions_per_step"] * steps
    return {"alfred_jobs": round(ours * 1e6, 2),
            "step_functions_standard": round(transitions * usd(cfg, "sfn_standard_transition") * 1e6, 2)}


# ---- what the bench calls -------------------------------------------------------------------------


INCLUDES = {
    "lambda_stream": "API Gateway (POST /api/chat), submit/worker/sweeper/stream Lambdas at their template "
                     "memory (worker = the agent's 15 s + the measured overhead), streamed bytes past 6 MB, "
                     "DynamoDB (counted, scaled to 15 s; eventual reads at half), SQS (counted + sweeper + idle "
                     "ESM polls), sweeper ticks shared over the load",
    "service_stream": "the same, with the stream as Fargate tasks (min 2 x 0.25 vCPU/0.5 GB) + ALB hour + LCU "
                      "shared over the load instead of the stream Lambda",
    "step_functions_standard": "transitions of a real machine (Think, Choice, Map, 5 x Act, Reply, Succeed), the "
                               "agent as Lambda tasks (15 s at the worker's memory), the same submit, the client on "
                               "the same Lambda stream fed by the same event writes; no SQS, lease, sweeper, gate",
    "lambda_durable_functions": "durable operations (start, think, 5 steps, reply), checkpoint data written and "
                                "retained, the durable function's compute (15 s at the worker's memory), the same "
                                "submit and stream as the Step Functions peer",
    "temporal_cloud": "Actions (workflow start, 7 activities, reply heartbeats) at $50/M (pay-as-you-go first "
                      "tier), retained history, the 10% Developer plan, worker compute as the same Lambda "
                      "GB-seconds, the same submit and stream as the Step Functions peer",
}
EXCLUDES = ["CloudWatch (logs, metrics, X-Ray): left out of every option",
            "data transfer out to the internet: the same bytes for every option",
            "Secrets Manager: read once per container and cached, not per job",
            "the agent's own side-effect writes (its table) and Bedrock tokens: the same for every option",
            "free tiers, Savings Plans, Temporal volume tiers and commitments"]


def bench_figures(over: dict[str, Any], zero: dict[str, Any], template: dict[str, Any], agent_table: str = "",
                  cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bench's cost keys from the overhead (5 x 1 s) and zero-step scenarios of the same run."""
    cfg = cfg or load_prices()
    long = units_from_counts(over["requests"], agent_table)
    long_s = float(over.get("overhead_job_s") or 0.0)
    short = units_from_counts(zero["requests"], agent_table) if "requests" in zero else Units()
    short_s = float(zero.get("zero_step_job_ms") or 0.0) / 1000
    seconds = float(cfg["job"]["seconds"])
    units, rate = scale_to(seconds, short, short_s, long, long_s)
    overhead = max(0.0, long_s - float(over.get("overhead_inline_s") or long_s))
    facts = template_facts(template)
    inp = Inputs(units=units, job_seconds=seconds, overhead_seconds=overhead, memory_gb=facts["memory_gb"],
                 sweeper_ticks_per_hour=facts["sweeper_ticks_per_hour"])
    load = float(cfg["load"]["jobs_per_hour"])
    bill = whole_bill(cfg, inp, load)
    temporal_volume = totals({"t": _per_million(temporal_parts(cfg, inp, "temporal_cloud_action_volume"))})["t"]
    counted = ours_per_job(over["requests"], agent_table)
    return {
        "cost_per_million_jobs_usd": cost_per_million_jobs(counted, cfg),
        "cost_units_per_job": counted,
        "aws_cost_per_million_jobs_usd": totals(bill),
        "aws_cost_detail": {
            "job": f"think + {cfg['job']['steps']} steps + streamed reply, {seconds:g} s of agent work, "
                   "one client watching from submit to the end",
            "load_jobs_per_hour": load,
            "service_stream_break_even_jobs_per_hour": round(break_even_jobs_per_hour(cfg, inp), 1),
            "service_stream_tasks": service_hourly(cfg, inp, load)["tasks"],
            "units_per_job": units.rounded(),
            "units_per_second": rate.rounded(),
            "measured": {"zero_step_job_s": round(short_s, 3), "five_step_job_s": round(long_s, 3),
                         "overhead_s": round(overhead, 3)},
            "template": facts,
            "components_usd_per_million": bill,
            "temporal_cloud_at_25_per_million_actions": temporal_volume,
            "includes": INCLUDES,
            "excludes": EXCLUDES,
        },
    }


def price_notes(cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The prices and assumptions as the bench's JSON shows them."""
    cfg = cfg or load_prices()
    return {"as_of": cfg["meta"]["read_on"], "file": "lib/alfred_tools/benchmarks/prices.toml",
            "usd": {k: v["usd"] for k, v in cfg["price"].items()},
            "unconfirmed": sorted(k for k, v in cfg["price"].items() if not v.get("confirmed")),
            "sources": {k: v["source"] for k, v in cfg["price"].items()},
            "assumptions": {k: v for k, v in cfg.items() if k not in ("price", "meta")}}
