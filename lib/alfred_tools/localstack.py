"""The one local stack, for ``alfred-jobs dev``/``demo``, the tests and the bench.

A ``LocalStack`` is an environment mapping and everything built from it, explicitly:

- ``settings``: read from the mapping exactly as the runtime reads its environment
  (``settings_from_env``), never from this process's ``os.environ``;
- ``env``: the environment of its child processes (endpoints, credentials, region, ``ALFRED_*``);
- ``clients`` / ``deps``: this process's boto3 clients and ports, with endpoint, credentials and
  region passed from the mapping (``alfred_tools.clients``) and the fault injector of
  ``settings.faults``; ``make_clients``/``make_deps`` build more (e.g. with other faults);
- resources from template.yaml (``create_resources``), worker and sweeper child processes
  (``start_worker``, ``start_sweeper``, any ``spawn``), stopped by ``stop``/``stop_all``;
- what the tests look at: queue depth, DLQ messages, purging the queue.

Nothing here writes ``os.environ``: boto3 in this process is told where AWS is, children are given
their environment. ``local_stack`` starts one (its own moto server when the mapping names no
endpoint and ``emulator`` allows it) and stops it; ``serve_app`` serves an ASGI app on a thread.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Self

from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from alfred_jobs.adapters.aws import AwsClients
from alfred_jobs.entry.wiring import aws_deps
from alfred_jobs.ports import Deps
from alfred_jobs.settings import Settings
from alfred_tools import bootstrap
from alfred_tools.clients import tool_clients
from alfred_tools.emulator import (
    LOCAL_CREDENTIALS,
    MotoServer,
    emulator_env,
    free_port,
    spawn,
    start_moto_server,
    stop_processes,
)

ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS")


# ---- the environment mapping ---------------------------------------------------------------------


def external_endpoints(env: Mapping[str, str]) -> dict[str, str]:
    """The AWS endpoint variables set in ``env`` (LocalStack, a mixed set-up, or real AWS)."""
    return {k: env[k] for k in ENDPOINT_VARS if env.get(k)}


def resource_env(prefix: str) -> dict[str, str]:
    """Physical names under ``prefix``: stacks share an emulator, never tables or queues."""
    return {"ALFRED_JOBS_TABLE": f"{prefix}-jobs", "ALFRED_EVENTS_TABLE": f"{prefix}-events",
            "ALFRED_CONVERSATIONS_TABLE": f"{prefix}-conversations",
            "ALFRED_AGENT_DATA_TABLE": f"{prefix}-agent-data",
            "ALFRED_STREAM_SLOTS_TABLE": f"{prefix}-stream-slots", "ALFRED_QUEUE_NAME": f"{prefix}-q",
            "ALFRED_DLQ_NAME": f"{prefix}-dlq"}


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' own environment source (prefix, aliases, case, JSON for lists), reading a
    mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = dict(env)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k if self.case_sensitive else k.lower(): v for k, v in self._mapping.items()}


class _SettingsFromArguments(Settings):
    """``Settings`` validated from its arguments alone (no environment, no files)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """``Settings()`` as a process whose environment is ``env`` would build it (same parsing, same
    validation), without reading or writing this process's environment."""
    checked = _SettingsFromArguments(**_MappingSource(Settings, env)())
    return Settings.model_construct(_fields_set=checked.model_fields_set,
                                    **{name: getattr(checked, name) for name in Settings.model_fields})


# ---- waiting, serving ----------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll an observable condition until it holds (returns its value); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def serve_app(app: Any, host: str = "127.0.0.1", port: int | None = None, *,
              timeout: float = 20.0) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on a thread of this process (a free port unless ``port``);
    yields its base URL once it accepts connections, stops it on exit."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=timeout,
                   what=f"uvicorn to serve on {host}:{port}")
        if not server.started:
            raise RuntimeError(f"could not serve on {host}:{port} (is the port in use?)")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# ---- the stack -------------------------------------------------------------------------------------


