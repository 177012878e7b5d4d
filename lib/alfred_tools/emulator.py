"""Local processes: the embedded emulator (a moto server standing in for DynamoDB and SQS over
HTTP), and the one way the tooling starts and stops a child process.

Every child gets its own session and a parent-death signal. Ctrl-C in a terminal signals the whole
foreground process group: if the children shared it they would all die at once, in no order,
while the parent still serves; instead only the parent gets the signal and stops them in order
(``stop_processes``). The parent-death signal covers the one case no ``finally`` can: the parent
being SIGKILLed. (Linux delivers it when the *thread* that started the child ends: start children
from a thread that outlives them, as the main thread does.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing"}
DEFAULT_REGION = "us-east-1"
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free on ``host`` now (the stream's wake-ups, ``Settings.stream_wake_address``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers at all (any status), or raise."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


# ---- child processes ------------------------------------------------------------------------


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


def spawn(args: list[str], env: Mapping[str, str], *, stdout: int | None = None,
          stderr: int | None = None) -> subprocess.Popen[bytes]:
    """A child with exactly ``env``, in its own session (its pid is its process group), that dies
    with us. ``stdout``/``stderr``: ``None`` inherits ours, ``subprocess.DEVNULL`` drops them."""
    return subprocess.Popen(args, env=dict(env), start_new_session=True, stdout=stdout, stderr=stderr,
                            preexec_fn=_die_with_parent if _LIBC is not None else None)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` to the process group a ``spawn``ed child leads (the child alone if it leads none)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """The one process stopper: SIGCONT then SIGTERM each live process's group (a stopped process
    cannot act on SIGTERM), wait up to ``timeout`` in all, SIGKILL the groups still there; reaps
    them all. Processes already gone are only reaped."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGCONT)
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


# ---- the moto server ------------------------------------------------------------------------


@dataclass
class MotoServer:
    """A moto server child process."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        stop_processes([self.proc])


def start_moto_server(host: str = "127.0.0.1", port: int | None = None, quiet: bool = True,
                      env: Mapping[str, str] | None = None) -> MotoServer:
    """Start ``moto.server`` on ``host:port`` (any free port when 0/None) and wait until it answers.

    Its environment is ``env`` (default: this process's) with local credentials added.
    """
    port = port or free_port(host)
    out = subprocess.DEVNULL if quiet else None
    proc = spawn([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                 {**(os.environ if env is None else env), **LOCAL_CREDENTIALS}, stdout=out, stderr=out)
    server = MotoServer(host, port, proc)
    try:
        wait_http(f"{server.endpoint}/moto-api/", proc=proc)
    except BaseException:
        server.stop()
        raise
    return server


def emulator_env(endpoint: str, region: str | None = None) -> dict[str, str]:
    """Environment variables that point boto3 (and our children) at an emulator endpoint; the
    region defaults to this process's ``AWS_DEFAULT_REGION``, else us-east-1."""
    # The service-specific variables too: boto3 prefers them to AWS_ENDPOINT_URL, so one inherited
    # from the caller's environment (the LocalStack leg sets AWS_ENDPOINT_URL_SQS) would otherwise
    # send that service's calls past this endpoint.
    return {"AWS_ENDPOINT_URL": endpoint,
            **{f"AWS_ENDPOINT_URL_{service}": endpoint for service in EMULATED_SERVICES},
            "AWS_DEFAULT_REGION": region or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            **LOCAL_CREDENTIALS}


EMULATED_SERVICES = ("DYNAMODB", "SQS", "SECRETS_MANAGER")
