"""A local HTTP server standing in for the API server, for tests of the Kube adapter on the wire:
each request is recorded (method, path, content type, JSON body) and answered by a function of
the method and path with a status code and a JSON object."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from failovervm.kubeclient import ApiClient, Configuration

Respond = Callable[[str, str], tuple[int, dict[str, Any]]]


@contextmanager
def api_server(respond: Respond) -> Iterator[tuple[ApiClient, list[dict[str, Any]]]]:
    """(an ApiClient pointed at the server, the requests seen so far)."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            seen.append({"method": self.command, "path": self.path,
                         "type": self.headers.get("Content-Type"), "body": body})
            code, obj = respond(self.command, self.path)
            out = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        api = ApiClient(Configuration(host=f"http://127.0.0.1:{httpd.server_address[1]}"))
        yield api, seen
        api.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
