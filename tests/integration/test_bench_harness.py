"""The bench harness cannot rot: the scenarios run with tiny sizes and the JSON has every key.

This is not the benchmark (no goal is checked here, the machine running tests is busy): it checks
that every scenario runs end to end against a real emulator and yields a plausible figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from alfred_tools import bench
from alfred_tools.benchmarks import common

pytestmark = pytest.mark.integration

CONTRACT_KEYS = [
    "submit_ratio", "checkpoint_ratio", "checkpoint_growth", "delivery_p50_ms", "delivery_p99_ms",
    "reconnect_p50_ms", "watcher_read_ratio", "idle_sse_rss_mb", "overhead_ratio", "zero_step_job_ms",
    "peer_celery_sqs", "jobs_per_s", "floor_jobs_per_s", "cost_per_million_jobs_usd",
    # issue 16: what a user waits for
    "cancel_p99_ms", "first_event_p50_ms", "submit_floor_ms", "submit_cold_start_ms",
    # issue 16: the whole bill of a 15 s job, ours and the peers'
    "aws_cost_per_million_jobs_usd",
    # the floor of any design with one fence per step, in the same run
    "zero_step_floor_ms", "overhead_floor_ratio",
    # issue 25: model tokens billed per job, with and without prompt caching
    "model_tokens_per_job",
    # issue 28: the model's bill beside the AWS bill
    "model_cost_per_million_jobs_usd",
    # issue 28: the first word of a reply over the stand-in's own; the submit handler's own import
    "first_token_overhead_p50_ms", "first_token_overhead_p99_ms", "submit_import_ratio",
]
BILL_KEYS = ["lambda_stream", "service_stream", "lambda_stream_lean", "step_functions_standard",
             "step_functions_express", "lambda_durable_functions", "temporal_cloud"]


def _positive(v: object) -> bool:
    return isinstance(v, int | float) and not math.isnan(v) and v > 0


@pytest.mark.timeout(600)  # a hang detector, not a speed check: 55 s idle, more when the CPU is shared
def test_quick_scenarios_with_tiny_sizes_write_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the tiny sizes in place of --quick's
    monkeypatch.setattr(common, "QUICK", common.TINY)
    monkeypatch.setattr(bench, "QUICK", common.TINY)
    out = tmp_path / "bench.json"

    # WHEN the bench runs as the CLI runs it
    code = bench.main(SimpleNamespace(quick=True, json=str(out)))

    # THEN every scenario ran and the JSON has every key of the contract with a plausible value
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res.get("errors") is None, res.get("errors")
    assert code == 0
    for key in CONTRACT_KEYS:
        assert key in res, key
    for key in CONTRACT_KEYS:
        if key in ("peer_celery_sqs", "cost_per_million_jobs_usd", "aws_cost_per_million_jobs_usd",
                   "model_tokens_per_job", "model_cost_per_million_jobs_usd"):
            continue
        assert _positive(res[key]), (key, res[key])
    assert res["delivery_p99_ms"] >= res["delivery_p50_ms"]
    # the first token's path, phase by phase, in both hostings of the stream
    for detail in (res["first_token_detail"], res["first_token_polled"]):
        # (an event's ``at`` has millisecond resolution: a phase that ends at one may read -1 ms)
        assert detail["phased_runs"] >= 1 and all(v >= -1 for v in detail["phases_p50_ms"].values()), detail
    assert res["first_token_detail"]["stream_woken_by_writer"]
    assert not res["first_token_polled"]["stream_woken_by_writer"]
    assert _positive(res["model_tokens_per_job"]["billed_without_caching"])
    assert 0.5 < res["watcher_read_ratio"] < 50
    assert res["overhead_ratio"] > 0.9
    assert res["overhead_floor_ratio"] > 1 and 0 < res["zero_step_floor_agent_ms"] < res["zero_step_floor_ms"]
    assert _positive(res["peer_celery_sqs"]["zero_step_job_ms"])
    assert _positive(res["peer_celery_sqs"]["overhead_ratio"])
    cost = res["cost_per_million_jobs_usd"]
    assert _positive(cost["alfred_jobs"]) and _positive(cost["step_functions_standard"])
    # requests are counted where they are made: the job's writes and the queue round trip at least
    calls = res["requests_per_job"]
    assert calls["dynamodb.PutItem"] >= 10
    assert calls["sqs.SendMessage"] >= 1
    assert res["machine"]["nproc"] >= 1
    assert res["prices"]["usd"]
    # the whole bill: every option priced, each a plausible figure for a 15 s job ($100-$5,000 per
    # million: at least the agent's and the stream's 15 s of Lambda at 256 MB, $100, and not fifty
    # times that); the model's tokens beside it
    assert res["model_cost_per_million_jobs_usd"]["uncached"] > res["model_cost_per_million_jobs_usd"]["cached"] > 0
    bill = res["aws_cost_per_million_jobs_usd"]
    assert sorted(bill) == sorted(BILL_KEYS)
    for key in BILL_KEYS:
        # the lean option's two Lambdas at 128 MB are $50 of it
        assert _positive(bill[key]) and (50 if key.endswith("_lean") else 100) < bill[key] < 5_000, (key, bill[key])
    detail = res["aws_cost_detail"]
    # our CPU per job was measured (Linux), and the smaller share stretches the worker's seconds
    stretch = detail["cpu_stretch"]
    assert stretch["cpu_s_per_job"]["worker"] > 0 and stretch["cpu_s_per_job"]["stream"] > 0
    assert stretch["lambda_stream_lean"]["billed_s"]["worker"] > stretch["default"]["billed_s"]["worker"]
    assert detail["load_jobs_per_hour"] > 0 and detail["service_stream_break_even_jobs_per_hour"] > 0
    assert detail["units_per_job"]["wru"] >= 10 and detail["units_per_job"]["rru_eventual"] > 0
    # a cancel lands within the job (a few seconds), the first event comes after the submit's answer
    assert res["cancel_samples"] >= 1 and res["cancel_p99_ms"] < 30_000
    assert res["cancel_p99_ms"] >= res["cancel_p50_ms"]
    assert res["first_event_p50_ms"] > res["submit_floor_ms"]
    cold = res["submit_cold_start_detail"]
    assert _positive(cold["import_ms"]) and _positive(cold["first_request_ms"])
    assert 0 < cold["import_share"] < 1
    assert set(res["goals"]) >= set(CONTRACT_KEYS)
