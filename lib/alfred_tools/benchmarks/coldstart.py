"""``submit_cold_start_ms``: the submit function's cold start, in fresh Python processes.

Each process starts with the submit Lambda's environment (as template.yaml gives it: the Globals,
the function's own variables with its secrets as ARNs, what the Lambda runtime sets, PYTHONPATH
= CodeUri + the layer) against the moto server, and runs ``CHILD``: import ``app`` (what Lambda's
init does), then answer API Gateway HTTP API (payload 2.0) events: a ``POST /api/chat`` with the
JWT authorizer's claims first (what a user's first request pays: the app is built on the first
call, the secrets fetched, the clients made), the same again (warm), then ``GET /healthz``.

- ``import_ms``: before ``import app`` → after (Lambda's init phase; what SnapStart restores past)
- ``first_request_ms``: the first event answered (the app built inside it)
- ``submit_cold_start_ms``: their sum, median over the processes
- ``interpreter_ms``: process spawned → the child's first line (Lambda's runtime has its own)
- ``submit_import_ratio`` (issue 28): ``import app`` / the import of its dependencies alone
  (``DEPENDENCIES``: the runtime's own requirements the submit function needs to answer a request,
  imported in a fresh process of the same environment, alternately with the cold starts), p50 of
  each: what our code adds to Lambda's init. Beside it, the same ratio of CPU time (the machine is
  shared: CPU time moves less with its load than wall time does).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from alfred_tools import bootstrap
from alfred_tools.benchmarks.common import USER, BenchStack, Sizes, ms, p50

ROOT = bootstrap.default_template_path().parent
TASK_ROOT = ROOT / "functions" / "submit"  # SubmitFunction's CodeUri
LAYER = ROOT / "lib"  # AlfredLibLayer (/opt/python)

# What the submit function cannot answer a request without: the web framework and its adapter, the
# AWS SDK, settings and models, and PyJWT (the stream token it hands out). Not Powertools (built on
# the first call), not the Web Push crypto (the API stores subscriptions; the workers send).
DEPENDENCIES = ("fastapi", "mangum", "boto3", "pydantic", "pydantic_settings", "jwt")
DEPS_CHILD = r'''
import json, sys, time
names = sys.argv[1:]
t0, c0 = time.perf_counter(), time.process_time()
for name in names:
    __import__(name)
print(json.dumps({"import_s": time.perf_counter() - t0, "import_cpu_s": time.process_time() - c0}))
'''

# Runs in the fresh process; prints one JSON line. Timed with perf_counter inside the process, so
# the parent's scheduling does not count.
CHILD = r'''
import json, os, sys, time
t_start = time.perf_counter(); wall_start = time.time()
events = json.loads(sys.stdin.read())
t0, c0 = time.perf_counter(), time.process_time()
import app  # Lambda's init: the handler module, from the task root
t1, c1 = time.perf_counter(), time.process_time()


class Context:
    function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + function_name
    memory_limit_in_mb = int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
    aws_request_id = "bench"
    log_group_name = log_stream_name = "bench"

    def get_remaining_time_in_millis(self):
        return 29000


out = {"wall_start": wall_start, "import_s": t1 - t0, "import_cpu_s": c1 - c0, "answers": []}
for ev in events:
    # The runtime sets the trace header per invocation (Tracing: Active); unsampled: nothing sent.
    os.environ["_X_AMZN_TRACE_ID"] = "Root=1-%08x-%s;Parent=%s;Sampled=0" % (
        int(time.time()), os.urandom(12).hex(), os.urandom(8).hex())
    a = time.perf_counter()
    res = app.handler(ev, Context())
    out["answers"].append({"s": time.perf_counter() - a, "status": res.get("statusCode")})
sys.stdout.flush()
print("\n" + json.dumps(out))
'''


def _template_value(name: str, default: str) -> str:
    """A parameter's default from template.yaml (LeaseSeconds, MemorySize, ...)."""
    params = bootstrap.load_template().get("Parameters", {})
    return str(params.get(name, {}).get("Default", default))


def _memory_size() -> str:
    """Globals.Function.MemorySize of template.yaml (the submit function does not override it)."""
    return str(bootstrap.load_template().get("Globals", {}).get("Function", {}).get("MemorySize", 128))


