"""The embedded emulator: a moto server process standing in for DynamoDB and SQS over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_moto_server(host: str = "127.0.0.1", port: int | None = None, quiet: bool = True) -> MotoServer:
    """Start ``moto.server`` on ``host:port`` and wait until it answers."""
    port = port or free_port(host)
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            stdout=out, stderr=out, env={**os.environ, **LOCAL_CREDENTIALS})
    server = MotoServer(host, port, proc)
    try:
        wait_http(f"{server.endpoint}/moto-api/", proc=proc)
    except Exception:
        server.stop()
        raise
    return server


def emulator_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto3 (and our children) at an emulator endpoint."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            **LOCAL_CREDENTIALS}
