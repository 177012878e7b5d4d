"""One push request over HTTP(S) with a total deadline (issue 26).

A timeout per socket read is no bound: an endpoint that answers one byte every two seconds keeps
a three-second read timeout from ever firing, and holds the sender's thread for as long as it
likes. Here every operation of the request (connect, the TLS handshake, each send and each read)
waits at most for what is left until one deadline on the clock, so the whole request ends by then
whatever the other side does. TLS runs over memory buffers (``ssl.SSLObject``) so that the
handshake's reads are bounded the same way (an ``SSLSocket`` handshake waits its timeout per
read, not in total).

The request connects to the addresses checked beforehand (``Target``), whatever the name
resolves to by now, and follows no redirect.
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from alfred_jobs.clock import Clock, SystemClock
from alfred_jobs.service.push import Target

T = TypeVar("T")
RECV_CHUNK = 16 * 1024
# Built on the first TLS push, not at import: loading the CA bundle costs tens of ms, and the
# functions that import this module without sending (the submit function's cold start) need not
# pay it (issue 28).
_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class _Channel:
    """A connected socket, plain or TLS, whose every wait ends at ``deadline`` (``TimeoutError``)."""

    def __init__(self, sock: socket.socket, clock: Clock, deadline: float, tls_host: str | None) -> None:
        self._sock = sock
        self._clock = clock
        self._deadline = deadline
        self._tls: ssl.SSLObject | None = None
        if tls_host is not None:
            self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._tls = _tls_context().wrap_bio(self._in, self._out, server_hostname=tls_host)
            self._tls_call(self._tls.do_handshake)

    def _remaining(self) -> float:
        left = self._deadline - self._clock.monotonic()
        if left <= 0:
            raise TimeoutError("push request past its deadline")
        return left

    def _raw_send(self, data: bytes) -> None:
        self._sock.settimeout(self._remaining())
        self._sock.sendall(data)  # the timeout bounds the whole sendall (Python 3.5+)

    def _raw_recv(self, n: int) -> bytes:
        self._sock.settimeout(self._remaining())
        return self._sock.recv(n)

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._raw_send(data)

    def _tls_call(self, fn: Callable[..., T], *args: Any) -> T:
        while True:
            try:
                out = fn(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self._raw_recv(RECV_CHUNK)
                if data:
                    self._in.write(data)
                else:
                    self._in.write_eof()
                continue
            self._flush()
            return out

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        if self._tls is None:
            self._raw_send(bytes(data))
            return
        view = memoryview(bytes(data))
        while view:
            sent = self._tls_call(self._tls.write, view)
            view = view[sent:]

    def recv(self, n: int) -> bytes:
        if self._tls is None:
            return self._raw_recv(n)
        try:
            return self._tls_call(self._tls.read, n)
        except ssl.SSLZeroReturnError:
            return b""

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self._sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._channel.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _DeadlineConnection(http.client.HTTPConnection):
    """``HTTPConnection`` over a ``_Channel``: connects to the checked addresses by the deadline."""

    def __init__(self, target: Target, clock: Clock, deadline: float) -> None:
        super().__init__(target.host, target.port)
        self._target = target
        self._clock = clock
        self._deadline = deadline

    def _remaining(self) -> float:
        left = self._deadline - self._clock.monotonic()
        if left <= 0:
            raise TimeoutError("push request past its deadline")
        return left

    def connect(self) -> None:
        last: OSError | None = None
        for address in self._target.addresses:
            try:
                sock = socket.create_connection((str(address), self.port), self._remaining())
            except OSError as exc:
                last = exc
                continue
            try:
                tls_host = self._target.host if self._target.scheme == "https" else None
                self.sock = _Channel(sock, self._clock, self._deadline, tls_host)
            except BaseException:
                sock.close()
                raise
            return
        raise last or OSError("no address")


def http_post(target: Target, headers: dict[str, str], body: bytes, timeout: float,
              clock: Clock | None = None) -> int:
    """POST ``body`` to the checked ``target``; the response status. The whole request (connect,
    TLS, send, the response's headers and up to 64 KiB of its body) ends within ``timeout``
    seconds, else ``TimeoutError`` (an ``OSError``)."""
    clock = clock or SystemClock()
    conn = _DeadlineConnection(target, clock, clock.monotonic() + timeout)
    try:
        parts = urlsplit(target.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)
        return response.status
    finally:
        conn.close()
