"""The cost model: the whole bill of one Alfred job, ours and the peers', at list prices.

Every price and assumption is in ``prices.toml`` next to this file (with its source and the date
it was read); this module only does the arithmetic, in small functions a unit test can check.

Two figures come out of a bench run:

- ``cost_per_million_jobs_usd`` (the older, narrower one): the DynamoDB and SQS requests counted
  for the bench's 5 x 1 s job, against the Step Functions transitions of the same job.
- ``aws_cost_per_million_jobs_usd`` (the whole bill, issues 16 and 28): the same think + 5 steps +
  streamed reply, 15 s of agent work, watched end to end by one client, in six ways: ours with
  the stream as a Lambda (``lambda_stream``) or as a Fargate service behind an ALB
  (``service_stream``), and Step Functions Standard and Express, Lambda durable functions and
  Temporal Cloud (the peers at their own defaults: x86_64, no active tracing, their plans).
  The bench measures a 5 x 1 s job; what grows with time (the stream poller's and the lease
  keeper's reads, the heartbeats) is scaled to 15 s at the rate measured in the same run,
  between the zero-step job and the 5 x 1 s job. So is our process CPU per job, which a Lambda
  runs on a share of a core in proportion to its memory (``cpu_share``): the worker's billed
  seconds grow by it, the stream's only when it outgrows the job's wall. A seventh row,
  ``lambda_stream_lean``, is ``lambda_stream`` on the template with ``[lean]``'s parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
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
    jobs: the zero-step job (``short``) and the 5 x 1 s job (``long``), same run.

    Only reads are scaled with time: the stream's poller and the lease keeper's cancel polls run
    per second (an upper bound for longer steps: the poller backs off while nothing new comes,
    50 ms to 250 ms). Writes and queue requests follow the job's steps, and the priced job has the
    measured job's steps (think + 5 steps + reply), so they are the 5 x 1 s job's as counted; the
    one write that grows with time, the lease renewal (every LeaseSeconds / 3, none in a 6 s job),
    is added by the caller (``lease_renewals``).
    """
    span = long_s - short_s
    if span <= 0.1:  # no usable second point: all of the long job's reads are taken per second
        per_s = max(long_s, 1e-3)
        rate = Units(rru_strong=long.rru_strong / per_s, rru_eventual=long.rru_eventual / per_s)
        return Units(wru=long.wru, rru_strong=rate.rru_strong * seconds, rru_eventual=rate.rru_eventual * seconds,
                     sqs=long.sqs, event_wru=long.event_wru), rate
    diff = long.minus(short)
    rate = Units(rru_strong=diff.rru_strong / span, rru_eventual=diff.rru_eventual / span)
    extra = max(0.0, seconds - short_s)
    return Units(wru=long.wru, rru_strong=short.rru_strong + rate.rru_strong * extra,
                 rru_eventual=short.rru_eventual + rate.rru_eventual * extra,
                 sqs=long.sqs, event_wru=long.event_wru), rate


def scale_cpu(seconds: float, short: dict[str, float], short_s: float, long: dict[str, float],
              long_s: float) -> dict[str, float]:
    """Our process CPU seconds per job of ``seconds``, by function, on the same straight line as
    the reads (``scale_to``): the zero-step job's and the 5 x 1 s job's, measured in the same run
    (``jobs.CpuSplit``). A function measured in neither (or NaN: not Linux) is left out: no stretch."""
    out: dict[str, float] = {}
    for fn, cpu in long.items():
        if not isinstance(cpu, int | float) or math.isnan(cpu):
            continue
        base = short.get(fn)
        span = long_s - short_s
        if base is None or math.isnan(base) or span <= 0.1:
            out[fn] = cpu / max(long_s, 1e-3) * seconds
        else:
            out[fn] = max(0.0, base + (cpu - base) / span * max(0.0, seconds - short_s))
    return out


