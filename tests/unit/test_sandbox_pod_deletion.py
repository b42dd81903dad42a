"""The sandbox heartbeat completes graceful pod deletions as a kubelet would: which pods (given
now), and the request it sends for each, on the wire against a local HTTP server standing in for
the apiserver."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from failovervm import kubeclient
from failovervm_sandbox import nodes

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
OWN = {"sandbox-node-1", "sandbox-node-2"}


def _pod(name: str, node: str | None = "sandbox-node-1", deletion: dt.datetime | None = None,
         grace: int | None = 30, finalizers: tuple[str, ...] = (), ns: str = "ns1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}"}
    if deletion is not None:
        meta["deletionTimestamp"] = deletion.strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["deletionGracePeriodSeconds"] = grace
    if finalizers:
        meta["finalizers"] = list(finalizers)
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": "Pending"}}


def test_only_bound_pods_of_own_nodes_whose_grace_period_is_over_are_due() -> None:
    sec = dt.timedelta(seconds=1)
    pods = [
        _pod("running"),                                                 # not being deleted
        _pod("elapsed", deletion=NOW - 5 * sec),                         # grace period over
        _pod("just-now", deletion=NOW, node="sandbox-node-2"),           # over at this very second
        _pod("waiting", deletion=NOW + sec),                             # still in its grace period
        _pod("elsewhere", deletion=NOW - 5 * sec, node="other-node"),    # another node's kubelet's
        _pod("unbound", deletion=NOW - 5 * sec, node=None),              # the apiserver deletes these at once
        _pod("finalized", deletion=NOW - 5 * sec, finalizers=("x.io/hold",)),  # one confirmation, then theirs
        _pod("confirmed", deletion=NOW - 5 * sec, grace=0, finalizers=("x.io/hold",)),  # already confirmed
    ]
    due = nodes.deletions_due(pods, OWN, NOW)
    assert due == [
        nodes.PodRef("ns1", "elapsed", "uid-elapsed", "sandbox-node-1"),
        nodes.PodRef("ns1", "just-now", "uid-just-now", "sandbox-node-2"),
        nodes.PodRef("ns1", "finalized", "uid-finalized", "sandbox-node-1"),
    ]
    # A second later the waiting pod is due too; nothing without a deletionTimestamp ever is.
    later = {p.name for p in nodes.deletions_due(pods, OWN, NOW + sec)}
    assert later == {"elapsed", "just-now", "waiting", "finalized"}
    assert nodes.deletions_due(pods, OWN, NOW + dt.timedelta(days=365)) == nodes.deletions_due(pods, OWN, NOW + sec)
    assert nodes.deletions_due(pods, set(), NOW + sec) == []


def test_deletion_timestamps_in_any_rfc3339_form_compare_as_instants() -> None:
    pod = _pod("p")
    pod["metadata"]["deletionTimestamp"] = "2026-03-01T13:00:00+01:00"  # == NOW
    pod["metadata"]["deletionGracePeriodSeconds"] = 30
    assert [p.name for p in nodes.deletions_due([pod], OWN, NOW)] == ["p"]
    assert nodes.deletions_due([pod], OWN, NOW - dt.timedelta(microseconds=1)) == []


def test_the_confirmation_is_a_kubelets_final_delete() -> None:
    assert nodes.confirm_deletion_body("0b9e-uid") == {
        "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": "0b9e-uid"}}


@pytest.fixture
def apiserver() -> Iterator[tuple[kubeclient.CoreV1Api, dict[str, list[dict[str, Any]]], list[dict[str, Any]]]]:
    """A local HTTP server with the pods of each node (GET /api/v1/pods?fieldSelector=spec.nodeName=N)
    that records every request; DELETE answers 200, or 404/409 for the pods named gone/replaced."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            out = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            seen.append({"method": "GET", "path": url.path, "query": query})
            node = query["fieldSelector"][0].removeprefix("spec.nodeName=")
            self._answer(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                               "items": by_node.get(node, [])})

        def do_DELETE(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            url = urllib.parse.urlsplit(self.path)
            seen.append({"method": "DELETE", "path": url.path, "query": url.query,
                         "type": self.headers.get("Content-Type"), "body": body})
            name = url.path.rsplit("/", 1)[-1]
            status = {"gone": 404, "replaced": 409}.get(name, 200)
            self._answer(status, {"kind": "Status", "apiVersion": "v1", "code": status})

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    cfg = kubeclient.Configuration(host=f"http://127.0.0.1:{httpd.server_address[1]}")
    try:
        yield kubeclient.CoreV1Api(kubeclient.ApiClient(cfg)), by_node, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_complete_deletions_lists_each_node_and_deletes_with_grace_0_and_the_uid(
    apiserver: tuple[kubeclient.CoreV1Api, dict[str, list[dict[str, Any]]], list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, by_node, seen = apiserver
    past = NOW - dt.timedelta(seconds=3)
    by_node["sandbox-node-1"] = [_pod("web-1", deletion=past, ns="apps"), _pod("idle"),
                                 _pod("gone", deletion=past), _pod("replaced", deletion=past)]
    by_node["sandbox-node-2"] = [_pod("later", node="sandbox-node-2", deletion=NOW + dt.timedelta(seconds=20))]
    with caplog.at_level(logging.INFO, logger=nodes.__name__):
        done = nodes.complete_deletions(core, ["sandbox-node-1", "sandbox-node-2"], NOW)
    assert done == 1
    lists = [r for r in seen if r["method"] == "GET"]
    assert [(r["path"], r["query"]["fieldSelector"]) for r in lists] == [
        ("/api/v1/pods", ["spec.nodeName=sandbox-node-1"]), ("/api/v1/pods", ["spec.nodeName=sandbox-node-2"])]
    deletes = [r for r in seen if r["method"] == "DELETE"]
    assert [r["path"] for r in deletes] == [
        "/api/v1/namespaces/apps/pods/web-1", "/api/v1/namespaces/ns1/pods/gone",
        "/api/v1/namespaces/ns1/pods/replaced"]
    for r, uid in zip(deletes, ("uid-web-1", "uid-gone", "uid-replaced"), strict=True):
        assert r["type"] in (None, "application/json")  # the apiserver reads a body without one as JSON
        assert r["body"] == {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                             "preconditions": {"uid": uid}}
        assert r["query"] == ""  # everything is in the body, as a kubelet sends it
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["pod apps/web-1 on sandbox-node-1: grace period over, deletion completed (as its kubelet would)"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_complete_deletions_keeps_going_when_a_list_fails(
    apiserver: tuple[kubeclient.CoreV1Api, dict[str, list[dict[str, Any]]], list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, by_node, seen = apiserver
    by_node["sandbox-node-2"] = [_pod("p", node="sandbox-node-2", deletion=NOW)]
    bad = kubeclient.CoreV1Api(kubeclient.ApiClient(kubeclient.Configuration(host="http://127.0.0.1:1")))
    assert nodes.complete_deletions(bad, ["sandbox-node-1"], NOW) == 0
    assert any("listing the pods on sandbox-node-1 failed" in r.getMessage() for r in caplog.records)
    assert nodes.complete_deletions(core, ["sandbox-node-2"], NOW) == 1
    assert [r["path"] for r in seen if r["method"] == "DELETE"] == ["/api/v1/namespaces/ns1/pods/p"]


def _synced(core: kubeclient.CoreV1Api, pods: list[dict[str, Any]]) -> nodes.TerminatingPods:
    """A TerminatingPods that has listed `pods` (its thread is not started)."""
    known = nodes.TerminatingPods(core.api_client)
    known.reset(pods)
    known._synced.set()
    return known


def test_terminating_pods_keeps_only_bound_pods_being_deleted_by_node() -> None:
    known = nodes.TerminatingPods(kubeclient.ApiClient(kubeclient.Configuration(host="http://127.0.0.1:1")))
    past = NOW - dt.timedelta(seconds=3)
    known.reset([_pod("running"), _pod("going", deletion=past), _pod("unbound", node=None, deletion=past),
                 _pod("other", node="sandbox-node-2", deletion=past)])
    assert [p["metadata"]["name"] for p in known.on("sandbox-node-1")] == ["going"]
    assert known.on("sandbox-node-1")[0] == {  # a few fields, what deletions_due reads
        "metadata": {"namespace": "ns1", "name": "going", "uid": "uid-going", "deletionGracePeriodSeconds": 30,
                     "deletionTimestamp": past.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "spec": {"nodeName": "sandbox-node-1"}}
    known.see("MODIFIED", _pod("running", deletion=past))       # deleted since
    known.see("DELETED", _pod("going", deletion=past))          # gone
    known.see("ADDED", _pod("new"))                             # not being deleted: not kept
    assert [p["metadata"]["name"] for p in known.on("sandbox-node-1")] == ["running"]
    known.forget(nodes.PodRef("ns1", "running", "uid-running", "sandbox-node-1"))  # confirmed
    assert known.on("sandbox-node-1") == [] and [p["metadata"]["name"] for p in known.on("sandbox-node-2")] == ["other"]
    known.reset([])  # a fresh LIST forgets the rest
    assert known.on("sandbox-node-2") == [] and not known._by_node


def test_complete_deletions_from_the_watch_lists_nothing(
    apiserver: tuple[kubeclient.CoreV1Api, dict[str, list[dict[str, Any]]], list[dict[str, Any]]],
) -> None:
    core, by_node, seen = apiserver
    past = NOW - dt.timedelta(seconds=3)
    known = _synced(core, [_pod("web-1", deletion=past, ns="apps"), _pod("idle"),
                           _pod("later", node="sandbox-node-2", deletion=NOW + dt.timedelta(seconds=20))])
    assert nodes.complete_deletions(core, ["sandbox-node-1", "sandbox-node-2"], NOW, known=known) == 1
    assert [(r["method"], r["path"]) for r in seen] == [("DELETE", "/api/v1/namespaces/apps/pods/web-1")]
    assert known.on("sandbox-node-1") == []  # not confirmed twice
    known._synced.clear()  # the watch restarts: each node is listed meanwhile
    by_node["sandbox-node-1"] = [_pod("web-2", deletion=past)]
    assert nodes.complete_deletions(core, ["sandbox-node-1"], NOW, known=known) == 1
    assert [r["method"] for r in seen[1:]] == ["GET", "DELETE"]
