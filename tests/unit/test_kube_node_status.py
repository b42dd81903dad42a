"""`Kube.patch_node_status` on the wire, against a local HTTP server standing in for the API server:
the request is a JSON merge patch of nodes/{name}/status carrying the body as given (None as null),
and a 404 answers None."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from failovervm.kube import Kube

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "u1", "resourceVersion": "7"},
        "status": {"capacity": {"vf.failovervm.io/a": "4"}, "allocatable": {"vf.failovervm.io/a": "4"}}}


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
            found = self.path.startswith("/api/v1/nodes/n1/status")
            out = json.dumps(NODE if found else {"kind": "Status", "code": 404, "reason": "NotFound"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_patch_node_status_sends_a_merge_patch_of_the_status_subresource(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = server
    cfg = client.Configuration()
    cfg.host = url
    kube = Kube(client.ApiClient(cfg))
    body = {"status": {"capacity": {"vf.failovervm.io/a": "4", "vf.failovervm.io/b": None},
                       "allocatable": {"vf.failovervm.io/a": "4", "vf.failovervm.io/b": None}}}
    out = kube.patch_node_status("n1", body)
    assert out is not None and out["status"] == NODE["status"] and out["metadata"]["name"] == "n1"
    assert seen[0]["path"] == "/api/v1/nodes/n1/status"
    assert seen[0]["type"] == "application/merge-patch+json"
    assert seen[0]["body"] == body  # None is sent as null: the key is removed
    assert kube.patch_node_status("gone", body) is None