def lease_renewals(seconds: float, lease_seconds: float) -> int:
    """Lease renewals of a job of ``seconds``: the lease keeper renews every third of the lease
    (``durability/lease.py``), so a 15 s job on a 30 s lease renews once (at 10 s)."""
    every = lease_seconds / 3
    return int(seconds // every) if every > 0 else 0


# ---- template.yaml ---------------------------------------------------------------------------------


def with_parameters(template: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """The template as a deploy with these parameter values sees it (each becomes its default)."""
    out = copy.deepcopy(template)
    for name, value in parameters.items():
        if name not in out.get("Parameters", {}):
            raise KeyError(f"template.yaml has no parameter {name}")
        out["Parameters"][name]["Default"] = value
    return out


def _resolve(template: dict[str, Any], value: Any) -> Any:
    """A literal, or a ``!Ref`` to a parameter resolved to its default (what a plain deploy gets)."""
    if isinstance(value, dict) and "Ref" in value:
        return template.get("Parameters", {}).get(value["Ref"], {}).get("Default")
    if isinstance(value, list) and len(value) == 1:
        return _resolve(template, value[0])
    return value


def function_memory_gb(template: dict[str, Any]) -> dict[str, float]:
    """MemorySize of each function in GB (its own, else the Globals'), by logical id."""
    default = float(_resolve(template, template.get("Globals", {}).get("Function", {}).get("MemorySize", 128)))
    out: dict[str, float] = {}
    for name, res in template.get("Resources", {}).items():
        if isinstance(res, dict) and res.get("Type") == "AWS::Serverless::Function":
            mem = _resolve(template, res.get("Properties", {}).get("MemorySize", default))
            out[name] = (float(mem) if isinstance(mem, int | float) else default) / 1024
    return out


def ticks_per_hour(schedule: str) -> float:
    """Ticks an hour of an EventBridge ``rate(N unit)`` expression (a cron counts as one a minute)."""
    m = re.fullmatch(r"\s*rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)\s*", schedule or "")
    if not m:
        return 60.0
    n, unit = int(m.group(1)), m.group(2)
    per = {"minute": 60.0, "hour": 1.0, "day": 1 / 24}[unit.rstrip("s")]
    return per / n


@dataclass(frozen=True)
class Index:
    """A global secondary index as the bill needs it: its key attributes and what it projects."""

    name: str
    keys: frozenset[str]
    projection: str                      # ALL, KEYS_ONLY or INCLUDE
    include: frozenset[str] = frozenset()


def table_indexes(template: dict[str, Any], table: str = "JobsTable") -> list[Index]:
    """The GSIs of a table in template.yaml."""
    props = template.get("Resources", {}).get(table, {}).get("Properties", {})
    out = []
    for gsi in props.get("GlobalSecondaryIndexes", []):
        proj = gsi.get("Projection", {})
        out.append(Index(name=gsi["IndexName"], keys=frozenset(k["AttributeName"] for k in gsi["KeySchema"]),
                         projection=proj.get("ProjectionType", "KEYS_ONLY"),
                         include=frozenset(proj.get("NonKeyAttributes", []))))
    return out


def index_writes(index: Index, before: frozenset[str], sets: frozenset[str], removes: frozenset[str]) -> int:
    """Write units one table write costs in one GSI (an item under 1 KB), by DynamoDB's rules:
    an item entering or leaving the index is one index write; a change of an index key attribute
    is two (the old entry deleted, the new one put); a change of a projected attribute is one;
    anything else is none (a sparse index the item is not in costs nothing)."""
    after = (before | sets) - removes
    was, now = index.keys <= before, index.keys <= after
    if not was and not now:
        return 0
    if was != now:
        return 1
    changed = sets | removes
    if changed & index.keys:
        return 2
    if index.projection == "ALL" or (index.projection == "INCLUDE" and changed & index.include):
        return 1
    return 0


def index_write_units(indexes: list[Index], writes: list[dict[str, Any]], renewals: float) -> dict[str, float]:
    """Index write units of one job, by index, from the job's table writes in order (``prices.toml``
    ``[[jobs_table_write]]``: which item, which attributes each sets and removes, how many times;
    ``count = "renewals"`` takes the measured lease renewals)."""
    items: dict[str, frozenset[str]] = {}
    out = {ix.name: 0.0 for ix in indexes}
    for w in writes:
        n = renewals if w["count"] == "renewals" else float(w["count"])
        before = items.get(w["item"], frozenset())
        sets, removes = frozenset(w.get("sets", [])), frozenset(w.get("removes", []))
        for ix in indexes:
            out[ix.name] += n * index_writes(ix, before, sets, removes)
        items[w["item"]] = (before | sets) - removes
    return out


def template_facts(template: dict[str, Any]) -> dict[str, Any]:
    """What the bill reads from template.yaml: each function's memory, architecture and tracing,
    the sweep schedule, the jobs table's indexes and the secrets."""
    params = template.get("Parameters", {})
    schedule = params.get("SweepSchedule", {}).get("Default", "rate(1 minute)")
    glob = template.get("Globals", {}).get("Function", {})
    mem = function_memory_gb(template)
    default = float(_resolve(template, glob.get("MemorySize", 128))) / 1024
    resources = template.get("Resources", {})
    return {"memory_gb": {k: mem.get(f"{k.capitalize()}Function", default)
                          for k in ("submit", "worker", "sweeper", "stream")},
            "architecture": str(_resolve(template, glob.get("Architectures", ["x86_64"])) or "x86_64"),
            "tracing": str(_resolve(template, glob.get("Tracing", "PassThrough")) or "PassThrough"),
            "sweep_schedule": schedule, "sweeper_ticks_per_hour": ticks_per_hour(str(schedule)),
            "lease_seconds": float(params.get("LeaseSeconds", {}).get("Default", 30)),
            "metrics_profile": str(params.get("MetricsProfile", {}).get("Default", "all")),
            "jobs_indexes": {ix.name: ix.projection for ix in table_indexes(template)},
            "secrets": sum(1 for r in resources.values()
                           if isinstance(r, dict) and r.get("Type") == "AWS::SecretsManager::Secret")}


# ---- the bills ------------------------------------------------------------------------------------

PEER_ARCH = "x86_64"  # Lambda's default architecture: the peers' functions keep their own defaults
HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class Inputs:
    """Everything a bill needs besides the prices: the job's units and durations, the template."""

    units: Units                # at the priced job length (15 s)
    job_seconds: float          # the agent's work
    overhead_seconds: float     # what a durable job adds to it end to end (measured: durable - inline)
    memory_gb: dict[str, float]
    sweeper_ticks_per_hour: float
    arch: str = "x86_64"        # ours: template.yaml's Architecture
    tracing: bool = False       # ours: X-Ray active tracing on every function
    index_wru: float = 0.0      # write units of the jobs table's indexes, from its definition
    secrets: int = 0            # Secrets Manager secrets of the stack
    log_bytes: float = 0.0      # the log lines our code emits per job (measured), before the platform's
    # Our process CPU seconds per priced job, by function ("worker", "stream"), measured on the
    # bench machine's full cores; a Lambda gets a share of a core in proportion to its memory
    # (``cpu_share``), which stretches what it is billed for (``worker_seconds``, ``stream_seconds``).
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    metrics_profile: str = "all"  # MetricsProfile: which custom metrics are published


# ---- CPU share: Lambda's CPU follows its memory ----------------------------------------------------

# "At 1,769 MB, a function has the equivalent of one vCPU (one vCPU-second of credits per second)"
# (docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html); below that, a proportional share.
VCPU_MB = 1769.0


def cpu_share(memory_gb: float) -> float:
    """The share of one core a Lambda of this memory runs on (1.0 from 1,769 MB: our code is one
    thread at a time where it matters, so more cores add nothing)."""
    return min(1.0, memory_gb * 1024 / VCPU_MB)


def serial_seconds(wall: float, cpu: float, memory_gb: float) -> float:
    """Billed seconds of a function whose CPU is serial with its waits (the worker: write, wait on
    the model, write): each CPU second measured on a full core takes 1 / share seconds, so the
    wall grows by cpu x (1 / share - 1). An upper bound where part of the CPU overlaps a wait (the
    lease keeper's reads run beside the agent's)."""
    return wall + cpu * (1 / cpu_share(memory_gb) - 1)


def follower_seconds(wall: float, cpu: float, memory_gb: float) -> float:
    """Billed seconds of a function that follows another's work (the stream: it polls while the
    worker runs and ends on the terminal event): its CPU runs inside the job's wall, so its
    duration stays the job's unless its CPU at its share needs longer than that."""
    return max(wall, cpu / cpu_share(memory_gb))


def worker_seconds(inp: Inputs) -> float:
    return serial_seconds(inp.job_seconds + inp.overhead_seconds, inp.cpu_seconds.get("worker", 0.0),
                          inp.memory_gb["worker"])


def stream_seconds(inp: Inputs) -> float:
    return follower_seconds(inp.job_seconds + inp.overhead_seconds, inp.cpu_seconds.get("stream", 0.0),
                            inp.memory_gb["stream"])


def _lambda(cfg: dict[str, Any], gb_seconds: float, requests: float, arch: str = "x86_64") -> float:
    price = "lambda_gb_second_arm64" if arch == "arm64" else "lambda_gb_second_x86"
    return gb_seconds * usd(cfg, price) + requests * usd(cfg, "lambda_request")


def _dynamodb(cfg: dict[str, Any], wru: float, rru_billed: float) -> float:
    return wru * usd(cfg, "dynamodb_wru") + rru_billed * usd(cfg, "dynamodb_rru")


def _per_million(parts: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1e6, 2) for k, v in parts.items()}


def submit_parts(cfg: dict[str, Any], inp: Inputs, arch: str) -> dict[str, float]:
    """Per job: the API request(s) and the submit function (every option has them)."""
    job = cfg["job"]
    gbs = cfg["lambda"]["submit_seconds"] * inp.memory_gb["submit"]
    return {"api_gateway": job["api_requests"] * usd(cfg, "apigw_http_request"),
            "lambda_submit": _lambda(cfg, gbs, job["api_requests"], arch)}


def stream_lambda_parts(cfg: dict[str, Any], inp: Inputs, arch: str) -> dict[str, float]:
    """Per job: the stream as a Lambda behind its Function URL, open for the whole job, and its
    tail: a job that asks holds its stream open while it waits for the answer (``[stream_tail]``)."""
    job, tail = cfg["job"], cfg["stream_tail"]
    seconds = stream_seconds(inp)
    billable = max(0.0, job["sse_bytes"] - STREAM_FREE_BYTES_PER_REQUEST) * job["stream_connections"]
    gb = inp.memory_gb["stream"] * job["stream_connections"]
    return {"lambda_stream": _lambda(cfg, seconds * gb, job["stream_connections"], arch),
            "lambda_stream_tail": _lambda(cfg, tail["asking_share"] * tail["wait_seconds"] * gb, 0, arch),
            "lambda_streamed_bytes": billable / GB * usd(cfg, "lambda_streamed_gb")}


def sweeper_and_idle_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """Per job: the fixed hourly costs of ours shared over the load (sweeper ticks, idle queue polls)."""
    lam = cfg["lambda"]
    ticks = inp.sweeper_ticks_per_hour / jobs_per_hour
    gbs = lam["sweeper_tick_seconds"] * inp.memory_gb["sweeper"]
    idle = cfg["sqs_idle"]["empty_receives_per_hour"] / jobs_per_hour
    return {"lambda_sweeper": ticks * _lambda(cfg, gbs, 1, inp.arch),
            "dynamodb_sweeper": ticks * _dynamodb(cfg, 0, lam["sweeper_queries_per_tick"] / 2),
            "sqs_sweeper_and_idle_polls": (ticks * lam["sweeper_sqs_requests_per_tick"] + idle)
            * usd(cfg, "sqs_request")}


def custom_metrics(cfg: dict[str, Any], profile: str) -> int:
    """Custom metrics published under a MetricsProfile (``[observability]`` in prices.toml)."""
    return int(cfg["observability"]["custom_metrics_by_profile"][profile])


def observability_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float, invocations: float,
                        traced: float, emf: bool) -> dict[str, float]:
    """Per job: X-Ray traces, CloudWatch Logs ingestion (our lines, measured, + the platform's per
    invocation + EMF blobs + the API's access log line), custom metrics and the stack's secrets
    (both monthly, shared over the load)."""
    ob = cfg["observability"]
    jobs_month = jobs_per_hour * HOURS_PER_MONTH
    log_bytes = (inp.log_bytes + invocations * ob["platform_log_bytes_per_invocation"]
                 + cfg["job"]["api_requests"] * ob["api_access_log_bytes_per_request"]
                 + (ob["emf_invocations_per_job"] * ob["emf_bytes_per_invocation"] if emf else 0.0))
    metrics = custom_metrics(cfg, inp.metrics_profile)
    return {"xray_traces": traced * usd(cfg, "xray_trace_recorded"),
            "cloudwatch_logs": log_bytes / GB * usd(cfg, "cloudwatch_logs_ingested_gb"),
            "cloudwatch_custom_metrics": (metrics * usd(cfg, "cloudwatch_custom_metric_month")
                                          / jobs_month if emf else 0.0),
            "secrets_manager": inp.secrets * usd(cfg, "secrets_manager_secret_month") / jobs_month
            + ob["secret_reads_per_job"] * usd(cfg, "secrets_manager_api_call")}