@dataclass(eq=False)
class LocalStack:
    """Settings, child environment, clients and child processes of one local system (see the module)."""

    settings: Settings
    env: dict[str, str]
    emulator: MotoServer | None = None  # the moto server this stack started, if any
    child_stdout: int | None = None     # None: children write to ours; subprocess.DEVNULL: dropped
    child_stderr: int | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sweeper: subprocess.Popen[bytes] | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)  # every live child, in start order
    stop_timeout: float = 10.0  # how long stop_all lets the children end by themselves before SIGKILL

    @classmethod
    def from_env(cls, env: Mapping[str, str], settings: Settings | None = None, **fields: Any) -> Self:
        """A stack over ``env`` (copied); its settings are read from it unless given."""
        env = dict(env)
        return cls(settings=settings if settings is not None else settings_from_env(env), env=env, **fields)

    # ---- where it is -----------------------------------------------------------------------

    @property
    def endpoints(self) -> dict[str, str]:
        return external_endpoints(self.env)

    @property
    def endpoint_text(self) -> str:
        if self.emulator is not None:
            return f"{self.emulator.endpoint} (embedded moto server)"
        return ", ".join(f"{k}={v}" for k, v in self.endpoints.items()) or "AWS"

    # ---- clients and ports of this process ----------------------------------------------------

    @cached_property
    def clients(self) -> AwsClients:
        """This process's clients of the stack (built on first use)."""
        return self.make_clients()

    @cached_property
    def deps(self) -> Deps:
        """The ports over ``clients``."""
        return aws_deps(self.settings, self.clients)

    def make_clients(self, settings: Settings | None = None) -> AwsClients:
        """New clients on this stack's endpoints and credentials, for ``settings`` (default: the
        stack's), with the fault injector of its ``faults``."""
        return tool_clients(settings or self.settings, self.env)

    def make_deps(self, settings: Settings | None = None) -> Deps:
        """Ports over ``make_clients(settings)``, e.g. with faults:
        ``make_deps(stack.settings.model_copy(update={"faults": ...}))``."""
        s = settings or self.settings
        return aws_deps(s, self.make_clients(s))

    def create_resources(self) -> dict[str, str]:
        """The tables and queues of template.yaml under this stack's names (if missing)."""
        return bootstrap.create_resources(self.settings, self.clients.dynamodb, self.clients.sqs)

    # ---- child processes ---------------------------------------------------------------------

    def spawn(self, args: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        """``python *args`` with this stack's environment plus ``extra_env``, in its own session,
        dying with this process; stopped by ``stop``/``stop_all``."""
        proc = spawn([sys.executable, *args], {**self.env, **extra_env}, stdout=self.child_stdout,
                     stderr=self.child_stderr)
        self.children.append(proc)
        return proc

    def start_worker(self, concurrency: int = 1, **extra_env: str) -> subprocess.Popen[bytes]:
        """A real worker process (``python -m alfred_tools.local_worker N``: the local event source
        mapping and the Lambda handler)."""
        proc = self.spawn(["-m", "alfred_tools.local_worker", str(concurrency)], **extra_env)
        self.workers.append(proc)
        return proc

    def start_sweeper(self, **extra_env: str) -> subprocess.Popen[bytes]:
        """A sweeper process (``python -m alfred_tools.local_sweeper``)."""
        self.sweeper = self.spawn(["-m", "alfred_tools.local_sweeper"], **extra_env)
        return self.sweeper

    def stop(self, *procs: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Stop these children (``emulator.stop_processes``) and forget them."""
        stop_processes(procs, timeout=timeout)
        for p in procs:
            for group in (self.children, self.workers):
                if p in group:
                    group.remove(p)
            if p is self.sweeper:
                self.sweeper = None

    def stop_all(self) -> None:
        """Every child first (they still need the emulator to let go), then the emulator if ours."""
        self.stop(*self.children, timeout=self.stop_timeout)
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    # ---- what tests and the bench look at -------------------------------------------------------

    def queue_depth(self, dlq: bool = False) -> int:
        """Messages in the jobs queue (or the DLQ), visible and in flight."""
        url = self.clients.dlq_url if dlq else self.clients.queue_url
        attrs = self.clients.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                          "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def dlq_messages(self) -> list[dict[str, Any]]:
        """Up to 10 messages received from the DLQ now (with their attributes)."""
        out = self.clients.sqs.receive_message(QueueUrl=self.clients.dlq_url, MaxNumberOfMessages=10,
                                               MessageAttributeNames=["All"], WaitTimeSeconds=0)
        return list(out.get("Messages", []))

    def purge(self) -> None:
        """Empty the jobs queue (messages of jobs no worker will run)."""
        try:
            self.clients.sqs.purge_queue(QueueUrl=self.clients.queue_url)
        except Exception:  # purge is rate limited on AWS; on moto it just works
            pass

    # ---- starting and stopping -------------------------------------------------------------------

    def start_emulator(self, host: str = "127.0.0.1", port: int | None = None, quiet: bool = True) -> MotoServer:
        """Our own moto server; the environment then points at it (local credentials and the
        settings' region unless the environment has its own)."""
        self.emulator = start_moto_server(host, port, quiet=quiet, env=self.env)
        # Every endpoint variable (a service-specific one inherited would win over AWS_ENDPOINT_URL).
        self.env.update({k: v for k, v in emulator_env(self.emulator.endpoint).items()
                         if k.startswith("AWS_ENDPOINT_URL")})
        for k, v in LOCAL_CREDENTIALS.items():
            self.env.setdefault(k, v)
        self.env.setdefault("AWS_DEFAULT_REGION", self.settings.region)
        self.__dict__.pop("clients", None)  # clients built before would point elsewhere
        self.__dict__.pop("deps", None)
        return self.emulator

    @contextmanager
    def running(self, *, emulator: bool | None = None, host: str = "127.0.0.1", emulator_port: int | None = None,
                quiet_emulator: bool = True, create: bool = True, workers: int = 0, worker_concurrency: int = 1,
                sweeper: bool = False) -> Iterator[Self]:
        """Start (emulator, resources, sweeper, workers), yield, stop everything.

        ``emulator``: True starts a moto server; None starts one only when the environment names
        no endpoint (``alfred-jobs dev``); False never (tests and bench bring theirs, or AWS).
        """
        try:
            if emulator or (emulator is None and not self.endpoints):
                self.start_emulator(host, emulator_port, quiet=quiet_emulator)
            else:
                self.env.setdefault("AWS_DEFAULT_REGION", self.settings.region)
            if create:
                self.create_resources()
            if sweeper:
                self.start_sweeper()
            for _ in range(workers):
                self.start_worker(worker_concurrency)
            yield self
        finally:
            self.stop_all()


@contextmanager
def local_stack(env: Mapping[str, str], settings: Settings | None = None, *, emulator: bool | None = None,
                host: str = "127.0.0.1", emulator_port: int | None = None, quiet_emulator: bool = True,
                create: bool = True, workers: int = 0, sweeper: bool = False, child_stdout: int | None = None,
                child_stderr: int | None = None) -> Iterator[LocalStack]:
    """A running ``LocalStack`` over ``env`` (see ``LocalStack.running``); stopped on exit."""
    stack = LocalStack.from_env(env, settings, child_stdout=child_stdout, child_stderr=child_stderr)
    with stack.running(emulator=emulator, host=host, emulator_port=emulator_port, quiet_emulator=quiet_emulator,
                       create=create, workers=workers, sweeper=sweeper):
        yield stack
