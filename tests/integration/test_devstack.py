"""`alfred-jobs dev` and `alfred-jobs demo` as real processes on real ports.

The helpers here (``DevProcess``, ``start_dev``, ``descendants``) are shared with test_cli.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_tools.bootstrap import load_template
from alfred_tools.devstack import ENDPOINT_VARS
from alfred_tools.emulator import LOCAL_CREDENTIALS, free_port
from tests.support.stack import FAST, resource_env, wait_until

CLI = [sys.executable, "-m", "alfred_tools.cli"]
EXTERNAL = os.environ.get("ALFRED_TEST_TARGET") == "external"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc), however deep."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class DevProcess:
    proc: subprocess.Popen[str]
    port: int
    emulator_port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def emulator(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The environment of a CLI process talking to this stack."""
        env = {k: v for k, v in self.env.items() if k != "ALFRED_TOKEN"}
        return {**env, "ALFRED_API_URL": self.url, **extra}

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


def dev_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Fast durability knobs, unique resource names, and (by default) no endpoint: dev starts moto."""
    # With an external target the endpoint variables stay: dev then uses them instead of moto.
    env = {k: v for k, v in os.environ.items()
           if (EXTERNAL or k not in ENDPOINT_VARS) and not k.startswith("ALFRED_")}
    env.update({**FAST, **resource_env(f"d{uuid.uuid4().hex[:8]}"), **(base or {}), **extra})
    return env


@contextmanager
def start_dev(workers: int = 2, base: dict[str, str] | None = None, host: str = "127.0.0.1",
              **extra: str) -> Iterator[DevProcess]:
    """``alfred-jobs dev`` as a real process on free ports; stopped (and checked gone) on exit."""
    port, emulator_port = free_port(), free_port()
    env = dev_env(base, **extra)
    proc = subprocess.Popen([*CLI, "dev", "--host", host, "--port", str(port), "--emulator-port",
                             str(emulator_port), "--workers", str(workers)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    dev = DevProcess(proc, port, emulator_port, env)
    try:
        wait_until(lambda: _healthy(dev), timeout=40, what="alfred-jobs dev to serve")
        yield dev
    finally:
        if proc.poll() is None:
            dev.stop()
        if proc.stdout:
            proc.stdout.close()


def _healthy(dev: DevProcess) -> bool:
    if dev.proc.poll() is not None:
        out = dev.proc.stdout.read() if dev.proc.stdout else ""
        raise AssertionError(f"alfred-jobs dev exited with {dev.proc.returncode}:\n{out}")
    try:
        return httpx.get(f"{dev.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.queue
def test_dev_serves_everything_on_one_origin_and_stops_without_orphans() -> None:
    with start_dev(workers=2) as dev:
        # GIVEN a running dev stack: moto server (unless a target is configured), sweeper, 2 workers
        kids = descendants(dev.proc.pid)
        cmds = [cmdline(p) for p in kids]
        assert sum("alfred_tools.local_worker" in c for c in cmds) == 2, cmds
        assert sum("alfred_tools.local_sweeper" in c for c in cmds) == 1, cmds
        own_moto = sum("moto.server" in c and str(dev.emulator_port) in c for c in cmds)
        assert own_moto == (0 if EXTERNAL else 1), cmds
        # THEN the web client, the API, the stream and the dev token share the origin
        page = httpx.get(f"{dev.url}/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        token = httpx.get(f"{dev.url}/api/dev/token", params={"user": "web-user"}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        job = httpx.post(f"{dev.url}/api/chat", json={"message": "tofu [steps=1]"}, headers=auth).json()
        with httpx.stream("GET", f"{dev.url}{job['links']['stream']}", timeout=30) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            body = "".join(resp.iter_text())
        assert "event: complete" in body
        assert httpx.get(f"{dev.url}/api/dev/token", params={"user": "bad user!"}).status_code == 400
        # WHEN it gets Ctrl-C
        code = dev.stop(signal.SIGINT)
        out = dev.proc.stdout.read() if dev.proc.stdout else ""
    # THEN it exits 0 having printed the URLs, and no process it started is left
    assert code == 0, out
    assert f"{dev.url}/" in out and "export ALFRED_TOKEN=$(alfred-jobs token" in out
    assert ("AWS_ENDPOINT_URL" if EXTERNAL else dev.emulator) in out
    left = [p for p in kids if alive(p)]
    assert not left, [cmdline(p) for p in left]


def test_dev_stops_on_sigterm_too() -> None:
    with start_dev(workers=1) as dev:
        kids = descendants(dev.proc.pid)
        assert len(kids) >= (2 if EXTERNAL else 3)  # workers + sweeper (+ its own moto)
        assert dev.stop(signal.SIGTERM) == 0
    assert not [p for p in kids if alive(p)]


def test_children_die_with_dev_even_when_it_is_sigkilled() -> None:
    # GIVEN a dev stack WHEN its process is SIGKILLed (no finally block runs)
    with start_dev(workers=1) as dev:
        kids = descendants(dev.proc.pid)
        dev.proc.kill()
        dev.proc.wait()
        # THEN its children still go (the parent-death signal), instead of polling a queue forever
        wait_until(lambda: not [p for p in kids if alive(p)], timeout=15, what="dev's children to exit")


@pytest.mark.queue
def test_dev_uses_configured_endpoints_instead_of_starting_moto(emulator: dict[str, str]) -> None:
    # GIVEN endpoint variables (the session's moto server; with an external target, LocalStack/mixed)
    with start_dev(workers=1, base=emulator) as dev:
        cmds = [cmdline(p) for p in descendants(dev.proc.pid)]
        assert not any("moto.server" in c for c in cmds), cmds
        # THEN the tables were created there, and a job runs through it
        ddb = aws_client("dynamodb", dev)
        assert ddb.describe_table(TableName=dev.env["ALFRED_JOBS_TABLE"])["Table"]["TableStatus"] == "ACTIVE"
        out = subprocess.run([*CLI, "chat", "ok [steps=1]", "--follow"], env=dev.cli_env(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert " complete " in out.stdout


def aws_client(service: str, dev: DevProcess) -> Any:
    """A boto3 client on the endpoint the dev stack uses (its own moto, or the configured one)."""
    env = dev.env
    url = env.get(f"AWS_ENDPOINT_URL_{service.upper()}") or env.get("AWS_ENDPOINT_URL") or dev.emulator
    make: Any = boto3.client  # the stubs' overloads want a literal service name
    return make(service, endpoint_url=url, region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
                aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"]),
                aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY",
                                              LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]))


@pytest.mark.queue
def test_resources_created_locally_match_the_template() -> None:
    template = load_template()["Resources"]
    with start_dev(workers=1) as dev:
        ddb, sqs = aws_client("dynamodb", dev), aws_client("sqs", dev)
        tables = {"JobsTable": "ALFRED_JOBS_TABLE", "EventsTable": "ALFRED_EVENTS_TABLE",
                  "ConversationsTable": "ALFRED_CONVERSATIONS_TABLE", "AgentDataTable": "ALFRED_AGENT_DATA_TABLE",
                  "StreamSlotsTable": "ALFRED_STREAM_SLOTS_TABLE"}
        for logical, var in tables.items():
            props = template[logical]["Properties"]
            desc = ddb.describe_table(TableName=dev.env[var])["Table"]
            assert _sorted(desc["KeySchema"]) == _sorted(props["KeySchema"]), logical
            assert _sorted(desc["AttributeDefinitions"]) == _sorted(props["AttributeDefinitions"]), logical
            assert desc["BillingModeSummary"]["BillingMode"] == props["BillingMode"], logical
            want_gsis = {g["IndexName"]: g for g in props.get("GlobalSecondaryIndexes", [])}
            got_gsis = {g["IndexName"]: g for g in desc.get("GlobalSecondaryIndexes", [])}
            assert set(got_gsis) == set(want_gsis), logical
            for name, gsi in want_gsis.items():
                assert _sorted(got_gsis[name]["KeySchema"]) == _sorted(gsi["KeySchema"]), name
                assert got_gsis[name]["Projection"]["ProjectionType"] == gsi["Projection"]["ProjectionType"]
            ttl = ddb.describe_time_to_live(TableName=dev.env[var])["TimeToLiveDescription"]
            assert ttl["TimeToLiveStatus"] == "ENABLED", logical
            assert ttl["AttributeName"] == props["TimeToLiveSpecification"]["AttributeName"], logical
        urls = {q: sqs.get_queue_url(QueueName=dev.env[var])["QueueUrl"]
                for q, var in (("JobsQueue", "ALFRED_QUEUE_NAME"), ("JobsDeadLetterQueue", "ALFRED_DLQ_NAME"))}
        attrs = {q: sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["All"])["Attributes"]
                 for q, u in urls.items()}
        for q, a in attrs.items():
            for key in ("VisibilityTimeout", "MessageRetentionPeriod"):
                if key in template[q]["Properties"]:
                    assert a[key] == str(template[q]["Properties"][key]), (q, key)
        redrive = json.loads(attrs["JobsQueue"]["RedrivePolicy"])
        want = template["JobsQueue"]["Properties"]["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == attrs["JobsDeadLetterQueue"]["QueueArn"]
        assert int(redrive["maxReceiveCount"]) == int(want["maxReceiveCount"])


def _sorted(items: list[dict[str, Any]]) -> list[tuple[tuple[str, Any], ...]]:
    return sorted(tuple(sorted(d.items())) for d in items)


def test_dev_token_route_exists_only_in_the_dev_app() -> None:
    from fastapi.testclient import TestClient

    from alfred_tools.devstack import create_dev_app

    deps = memory_deps()
    assert TestClient(create_app(deps)).get("/api/dev/token").status_code == 404
    local = TestClient(create_dev_app(deps), base_url="http://localhost:8000", client=("127.0.0.1", 50000))
    dev = local.get("/api/dev/token", params={"user": "ann"})
    assert dev.status_code == 200 and dev.json()["user"] == "ann"


def _lan_address() -> str | None:
    """This machine's address on a network, if it has one (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_dev_beyond_the_loopback_warns_and_mints_tokens_for_this_machine_only() -> None:
    # GIVEN dev listening on every interface (issue 17, finding 5)
    with start_dev(workers=1, host="0.0.0.0") as dev:
        # THEN this machine, by its loopback name, still gets a token
        assert httpx.get(f"{dev.url}/api/dev/token", params={"user": "ann"}).status_code == 200
        # a page on another name rebound to 127.0.0.1 (DNS rebinding) gets none
        rebound = httpx.get(f"{dev.url}/api/dev/token", params={"user": "ann"},
                            headers={"Host": f"evil.example:{dev.port}"})
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "dev_token_local_only"
        assert "token" not in rebound.json()
        # and another machine (here: this one by its network address, so not the loopback) none
        lan = _lan_address()
        if lan is not None:
            remote = httpx.get(f"http://{lan}:{dev.port}/api/dev/token", params={"user": "ann"},
                               headers={"Host": f"127.0.0.1:{dev.port}"})
            assert remote.status_code == 403, remote.text
            assert httpx.get(f"http://{lan}:{dev.port}/healthz").status_code == 200  # the API is there
        code = dev.stop(signal.SIGINT)
        out = dev.proc.stdout.read() if dev.proc.stdout else ""
    # AND it said loudly that it listens beyond this machine
    assert code == 0, out
    assert "WARNING: listening on 0.0.0.0" in out and "alfred-jobs token --user NAME" in out, out