def ours_core_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """Per job, ours without the stream's hosting: submit, the worker (the agent's compute), the
    storage and queue requests counted, the jobs table's index writes, the sweeper's share."""
    u = inp.units
    worker_gbs = worker_seconds(inp) * inp.memory_gb["worker"]
    return {**submit_parts(cfg, inp, inp.arch),
            "lambda_worker": _lambda(cfg, worker_gbs, 1, inp.arch),
            "dynamodb": _dynamodb(cfg, u.wru, u.rru_billed),
            "dynamodb_index_writes": inp.index_wru * usd(cfg, "dynamodb_wru"),
            "sqs": u.sqs * usd(cfg, "sqs_request"),
            **sweeper_and_idle_parts(cfg, inp, jobs_per_hour)}


def service_hourly(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """USD an hour of the stream as a Fargate service behind an ALB at ``jobs_per_hour``, with its
    network: the ALB's public IPv4 addresses and the tasks' way out (``network``: VPC endpoints,
    NAT gateways or public IPs)."""
    svc, job = cfg["service_stream"], cfg["job"]
    open_seconds = inp.job_seconds + inp.overhead_seconds
    concurrent = jobs_per_hour * job["stream_connections"] * open_seconds / 3600
    tasks = max(svc["min_tasks"], math.ceil(concurrent / svc["watched_jobs_per_task"]))
    task_hour = svc["task_vcpu"] * usd(cfg, "fargate_vcpu_hour") + svc["task_gb"] * usd(cfg, "fargate_gb_hour")
    requests_per_s = jobs_per_hour * job["stream_connections"] / 3600
    gb_hour = jobs_per_hour * job["sse_bytes"] * job["stream_connections"] / GB
    lcu = max(requests_per_s / 25,                                   # new connections a second
              concurrent / 3000,                                     # active connections a minute
              gb_hour,                                               # GB processed an hour
              max(0, svc["alb_rule_evaluations_per_request"] - 10) * requests_per_s / 1000)  # 10 rules free
    azs, ipv4 = svc["azs"], usd(cfg, "public_ipv4_hour")
    # the tasks' AWS calls (DynamoDB reads through the free gateway endpoint either way; ECR pulls,
    # logs and the secret through what is chosen)
    egress_gb = gb_hour * svc["task_egress_per_sse_byte"]
    network = {"endpoints": svc["interface_endpoints"] * azs * usd(cfg, "vpc_interface_endpoint_hour")
               + egress_gb * usd(cfg, "vpc_interface_endpoint_gb"),
               "nat": azs * (usd(cfg, "nat_gateway_hour") + ipv4) + egress_gb * usd(cfg, "nat_gateway_gb"),
               "public_ip": tasks * ipv4}
    return {"fargate_tasks": tasks * task_hour, "alb_hour": usd(cfg, "alb_hour"),
            "alb_lcu": lcu * usd(cfg, "alb_lcu_hour"), "alb_public_ipv4": azs * ipv4,
            "task_network": network[svc["network"]], "tasks": float(tasks),
            **{f"task_network_if_{k}": v for k, v in network.items()}}


def service_stream_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """Per job: the service's hourly cost shared over the load."""
    h = service_hourly(cfg, inp, jobs_per_hour)
    return {"fargate_stream_tasks": h["fargate_tasks"] / jobs_per_hour,
            "alb": (h["alb_hour"] + h["alb_lcu"]) / jobs_per_hour,
            "public_ipv4_and_task_network": (h["alb_public_ipv4"] + h["task_network"]) / jobs_per_hour}


def service_fixed_hour(cfg: dict[str, Any], inp: Inputs) -> tuple[float, float]:
    """(A, b): the service stream costs A + b x N an hour at N jobs an hour, at its minimum tasks."""
    h1 = service_hourly(cfg, inp, 1.0)
    return h1["fargate_tasks"] + h1["alb_hour"] + h1["alb_public_ipv4"] + h1["task_network"], h1["alb_lcu"]


def break_even_jobs_per_hour(cfg: dict[str, Any], inp: Inputs) -> float:
    """The load above which the service stream costs less per job than the Lambda stream.

    With the minimum tasks the service costs A + b x N an hour (A: tasks, ALB hours and the
    network's; b: the LCUs, linear in the load); the Lambda stream costs c per job, and c' in
    traces the service does not record: N = A / (c + c' - b).
    """
    c = sum(stream_lambda_parts(cfg, inp, inp.arch).values())
    if inp.tracing:
        c += usd(cfg, "xray_trace_recorded")
    a, b = service_fixed_hour(cfg, inp)
    return math.inf if c <= b else a / (c - b)


def watch_parts(cfg: dict[str, Any], inp: Inputs) -> dict[str, float]:
    """Per job, for a peer: the client watches through the same stream (a Lambda, as ours, at the
    peer's default architecture), fed by the same event writes; the stream's reads are the
    eventually consistent ones counted."""
    u = inp.units
    return {**stream_lambda_parts(cfg, inp, PEER_ARCH),
            "dynamodb_events_and_stream": _dynamodb(cfg, u.event_wru + 1, u.rru_eventual / 2)}


def agent_compute(cfg: dict[str, Any], inp: Inputs, invocations: float) -> float:
    """The agent's 15 s as Lambda task functions at the worker's memory, the peers' architecture."""
    return _lambda(cfg, inp.job_seconds * inp.memory_gb["worker"], invocations, PEER_ARCH)


def _peer_observability(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float, invocations: float) -> dict[str, float]:
    """A peer's Lambdas log the same lines (the same agent, submit and stream), at Lambda's
    default of no active tracing and without our custom metrics."""
    return observability_parts(cfg, inp, jobs_per_hour, invocations, traced=0.0, emf=False)


def step_functions_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    sf, steps = cfg["step_functions"], cfg["job"]["steps"]
    transitions = sf["transitions_fixed"] + sf["transitions_per_step"] * steps
    tasks = sf["task_invocations_fixed"] + sf["task_invocations_per_step"] * steps
    return {**submit_parts(cfg, inp, PEER_ARCH),
            "state_transitions": transitions * usd(cfg, "sfn_standard_transition"),
            "lambda_tasks": agent_compute(cfg, inp, tasks),
            **watch_parts(cfg, inp),
            **_peer_observability(cfg, inp, jobs_per_hour, tasks + 2)}


def step_functions_express_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """The same machine as an Express workflow (at most 5 minutes: the 15 s job fits): a request
    and its duration at the memory its definition and payloads take (billed in 64 MB steps), the
    same task Lambdas; no transitions billed."""
    sf, ex, steps = cfg["step_functions"], cfg["step_functions_express"], cfg["job"]["steps"]
    tasks = sf["task_invocations_fixed"] + sf["task_invocations_per_step"] * steps
    gb = math.ceil(ex["memory_mb"] / 64) * 64 / 1024
    return {**submit_parts(cfg, inp, PEER_ARCH),
            "express_requests": usd(cfg, "sfn_express_request"),
            "express_duration": inp.job_seconds * gb * usd(cfg, "sfn_express_gb_second"),
            "lambda_tasks": agent_compute(cfg, inp, tasks),
            **watch_parts(cfg, inp),
            **_peer_observability(cfg, inp, jobs_per_hour, tasks + 2)}


def durable_functions_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    df, steps = cfg["durable_functions"], cfg["job"]["steps"]
    ops = df["operations_fixed"] + df["operations_per_step"] * steps
    written_gb = ops * df["checkpoint_bytes_per_operation"] / GB
    return {**submit_parts(cfg, inp, PEER_ARCH),
            "durable_operations": ops * usd(cfg, "lambda_durable_operation"),
            "durable_data_written": written_gb * usd(cfg, "lambda_durable_data_written_gb"),
            "durable_data_retained": written_gb * df["retention_days"] / 30
            * usd(cfg, "lambda_durable_data_retained_gb_month"),
            "lambda_durable_function": agent_compute(cfg, inp, 1),
            **watch_parts(cfg, inp),
            **_peer_observability(cfg, inp, jobs_per_hour, 3)}


def temporal_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float,
                   plan: str = "temporal_essentials") -> dict[str, float]:
    """Temporal Cloud on a plan (``[temporal_essentials]`` by default: the plan this volume,
    ~7 M Actions a month, needs): the Actions past the plan's allocation at the pay-as-you-go
    rate, retained history, and the plan's fee (the greater of its monthly minimum and its share of
    usage), all per month shared over the load."""
    t, ts, p, steps = cfg["temporal"], cfg["temporal_storage"], cfg[plan], cfg["job"]["steps"]
    actions = t["actions_fixed"] + t["actions_per_step"] * steps + t["heartbeat_actions"]
    jobs_month = jobs_per_hour * HOURS_PER_MONTH
    billed_actions = max(0.0, actions * jobs_month - p["included_actions"])
    usage_month = (billed_actions * usd(cfg, "temporal_cloud_action")
                   + jobs_month * ts["history_bytes"] / GB * ts["retention_days"] * 24
                   * usd(cfg, "temporal_cloud_retained_gbh"))
    plan_month = max(p["minimum_usd_month"], p["usage_fraction"] * usage_month)
    return {**submit_parts(cfg, inp, PEER_ARCH),
            "temporal_actions_and_storage": usage_month / jobs_month,
            "temporal_plan": plan_month / jobs_month,
            # A Temporal worker is a long-lived poller (Fargate, EC2): its compute is priced here as
            # the same GB-seconds as the agent's on Lambda, like for like, not as a fleet.
            "worker_compute": agent_compute(cfg, inp, 0),
            **watch_parts(cfg, inp),
            **_peer_observability(cfg, inp, jobs_per_hour, 2)}


