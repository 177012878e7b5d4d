"""Every function started with exactly its template.yaml environment, given a real call of its
trigger, and every AWS call it made checked against the IAM role the template grants it.

Nothing here sets a variable the template does not set: each function process starts from the
environment ``tests/support/template_env.py`` computes (Globals merged with the function's own by
the SAM translator, intrinsics resolved against fresh tables, queues and secrets on the emulator,
plus what the Lambda runtime sets). So a variable a function needs but the template does not
give it, or an AWS action its role lacks, fails here — the two ways the deployed stack differed
from the tested one before (issue 12: secrets demanded by every function, the worker's missing
sqs:ChangeMessageVisibility).

The agent runs at the template's own speed: the demo agent's default step time (1 s), since the
template sets no ALFRED_DEMO_STEP_SECONDS. Jobs are kept to one step.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alfred_jobs.adapters.aws import AwsClients, DynamoEventLog, DynamoJobStore
from alfred_jobs.domain.models import Event, EventType, Job, JobStatus
from alfred_jobs.durability.journal import Journal
from alfred_tools.fidelity import FidelityProxy
from tests.support.iam import arns_for, denied_calls, role_statements, without_action
from tests.support.stack import wait_until
from tests.support.template_env import (
    FUNCTIONS,
    SERVICE_PARAMETERS,
    Deployment,
    EventSourceMapping,
    FunctionProcess,
    Invocation,
    Unresolvable,
    deploy,
    http_api_event,
    image_config,
    jwt_claims,
    nominal_resolver,
    scheduled_event,
    task_environment,
    template_environment,
    wait_for,
)

pytestmark = pytest.mark.integration
USER = "alice"
TERMINAL = {str(t) for t in (EventType.COMPLETE, EventType.FAILED, EventType.CANCELLED)}
# Runtime variables every function gets from Lambda itself (see template_env.runtime_environment).
RUNTIME_KEYS = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME",
                "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "TZ", "LANG", "HOME", "PATH", "LAMBDA_TASK_ROOT"}
XRAY_KEYS = {"AWS_XRAY_CONTEXT_MISSING", "AWS_XRAY_DAEMON_ADDRESS"}  # with Tracing=Active only
ZIP_RUNTIME_KEYS = {"AWS_EXECUTION_ENV", "_HANDLER", "LAMBDA_RUNTIME_DIR", "PYTHONPATH"}


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def deployment(faithful: tuple[dict[str, str], FidelityProxy], tmp_path: Any) -> Iterator[Deployment]:
    """Fresh tables, queues and secrets behind the fidelity proxy, which records every call with
    its principal (the function's logical id) for the role checks."""
    env, proxy = faithful
    with deploy(env, tmp_path, calls=proxy) as d:
        yield d


# ---- the harness's view of the stack (its own principal, never checked against a role) ---------------


class Store:
    def __init__(self, d: Deployment) -> None:
        s = d.harness_settings
        self.clients = AwsClients(s, _dynamodb=d.client("dynamodb"), _sqs=d.client("sqs"),
                                  _queue_url=str(d.physical.refs["JobsQueue"]),
                                  _dlq_url=str(d.physical.refs["JobsDeadLetterQueue"]))
        self.jobs = DynamoJobStore(self.clients, s)
        self.journal = Journal(DynamoEventLog(self.clients, s), int(d.physical.parameters["RetentionSeconds"]))

    def log(self, job_id: str) -> list[Event]:
        return self.journal.read_all(job_id)

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        assert job is not None, f"job {job_id} is not in the jobs table"
        return job


def submit_chat(submit: FunctionProcess, d: Deployment, message: str) -> dict[str, Any]:
    """POST /api/chat through the submit function, as API Gateway invokes it after the JWT authorizer."""
    event = http_api_event("POST", "/api/chat", body={"message": message},
                           claims=jwt_claims(USER, d.physical.parameters), region=d.region, account_id=d.account_id)
    out = submit.invoke(event)
    assert out.ok, f"the submit function failed: {out.error}\n{submit.logs()}"
    assert out.payload["statusCode"] == 202, f"{out.payload}\n{submit.logs()}"
    body: dict[str, Any] = json.loads(out.payload["body"])
    return body


def check_role(d: Deployment, principal: str) -> list[dict[str, Any]]:
    """Every call ``principal`` made is allowed by its role as the template grants it."""
    calls = d.calls.of(principal)
    assert calls, f"no AWS call of {principal} was recorded"
    denied = denied_calls(calls, role_statements(principal, d.resolver), arns_for(d.resolver))
    assert not denied, f"{principal}'s role (template.yaml) does not allow calls it made:\n" + "\n".join(denied)
    return calls


def assert_started_with_template_env(proc: FunctionProcess, d: Deployment) -> None:
    """The process's environment at init is exactly the computed one (its log stream name aside)."""
    ready = proc.ready()
    assert ready["init_error"] is None, f"{ready['init_error']}\n{proc.logs()}"
    started_with = {k: v for k, v in ready["environ"].items() if k != "LC_CTYPE"}  # Python's locale coercion
    expected = d.environment(proc.logical_id)
    expected["AWS_LAMBDA_LOG_STREAM_NAME"] = started_with.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
    assert started_with == expected


def assert_lambda_error(out: Invocation, mentions: str, proc: FunctionProcess) -> None:
    assert not out.ok, f"expected the invocation to fail (a Lambda error), got {out.payload!r}\n{proc.logs()}"
    assert out.error is not None
    text = f"{out.error.get('errorType')}: {out.error.get('errorMessage')}"
    assert mentions in text, f"the error does not say what is wrong ({mentions}): {text}"


def run_worker_once(worker: FunctionProcess, esm: EventSourceMapping, job_id: str,
                    wait_seconds: int = 10) -> tuple[Invocation, list[dict[str, Any]]]:
    """Receive the job's message (a real receipt handle), invoke the worker with it, settle the batch."""
    messages = esm.receive(wait_seconds=wait_seconds)
    assert [json.loads(m["Body"]).get("job_id") for m in messages] == [job_id], messages
    out = worker.invoke(esm.event(messages))
    esm.settle(messages, out)
    return out, messages


# ---- the environment itself -----------------------------------------------------------------------


def test_each_function_starts_with_exactly_its_template_environment(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a test process whose own environment carries settings the template never sets
    monkeypatch.setenv("ALFRED_JWT_SECRET", "leaked-from-the-test-process")
    monkeypatch.setenv("ALFRED_DEMO_STEP_SECONDS", "0")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    image_env, _, _ = image_config()
    for logical_id in FUNCTIONS:
        # WHEN the function's environment is computed
        env = deployment.environment(logical_id)
        template_vars = template_environment(logical_id, deployment.resolver)
        # THEN it is the template's variables, the runtime's, the emulator endpoints: nothing else
        is_zip = logical_id != "StreamFunction"
        expected = set(template_vars) | RUNTIME_KEYS | set(deployment.endpoints) - {"AWS_DEFAULT_REGION"}
        if deployment.resolver.resolve({"Ref": "Tracing"}) == "Active":
            expected |= XRAY_KEYS
        expected |= ZIP_RUNTIME_KEYS if is_zip else set(image_env)
        assert set(env) == expected, f"{logical_id}: unexpected {set(env) - expected}, missing {expected - set(env)}"
        assert {k: env[k] for k in template_vars} == template_vars, logical_id
        assert not {k for k in env if k.startswith(("ALFRED_", "POWERTOOLS_"))} - set(template_vars), logical_id
        assert env["AWS_ACCESS_KEY_ID"] == logical_id
        # every reference resolved to this deployment's resources
        assert env["ALFRED_JOBS_TABLE"] == deployment.physical.refs["JobsTable"]
        assert env["ALFRED_QUEUE_URL"] == deployment.physical.refs["JobsQueue"]
    submit = deployment.environment("SubmitFunction")
    assert submit["ALFRED_STREAM_URL"] == f"http://127.0.0.1:{deployment.stream_port}/"
    assert submit["ALFRED_STREAM_TOKEN_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    memory = deployment.resolver.resolve({"Ref": "WorkerMemorySize"})
    assert deployment.environment("WorkerFunction")["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == str(memory)


def test_a_reference_the_deployment_cannot_resolve_fails_loudly() -> None:
    # GIVEN a template whose worker gains a variable referencing something not deployed locally
    resolver = nominal_resolver()
    variables = resolver.template["Resources"]["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    variables["ALFRED_NEW_TABLE"] = {"Ref": "NewTable"}
    # THEN computing its environment refuses, naming the variable and the reference
    with pytest.raises(Unresolvable, match=r"WorkerFunction: ALFRED_NEW_TABLE: !Ref NewTable"):
        template_environment("WorkerFunction", resolver)
    variables["ALFRED_NEW_TABLE"] = {"Fn::GetAtt": ["JobsTable", "StreamArn"]}
    with pytest.raises(Unresolvable, match=r"JobsTable.StreamArn"):
        template_environment("WorkerFunction", resolver)
    variables["ALFRED_NEW_TABLE"] = {"Ref": "CorsAllowedOrigins"}  # a list is no environment value
    with pytest.raises(Unresolvable, match="not a string"):
        template_environment("WorkerFunction", resolver)


# ---- each function, given a real call -------------------------------------------------------------------


def test_submit_function_accepts_a_chat_through_api_gateway(deployment: Deployment) -> None:
    d = deployment
    # GIVEN the submit function, started with its template environment
    submit = d.start("SubmitFunction")
    assert_started_with_template_env(submit, d)
    # WHEN API Gateway passes it POST /api/chat with the JWT authorizer's claims
    body = submit_chat(submit, d, "toast [steps=1]")
    # THEN 202 with a job id and a stream link to the stream function's URL, carrying a token
    job_id = body["job_id"]
    assert body["status"] == "pending"
    stream = httpx.URL(body["links"]["stream"])
    assert str(stream).startswith(f"http://127.0.0.1:{d.stream_port}/api/jobs/{job_id}/stream?")
    assert stream.params["token"]
    store = Store(d)
    assert store.job(job_id).user_id == USER
    # and every AWS call it made is one its role allows (secrets by ARN, the tables, the queue)
    calls = check_role(d, "SubmitFunction")
    assert {(c["service"], c["action"]) for c in calls} >= {
        ("secretsmanager", "GetSecretValue"), ("dynamodb", "PutItem"), ("sqs", "SendMessage")}


def test_worker_function_runs_the_job_of_its_queue_message(deployment: Deployment) -> None:
    d = deployment
    submit, worker = d.start("SubmitFunction"), d.start("WorkerFunction")
    assert_started_with_template_env(worker, d)
    store = Store(d)
    esm = EventSourceMapping(d)
    # GIVEN a job submitted through the submit function, whose first attempt fails in step 1
    job_id = submit_chat(submit, d, "toast [steps=1] [flaky=1]")["job_id"]
    # WHEN the event source mapping hands the worker its message (a real receipt handle)
    first, _ = run_worker_once(worker, esm, job_id)
    # THEN the attempt is reported as a batch item failure, its message's visibility set to the backoff
    assert first.ok, f"{first.error}\n{worker.logs()}"
    assert len(first.payload["batchItemFailures"]) == 1, f"{first.payload}\n{worker.logs()}"
    retry = [e for e in store.log(job_id) if e.type is EventType.STATUS and e.data.get("retry_in")]
    assert retry, f"no retry recorded: {store.log(job_id)}\n{worker.logs()}"
    # WHEN the message comes back after the backoff, and is handed over again
    second, _ = run_worker_once(worker, esm, job_id, wait_seconds=int(retry[0].data["retry_in"]) + 10)
    # THEN the job completes: the batch succeeds, the log ends in one terminal event, the record says so
    assert second.ok and second.payload == {"batchItemFailures": []}, f"{second}\n{worker.logs()}"
    events = store.log(job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type is EventType.COMPLETE, events[-1]
    job = wait_for(lambda: (j := store.job(job_id)).terminal and j, 10, "the terminal projection")
    assert job.status is JobStatus.COMPLETE and job.attempts == 2
    # and every call of the worker (and of the event source mapping, with the worker's role) is allowed
    calls = check_role(d, "WorkerFunction")
    actions = {(c["service"], c["action"]) for c in calls}
    assert ("sqs", "ChangeMessageVisibility") in actions, "the retry did not set its message's visibility"
    assert {("sqs", "ReceiveMessage"), ("sqs", "DeleteMessage"), ("sqs", "GetQueueAttributes")} <= actions
    check_role(d, "SubmitFunction")
    # and the check has teeth: the same calls against the role without ChangeMessageVisibility fail
    stripped = without_action(role_statements("WorkerFunction", d.resolver), "sqs:ChangeMessageVisibility")
    assert any("sqs:ChangeMessageVisibility" in line for line in denied_calls(calls, stripped, arns_for(d.resolver)))


def test_sweeper_function_requeues_a_stranded_job_on_its_schedule(deployment: Deployment) -> None:
    d = deployment
    sweeper = d.start("SweeperFunction")
    assert_started_with_template_env(sweeper, d)
    store = Store(d)
    # GIVEN a pending job whose queue message was lost an hour ago
    now = time.time()
    job = Job(job_id=uuid.uuid4().hex, user_id=USER, message="toast [steps=1]", conversation_id=uuid.uuid4().hex,
              created_at=now - 3600, expires_at=int(now + 3600))
    store.jobs.create(job)
    # WHEN the schedule ticks
    tick = scheduled_event(f"arn:aws:events:{d.region}:{d.account_id}:rule/{d.prefix}-SweeperFunctionTick",
                           d.region, d.account_id)
    # (The due index is a GSI, eventually consistent: a job written a moment ago may be missing
    # from one tick's read, as on DynamoDB. The schedule ticks again; so does the test.)
    ticks: list[dict[str, Any]] = []

    def requeued() -> bool:
        out = sweeper.invoke(tick)
        # THEN it returns normally, having re-enqueued the job
        assert out.ok, f"the sweeper failed: {out.error}\n{sweeper.logs()}"
        assert out.payload["errors"] == 0, (out.payload, sweeper.logs())
        ticks.append(out.payload)
        return bool(out.payload["requeued"])

    wait_until(requeued, timeout=30, interval=0.5, what="a tick to re-enqueue the stranded job")
    assert ticks[-1]["requeued"] == 1, ticks
    sqs = d.client("sqs")
    got = sqs.receive_message(QueueUrl=d.physical.refs["JobsQueue"], WaitTimeSeconds=5)["Messages"]
    assert [json.loads(m["Body"])["job_id"] for m in got] == [job.job_id]
    assert store.job(job.job_id).status is JobStatus.PENDING
    check_role(d, "SweeperFunction")


def read_sse(url: str, frames: list[dict[str, Any]], errors: list[BaseException], timeout: float = 30.0) -> None:
    """Every SSE event frame of ``url`` until the server closes the stream."""
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout)) as client, client.stream("GET", url) as resp:
            assert resp.status_code == 200, resp.read()
            assert resp.headers["content-type"].startswith("text/event-stream")
            frame: dict[str, Any] = {}
            for line in resp.iter_lines():
                if not line:
                    if "data" in frame:
                        frames.append(frame)
                    frame = {}
                    continue
                key, _, value = line.partition(":")
                frame[key] = value[1:] if value.startswith(" ") else value
    except BaseException as exc:
        errors.append(exc)


def test_stream_function_image_serves_the_job_over_sse_with_the_submitted_link(deployment: Deployment) -> None:
    d = deployment
    # GIVEN the stream image's own start command, run with the stream function's template environment
    stream = d.start_stream()
    submit, worker = d.start("SubmitFunction"), d.start("WorkerFunction")
    stream.wait_ready()
    environ = Path(f"/proc/{stream.proc.pid}/environ")  # `sh -c "exec uvicorn ..."`: the same pid
    if environ.exists():
        entries = environ.read_bytes().split(b"\0")
        started_with = dict(e.decode().split("=", 1) for e in entries if e)
        # (the CMD's `sh` adds PWD, in the image as here; Python may add LC_CTYPE)
        assert {k: v for k, v in started_with.items() if k not in ("LC_CTYPE", "PWD")} == stream.env
    esm = EventSourceMapping(d)
    store = Store(d)
    # WHEN a client follows the stream link the submit function handed out, while the worker runs the job
    body = submit_chat(submit, d, "toast [steps=1]")
    job_id = body["job_id"]
    frames: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    reader = threading.Thread(target=read_sse, args=(body["links"]["stream"], frames, errors), daemon=True)
    reader.start()
    out, _ = run_worker_once(worker, esm, job_id)
    assert out.ok and out.payload == {"batchItemFailures": []}, f"{out}\n{worker.logs()}"
    reader.join(30)
    # THEN it reads the whole log, in order, up to the terminal event, and the stream closes
    assert not reader.is_alive(), f"the stream did not close after the terminal event\n{stream.logs()}"
    assert not errors, f"{errors[0]!r}\n{stream.logs()}"
    stored = [e.public() for e in store.log(job_id)]
    assert [json.loads(f["data"]) for f in frames] == stored
    assert [f["id"] for f in frames] == [str(e["seq"]) for e in stored]
    assert frames[-1]["event"] in TERMINAL and frames[-1]["event"] == "complete"
    check_role(d, "StreamFunction")
    check_role(d, "WorkerFunction")


@pytest.fixture
def service_deployment(faithful: tuple[dict[str, str], FidelityProxy], tmp_path: Any) -> Iterator[Deployment]:
    """The same, with StreamHosting=service: the stream is the ECS task, not the function."""
    env, proxy = faithful
    with deploy(env, tmp_path, calls=proxy, parameters=SERVICE_PARAMETERS) as d:
        yield d


def test_stream_service_image_serves_the_job_with_its_task_definition_environment(
        service_deployment: Deployment) -> None:
    d = service_deployment
    # GIVEN the stream image's own start command, run with exactly the ECS task definition's
    # environment (what Fargate adds, the endpoints, the port aside), credentials of StreamTaskRole
    stream = d.start_stream(service=True)
    submit, worker = d.start("SubmitFunction"), d.start("WorkerFunction")
    stream.wait_ready()
    task_env = task_environment(d.resolver)
    assert not {k for k in stream.env if k.startswith("AWS_LWA_")} - set(image_config()[0]), stream.env
    assert {k: stream.env[k] for k in task_env} == task_env
    assert not {k for k in stream.env if k.startswith(("ALFRED_", "POWERTOOLS_"))} - set(task_env)
    environ = Path(f"/proc/{stream.proc.pid}/environ")
    if environ.exists():
        entries = environ.read_bytes().split(b"\0")
        started_with = dict(e.decode().split("=", 1) for e in entries if e)
        assert {k: v for k, v in started_with.items() if k not in ("LC_CTYPE", "PWD")} == stream.env
    # WHEN the job API hands out a link to the service's https name, and a client follows it through
    # the load balancer (which ends TLS and forwards the path and query to a task)
    body = submit_chat(submit, d, "toast [steps=1]")
    job_id = body["job_id"]
    link = httpx.URL(body["links"]["stream"])
    assert (link.scheme, link.host) == ("https", SERVICE_PARAMETERS["StreamDomainName"])
    assert link.path == f"/api/jobs/{job_id}/stream" and link.params["token"]
    local = link.copy_with(scheme="http", host="127.0.0.1", port=d.stream_port)
    # the app answers CORS for the web client's origin (the Function URL did it on Lambda)
    origin = d.physical.parameters["CorsAllowedOrigins"][0]
    preflight = httpx.options(str(local), headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                                   "Access-Control-Request-Headers": "last-event-id"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == origin
    refused = httpx.options(str(local), headers={"Origin": "https://elsewhere.test",
                                                 "Access-Control-Request-Method": "GET"})
    assert refused.headers.get("access-control-allow-origin") != "https://elsewhere.test"
    frames: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    reader = threading.Thread(target=read_sse, args=(str(local), frames, errors), daemon=True)
    reader.start()
    esm = EventSourceMapping(d)
    out, _ = run_worker_once(worker, esm, job_id)
    assert out.ok and out.payload == {"batchItemFailures": []}, f"{out}\n{worker.logs()}"
    reader.join(30)
    # THEN the token the submit function signed is accepted, the whole log arrives, the stream closes
    assert not reader.is_alive(), f"the stream did not close after the terminal event\n{stream.logs()}"
    assert not errors, f"{errors[0]!r}\n{stream.logs()}"
    stored = [e.public() for e in Store(d).log(job_id)]
    assert [json.loads(f["data"]) for f in frames] == stored
    assert frames[-1]["event"] == "complete"
    # and every AWS call the task made is one the task role allows
    calls = check_role(d, "StreamTaskRole")
    assert {(c["service"], c["action"]) for c in calls} >= {("secretsmanager", "GetSecretValue")}
    assert not d.calls.of("StreamFunction")


# ---- a broken environment fails at start, loudly ---------------------------------------------------------


@pytest.mark.parametrize("variable", ["ALFRED_STREAM_TOKEN_SECRET_ARN", "ALFRED_CURSOR_SECRET_ARN"])
def test_submit_function_without_a_secret_it_uses_fails_its_first_call(deployment: Deployment,
                                                                         variable: str) -> None:
    d = deployment
    # GIVEN the submit function started without one of its template variables
    submit = d.start("SubmitFunction", drop=(variable,))
    # WHEN API Gateway invokes it
    event = http_api_event("POST", "/api/chat", body={"message": "toast"},
                           claims=jwt_claims(USER, d.physical.parameters), region=d.region, account_id=d.account_id)
    out = submit.invoke(event)
    # THEN the invocation is a Lambda error naming the variable, and nothing was written
    assert_lambda_error(out, variable.removesuffix("_ARN"), submit)
    writes = [c for c in d.calls.of("SubmitFunction") if c["action"] in ("PutItem", "SendMessage", "UpdateItem")]
    assert not writes, writes


def test_stream_function_without_its_secret_does_not_start(deployment: Deployment) -> None:
    # GIVEN the stream image started without ALFRED_STREAM_TOKEN_SECRET_ARN
    stream = deployment.start_stream(drop=("ALFRED_STREAM_TOKEN_SECRET_ARN",))
    # THEN it exits before serving, saying which variable is missing
    with pytest.raises(AssertionError, match="exited"):
        stream.wait_ready(timeout=30)
    assert stream.proc.returncode != 0
    assert "ALFRED_STREAM_TOKEN_SECRET" in stream.logs()


def test_worker_that_cannot_start_fails_the_invocation_not_its_records(deployment: Deployment) -> None:
    d = deployment
    # GIVEN a job's message, and a worker whose template variable is broken (MaxAttempts' MinValue is 1)
    submit = d.start("SubmitFunction")
    worker = d.start("WorkerFunction", override={"ALFRED_MAX_ATTEMPTS": "0"})
    esm = EventSourceMapping(d)
    job_id = submit_chat(submit, d, "toast [steps=1]")["job_id"]
    messages = esm.receive()
    # WHEN the event source mapping invokes it
    out = worker.invoke(esm.event(messages))
    esm.settle(messages, out)
    # THEN the invocation fails as a whole (a Lambda error, which WorkerErrorsAlarm counts), not as
    # batch item failures that would hide a broken deployment behind retrying jobs
    assert_lambda_error(out, "max_attempts", worker)
    # and nothing touched the job or its message
    assert not [c for c in d.calls.of("WorkerFunction") if c["service"] != "sqs" or c["action"] not in (
        "ReceiveMessage", "GetQueueAttributes")], d.calls.of("WorkerFunction")
    job = Store(d).job(job_id)
    assert job.status is JobStatus.PENDING and job.attempts == 0