def _demo(**extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env.update({"ALFRED_DEMO_STEP_SECONDS": "0.3", **extra})
    t0 = time.monotonic()
    out = subprocess.run([*CLI, "demo"], env=env, capture_output=True, text=True, timeout=90)
    print(f"demo took {time.monotonic() - t0:.1f}s\n{out.stdout}\n{out.stderr}")
    return out


def test_demo_tells_the_story_and_exits_0() -> None:
    out = _demo()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SIGKILL" in out.stdout and "reconnecting with Last-Event-ID" in out.stdout
    assert out.stdout.count("✓") >= 10 and "✗" not in out.stdout
    # part 2: a question answered after the phone lock, and the job completes with the pantry used
    assert "input_required confirm s1q1: Use the 2 lb of chicken from your pantry?" in out.stdout
    assert "the phone locks while Alfred waits for the answer" in out.stdout
    assert "🔓 the phone unlocks: job waiting; Alfred asks 'Use the 2 lb of chicken from your pantry?'" in out.stdout
    assert re.search(r"you tap Yes: POST /api/jobs/[0-9a-f]{32}/input → 202", out.stdout), out.stdout
    assert "input_received s1q1 = yes" in out.stdout
    assert "✓ the job completed with the pantry used" in out.stdout
    assert "✓ the question was there after the lock, and answered once" in out.stdout
    # AND it says what it waits for before it exits (it used to pause 2.5 s in silence: issue 27)
    assert out.stdout.rstrip().splitlines()[-1].endswith(
        "stopping the embedded stack (the worker, the sweeper, the moto server)…"), out.stdout


def test_demo_exits_nonzero_when_a_guarantee_it_checks_is_broken() -> None:
    # GIVEN a client that resumes one seq too early (it would show an event twice)
    out = _demo(ALFRED_DEMO_SABOTAGE="duplicate-event")
    # THEN the demo catches it and fails
    assert out.returncode == 1, out.stdout + out.stderr
    assert "✗ the client saw every event once" in out.stdout


def test_dev_refuses_a_busy_port_before_any_banner_and_suggests_another() -> None:
    # GIVEN a port someone else listens on
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        # WHEN dev is asked to serve there
        out = subprocess.run([*CLI, "dev", "--port", str(port), "--workers", "1"], env=dev_env(),
                             capture_output=True, text=True, timeout=60)
    # THEN it says so at once, before starting anything or printing the "is up" banner, and names --port
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert f"port {port} on 127.0.0.1 is in use" in out.stdout and f"--port {port + 1}" in out.stdout
    assert "is up" not in out.stdout and "Traceback" not in out.stdout + out.stderr


@pytest.mark.queue
def test_ctrl_c_on_dev_says_what_it_waits_for_and_does_not_wait_for_open_streams() -> None:
    with start_dev(workers=1, ALFRED_DEMO_STEP_SECONDS="3") as dev:
        # GIVEN a long job, a client following its stream, and a worker busy on it
        token = httpx.get(f"{dev.url}/api/dev/token").json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        # 10 steps of 2 s: still running when Ctrl-C comes, whatever the machine's load
        job = httpx.post(f"{dev.url}/api/chat", json={"message": "stew [steps=10] [pace=2]"},
                         headers=auth).json()
        first: list[str] = []

        def follow() -> None:
            try:
                with httpx.stream("GET", f"{dev.url}{job['links']['stream']}", timeout=60) as resp:
                    for line in resp.iter_lines():
                        first.append(line)
            except httpx.HTTPError:
                pass

        import threading
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        wait_until(lambda: any("step" in line for line in first), timeout=20, what="the job to start a step")
        # WHEN dev gets Ctrl-C
        started = time.monotonic()
        code = dev.stop(signal.SIGINT)
        took = time.monotonic() - started
        out = dev.proc.stdout.read() if dev.proc.stdout else ""
        reader.join(5)
    # THEN it says what it waits for, and stops in a few seconds (no 20 s drain), without a traceback
    assert code == 0, out
    assert "alfred-jobs dev: stopping:" in out and "alfred-jobs dev: stopped in" in out
    if not EXTERNAL:
        assert "open streams are closed now" in out and "forgets every job" in out
        # not drained: the stream was cut mid-job, it never saw the job's end (it took {took:.1f}s)
        assert not any("event: complete" in line for line in first), (took, out)
    assert "Traceback" not in out, out


def test_the_demo_never_cuts_a_reply_mid_word() -> None:
    from alfred_tools.demo import clip

    reply = "Here are 3 recipes using chicken, rice, spinach: a quick skillet, a sheet-pan bake and a soup"
    for limit in range(20, len(reply)):
        cut = clip(reply, limit)
        assert len(cut) <= limit and cut.endswith("…"), (limit, cut)
        assert reply.startswith(cut[:-1]) and reply[len(cut) - 1] in " ,:", (limit, cut)
    assert clip(reply, 200) == reply
