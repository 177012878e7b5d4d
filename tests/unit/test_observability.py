"""Logs of a job carry its job_id (and attempt, user) on every line and never its message text;
metrics come out as CloudWatch EMF on Lambda; importing the module has no side effects on AWS.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alfred_jobs import observability as obs
from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.models import ChatRequest, JobStatus
from alfred_jobs.durability.runner import Delivery, JobRunner
from alfred_jobs.exceptions import RetryableAgentError
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET_TEXT = "my grandmother's secret xyzzy-plover"  # the user's message: must never be logged


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Capture everything the alfred_jobs loggers write, at DEBUG, as Lambda's JSON lines."""
    buf = io.StringIO()
    obs.configure(buf, json_logs=True, force=True, level="DEBUG")
    obs.clear_job()
    try:
        yield buf
    finally:
        obs.clear_job()
        obs.configure(force=True, level="INFO")


def records(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_bound_job_is_on_every_line_of_every_module_until_cleared(lines: io.StringIO) -> None:
    obs.bind_job(job_id="job-1", attempt=2, user="alice")
    obs.get_logger().info("step completed", extra={"step": 1})
    logging.getLogger("alfred_jobs.durability.runner").warning("lease renewed late")
    obs.clear_job()
    obs.get_logger().info("idle")
    first, second, third = records(lines)
    for rec in (first, second):
        assert (rec["job_id"], rec["attempt"], rec["user"]) == ("job-1", 2, "alice")
        assert rec["service"] == "alfred-jobs"
    assert first["step"] == 1
    assert "job_id" not in third


def test_a_new_job_id_replaces_the_old_context(lines: io.StringIO) -> None:
    obs.bind_job(job_id="job-1", attempt=3, user="alice")
    obs.bind_job(job_id="job-2")
    assert obs.bound_job() == {"job_id": "job-2"}
    obs.bind_job(attempt=1, user="bob")
    assert obs.bound_job() == {"job_id": "job-2", "attempt": 1, "user": "bob"}
    with obs.job_context(job_id="job-3"):
        assert obs.bound_job()["job_id"] == "job-3"
    assert obs.bound_job()["job_id"] == "job-2"


def test_job_context_is_per_thread(lines: io.StringIO) -> None:
    import threading

    obs.bind_job(job_id="main-job")
    seen: dict[str, object] = {}
    t = threading.Thread(target=lambda: seen.update(obs.bound_job()))
    t.start()
    t.join()
    assert seen == {}


class FlakyDemoAgent(DemoAgent):
    """The demo agent whose first attempt fails on step 2 (a retry, more log lines)."""

    def act(self, step, ctx):  # type: ignore[no-untyped-def]
        if step.index == 2 and ctx.attempt == 1:
            raise RetryableAgentError("tool timed out", code="tool_timeout")
        return super().act(step, ctx)


def submit(deps: Deps) -> str:
    return JobService(deps).submit("alice", ChatRequest(message=SECRET_TEXT + " [steps=3]"), None).job.job_id


def run_job(deps: Deps, agent: DemoAgent, job_id: str) -> None:
    runner = JobRunner(deps, agent)
    for _ in range(3):
        result = runner.run(Delivery(job_id))
        if result.status is JobStatus.COMPLETE:
            break
    assert result.status is JobStatus.COMPLETE


def test_a_jobs_log_lines_carry_its_id_and_never_its_message(lines: io.StringIO) -> None:
    """GIVEN a job whose message is private WHEN a worker runs it (with a retry) THEN every line
    logged while it runs names the job, and none contains the message or the reply."""
    deps = memory_deps(Settings(demo_step_seconds=0, retry_base_seconds=0, retry_max_seconds=0,
                                max_attempts=3, cancel_poll_seconds=0.02))
    job_id = submit(deps)
    submitted = records(lines)
    lines.truncate(0)
    lines.seek(0)
    run_job(deps, FlakyDemoAgent(deps.agent_data, deps.settings), job_id)

    runner_lines = records(lines)
    assert len(runner_lines) >= 3, "the runner logged (almost) nothing"
    for rec in runner_lines:
        assert rec.get("job_id") == job_id, rec
    for rec in submitted + runner_lines:
        assert "secret xyzzy" not in json.dumps(rec), rec
    # attempt and user are bound once the worker has the job record
    assert any(r.get("attempt") == 2 and r.get("user") == "alice" for r in runner_lines)


def test_console_lines_are_readable_and_carry_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    obs.configure(buf, json_logs=False, force=True)
    try:
        obs.bind_job(job_id="job-9", attempt=1, user="carol")
        obs.get_logger().info("job finished", extra={"status": "complete"})
    finally:
        obs.clear_job()
        obs.configure(force=True)
    line = buf.getvalue().strip()
    assert "INFO" in line and "job finished" in line
    assert line.endswith("job_id=job-9 attempt=1 user=carol status=complete")


def test_metrics_are_emf_on_lambda(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "alfred-jobs-SweeperFunction")
    obs.reset_metrics()
    obs.count("StuckJobs", 2)
    obs.count("StepDuration", 0.25, "Seconds", phase="act")
    obs.flush_metrics()
    blobs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    by_name = {m["Name"]: (b, d) for b in blobs for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    stuck, stuck_def = by_name["StuckJobs"]
    assert stuck_def["Namespace"] == "AlfredJobs" and stuck_def["Dimensions"] == [["service"]]
    assert stuck["service"] == "alfred-jobs" and stuck["StuckJobs"] in (2.0, [2.0])
    step, step_def = by_name["StepDuration"]
    assert step["phase"] == "act" and step_def["Metrics"][0]["Unit"] == "Seconds"
    assert obs.metrics_snapshot()["StuckJobs"] == 2


@pytest.mark.parametrize(("profile", "published"), [("all", {"JobsCompleted", "Fenced", "StepDuration", "StuckJobs"}),
                                                   ("essential", {"JobsCompleted", "StepDuration", "StuckJobs"}),
                                                   ("alarms", {"StuckJobs"})])
def test_a_metrics_profile_publishes_only_its_metrics(profile: str, published: set[str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a Lambda deployed with a MetricsProfile
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "alfred-jobs-WorkerFunction")
    obs.reset_metrics()
    obs.set_metrics_profile(profile)
    try:
        # WHEN it counts metrics of each kind
        obs.count("JobsCompleted")
        obs.count("Fenced")
        obs.count("StuckJobs", 0)
        obs.count("StepDuration", 0.5, "Seconds", phase="act")
        obs.flush_metrics()
    finally:
        obs.set_metrics_profile("all")
    # THEN only the profile's are published (each published name is a billed metric)
    blobs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    names = {m["Name"] for b in blobs for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert names == published
    # AND the process still totals every one (tests, the bench)
    assert obs.metrics_snapshot() == {"JobsCompleted": 1.0, "Fenced": 1.0, "StuckJobs": 0.0, "StepDuration": 0.5}


def test_the_settings_choose_the_metrics_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    from alfred_jobs.entry import wiring

    monkeypatch.setenv("ALFRED_METRICS_PROFILE", "essential")
    wiring.get_settings.cache_clear()
    try:
        assert wiring.get_settings().metrics_profile == "essential"
        assert obs._published == obs.ESSENTIAL_METRICS
    finally:
        wiring.get_settings.cache_clear()
        obs.set_metrics_profile("all")
    assert obs._published is None


def test_metrics_are_local_totals_off_lambda(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    obs.reset_metrics()
    obs.count("JobsSubmitted")
    obs.count("JobsSubmitted")
    obs.flush_metrics()
    assert obs.metrics_snapshot() == {"JobsSubmitted": 2.0}
    assert '"_aws"' not in capsys.readouterr().out


def test_import_needs_no_environment_and_touches_no_aws() -> None:
    code = ("import sys; import alfred_jobs.observability as o; o.get_logger().info('x'); "
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'AWS SDK imported'")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "lib")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
