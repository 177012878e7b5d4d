"""The HTTP front: the threaded server boto3 talks to, and ``python -m alfred_tools.fidelity``.

``_Handler`` reads each request (chunked bodies too), routes ``/_fidelity/...`` to the control
API and everything else to ``Fidelity.handle``, and writes the reply, or closes the connection
without one (a lost answer, a released ``hold``). ``serve`` builds a started proxy server;
``main`` is the command line (``__main__`` runs it). Nothing here knows AWS's semantics.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from alfred_tools.fidelity.proxy import Fidelity
from alfred_tools.fidelity.spec import FidelitySpec, FidelitySpecError, default_spec_text

DESCRIPTION = "Faithful mode: an HTTP proxy in front of moto server that behaves like AWS where moto is kinder."


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections are closed after this long

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        server = cast(_Server, self.server)
        body = self._read_body()
        if self.path.startswith("/_fidelity/"):
            reply = server.fidelity.control(self.command, self.path, body)
        else:
            reply = server.fidelity.handle(self.command, self.path, list(self.headers.items()), body)
        if reply.close:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        reason = self.responses.get(reply.status, ("",))[0]
        head = [f"HTTP/1.1 {reply.status} {reason}"]
        head += [f"{k}: {v}" for k, v in reply.headers]
        head.append(f"Content-Length: {len(reply.body)}")
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(data if self.command == "HEAD" else data + reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], fidelity: Fidelity) -> None:
        super().__init__(address, _Handler)
        self.fidelity = fidelity

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # clients hanging up are not news
        super().handle_error(request, client_address)


def serve(upstream: str, spec: FidelitySpec, host: str = "127.0.0.1", port: int = 0) -> _Server:
    """A started proxy server (not yet serving: call ``serve_forever`` in a thread)."""
    fidelity = Fidelity(upstream, spec)
    server = _Server((host, port), fidelity)
    fidelity.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alfred_tools.fidelity", description=DESCRIPTION)
    parser.add_argument("--upstream", required=True, help="the moto server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port and prints the endpoint")
    parser.add_argument("--spec", default=None, help="default: $ALFRED_FIDELITY_SPEC or 'aws'")
    args = parser.parse_args(argv)
    try:
        spec = FidelitySpec.parse(args.spec if args.spec is not None else default_spec_text())
    except FidelitySpecError as exc:
        parser.error(str(exc))
    server = serve(args.upstream, spec, args.host, args.port)
    if args.port == 0:
        print(f"http://{args.host}:{server.server_address[1]}", flush=True)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.fidelity.stop()
        server.server_close()
    return 0
