"""The cost model's arithmetic (benchmarks/cost.py) and its price file (benchmarks/prices.toml)."""

from __future__ import annotations

import math

import pytest

from alfred_tools.benchmarks import cost
from alfred_tools.benchmarks.counting import _consistent

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
    # GIVEN known units at the list prices of the file, 1,000 jobs an hour
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
    # the sweeper: 60 ticks an hour over 1,000 jobs = 0.06 tick a job; idle polls 900/h
    assert bill["lambda_sweeper"] == pytest.approx(0.06 * (0.3 * 0.5 * gbs + req), abs=0.01)
    assert bill["sqs_sweeper_and_idle_polls"] == pytest.approx((0.06 + 0.9) * 0.40, abs=0.01)
    assert cost.totals({"x": bill})["x"] == pytest.approx(407.52, abs=0.05)


def test_peers_by_hand() -> None:
    cfg = cost.load_prices()
    bill = cost.whole_bill(cfg, INPUTS, 1000)
    # 10 transitions (Think, Choice, Map, 5 x Act, Reply, Succeed) at $25 per million
    assert bill["step_functions_standard"]["state_transitions"] == pytest.approx(250.0)
    # 8 durable operations (start, think, 5 steps, reply) at $8 per million
    assert bill["lambda_durable_functions"]["durable_operations"] == pytest.approx(64.0)
    # 10 actions (start, think, 5 steps, reply, 2 heartbeats) at $50 per million, + retained history
    assert 500 < bill["temporal_cloud"]["temporal_actions_and_storage"] < 505
    # every peer's client watches through the same stream: the same line as ours
    for peer in ("step_functions_standard", "lambda_durable_functions", "temporal_cloud"):
        assert bill[peer]["lambda_stream"] == bill["lambda_stream"]["lambda_stream"]


def test_service_stream_shares_its_hours_over_the_load_and_breaks_even() -> None:
    cfg = cost.load_prices()
    hourly = cost.service_hourly(cfg, INPUTS, 1000)
    # 2 tasks x (0.25 vCPU x 0.04048 + 0.5 GB x 0.004445) an hour
    assert hourly["fargate_tasks"] == pytest.approx(2 * (0.25 * 0.04048 + 0.5 * 0.004445))
    assert hourly["tasks"] == 2
    n = cost.break_even_jobs_per_hour(cfg, INPUTS)
    at = cost.whole_bill(cfg, INPUTS, n)
    # at the break-even load both ways of hosting the stream cost the same per job
    assert cost.totals(at)["service_stream"] == pytest.approx(cost.totals(at)["lambda_stream"], abs=0.2)
    assert 100 < n < 2000


def test_scaling_a_job_to_15_s_from_two_measured_jobs() -> None:
    short = cost.Units(wru=20, rru_strong=2, rru_eventual=10, sqs=3, event_wru=15)
    long = cost.Units(wru=21, rru_strong=14, rru_eventual=70, sqs=3, event_wru=15)
    units, rate = cost.scale_to(15.0, short, 0.1, long, 6.1)
    assert rate.rru_eventual == pytest.approx(10.0) and rate.rru_strong == pytest.approx(2.0)
    assert units.rru_eventual == pytest.approx(10 + 10 * 14.9)
    assert units.event_wru == 15  # the events are the job's, not its length's


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
