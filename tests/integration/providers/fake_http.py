"""A tiny threaded JSON HTTP(S) server the GCP and Azure fakes are built on.

A fake supplies ``handle(method, path, query, headers, body) -> Reply``; this module parses
the request, serialises the reply, records every request (tests read them back), and runs
the server on a free loopback port in a background thread.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: object
    raw: bytes = b""
    target: str = ""  # the request line's path and query, as sent


@dataclass(slots=True)
class Reply:
    status: int
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    # Sent as is (with headers' Content-Type) instead of ``body`` as JSON, when set.
    raw: bytes | None = None


Handler = Callable[[Request], Reply]


@dataclass
class Recorder:
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)


def _make_handler(handle: Handler, recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class JsonHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: object = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                body = raw.decode(errors="replace")
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(self.command, url.path, query, headers, body, raw, self.path)
            recorder.add(request)
            reply = handle(request)
            if reply.raw is not None:
                data = reply.raw
            else:
                data = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            if data and reply.raw is None:
                self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    return JsonHandler


@contextmanager
def serve(
    handle: Handler, recorder: Recorder, *, tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """Serve on 127.0.0.1:<free port>; yields the base URL (``http://`` or ``https://``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(handle, recorder))
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="fake-cloud", daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