def ours_parts(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float, stream: str) -> dict[str, float]:
    """Ours, whole: the core, the stream's hosting, and our observability."""
    core = ours_core_parts(cfg, inp, jobs_per_hour)
    if stream == "lambda":
        hosting = stream_lambda_parts(cfg, inp, inp.arch)
        invocations, traced = 3.0, 3.0 if inp.tracing else 0.0       # submit, worker, stream
    else:
        hosting = service_stream_parts(cfg, inp, jobs_per_hour)
        invocations, traced = 2.0, 2.0 if inp.tracing else 0.0       # the tasks record no trace
    return {**core, **hosting, **observability_parts(cfg, inp, jobs_per_hour, invocations, traced, emf=True)}


PEERS = ("step_functions_standard", "step_functions_express", "lambda_durable_functions", "temporal_cloud")


def whole_bill(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float,
               lean: Inputs | None = None) -> dict[str, dict[str, float]]:
    """USD per million jobs of each option, by component; with ``lean`` (the inputs of the
    template with ``[lean]``'s parameters), the row ``lambda_stream_lean`` too."""
    rows = {"lambda_stream": _per_million(ours_parts(cfg, inp, jobs_per_hour, "lambda"))}
    if lean is not None:
        rows["lambda_stream_lean"] = _per_million(ours_parts(cfg, lean, jobs_per_hour, "lambda"))
    return {**rows,
            "service_stream": _per_million(ours_parts(cfg, inp, jobs_per_hour, "service")),
            "step_functions_standard": _per_million(step_functions_parts(cfg, inp, jobs_per_hour)),
            "step_functions_express": _per_million(step_functions_express_parts(cfg, inp, jobs_per_hour)),
            "lambda_durable_functions": _per_million(durable_functions_parts(cfg, inp, jobs_per_hour)),
            "temporal_cloud": _per_million(temporal_parts(cfg, inp, jobs_per_hour))}


