"""`Kube.patch_node_status` on the wire, against a local HTTP server standing in for the API server:
the request is a JSON merge patch of nodes/{name}/status carrying the body as given (None as null),
and a 404 answers None."""

from __future__ import annotations

from typing import Any

from failovervm.kube import Kube
from tests.fakes.http import api_server

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "u1", "resourceVersion": "7"},
        "status": {"capacity": {"vf.failovervm.io/a": "4"}, "allocatable": {"vf.failovervm.io/a": "4"}}}


def _respond(_method: str, path: str) -> tuple[int, dict[str, Any]]:
    if path.startswith("/api/v1/nodes/n1/status"):
        return 200, NODE
    return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}


def test_patch_node_status_sends_a_merge_patch_of_the_status_subresource() -> None:
    with api_server(_respond) as (api, seen):
        kube = Kube(api)
        body = {"status": {"capacity": {"vf.failovervm.io/a": "4", "vf.failovervm.io/b": None},
                           "allocatable": {"vf.failovervm.io/a": "4", "vf.failovervm.io/b": None}}}
        out = kube.patch_node_status("n1", body)
        assert out is not None and out["status"] == NODE["status"] and out["metadata"]["name"] == "n1"
        assert seen[0]["path"] == "/api/v1/nodes/n1/status"
        assert seen[0]["type"] == "application/merge-patch+json"
        assert seen[0]["body"] == body  # None is sent as null: the key is removed
        assert kube.patch_node_status("gone", body) is None
