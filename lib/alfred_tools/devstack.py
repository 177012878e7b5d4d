"""The whole system on one machine (``alfred-jobs dev``): emulator, resources, workers, sweeper, API.

Process layout::

    alfred-jobs dev ─┬─ moto server          (unless AWS_ENDPOINT_URL* point elsewhere)
                     ├─ local_sweeper        (sweeps every ALFRED_SWEEP_SECONDS)
                     ├─ local_worker x N     (the Lambda event source mapping, emulated)
                     └─ uvicorn, in-process  (job API + stream + web client, one origin)

The stack is ``alfred_tools.localstack.LocalStack`` (the tests and the bench use the same one):
children in their own sessions with a parent-death signal (see ``alfred_tools.emulator``), stopped
in order on exit (workers first, the emulator last); this process's clients are given the
endpoints, nothing rewrites its environment.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from alfred_jobs.domain.ids import is_user_name
from alfred_jobs.entry.http.common import ResponseHeaders
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.entry.http.stream_api import router as stream_router
from alfred_jobs.exceptions import Forbidden, InvalidInput
from alfred_jobs.ports import Deps
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.settings import Settings
from alfred_tools.emulator import LOCAL_CREDENTIALS, free_udp_port
from alfred_tools.localstack import ENDPOINT_VARS, LocalStack, external_endpoints
from alfred_tools.vapid_keys import with_dev_vapid

__all__ = ["ENDPOINT_VARS", "Shutdown", "create_dev_app", "dev_stack", "external_endpoints", "graceful_signals",
           "run_dev", "web_dir"]


def web_dir(settings: Settings) -> Path:
    """The static web client: ``ALFRED_WEB_DIR``, else ``web/`` at the repository root."""
    configured = settings.web_dir
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "web"


_NO_WEB = """<!doctype html><meta charset="utf-8"><title>alfred-jobs</title>
<h1>alfred-jobs</h1><p>The web client was not found (looked in <code>{path}</code>).
The API is up: <a href="/docs">/docs</a>.</p>"""


def _origin(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def page_headers(settings: Settings) -> dict[str, str]:
    """The web page's and its files' headers: a strict CSP (scripts, styles and connections from
    this origin only, plus the stream's origin if it has its own; no inline script or style; never
    framed), no MIME sniffing, no referrer (stream links carry a token). See docs/web.md."""
    connect = ["'self'"]
    stream = _origin(settings.stream_url)
    if stream is not None and stream != _origin(settings.api_url):
        connect.append(stream)
    csp = (f"default-src 'self'; img-src 'self' data:; connect-src {' '.join(connect)}; "
           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def token_request_is_local(request: Request) -> bool:
    """The dev token route answers a request only when both ends are this machine.

    The ``Host`` must name the loopback (``localhost``, ``127.0.0.1``, ``[::1]``): a page on
    ``evil.example`` that rebinds its name to 127.0.0.1 sends ``Host: evil.example`` and gets
    nothing. The peer must be on the loopback too: with ``dev --host 0.0.0.0`` the API is on the
    network, but no other machine can mint a token (it signs in with one from ``alfred-jobs
    token``).
    """
    peer = request.client.host if request.client else ""
    return is_loopback(host_name(request.headers.get("host", ""))) and is_loopback(peer)


def create_dev_app(deps: Deps, static_dir: Path | None = None) -> FastAPI:
    """Job API, stream endpoints and the web client on one origin, plus a dev-only token route.

    ``GET /api/dev/token`` exists only here, never in the Lambda apps: it hands a local token to
    anyone on this machine who asks, which is the point on a laptop and a hole anywhere else; so
    it answers only requests from and addressed to the loopback (``token_request_is_local``).
    """
    app = create_app(deps, routers_first=[stream_router])
    settings = deps.settings

    @app.get("/api/dev/token", tags=["dev"])
    def dev_token(request: Request, user: Annotated[str, Query(max_length=128)] = "local") -> dict[str, str]:
        """A local API token for ``user`` (dev server only, asked from this machine by its loopback name)."""
        if not token_request_is_local(request):
            raise Forbidden("the dev token route answers only this machine, addressed as localhost or "
                            "127.0.0.1; from elsewhere, paste a token from 'alfred-jobs token --user NAME'",
                            code="dev_token_local_only")
        if not is_user_name(user):
            raise InvalidInput("user names are 1-128 characters of letters, digits and _.@:|+-",
                               code="invalid_user")
        return {"token": issue_local_token(settings, user), "user": user}

    static = static_dir or web_dir(settings)
    if (static / "index.html").is_file():
        app.mount("/", ResponseHeaders(StaticFiles(directory=static, html=True), page_headers(settings)),
                  name="web")
    else:
        page = _NO_WEB.format(path=static)

        @app.get("/", include_in_schema=False)
        def no_web() -> HTMLResponse:
            return HTMLResponse(page, headers=page_headers(settings))

    return app


@contextmanager
def dev_stack(settings: Settings, *, host: str = "127.0.0.1", emulator_port: int | None = None,
              workers: int = 1, base_env: Mapping[str, str] | None = None, quiet_emulator: bool = True,
              quiet_children: bool = False) -> Iterator[LocalStack]:
    """Start emulator (unless endpoints are configured), resources, sweeper and workers; stop all on exit.

    ``base_env`` (default: this process's environment) is the children's environment, plus the
    emulator's endpoint or, with configured endpoints (LocalStack), local credentials if it has none.
    """
    env = dict(base_env if base_env is not None else os.environ)
    if external_endpoints(env):
        for k, v in LOCAL_CREDENTIALS.items():
            env.setdefault(k, v)
    quiet = subprocess.DEVNULL if quiet_children else None
    stack = LocalStack.from_env(env, settings, child_stdout=quiet, child_stderr=quiet)
    with stack.running(host=host, emulator_port=emulator_port, quiet_emulator=quiet_emulator,
                       workers=workers, sweeper=True):
        yield stack


def with_stream_wake(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """``settings`` with a wake-up address for the stream (unless one is set), and the variable
    that gives it to the workers."""
    if settings.stream_wake_address:
        return settings, {}
    address = f"127.0.0.1:{free_udp_port()}"
    return (settings.model_copy(update={"stream_wake_address": address}),
            {"ALFRED_STREAM_WAKE_ADDRESS": address})


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


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (as uvicorn binds it: SO_REUSEADDR, so a port in
    TIME_WAIT is free)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # not ours to judge: uvicorn reports a bad host itself
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return True
    return False


def busy_port_message(host: str, port: int) -> str:
    return (f"error: port {port} on {host} is in use (another 'alfred-jobs dev' or './run.sh' running?)\n"
            f"  stop it, or pick another port: alfred-jobs dev --port {port + 1}  (./run.sh dev --port {port + 1})\n"
            f"  then point the CLI at it: export ALFRED_API_URL=http://{host}:{port + 1}")


# Streams get this long to end by themselves on Ctrl-C when the data outlives us (LocalStack, AWS);
# with our own in-memory moto server nothing outlives us, so they are cut at once.
DRAIN_SECONDS = 5


class _DevServer:
    """uvicorn's server, saying what it does when told to stop."""

    @staticmethod
    def create(config: Any, on_exit: Callable[[], None]) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                if not self.should_exit:
                    on_exit()
                super().handle_exit(sig, frame)

        return Server(config)


def run_dev(settings: Settings, *, host: str, port: int, emulator_port: int | None, workers: int,
            out: Callable[..., None] = print) -> int:
    """``alfred-jobs dev``: run until Ctrl-C / SIGTERM, then stop everything. Returns an exit code."""
    import uvicorn

    if port_in_use(host, port):  # before anything starts, and before any banner
        out(busy_port_message(host, port))
        return 1
    started = [0.0]
    with graceful_signals() as stopping:
        try:
            # Web Push: one VAPID key, kept in .alfred/vapid.pem, for the API and every worker.
            settings, vapid_env = with_dev_vapid(settings)
            # The workers wake the stream after each event they write (one machine: a UDP datagram
            # on the loopback), so a frame goes out when it is written, not at the next poll.
            settings, wake_env = with_stream_wake(settings)
            with dev_stack(settings, host=host, emulator_port=emulator_port, workers=workers,
                           base_env={**os.environ, **vapid_env, **wake_env}) as stack:
                app = create_dev_app(stack.deps)
                in_memory = stack.emulator is not None
                drain = 0 if in_memory else DRAIN_SECONDS

                if in_memory:
                    stack.stop_timeout = 1.0  # a job cut off here is forgotten with the emulator anyway

                def on_exit() -> None:
                    started[0] = time.monotonic()
                    logging.getLogger("uvicorn.error").disabled = True  # streams cut on purpose: no tracebacks
                    if in_memory:
                        out("\nalfred-jobs dev: stopping: open streams are closed now and workers get "
                            f"{stack.stop_timeout:g}s to let go (the in-memory emulator forgets every job anyway), "
                            "then the emulator", flush=True)
                    else:
                        out(f"\nalfred-jobs dev: stopping: open streams get up to {drain}s to end and workers up to "
                            f"{stack.stop_timeout:g}s to finish (the jobs stay in {stack.endpoint_text}; a job cut "
                            "off resumes at the next start)", flush=True)

                server = _DevServer.create(
                    uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                   lifespan="off", timeout_graceful_shutdown=drain), on_exit)
                if stopping():
                    return 0
                if port_in_use(host, port):  # taken while the stack started
                    out(busy_port_message(host, port))
                    return 1
                base = f"http://{host}:{port}"
                out(_banner(stack, base, workers))
                if not is_loopback(host):
                    out(_exposed_warning(host))
                server.run()  # installs its own SIGINT/SIGTERM handlers and returns on either
                if server.started is False and not stopping() and not server.should_exit:
                    out(busy_port_message(host, port))
                    return 1
        except Shutdown:
            pass
    out("alfred-jobs dev: stopped" + (f" in {time.monotonic() - started[0]:.1f}s" if started[0] else ""),
        flush=True)
    return 0


def _exposed_warning(host: str) -> str:
    return (
        f"\nWARNING: listening on {host}, beyond this machine. Anyone who can reach this port can reach\n"
        "  the API, which runs on the public development secrets: any token made with them is accepted.\n"
        "  The dev token route answers this machine only; other devices sign in with a token from\n"
        "  'alfred-jobs token --user NAME'. Use --host 127.0.0.1 (the default) unless you mean it."
    )


def _banner(stack: LocalStack, base: str, workers: int) -> str:
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
