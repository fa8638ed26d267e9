"""A real HTTP server on loopback that plays an external API for tests.

Each test registers a handler per path and, optionally, a queue of faults to serve first
(a status with a body, or a delay longer than the client's timeout). The server records every
request it saw so tests can assert on parameters, pacing and retries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    params: dict[str, str]
    at: float
    body: bytes = b""
    content_type: str = ""


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


Handler = Callable[[SeenRequest], Reply]


@dataclass
class StandInServer:
    """Routes, faults and the log of requests of one running stand-in server."""

    base_url: str = ""
    routes: dict[str, Handler] = field(default_factory=dict)
    faults: dict[str, deque[Reply]] = field(default_factory=dict)
    seen: list[SeenRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def inject(self, path: str, *replies: Reply) -> None:
        """Serves ``replies`` in order on ``path`` before its handler answers again."""
        with self.lock:
            self.faults.setdefault(path, deque()).extend(replies)

    def requests_to(self, path: str) -> list[SeenRequest]:
        return [request for request in self.seen if request.path == path]

    def _answer(self, request: SeenRequest) -> Reply:
        with self.lock:
            self.seen.append(request)
            queued = self.faults.get(request.path)
            if queued:
                return queued.popleft()
        handler = self.routes.get(request.path)
        if handler is None:
            return Reply(404, b'{"error":"no such path"}')
        return handler(request)


def _make_handler(server_state: StandInServer) -> type[BaseHTTPRequestHandler]:
    class _RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve(self._params(urlsplit(self.path).query))

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            params = self._params(urlsplit(self.path).query)
            if self.headers.get_content_type() == "application/x-www-form-urlencoded":
                params.update(self._params(body.decode()))
            self._serve(params, body)

        def _params(self, query: str) -> dict[str, str]:
            return {name: values[-1] for name, values in parse_qs(query).items()}

        def _serve(self, params: dict[str, str], body: bytes = b"") -> None:
            request = SeenRequest(
                self.command,
                urlsplit(self.path).path,
                params,
                time.monotonic(),
                body,
                self.headers.get("Content-Type", ""),
            )
            reply = server_state._answer(request)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.drop:
                self.close_connection = True
                return
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    return _RequestHandler


@contextmanager
def stand_in_server() -> Iterator[StandInServer]:
    """Runs a stand-in server on a free loopback port for the duration of the block."""
    state = StandInServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
