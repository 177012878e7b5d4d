"""A hostile push endpoint for tests: a real TCP server on 127.0.0.1 that reads each request and
then answers one byte every ``interval`` seconds, for ever (no read timeout ever fires on it).

It records when each connection arrived (``arrived``) and when the sender hung up on it
(``hung_up``: the time its socket read end-of-file). ``stop()`` closes every connection, so a
sender still reading it gets an error and its thread comes back.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class SlowEndpoint:
    interval: float = 2.0
    arrived: list[float] = field(default_factory=list)
    hung_up: list[float] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _server: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def start(self) -> SlowEndpoint:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def wait_for(self, connections: int, timeout: float = 10.0) -> None:
        """Wait until ``connections`` requests have arrived."""
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.arrived) >= connections, timeout):
                raise AssertionError(f"{len(self.arrived)} of {connections} requests arrived")

    def wait_hung_up(self, connections: int, timeout: float) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.hung_up) >= connections, timeout):
                raise AssertionError(f"the sender hung up on {len(self.hung_up)} of {connections}")

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self.lock:
                self._conns.append(conn)
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:  # the headers (the body follows; never mind it)
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
        except OSError:
            conn.close()
            return
        with self.lock:
            self.arrived.append(time.monotonic())
            self.lock.notify_all()
        reply = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n" * 1000
        try:
            for byte in reply:
                conn.sendall(bytes([byte]))
                # Wait for the next byte's time, or for the sender to hang up (end-of-file, reset).
                readable, _, _ = select.select([conn], [], [], self.interval)
                if self._stop.is_set():
                    return
                while readable:
                    if not conn.recv(65536):
                        raise ConnectionResetError("end of file")
                    readable, _, _ = select.select([conn], [], [], 0)
        except OSError:
            if not self._stop.is_set():
                with self.lock:
                    self.hung_up.append(time.monotonic())
                    self.lock.notify_all()
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        with self.lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> SlowEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