def totals(bill: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(parts.values()), 2) for k, parts in bill.items()}


OURS = ("lambda_stream", "service_stream", "lambda_stream_lean")
DEFAULT_GOAL_USD, CHEAPEST_GOAL_USD = 200.0, 100.0


def bill_goal(bill: dict[str, float]) -> bool | None:
    """Issue 28's goal on ``aws_cost_per_million_jobs_usd``: the default hosting (``lambda_stream``)
    ≤ $200, the cheapest of ours ≤ $100, each below every peer (None when a row is missing)."""
    if not all(k in bill for k in ("lambda_stream", "service_stream", *PEERS)):
        return None
    cheapest_peer = min(bill[k] for k in PEERS)
    cheapest = min(bill[k] for k in OURS if k in bill)
    return (bill["lambda_stream"] <= DEFAULT_GOAL_USD and cheapest <= CHEAPEST_GOAL_USD
            and bill["lambda_stream"] < cheapest_peer and cheapest < cheapest_peer)


def managed_instances_worker(cfg: dict[str, Any], inp: Inputs, jobs_per_hour: float) -> dict[str, float]:
    """The worker on Lambda Managed Instances (documented, not a template option: see docs/cost.md):
    EC2 instances plus the management fee, at least ``min_instances`` whatever the load, each
    carrying ``jobs_per_instance`` concurrent jobs; against the worker on Lambda, per job, and the
    load above which it is cheaper."""
    m = cfg["managed_instances"]
    concurrent = jobs_per_hour * (inp.job_seconds + inp.overhead_seconds) / 3600
    instances = max(m["min_instances"], math.ceil(concurrent / m["jobs_per_instance"]))
    hour = usd(cfg, "ec2_instance_hour") * (1 + usd(cfg, "lambda_managed_instances_fee"))
    per_job = instances * hour / jobs_per_hour + usd(cfg, "lambda_request")
    lam = _lambda(cfg, worker_seconds(inp) * inp.memory_gb["worker"], 1, inp.arch)
    fixed = m["min_instances"] * hour
    return {"instance_type": m["instance_type"], "instances": float(instances),
            "usd_per_million_jobs": round(per_job * 1e6, 2), "lambda_worker_usd_per_million_jobs": round(lam * 1e6, 2),
            "break_even_jobs_per_hour": round(fixed / max(1e-12, lam - usd(cfg, "lambda_request")), 0)}


