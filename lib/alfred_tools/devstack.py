"""The whole system on one machine (``alfred-jobs dev``): emulator, resources, workers, sweeper, API.

Process layout::

    alfred-jobs dev ─┬─ moto server          (unless AWS_ENDPOINT_URL* point elsewhere)
                     ├─ local_sweeper        (sweeps every ALFRED_SWEEP_SECONDS)
                     ├─ local_worker x N     (the Lambda event source mapping, emulated)
                     └─ uvicorn, in-process  (job API + stream + web client, one origin)

Why every child gets its own session and a parent-death signal: Ctrl-C in a terminal signals the
whole foreground process group. If the children shared it they would all die at once, in no
order, while the API still serves; instead only this process gets the signal and stops them in
order (workers first, the emulator last). The parent-death signal covers the one case no
``finally`` can: this process being SIGKILLed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from alfred_jobs.adapters.aws import AwsClients
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.entry.http.stream_api import router as stream_router
from alfred_jobs.exceptions import InvalidInput
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import USER_RE, issue_local_token
from alfred_jobs.settings import Settings
from alfred_tools.bootstrap import create_resources
from alfred_tools.clients import tool_deps
from alfred_tools.emulator import LOCAL_CREDENTIALS, MotoServer, free_port, wait_http

ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS")
_PR_SET_PDEATHSIG = 1


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # loaded up front: the pre-exec hook must not import or allocate much


def _die_with_parent() -> None:
    """Pre-exec hook (Linux): the child gets SIGTERM when the process that started it dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(args: list[str], env: Mapping[str, str], quiet: bool = False) -> subprocess.Popen[bytes]:
    """A child in its own session that dies with us (see the module docstring for why)."""
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(args, env=dict(env), start_new_session=True, stdout=out, stderr=out,
                            preexec_fn=_die_with_parent if _LIBC is not None else None)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 8.0) -> None:
    """SIGTERM every process, wait up to ``timeout`` in all, SIGKILL what is left; reaps them all."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_emulator(host: str, port: int | None, quiet: bool = True) -> MotoServer:
    """A moto server in its own session on ``host:port`` (any free port when 0/None)."""
    port = port or free_port(host)
    proc = spawn([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                 {**os.environ, **LOCAL_CREDENTIALS}, quiet=quiet)
    server = MotoServer(host, port, proc)
    try:
        wait_http(f"{server.endpoint}/moto-api/", proc=proc)
    except BaseException:
        stop_processes([proc])
        raise
    return server


def external_endpoints(env: Mapping[str, str]) -> dict[str, str]:
    """The AWS endpoint variables set in ``env`` (LocalStack, a mixed set-up, or real AWS)."""
    return {k: env[k] for k in ENDPOINT_VARS if env.get(k)}


def web_dir(settings: Settings) -> Path:
    """The static web client: ``ALFRED_WEB_DIR``, else ``web/`` at the repository root."""
    configured = settings.web_dir
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "web"


_NO_WEB = """<!doctype html><meta charset="utf-8"><title>alfred-jobs</title>
<h1>alfred-jobs</h1><p>The web client was not found (looked in <code>{path}</code>).
The API is up: <a href="/docs">/docs</a>.</p>"""


def create_dev_app(deps: Deps, static_dir: Path | None = None) -> FastAPI:
    """Job API, stream endpoints and the web client on one origin, plus a dev-only token route.

    ``GET /api/dev/token`` exists only here, never in the Lambda apps: it hands a local token to
    anyone who asks, which is the point on a laptop and a hole anywhere else.
    """
    app = create_app(deps, routers_first=[stream_router])
    settings = deps.settings

    @app.get("/api/dev/token", tags=["dev"])
    def dev_token(user: Annotated[str, Query(max_length=128)] = "local") -> dict[str, str]:
        """A local API token for ``user`` (dev server only)."""
        if not USER_RE.match(user):
            raise InvalidInput("user names are 1-128 characters of letters, digits and _.@:|+-",
                               code="invalid_user")
        return {"token": issue_local_token(settings, user), "user": user}

    static = static_dir or web_dir(settings)
    if (static / "index.html").is_file():
        app.mount("/", StaticFiles(directory=static, html=True), name="web")
    else:
        page = _NO_WEB.format(path=static)

        @app.get("/", include_in_schema=False)
        def no_web() -> HTMLResponse:
            return HTMLResponse(page)

    return app


@dataclass
class DevStack:
    """A running local system: the emulator (if ours), resources, and the child processes."""

    settings: Settings
    env: dict[str, str]
    endpoints: dict[str, str]
    emulator: MotoServer | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sweeper: subprocess.Popen[bytes] | None = None
    quiet_children: bool = False

    @property
    def endpoint_text(self) -> str:
        if self.emulator is not None:
            return f"{self.emulator.endpoint} (embedded moto server)"
        return ", ".join(f"{k}={v}" for k, v in self.endpoints.items())

    def deps(self) -> Deps:
        return tool_deps(self.settings)

    def start_worker(self, concurrency: int = 1, **extra_env: str) -> subprocess.Popen[bytes]:
        """One more worker process (``python -m alfred_tools.local_worker``)."""
        proc = spawn([sys.executable, "-m", "alfred_tools.local_worker", str(concurrency)],
                     {**self.env, **extra_env}, quiet=self.quiet_children)
        self.workers.append(proc)
        return proc

    def start_sweeper(self) -> subprocess.Popen[bytes]:
        self.sweeper = spawn([sys.executable, "-m", "alfred_tools.local_sweeper"], self.env,
                             quiet=self.quiet_children)
        return self.sweeper

    def children(self) -> list[subprocess.Popen[bytes]]:
        return [*self.workers, *([self.sweeper] if self.sweeper else [])]

    def stop(self) -> None:
        """Workers and sweeper first (they still need the emulator to let go), the emulator last."""
        stop_processes(self.children())
        if self.emulator is not None:
            stop_processes([self.emulator.proc])


@contextmanager
def dev_stack(settings: Settings, *, host: str = "127.0.0.1", emulator_port: int | None = None,
              workers: int = 1, base_env: Mapping[str, str] | None = None, quiet_emulator: bool = True,
              quiet_children: bool = False) -> Iterator[DevStack]:
    """Start emulator (unless endpoints are configured), resources, sweeper and workers; stop all on exit.

    The environment variables of this process are updated to point at the emulator, so boto3
    clients built here (the API's) and the children agree on where DynamoDB and SQS are.
    """
    env = dict(base_env if base_env is not None else os.environ)
    endpoints = external_endpoints(env)
    stack = DevStack(settings=settings, env=env, endpoints=endpoints, quiet_children=quiet_children)
    saved = dict(os.environ)
    try:
        if not endpoints:
            stack.emulator = start_emulator(host, emulator_port, quiet=quiet_emulator)
            stack.endpoints = {"AWS_ENDPOINT_URL": stack.emulator.endpoint}
            env.update(stack.endpoints)
            env.update({k: v for k, v in LOCAL_CREDENTIALS.items() if k not in env})
            env.setdefault("AWS_DEFAULT_REGION", settings.region)
        else:
            env.setdefault("AWS_DEFAULT_REGION", settings.region)
            for k, v in LOCAL_CREDENTIALS.items():
                env.setdefault(k, v)
        os.environ.update(env)
        clients = AwsClients(settings)
        create_resources(settings, clients.dynamodb, clients.sqs)
        stack.start_sweeper()
        for _ in range(workers):
            stack.start_worker()
        yield stack
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)


class Shutdown(Exception):
    """Raised from a signal handler so ``finally`` blocks run on SIGTERM as on Ctrl-C."""


@contextmanager
def graceful_signals() -> Iterator[Callable[[], bool]]:
    """Turn the first SIGINT/SIGTERM into ``Shutdown``; ignore repeats while we clean up."""
    state = {"stopping": False}

    def handler(signum: int, frame: Any) -> None:
        if state["stopping"]:
            return
        state["stopping"] = True
        raise Shutdown(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: state["stopping"]
    finally:
        state["stopping"] = True
        for s, h in previous.items():
            signal.signal(s, h)


def run_dev(settings: Settings, *, host: str, port: int, emulator_port: int | None, workers: int,
            out: Callable[[str], None] = print) -> int:
    """``alfred-jobs dev``: run until Ctrl-C / SIGTERM, then stop everything. Returns an exit code."""
    import uvicorn

    with graceful_signals() as stopping:
        try:
            with dev_stack(settings, host=host, emulator_port=emulator_port, workers=workers) as stack:
                app = create_dev_app(stack.deps())
                server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                       access_log=False, lifespan="off"))
                if stopping():
                    return 0
                base = f"http://{host}:{port}"
                out(_banner(stack, base, workers))
                server.run()  # installs its own SIGINT/SIGTERM handlers and returns on either
                if server.started is False and not stopping():
                    out(f"error: could not serve on {host}:{port} (is the port in use?)")
                    return 1
        except Shutdown:
            pass
    out("alfred-jobs dev: stopped")
    return 0


def _banner(stack: DevStack, base: str, workers: int) -> str:
    api_env = "" if base == "http://127.0.0.1:8000" else f"export ALFRED_API_URL={base}\n  "
    return (
        "alfred-jobs dev is up\n"
        f"  web client  {base}/\n"
        f"  job API     {base}/api  (OpenAPI: {base}/docs)\n"
        f"  stream      {base}/api/jobs/{{id}}/stream\n"
        f"  emulator    {stack.endpoint_text}\n"
        f"  workers     {workers} process(es) + sweeper every {stack.settings.sweep_seconds:g}s\n"
        "\n"
        "In another terminal (from the repository: source .venv/bin/activate, or use ./run.sh ...):\n"
        f"  {api_env}export ALFRED_TOKEN=$(alfred-jobs token --user you)\n"
        "  alfred-jobs chat \"chicken and rice\" --follow\n"
        "\n"
        "Ctrl-C stops everything."
    )