def _secrets(stack: BenchStack) -> dict[str, str]:
    """The function's three secrets created on the emulator; their ARNs, as the template passes them."""
    import boto3

    sm = boto3.session.Session().client("secretsmanager", region_name=stack.settings.region,
                                        endpoint_url=stack.env.get("AWS_ENDPOINT_URL"),
                                        aws_access_key_id=stack.env.get("AWS_ACCESS_KEY_ID"),
                                        aws_secret_access_key=stack.env.get("AWS_SECRET_ACCESS_KEY"))
    arns = {}
    for var in ("ALFRED_STREAM_TOKEN_SECRET_ARN", "ALFRED_CURSOR_SECRET_ARN", "ALFRED_VAPID_SECRET_ARN"):
        out = sm.create_secret(Name=f"bench-{var.lower()}-{uuid.uuid4().hex[:8]}", SecretString=uuid.uuid4().hex * 2)
        arns[var] = out["ARN"]
    return arns


def lambda_env(stack: BenchStack, home: Path) -> dict[str, str]:
    """The submit function's environment: nothing of this process's own (no ~/.aws, no ALFRED_*
    the bench set for local runs), only the emulator's endpoints and credentials, the names of this
    stack's resources and what the template and the Lambda runtime set."""
    s = stack.settings
    keep = {k: v for k, v in stack.env.items() if k.startswith("AWS_ENDPOINT_URL")
            or k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    return {
        **keep,
        "PATH": str(Path(sys.executable).parent) + ":/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
        "TZ": ":UTC", "LANG": "en_US.UTF-8",
        "AWS_REGION": s.region, "AWS_DEFAULT_REGION": s.region,
        "AWS_LAMBDA_FUNCTION_NAME": "alfred-jobs-SubmitFunction-bench",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": _memory_size(),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12", "_HANDLER": "app.handler",
        "LAMBDA_TASK_ROOT": str(TASK_ROOT), "PYTHONPATH": f"{TASK_ROOT}:{LAYER}",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR", "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
        # template.yaml's Globals.Function.Environment
        "ALFRED_AUTH_MODE": "apigw", "ALFRED_JOBS_TABLE": s.jobs_table, "ALFRED_EVENTS_TABLE": s.events_table,
        "ALFRED_CONVERSATIONS_TABLE": s.conversations_table, "ALFRED_AGENT_DATA_TABLE": s.agent_data_table,
        "ALFRED_STREAM_SLOTS_TABLE": s.stream_slots_table,
        "ALFRED_QUEUE_URL": stack.clients.queue_url, "ALFRED_DLQ_URL": stack.clients.dlq_url,
        "ALFRED_RETENTION_SECONDS": _template_value("RetentionSeconds", "604800"),
        "ALFRED_LEASE_SECONDS": _template_value("LeaseSeconds", "30"),
        "ALFRED_MAX_ATTEMPTS": _template_value("MaxAttempts", "3"),
        "ALFRED_LOG_LEVEL": "WARNING", "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_SERVICE_NAME": "alfred-jobs", "POWERTOOLS_METRICS_NAMESPACE": "AlfredJobs",
        # SubmitFunction's own
        "ALFRED_STREAM_URL": "https://stream.lambda-url.us-east-1.on.aws/",
    }


def http_event(method: str, path: str, body: Any = None, user: str | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API payload 2.0 event, with the JWT authorizer's claims when ``user``."""
    now = time.time()
    route = "GET /healthz" if path == "/healthz" else "ANY /api/{proxy+}"
    host = "abc123.execute-api.us-east-1.amazonaws.com"
    ev: dict[str, Any] = {
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": "",
        "headers": {"accept": "application/json", "content-type": "application/json", "host": host,
                    "user-agent": "alfred-bench", "x-forwarded-proto": "https", "x-forwarded-port": "443"},
        "requestContext": {"accountId": "123456789012", "apiId": "abc123", "domainName": host,
                           "domainPrefix": "abc123", "stage": "$default", "routeKey": route,
                           "requestId": uuid.uuid4().hex[:16], "timeEpoch": int(now * 1000),
                           "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.10", "userAgent": "alfred-bench"}},
        "isBase64Encoded": False}
    if route.endswith("{proxy+}"):
        ev["pathParameters"] = {"proxy": path.split("/api/", 1)[-1]}
    if body is not None:
        ev["body"] = json.dumps(body)
    if user is not None:
        claims = {"sub": user, "iss": "https://issuer.alfred.test", "aud": "alfred-test-client",
                  "iat": int(now), "exp": int(now) + 3600, "token_use": "access"}
        ev["requestContext"]["authorizer"] = {"jwt": {"claims": {k: str(v) for k, v in claims.items()},
                                                      "scopes": None}}
    return ev


def _one_process(env: dict[str, str]) -> dict[str, Any]:
    events = [http_event("POST", "/api/chat", {"message": "cold start"}, USER),
              http_event("POST", "/api/chat", {"message": "warm"}, USER),
              http_event("GET", "/healthz")]
    spawned = time.time()
    done = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(events).encode(), env=env,
                          cwd=TASK_ROOT, capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cold-start process exited {done.returncode}: {done.stderr.decode()[-600:]}")
    out: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    statuses = [a["status"] for a in out["answers"]]
    if statuses != [202, 202, 200]:
        raise RuntimeError(f"cold-start answers {statuses}: {done.stdout.decode()[-600:]}")
    out["interpreter_s"] = out["wall_start"] - spawned
    return out


def _deps_process(env: dict[str, str]) -> dict[str, Any]:
    """A fresh process of the same environment importing ``DEPENDENCIES`` alone."""
    done = subprocess.run([sys.executable, "-c", DEPS_CHILD, *DEPENDENCIES], env=env, cwd=TASK_ROOT,
                          capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dependencies' import exited {done.returncode}: {done.stderr.decode()[-600:]}")
    out: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return out


def import_ratio(app_runs: list[dict[str, Any]], deps_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``import app`` against its dependencies' import, p50 of each: wall and CPU time."""
    app_s, deps_s = p50([r["import_s"] for r in app_runs]), p50([r["import_s"] for r in deps_runs])
    app_cpu, deps_cpu = p50([r["import_cpu_s"] for r in app_runs]), p50([r["import_cpu_s"] for r in deps_runs])
    return {"submit_import_ratio": round(app_s / deps_s, 3),
            "submit_import_detail": {"import_ms": ms(app_s), "dependencies_import_ms": ms(deps_s),
                                     "cpu_ratio": round(app_cpu / deps_cpu, 3), "import_cpu_ms": ms(app_cpu),
                                     "dependencies_import_cpu_ms": ms(deps_cpu), "dependencies": list(DEPENDENCIES),
                                     "processes": len(app_runs)}}


def cold_start_scenario(stack: BenchStack, sizes: Sizes) -> dict[str, Any]:
    """Median over fresh processes of import + first request; SnapStart would save the import."""
    home = stack.tmp / "lambda-home"
    home.mkdir(exist_ok=True)
    env = {**lambda_env(stack, home), **_secrets(stack)}
    runs: list[dict[str, Any]] = []
    deps_runs: list[dict[str, Any]] = []
    for _ in range(sizes.cold_starts):  # alternately: the same load on both sides
        runs.append(_one_process(env))
        deps_runs.append(_deps_process(env))
    imports = [r["import_s"] for r in runs]
    firsts = [r["answers"][0]["s"] for r in runs]
    totals = [i + f for i, f in zip(imports, firsts, strict=True)]
    return {"submit_cold_start_ms": ms(p50(totals)),
            "submit_cold_start_detail": {
                "import_ms": ms(p50(imports)), "first_request_ms": ms(p50(firsts)),
                "warm_request_ms": ms(p50([r["answers"][1]["s"] for r in runs])),
                "healthz_warm_ms": ms(p50([r["answers"][2]["s"] for r in runs])),
                "interpreter_ms": ms(p50([r["interpreter_s"] for r in runs])),
                "import_share": round(p50([i / t for i, t in zip(imports, totals, strict=True)]), 3),
                "processes": len(runs)},
            **import_ratio(runs, deps_runs)}