def bill_by_load(cfg: dict[str, Any], inp: Inputs, loads: tuple[float, ...] = (100.0, 1000.0, 10000.0),
                 lean: Inputs | None = None) -> dict[str, dict[str, float]]:
    """The totals at other loads (jobs an hour): what the fixed monthly and hourly costs (the
    service stream, Temporal's plan, metrics, Lambda Managed Instances) come to per job. Adds
    ``service_stream_lmi_worker``: the service stream with the worker on Lambda Managed Instances
    (documented, not a template option)."""
    out: dict[str, dict[str, float]] = {}
    for load in loads:
        bill = totals(whole_bill(cfg, inp, load, lean))
        parts = whole_bill(cfg, inp, load)["service_stream"]
        lmi = managed_instances_worker(cfg, inp, load)["usd_per_million_jobs"]
        bill["service_stream_lmi_worker"] = round(sum(parts.values()) - parts["lambda_worker"] + lmi, 2)
        out[f"{load:g}"] = bill
    return out


def model_cost(cfg: dict[str, Any], tokens: dict[str, Any] | None) -> dict[str, Any]:
    """``model_cost_per_million_jobs_usd``: the tokens one job is billed for (the Bedrock stand-in's
    usage, ``model_tokens`` scenario) at the default model's list prices, without and with prompt
    caching (cache writes and reads at their own prices)."""
    m = cfg["model"]
    if not tokens:
        return {"model": m["name"], "uncached": None, "cached": None}

    def price(u: dict[str, Any]) -> float:
        return round((u.get("inputTokens", 0) * usd(cfg, "model_input_token")
                      + u.get("cacheWriteInputTokens", 0) * usd(cfg, "model_cache_write_token")
                      + u.get("cacheReadInputTokens", 0) * usd(cfg, "model_cache_read_token")
                      + u.get("outputTokens", 0) * usd(cfg, "model_output_token")) * 1e6, 2)

    return {"model": m["name"], "uncached": price(tokens.get("no_caching", {})),
            "cached": price(tokens.get("caching", {}))}


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
                     "memory and architecture (worker = the agent's 15 s + the measured overhead), streamed bytes "
                     "past 6 MB, the stream's tail while a job waits for an answer ([stream_tail]), DynamoDB "
                     "(counted, scaled to 15 s; eventual reads at half) + the jobs table's index writes from its "
                     "definition, SQS (counted + sweeper + idle ESM polls), X-Ray (3 traces), CloudWatch Logs "
                     "(measured lines + platform + EMF + API access log), custom metrics and secrets per month "
                     "shared over the load",
    "lambda_stream_lean": "the same as lambda_stream, with the template parameters of [lean] in prices.toml "
                          "(the worker and the stream at 128 MB, MetricsProfile=alarms): its Lambdas' "
                          "seconds stretched by their smaller CPU share, its custom metrics the profile's",
    "service_stream": "the same, with the stream as Fargate tasks (min 2 x 0.25 vCPU/0.5 GB) + ALB hour + LCU + "
                      "the ALB's public IPv4 + the tasks' network ([service_stream] network) shared over the load "
                      "instead of the stream Lambda (2 traces: the tasks record none)",
    "step_functions_standard": "transitions of a real machine (Think, Choice, Map, 5 x Act, Reply, Succeed), the "
                               "agent as Lambda tasks (15 s at the worker's memory, x86_64: Lambda's default), the "
                               "same submit, the client on the same Lambda stream fed by the same event writes, "
                               "logs; no X-Ray (Lambda's default), no SQS, lease, sweeper, gate",
    "step_functions_express": "the same machine as an Express workflow: $1/M requests + its 15 s at 64 MB, the "
                              "same tasks, submit, stream and logs",
    "lambda_durable_functions": "durable operations (start, think, 5 steps, reply), checkpoint data written and "
                                "retained, the durable function's compute (15 s at the worker's memory, x86_64), "
                                "the same submit, stream and logs as the Step Functions peer",
    "temporal_cloud": "the Essentials plan (the greater of its monthly minimum and 5% of usage; 1 M Actions "
                      "included) + Actions past it at $50/M (workflow start, 7 activities, reply heartbeats) + "
                      "retained history, per month shared over the load; worker compute as the same Lambda "
                      "GB-seconds; the same submit, stream and logs",
}
EXCLUDES = ["data transfer out to the internet: the same bytes for every option",
            "CloudWatch Logs storage past ingestion ($0.03/GB-month: under a cent per million jobs at "
            "LogRetentionDays)",
            "the agent's own side-effect writes (its table): the same for every option; its model tokens are "
            "model_cost_per_million_jobs_usd, beside this bill",
            "free tiers, Savings Plans, Temporal commitments"]


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
    # the submit's CPU is measured too, but its duration is an assumption ([lambda] submit_seconds)
    long_cpu = {k: v for k, v in (over.get("cpu_s_per_job") or {}).items() if k in ("worker", "stream")}
    cpu = scale_cpu(seconds, zero.get("cpu_s_per_job") or {}, short_s, long_cpu, long_s)
    inp, facts, index_wru = inputs_from(cfg, template, units, rate, seconds, overhead, short_s, cpu)
    lean_params = dict(cfg["lean"]["parameters"])
    lean, lean_facts, _ = inputs_from(cfg, with_parameters(template, lean_params), units, rate, seconds, overhead,
                                      short_s, cpu)
    load = float(cfg["load"]["jobs_per_hour"])
    bill = whole_bill(cfg, inp, load, lean)
    counted = ours_per_job(over["requests"], agent_table)
    business = totals({"t": _per_million(temporal_parts(cfg, inp, load, "temporal_business"))})["t"]
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
            "service_stream_network_usd_per_hour": {k.removeprefix("task_network_if_"): round(v, 4) for k, v in
                                                    service_hourly(cfg, inp, load).items()
                                                    if k.startswith("task_network_if_")},
            "units_per_job": inp.units.rounded(),
            "units_per_second": rate.rounded(),
            "jobs_table_index_write_units_per_job": index_wru,
            "measured": {"zero_step_job_s": round(short_s, 3), "five_step_job_s": round(long_s, 3),
                         "overhead_s": round(overhead, 3)},
            "template": facts,
            "cpu_stretch": cpu_stretch_detail(inp, lean, cpu),
            "lambda_stream_lean_parameters": lean_params,
            "lambda_stream_lean_template": lean_facts,
            "components_usd_per_million": bill,
            "temporal_cloud_on_business_plan": business,
            "lambda_managed_instances_worker": managed_instances_worker(cfg, inp, load),
            "totals_by_jobs_per_hour": bill_by_load(cfg, inp, lean=lean),
            "stream_tail_per_asking_job_usd_per_million": round(
                _lambda(cfg, cfg["stream_tail"]["wait_seconds"] * inp.memory_gb["stream"], 0, inp.arch) * 1e6, 2),
            "includes": INCLUDES,
            "excludes": EXCLUDES,
        },
    }


