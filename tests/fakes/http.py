"""A local HTTP(S) server standing in for the API server, for tests of the Kube adapter and of
failovervm.kubeclient on the wire: each request is recorded (method, path, query, headers, content
type, JSON body, the client certificate's common name) and answered by a function of the method and
path with a status code and a JSON object. With `tokens` set, any other bearer token gets 401."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from failovervm.kubeclient import ApiClient, Configuration

Respond = Callable[[str, str], tuple[int, Any]]

UNAUTHORIZED = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 401, "reason": "Unauthorized",
                "message": "Unauthorized"}


@dataclass
class FakeApiServer:
    """`seen`: {"method", "path" (as sent, with the query), "url_path", "query" (parse_qs), "headers",
    "type" (Content-Type), "body" (JSON), "client_cn"} per request. `respond` and `tokens` may be
    changed while it serves."""

    respond: Respond
    tokens: set[str] | None = None
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def fake_api_server(respond: Respond, tls: ssl.SSLContext | None = None) -> Iterator[FakeApiServer]:
    server = FakeApiServer(respond)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept alive, as the API server does

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urllib.parse.urlsplit(self.path)
            peer: Any = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
            cn = next((v for rdn in peer["subject"] for k, v in rdn if k == "commonName"), None) if peer else None
            server.seen.append({
                "method": self.command, "path": self.path, "url_path": url.path,
                "query": urllib.parse.parse_qs(url.query), "headers": dict(self.headers),
                "type": self.headers.get("Content-Type"), "body": json.loads(raw) if raw else None, "client_cn": cn})
            bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if server.tokens is not None and bearer not in server.tokens:
                code, obj = 401, UNAUTHORIZED
            else:
                code, obj = server.respond(self.command, self.path)
            out = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.send_header("Audit-Id", "a-1")
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def api_server(respond: Respond) -> Iterator[tuple[ApiClient, list[dict[str, Any]]]]:
    """(an ApiClient pointed at a plain HTTP fake, the requests seen so far)."""
    with fake_api_server(respond) as server:
        api = ApiClient(Configuration(host=server.url))
        yield api, server.seen
        api.close()
