"""The cost model's arithmetic (benchmarks/cost.py) and its price file (benchmarks/prices.toml)."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path

import pytest

from alfred_tools.benchmarks import cost
from alfred_tools.benchmarks.counting import _consistent
from alfred_tools.bootstrap import load_template

INPUTS = cost.Inputs(
    units=cost.Units(wru=20, rru_strong=10, rru_eventual=40, sqs=3, event_wru=15),
    job_seconds=15.0, overhead_seconds=0.5,
    memory_gb={"submit": 0.5, "worker": 1.0, "sweeper": 0.5, "stream": 0.5},
    sweeper_ticks_per_hour=60.0,
)


def test_every_price_parses_and_has_a_source_and_a_date() -> None:
    cfg = cost.load_prices()
    assert cfg["meta"]["region"] == "us-east-1"
    for name, p in cfg["price"].items():
        assert p["usd"] > 0, name
        assert p["source"].startswith("https://"), name
        assert p["read"], name
        assert isinstance(p["confirmed"], bool), name
        if not p["confirmed"]:
            assert p.get("note"), f"{name}: an unconfirmed price says why next to it"


def test_the_price_file_ships_with_the_package() -> None:
    # setuptools package-data: the installed bench reads it next to cost.py
    assert cost.PRICES_FILE.name == "prices.toml" and cost.PRICES_FILE.exists()


def test_lambda_stream_bill_by_hand() -> None:
    # GIVEN known units at the list prices of the file, 1,000 jobs an hour, x86, no tracing
    cfg = cost.load_prices()

    # WHEN the bill is made
    bill = cost.whole_bill(cfg, INPUTS, 1000)["lambda_stream"]

    # THEN each line is the hand-computed figure, USD per million jobs
    gbs = 0.0000166667 * 1e6  # $ per million GB-s
    req = 0.20              # $ per million requests
    assert bill["api_gateway"] == 1.00
    assert bill["lambda_submit"] == pytest.approx(0.05 * 0.5 * gbs + req, abs=0.01)       # 0.62
    assert bill["lambda_worker"] == pytest.approx(15.5 * 1.0 * gbs + req, abs=0.01)       # 258.53
    assert bill["lambda_stream"] == pytest.approx(15.5 * 0.5 * gbs + req, abs=0.01)       # 129.37
    # 20 WRU x 0.625 + (10 strong + 40 eventual / 2) RRU x 0.125
    assert bill["dynamodb"] == pytest.approx(20 * 0.625 + 30 * 0.125, abs=0.01)           # 16.25
    assert bill["sqs"] == pytest.approx(3 * 0.40, abs=0.01)
    assert bill["lambda_streamed_bytes"] == 0.0  # 16 KB < the free 6 MB of a request
    assert bill["lambda_stream_tail"] == 0.0     # the priced job does not ask
    # the sweeper: 60 ticks an hour over 1,000 jobs = 0.06 tick a job; idle polls 900/h
    assert bill["lambda_sweeper"] == pytest.approx(0.06 * (0.3 * 0.5 * gbs + req), abs=0.01)
    assert bill["sqs_sweeper_and_idle_polls"] == pytest.approx((0.06 + 0.9) * 0.40, abs=0.01)
    # no tracing: no trace; logs: 3 invocations x 400 B + 350 B access + 2 x 450 B EMF at $0.50/GB
    assert bill["xray_traces"] == 0.0
    assert bill["cloudwatch_logs"] == pytest.approx((3 * 400 + 350 + 900) / 1024 ** 3 * 0.5 * 1e6, abs=0.01)
    # 31 metrics (MetricsProfile=all) x $0.30 a month over 730,000 jobs a month
    assert bill["cloudwatch_custom_metrics"] == pytest.approx(31 * 0.30 / 730_000 * 1e6, abs=0.01)  # 12.74
    assert cost.totals({"x": bill})["x"] == pytest.approx(sum(bill.values()), abs=0.05)


def test_arm64_tracing_and_index_writes_are_priced() -> None:
    cfg = cost.load_prices()
    arm = dataclasses.replace(INPUTS, arch="arm64", tracing=True, index_wru=10, secrets=3)
    bill = cost.whole_bill(cfg, arm, 1000)
    gbs_arm = 0.0000133334 * 1e6
    assert bill["lambda_stream"]["lambda_worker"] == pytest.approx(15.5 * gbs_arm + 0.2, abs=0.01)
    assert bill["lambda_stream"]["xray_traces"] == pytest.approx(15.0)      # submit, worker, stream
    assert bill["service_stream"]["xray_traces"] == pytest.approx(10.0)     # the tasks record none
    assert bill["lambda_stream"]["dynamodb_index_writes"] == pytest.approx(6.25)
    assert bill["lambda_stream"]["secrets_manager"] == pytest.approx(3 * 0.4 / 730_000 * 1e6 + 0.02 * 5, abs=0.01)
    # the peers keep Lambda's defaults: x86_64, no active tracing
    assert bill["step_functions_express"]["lambda_tasks"] == pytest.approx(15 * 16.6667 + 7 * 0.2, abs=0.01)
    assert "xray_traces" in bill["step_functions_express"]
    assert bill["step_functions_express"]["xray_traces"] == 0.0


def test_peers_by_hand() -> None:
    cfg = cost.load_prices()
    bill = cost.whole_bill(cfg, INPUTS, 1000)
    # 10 transitions (Think, Choice, Map, 5 x Act, Reply, Succeed) at $25 per million
    assert bill["step_functions_standard"]["state_transitions"] == pytest.approx(250.0)
    # Express: $1 per million requests + 15 s at 64 MB at $0.00001667 per GB-s
    assert bill["step_functions_express"]["express_requests"] == pytest.approx(1.0)
    assert bill["step_functions_express"]["express_duration"] == pytest.approx(15 * 0.0625 * 16.67, abs=0.01)
    # 8 durable operations (start, think, 5 steps, reply) at $8 per million
    assert bill["lambda_durable_functions"]["durable_operations"] == pytest.approx(64.0)
    # Temporal: 10 actions a job x 730,000 jobs a month = 7.3 M; 1 M included; $50 per million;
    # + 16 KB of history retained 7 days at $0.00105 per GB-hour
    t = bill["temporal_cloud"]
    retained = 16384 / 1024 ** 3 * 7 * 24 * 0.00105 * 1e6                                   # 2.69
    assert t["temporal_actions_and_storage"] == pytest.approx(6.3e6 * 50e-6 / 730_000 * 1e6 + retained, abs=0.05)
    # the Essentials plan: the greater of $100 a month and 5% of usage ($16): $100 over 730,000 jobs
    assert t["temporal_plan"] == pytest.approx(100 / 730_000 * 1e6, abs=0.01)                # 136.99
    # every peer's client watches through the same stream: ours at the peers' architecture
    for peer in cost.PEERS:
        assert bill[peer]["lambda_stream"] == bill["lambda_stream"]["lambda_stream"]


def test_service_stream_shares_its_hours_over_the_load_and_breaks_even() -> None:
    cfg = cost.load_prices()
    hourly = cost.service_hourly(cfg, INPUTS, 1000)
    # 2 tasks x (0.25 vCPU x 0.04048 + 0.5 GB x 0.004445) an hour
    assert hourly["fargate_tasks"] == pytest.approx(2 * (0.25 * 0.04048 + 0.5 * 0.004445))
    assert hourly["tasks"] == 2
    # the ALB's two public IPv4 addresses; the tasks through 4 interface endpoints in 2 AZs
    assert hourly["alb_public_ipv4"] == pytest.approx(0.01)
    assert hourly["task_network_if_endpoints"] == pytest.approx(0.08, abs=0.001)
    assert hourly["task_network_if_nat"] == pytest.approx(2 * (0.045 + 0.005), abs=0.001)
    assert hourly["task_network_if_public_ip"] == pytest.approx(0.01)
    n = cost.break_even_jobs_per_hour(cfg, INPUTS)
    at = cost.whole_bill(cfg, INPUTS, n)
    # at the break-even load both ways of hosting the stream cost the same per job
    assert cost.totals(at)["service_stream"] == pytest.approx(cost.totals(at)["lambda_stream"], abs=0.2)
    assert 100 < n < 5000


def test_cpu_share_stretches_the_billed_seconds_by_hand() -> None:
    # GIVEN 0.3 s of our CPU (measured on a full core) in a 15.5 s job
    wall, cpu = 15.5, 0.3
    # THEN the share of a core is memory / 1,769 MB, capped at one core
    assert cost.cpu_share(256 / 1024) == pytest.approx(0.144714, abs=1e-6)
    assert cost.cpu_share(2048 / 1024) == 1.0
    # AND a serial function (the worker) waits cpu x (1769 / MB - 1) longer: 5.9102 at 256 MB,
    # 12.8203 at 128 MB, nothing from one core up
    assert cost.serial_seconds(wall, cpu, 256 / 1024) == pytest.approx(15.5 + 0.3 * 5.910156, abs=1e-4)  # 17.273
    assert cost.serial_seconds(wall, cpu, 128 / 1024) == pytest.approx(15.5 + 0.3 * 12.820313, abs=1e-4)  # 19.346
    assert cost.serial_seconds(wall, cpu, 2.0) == wall
    # AND a follower (the stream) is billed the job's wall unless its CPU at its share needs more
    assert cost.follower_seconds(wall, cpu, 128 / 1024) == wall                    # 0.3 x 13.82 = 4.15 s
    assert cost.follower_seconds(wall, 2.0, 128 / 1024) == pytest.approx(2.0 * 13.820313, abs=1e-4)  # 27.64

    # WHEN the bill is made with the CPU measured, at 256 MB Arm64
    cfg = cost.load_prices()
    arm = dataclasses.replace(INPUTS, arch="arm64", memory_gb={**INPUTS.memory_gb, "worker": 0.25, "stream": 0.25},
                              cpu_seconds={"worker": 0.3, "stream": 0.45})
    bill = cost.whole_bill(cfg, arm, 1000)["lambda_stream"]
    # THEN the worker is billed 17.273 s at 0.25 GB, the stream its 15.5 s: $ per million
    gbs_arm = 0.0000133334 * 1e6
    assert bill["lambda_worker"] == pytest.approx(17.273047 * 0.25 * gbs_arm + 0.2, abs=0.01)   # 57.78
    assert bill["lambda_stream"] == pytest.approx(15.5 * 0.25 * gbs_arm + 0.2, abs=0.01)         # 51.87


def test_scaling_our_cpu_to_the_priced_job() -> None:
    # the same straight line as the reads, through the zero-step and the 5 x 1 s job
    cpu = cost.scale_cpu(15.0, {"worker": 0.05, "stream": 0.03}, 0.2, {"worker": 0.14, "stream": 0.20}, 6.2)
    assert cpu["worker"] == pytest.approx(0.05 + 0.09 / 6.0 * 14.8)      # 0.272
    assert cpu["stream"] == pytest.approx(0.03 + 0.17 / 6.0 * 14.8)      # 0.449
    # not measured (not Linux: NaN) is no stretch, not an error
    assert cost.scale_cpu(15.0, {}, 0.2, {"worker": math.nan}, 6.2) == {}


def test_the_lean_option_is_the_same_bill_on_its_own_parameters() -> None:
    # GIVEN the template deployed with [lean]'s parameters
    cfg = cost.load_prices()
    params = cfg["lean"]["parameters"]
    assert params == {"WorkerMemorySize": 128, "StreamMemorySize": 128, "MetricsProfile": "alarms"}
    lean_template = cost.with_parameters(load_template(), params)
    facts = cost.template_facts(lean_template)
    assert facts["memory_gb"]["worker"] == facts["memory_gb"]["stream"] == 0.125
    assert facts["metrics_profile"] == "alarms"
    with pytest.raises(KeyError):
        cost.with_parameters(load_template(), {"NoSuchParameter": 1})

    # WHEN both rows are made from the same inputs but the template's
    cpu = {"worker": 0.3, "stream": 0.45}
    default = dataclasses.replace(INPUTS, arch="arm64", memory_gb={**INPUTS.memory_gb, "worker": 0.25, "stream": 0.25},
                                  cpu_seconds=cpu)
    lean = dataclasses.replace(default, memory_gb={**default.memory_gb, "worker": 0.125, "stream": 0.125},
                               metrics_profile="alarms")
    bill = cost.whole_bill(cfg, default, 1000, lean)

    # THEN only the Lambdas' seconds and the metrics differ, each by hand
    gbs_arm = 0.0000133334 * 1e6
    row = bill["lambda_stream_lean"]
    assert row["lambda_worker"] == pytest.approx(19.345938 * 0.125 * gbs_arm + 0.2, abs=0.01)   # 32.44
    assert row["lambda_stream"] == pytest.approx(15.5 * 0.125 * gbs_arm + 0.2, abs=0.01)        # 26.03
    assert row["cloudwatch_custom_metrics"] == pytest.approx(1 * 0.30 / 730_000 * 1e6, abs=0.01)  # 0.41
    same = {k for k in row if row[k] == bill["lambda_stream"][k]}
    assert set(row) - same == {"lambda_worker", "lambda_stream", "cloudwatch_custom_metrics"}
    # AND it is one of ours for the goal: the cheapest of ours may be it
    ok = {"lambda_stream": 190, "service_stream": 150, "lambda_stream_lean": 99, "step_functions_standard": 400,
          "step_functions_express": 195, "lambda_durable_functions": 220, "temporal_cloud": 700}
    assert cost.bill_goal(ok) is True
    assert cost.bill_goal({**ok, "lambda_stream_lean": 101}) is False


def test_index_writes_follow_dynamodb_rules() -> None:
    ix = cost.Index("due", frozenset({"active_shard", "due_at"}), "ALL")
    keys_only = cost.Index("due", frozenset({"active_shard", "due_at"}), "KEYS_ONLY")
    job = frozenset({"job_id", "active_shard", "due_at", "status"})
    assert cost.index_writes(ix, frozenset(), job, frozenset()) == 1                         # enters
    assert cost.index_writes(ix, job, frozenset({"due_at"}), frozenset()) == 2              # key moves
    assert cost.index_writes(ix, job, frozenset({"status"}), frozenset()) == 1              # projected
    assert cost.index_writes(keys_only, job, frozenset({"status"}), frozenset()) == 0       # not projected
    assert cost.index_writes(ix, job, frozenset(), frozenset({"active_shard"})) == 1        # leaves
    assert cost.index_writes(ix, frozenset({"job_id"}), frozenset({"m"}), frozenset()) == 0  # never in it


def test_index_write_units_follow_the_template() -> None:
    # GIVEN the jobs table of template.yaml and the job's writes of prices.toml
    cfg = cost.load_prices()
    template = load_template()
    indexes = cost.table_indexes(template)
    assert {i.name: i.projection for i in indexes} == {"by_user": "ALL", "due": "ALL", "gate_check": "KEYS_ONLY"}

    # WHEN a job with 10 renewals is counted
    units = cost.index_write_units(indexes, cfg["jobs_table_write"], renewals=10)

    # THEN by_user (ALL) takes one per job write (create, lease, 10 renewals, terminal); due (ALL,
    # keyed on due_at) two per write that moves due_at and one to enter and leave; gate_check
    # (KEYS_ONLY, sparse) only the gate's enroll and unlist
    assert units == {"by_user": 13, "due": 1 + 2 + 20 + 1, "gate_check": 2}
    # AND a template whose due index projects KEYS_ONLY saves nothing on renewals (the key moves)
    # but the terminal projection no longer costs a put there
    variant = copy.deepcopy(template)
    for gsi in variant["Resources"]["JobsTable"]["Properties"]["GlobalSecondaryIndexes"]:
        if gsi["IndexName"] == "by_user":
            gsi["Projection"] = {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["status"]}
    fewer = cost.index_write_units(cost.table_indexes(variant), cfg["jobs_table_write"], renewals=10)
    assert fewer["by_user"] == 1 + 10 + 1  # create, renewals (status), terminal: not the lease


def test_template_facts_resolve_the_parameters() -> None:
    facts = cost.template_facts(load_template())
    params = load_template()["Parameters"]
    assert facts["architecture"] == params["Architecture"]["Default"] == "arm64"
    assert facts["tracing"] == params["Tracing"]["Default"]
    assert facts["memory_gb"]["worker"] == params["WorkerMemorySize"]["Default"] / 1024
    assert facts["memory_gb"]["stream"] == params["StreamMemorySize"]["Default"] / 1024
    assert facts["secrets"] == 3
    assert facts["metrics_profile"] == params["MetricsProfile"]["Default"] == "all"


def test_custom_metric_count_is_the_runtimes() -> None:
    # every distinct name the runtime counts is a custom metric once published (EMF): the literal
    # ones, and those a call picks from a dict (the runner's terminal JobsCompleted / JobsFailed /
    # JobsCancelled, which the count missed before: 29 instead of 31)
    from alfred_jobs.observability import METRIC_PROFILES

    src = Path(cost.__file__).resolve().parents[2] / "alfred_jobs"
    names = set()
    for f in src.rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        names |= set(re.findall(r'\bcount\(\s*"([A-Za-z]+)"', text))
        for table in re.findall(r"\bcount\(\s*\{([^}]*)\}", text):
            names |= set(re.findall(r':\s*"([A-Za-z]+)"', table))
    by_profile = cost.load_prices()["observability"]["custom_metrics_by_profile"]
    assert {"JobsCompleted", "JobsFailed", "JobsCancelled"} <= names
    assert len(names) == by_profile["all"] == cost.custom_metrics(cost.load_prices(), "all"), sorted(names)
    # each profile publishes names the runtime does count (no typo), and that many
    for profile, published in METRIC_PROFILES.items():
        assert names >= (published or names)
        assert len(published or names) == by_profile[profile] == cost.custom_metrics(cost.load_prices(), profile)


def test_bill_goal_and_managed_instances() -> None:
    ok = {"lambda_stream": 190, "service_stream": 90, "step_functions_standard": 400,
          "step_functions_express": 195, "lambda_durable_functions": 220, "temporal_cloud": 700}
    assert cost.bill_goal(ok) is True
    assert cost.bill_goal({**ok, "step_functions_express": 180}) is False   # a peer below ours
    assert cost.bill_goal({**ok, "service_stream": 120}) is False           # cheapest > $100
    assert cost.bill_goal({"lambda_stream": 1}) is None
    lmi = cost.managed_instances_worker(cost.load_prices(), INPUTS, 1000)
    assert lmi["instances"] == 3  # the minimum: 4.3 concurrent jobs fit one instance
    assert lmi["usd_per_million_jobs"] == pytest.approx(3 * 0.0816 * 1.15 / 1000 * 1e6 + 0.2, abs=0.01)


def test_fixed_costs_fall_per_job_with_the_load() -> None:
    by_load = cost.bill_by_load(cost.load_prices(), INPUTS)
    assert set(by_load) == {"100", "1000", "10000"}
    # the service stream's tasks, ALB and network, and the LMI fleet are hourly: 10x the load, far less a job
    assert by_load["10000"]["service_stream"] < by_load["1000"]["service_stream"] < by_load["100"]["service_stream"]
    assert by_load["10000"]["service_stream_lmi_worker"] < by_load["10000"]["service_stream"]
    assert by_load["100"]["service_stream_lmi_worker"] > by_load["100"]["lambda_stream"]


def test_model_cost_prices_the_stand_ins_usage() -> None:
    cfg = cost.load_prices()
    tokens = {"no_caching": {"inputTokens": 10_000, "outputTokens": 400},
              "caching": {"inputTokens": 1_000, "cacheWriteInputTokens": 1_000, "cacheReadInputTokens": 8_000,
                          "outputTokens": 400}}
    out = cost.model_cost(cfg, tokens)
    assert out["uncached"] == pytest.approx(10_000 * 1.0 + 400 * 5.0)              # $ per million jobs
    assert out["cached"] == pytest.approx(1_000 + 1_250 + 800 + 2_000)
    assert out["model"].startswith("Claude Haiku 4.5")
    assert cost.model_cost(cfg, None)["uncached"] is None


def test_scaling_a_job_to_15_s_from_two_measured_jobs() -> None:
    short = cost.Units(wru=20, rru_strong=2, rru_eventual=10, sqs=3, event_wru=15)
    long = cost.Units(wru=24, rru_strong=14, rru_eventual=70, sqs=3, event_wru=17)
    units, rate = cost.scale_to(15.0, short, 0.1, long, 6.1)
    # reads run per second (the stream's poller, the cancel polls)
    assert rate.rru_eventual == pytest.approx(10.0) and rate.rru_strong == pytest.approx(2.0)
    assert units.rru_eventual == pytest.approx(10 + 10 * 14.9)
    # writes follow the steps: the priced job has the measured job's steps, so its writes as counted
    assert rate.wru == 0 and units.wru == 24 and units.event_wru == 17 and units.sqs == 3


def test_lease_renewals_follow_the_lease_keepers_cadence() -> None:
    assert cost.lease_renewals(15.3, 30) == 1   # every 10 s
    assert cost.lease_renewals(6.4, 30) == 0    # the bench's 5 x 1 s job renews none
    assert cost.lease_renewals(15.3, 6) == 7
    assert cost.template_facts(load_template())["lease_seconds"] == 30


def test_reads_are_priced_by_consistency() -> None:
    counts = {"wru_by_target": {"dynamodb.PutItem b1-events": 17, "dynamodb.PutItem b1-agent-data": 4},
              "rru_by_target": {"dynamodb.GetItem b1-events eventual": 40, "dynamodb.GetItem b1-jobs strong": 10,
                                "dynamodb.GetItem b1-agent-data strong": 5},
              "calls": {"sqs.SendMessage": 1, "sqs.DeleteMessageBatch": 1, "dynamodb.GetItem": 55}}
    u = cost.units_from_counts(counts)
    assert (u.wru, u.event_wru, u.rru_strong, u.rru_eventual, u.sqs) == (17, 17, 10, 40, 2)
    assert u.rru_billed == 30
    assert cost.ours_per_job(counts)["dynamodb_rru"] == 30


def test_the_counter_tells_consistent_reads_from_eventual_ones() -> None:
    assert _consistent("GetItem", {"ConsistentRead": True})
    assert not _consistent("GetItem", {})  # DynamoDB's default is eventual
    assert not _consistent("Query", {"IndexName": "due", "ConsistentRead": True})
    assert _consistent("BatchGetItem", {"RequestItems": {"t": {"Keys": [], "ConsistentRead": True}}})


def test_schedule_and_template_memory() -> None:
    assert cost.ticks_per_hour("rate(1 minute)") == 60
    assert cost.ticks_per_hour("rate(5 minutes)") == 12
    template = {"Globals": {"Function": {"MemorySize": 512}},
                "Parameters": {"SweepSchedule": {"Default": "rate(2 minutes)"}},
                "Resources": {
                    "WorkerFunction": {"Type": "AWS::Serverless::Function", "Properties": {"MemorySize": 1024}},
                    "SubmitFunction": {"Type": "AWS::Serverless::Function", "Properties": {}}}}
    facts = cost.template_facts(template)
    assert facts["memory_gb"] == {"submit": 0.5, "worker": 1.0, "sweeper": 0.5, "stream": 0.5}
    assert facts["sweeper_ticks_per_hour"] == 30
    assert not math.isnan(facts["sweeper_ticks_per_hour"])