def cpu_stretch_detail(inp: Inputs, lean: Inputs, cpu: dict[str, float]) -> dict[str, Any]:
    """What the CPU share does to the billed seconds, as the bench's JSON shows it."""
    wall = inp.job_seconds + inp.overhead_seconds

    def at(i: Inputs) -> dict[str, Any]:
        return {"memory_mb": {k: round(i.memory_gb[k] * 1024) for k in ("worker", "stream")},
                "cpu_share": {k: round(cpu_share(i.memory_gb[k]), 4) for k in ("worker", "stream")},
                "billed_s": {"worker": round(worker_seconds(i), 3), "stream": round(stream_seconds(i), 3)}}

    return {"model": "worker: wall + cpu x (1769 MB / memory - 1) (its CPU serial with its waits, an upper "
                     "bound); stream: max(wall, cpu x 1769 MB / memory) (it polls while the job runs)",
            "cpu_s_per_job": {k: round(v, 4) for k, v in cpu.items()} or "not measured (no stretch)",
            "wall_s": round(wall, 3), "default": at(inp), "lambda_stream_lean": at(lean)}


def inputs_from(cfg: dict[str, Any], template: dict[str, Any], units: Units, rate: Units, seconds: float,
                overhead: float, short_s: float, cpu: dict[str, float] | None = None
                ) -> tuple[Inputs, dict[str, Any], dict[str, float]]:
    """The bill's inputs from the scaled units and template.yaml: the lease renewals of a job of
    ``seconds`` at the template's LeaseSeconds (one write each, and their index writes) are added
    to the counted writes."""
    facts = template_facts(template)
    renewals = lease_renewals(seconds + overhead, float(facts["lease_seconds"]))
    index_wru = index_write_units(table_indexes(template), cfg["jobs_table_write"], renewals)
    units = dataclasses.replace(units, wru=units.wru + renewals)
    inp = Inputs(units=units, job_seconds=seconds, overhead_seconds=overhead, memory_gb=facts["memory_gb"],
                 sweeper_ticks_per_hour=facts["sweeper_ticks_per_hour"], arch=facts["architecture"],
                 tracing=facts["tracing"] == "Active", index_wru=sum(index_wru.values()),
                 secrets=facts["secrets"], log_bytes=float(cfg["observability"]["app_log_bytes_per_job"]),
                 cpu_seconds=dict(cpu or {}), metrics_profile=facts["metrics_profile"])
    return inp, {**facts, "lease_renewals_per_job": renewals}, {k: round(v, 2) for k, v in index_wru.items()}


def price_notes(cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The prices and assumptions as the bench's JSON shows them."""
    cfg = cfg or load_prices()
    return {"as_of": cfg["meta"]["read_on"], "file": "lib/alfred_tools/benchmarks/prices.toml",
            "usd": {k: v["usd"] for k, v in cfg["price"].items()},
            "unconfirmed": sorted(k for k, v in cfg["price"].items() if not v.get("confirmed")),
            "sources": {k: v["source"] for k, v in cfg["price"].items()},
            "assumptions": {k: v for k, v in cfg.items() if k not in ("price", "meta")}}
