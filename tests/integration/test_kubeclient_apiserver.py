"""failovervm.kubeclient and the Kube adapter against a real etcd + kube-apiserver (the sandbox's pinned
builds, started here alone: no nodes, no controllers): the project's own CRDs, create / get / merge
and JSON patches / status replace with optimistic concurrency / LIST with a label selector / WATCH
(from a resourceVersion, with bookmarks, 410 for an expired one) / delete, a ServiceAccount
token (bound, from the TokenRequest API) given as a token file and by an exec credential plugin, and
the sandbox heartbeat's watch of terminating pods."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from failovervm import API_GROUP, API_VERSION, kube, kubeclient, labels, placement
from failovervm.kubeclient import ApiClient, ApiException, Configuration
from tests.prereq import require

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture(scope="module")
def apiserver() -> Iterator[Path]:
    """The admin kubeconfig of a fresh etcd + kube-apiserver."""
    from failovervm_sandbox import binaries, controlplane, procs

    bins = {n: binaries.binary_path(n) for n in ("etcd", "kube-apiserver")}
    for name, path in bins.items():
        require(path.exists(), f"{name} binary at {path} (run hack/build-binaries.sh)")
    root = Path(tempfile.mkdtemp(prefix="fvm-kclient-"))
    paths = controlplane.ControlPlanePaths(root)
    pids: list[int] = []
    try:
        controlplane.generate_pki(paths)
        etcd_port, peer_port, api_port = (controlplane.free_port() for _ in range(3))
        pids.append(controlplane.start_etcd(bins["etcd"], paths, etcd_port, peer_port))
        pids.append(controlplane.start_apiserver(bins["kube-apiserver"], paths, api_port, etcd_port))
        controlplane.write_kubeconfig(paths.admin_kubeconfig, f"https://127.0.0.1:{api_port}", paths.pki / "ca.crt",
                                      paths.pki / "admin.crt", paths.pki / "admin.key", "sandbox-admin")
        yield paths.admin_kubeconfig
    finally:
        for pid in reversed(pids):
            procs.stop(pid)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def api(apiserver: Path) -> ApiClient:
    """An admin client, with the FailoverVM and VFClaim CRDs installed and established."""
    client = ApiClient(Configuration.from_kubeconfig(apiserver))
    for name in ("failovervms", "vfclaims"):
        crd = yaml.safe_load((REPO / "crds" / f"{name}.yaml").read_text())
        client.request("POST", CRD_PATH, body=crd)
    deadline = time.monotonic() + 60
    for name in ("failovervms", "vfclaims"):
        while True:
            crd = client.request("GET", f"{CRD_PATH}/{name}.{API_GROUP}")
            if any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or []):
                break
            assert time.monotonic() < deadline, f"CRD {name} not established"
            time.sleep(0.2)
    # The namespace (no controller-manager here: nothing else makes it).
    client.request("POST", kubeclient.core_path("namespaces"), body={"metadata": {"name": "kc"}})
    time.sleep(1.0)  # the discovery of the new kinds reaches every apiserver handler
    return client


def _vm(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    vm = yaml.safe_load((REPO / "examples" / "failovervm.yaml").read_text())
    vm["metadata"] = {"name": name, "namespace": "kc", "labels": labels or {}}
    return dict(vm)


def test_custom_objects_through_the_kube_adapter(api: ApiClient) -> None:
    k = kube.Kube(api)
    custom = k.custom
    created = custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, _vm("a", {"tier": "x"}))
    custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, _vm("b", {"tier": "y"}))
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, _vm("a"))
    assert err.value.status == 409 and json.loads(err.value.body or "")["reason"] == "AlreadyExists"
    assert kube.api_error_message(err.value) == f'failovervms.{API_GROUP} "a" already exists'

    got = k.get_vm("kc", "a")
    assert got is not None and got["metadata"]["uid"] == created["metadata"]["uid"] and got["spec"]["cpu"] == 1
    assert k.get_vm("kc", "nope") is None
    assert [v["metadata"]["name"] for v in k.list_vms("tier=x")] == ["a"]
    assert sorted(v["metadata"]["name"] for v in k.list_vms()) == ["a", "b"]

    # Merge patch (a null removes the key), with a stale resourceVersion: 409.
    patched = k.patch_vm("kc", "a", {"metadata": {"labels": {"tier": None, "new": "1"}}})
    assert patched["metadata"]["labels"] == {"new": "1"}
    with pytest.raises(ApiException) as err:
        k.patch_vm("kc", "a", {"metadata": {"labels": {"x": "1"},
                                            "resourceVersion": created["metadata"]["resourceVersion"]}})
    assert err.value.status == 409
    # JSON patch (RFC 6902).
    jp = custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "a",
                                               [{"op": "replace", "path": "/spec/cpu", "value": 2},
                                                {"op": "test", "path": "/metadata/labels/new", "value": "1"}])
    assert jp["spec"]["cpu"] == 2
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "a",
                                              [{"op": "test", "path": "/spec/cpu", "value": 7}])
    assert err.value.status == 422

    # Finalizers (read-modify-write of metadata) and status (replace of the subresource, retried on 409).
    assert k.set_finalizer("kc", "a", "failovervm.io/test", True) is not None
    stale = k.get_vm("kc", "a")
    k.patch_vm("kc", "a", {"metadata": {"labels": {"bump": "1"}}})  # `stale` is stale now
    out = k.update_vm_status("kc", "a", lambda st: {**st, "phase": "Pending", "nodeName": "n9"}, current=stale)
    assert out is not None and out["status"]["phase"] == "Pending"
    written = k.get_vm("kc", "a") or {}
    assert written["status"]["nodeName"] == "n9"
    # The status write leaves managedFields out of its body: the API server keeps the object's own.
    entries = {(m.get("manager"), m.get("subresource", "")) for m in written["metadata"].get("managedFields") or []}
    assert ("failovervm-operator", "") in entries and ("failovervm-operator", "status") in entries, entries
    assert k.update_vm_status("kc", "a", lambda st: st) is not None  # nothing to write

    # Delete: the finalizer holds it; removing it lets it go.
    custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "a")
    assert (k.get_vm("kc", "a") or {})["metadata"].get("deletionTimestamp")
    k.set_finalizer("kc", "a", "failovervm.io/test", False)
    assert k.get_vm("kc", "a") is None
    custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "b")


def test_claims_are_locks_and_delete_has_preconditions(api: ApiClient) -> None:
    k = kube.Kube(api)
    vm = {"metadata": {"namespace": "kc", "name": "a", "uid": "u-1"}}
    body = placement.claim_body("n1", "p", "pf0", "0000:03:00.1", vm)
    name = body["metadata"]["name"]
    on_n1 = f"{labels.VM_NODE}=n1"
    assert k.create_claim(body) is True
    assert k.create_claim(body) is False
    assert [c["metadata"]["name"] for c in k.list_claims(label_selector=on_n1)] == [name]
    assert k.list_claims(cached=True, label_selector=f"{labels.VM_NODE}=n2") == []
    k.patch_claim(name, {"metadata": {"labels": {"extra": "1"}}})
    k.patch_claim("gone", {"metadata": {"labels": {"extra": "1"}}})  # 404: fine
    k.delete_claim(name, uid="not-its-uid")  # 409: left alone
    assert k.list_claims(label_selector=on_n1)[0]["metadata"]["labels"]["extra"] == "1"
    k.delete_claim(name)
    k.delete_claim(name)  # 404: fine
    assert k.list_claims(label_selector=on_n1) == []


def test_watch_from_a_resource_version(api: ApiClient) -> None:
    k = kube.Kube(api)
    path = kubeclient.custom_path(API_GROUP, API_VERSION, kube.FVM, namespace="kc")
    rv = api.request("GET", path)["metadata"]["resourceVersion"]
    w = kubeclient.Watch(api)
    events: list[tuple[str, str]] = []

    def consume() -> None:
        for ev in w.stream(path, resource_version=rv, timeout_seconds=60, allow_watch_bookmarks=True,
                           label_selector="watched=yes"):
            events.append((ev["type"], ev["object"]["metadata"].get("name", "")))

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    k.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, _vm("w", {"watched": "yes"}))
    k.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, _vm("u", {"watched": "no"}))
    k.patch_vm("kc", "w", {"spec": {"cpu": 2}})
    k.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "w")
    k.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "u")
    deadline = time.monotonic() + 30
    while [e for e in events if e[0] != "BOOKMARK"] != [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]:
        assert time.monotonic() < deadline, events
        time.sleep(0.05)
    w.stop()
    th.join(5)
    assert not th.is_alive(), "stop() ended the watch"

    # An expired resourceVersion: the API server answers with an ERROR event (410), handed over as is.
    k.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, _vm("z"))
    for _ in range(3):
        k.patch_vm("kc", "z", {"metadata": {"labels": {"n": str(time.monotonic_ns())}}})
    api.request("POST", "/api/v1/namespaces", body={"metadata": {"generateName": "compact-"}})
    try:
        evs = list(kubeclient.Watch(api).stream(path, resource_version="1", timeout_seconds=5))
        assert evs and evs[0]["type"] == "ERROR" and evs[0]["object"]["code"] == 410, evs[:1]
    except ApiException as exc:
        assert exc.status == 410
    k.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "z")


PLUGIN = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
    token = open(os.environ["TOKEN_FILE"]).read().strip()
    print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": {{"token": token}}}}))
""")


def test_service_account_token_file_and_exec_plugin(api: ApiClient, apiserver: Path, tmp_path: Path) -> None:
    """A bound ServiceAccount token (TokenRequest API) authenticates as that ServiceAccount, read
    from a tokenFile or handed over by an exec plugin; the real authorizer refuses what it may not do."""
    api.request("POST", kubeclient.core_path("serviceaccounts", namespace="kc"), body={"metadata": {"name": "robot"}})
    tr = api.request("POST", kubeclient.core_path("serviceaccounts", "robot", "kc", "token"),
                     body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": 600}})
    (tmp_path / "token").write_text(tr["status"]["token"])
    admin = yaml.safe_load(apiserver.read_text())
    cluster = admin["clusters"][0]["cluster"]
    plugin = tmp_path / "plugin"
    plugin.write_text(PLUGIN.format(python=sys.executable))
    plugin.chmod(0o755)
    users = {
        "file": {"tokenFile": "token"},
        "exec": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "./plugin",
                          "env": [{"name": "TOKEN_FILE", "value": str(tmp_path / "token")}]}},
    }
    cfg = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "c", "cluster": cluster}],
           "users": [{"name": n, "user": u} for n, u in users.items()],
           "contexts": [{"name": n, "context": {"cluster": "c", "user": n, "namespace": "kc"}} for n in users],
           "current-context": "file"}
    (tmp_path / "config").write_text(yaml.safe_dump(cfg))
    for context in users:
        client = ApiClient(Configuration.from_kubeconfig(tmp_path / "config", context))
        review = client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert review["status"]["userInfo"]["username"] == "system:serviceaccount:kc:robot", context
        with pytest.raises(ApiException) as err:
            kube.Kube(client).list_vms()
        assert err.value.status == 403 and "cannot list resource" in kube.api_error_message(err.value)


def _bound_pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "kc", "finalizers": ["test.failovervm.io/hold"]},
            "spec": {"nodeName": node, "serviceAccountName": "robot", "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}


def test_heartbeat_learns_terminating_pods_from_a_watch(api: ApiClient) -> None:
    """The sandbox heartbeat's TerminatingPods: one LIST, then a watch of every bound pod; it keeps
    the pods being deleted, by node, and complete_deletions confirms them from it without listing."""
    from failovervm_sandbox import nodes

    core = kubeclient.CoreV1Api(api)
    try:
        api.request("POST", kubeclient.core_path("serviceaccounts", namespace="kc"),
                    body={"metadata": {"name": "robot"}})
    except ApiException as exc:
        assert exc.status == 409  # made by the ServiceAccount test
    early = core.create_namespaced_pod("kc", _bound_pod("early", "vnode-a"))
    core.delete_namespaced_pod("early", "kc")  # terminating before the watch starts: seen in its LIST
    watch = nodes.TerminatingPods(api, retry_seconds=0.2).start()
    try:
        deadline = time.monotonic() + 30
        while not watch.synced():
            assert time.monotonic() < deadline, "the pod watch did not start"
            time.sleep(0.05)
        assert [p["metadata"]["uid"] for p in watch.on("vnode-a")] == [early["metadata"]["uid"]]
        late = core.create_namespaced_pod("kc", _bound_pod("late", "vnode-b"))
        core.create_namespaced_pod("kc", _bound_pod("kept", "vnode-b"))
        core.delete_namespaced_pod("late", "kc")
        while [p["metadata"]["name"] for p in watch.on("vnode-b")] != ["late"]:
            assert time.monotonic() < deadline, watch.on("vnode-b")
            time.sleep(0.05)
        # Due once the grace period is over; confirmed from the watch (grace period 0, the uid).
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
        assert nodes.complete_deletions(core, ["vnode-a", "vnode-b"], later, known=watch) == 2
        for pod in (early, late):
            got = core.read_namespaced_pod(pod["metadata"]["name"], "kc")  # held by the test's finalizer
            assert got["metadata"]["deletionGracePeriodSeconds"] == 0
            core.patch_namespaced_pod(pod["metadata"]["name"], "kc", {"metadata": {"finalizers": None}})
        while watch.on("vnode-a") or watch.on("vnode-b"):
            assert time.monotonic() < deadline, (watch.on("vnode-a"), watch.on("vnode-b"))
            time.sleep(0.05)
    finally:
        watch.stop()
        for name in ("early", "late", "kept"):
            try:
                core.patch_namespaced_pod(name, "kc", {"metadata": {"finalizers": None}})
                core.delete_namespaced_pod(name, "kc", grace_period_seconds=0)
            except ApiException:
                pass


def test_standby_mac_watch_lists_in_pages_then_follows_the_watch(api: ApiClient, monkeypatch: Any) -> None:
    """A standby replica's MacWatch (controller.tenancy, on failovervm.reflector): the first LIST comes
    in pages (LIST_PAGE, 2 here), then the watch keeps the MACs by pool as VMs come, change and go."""
    from failovervm import reflector
    from failovervm.controller import tenancy

    monkeypatch.setattr(reflector, "LIST_PAGE", 2)
    custom = kubeclient.CustomObjectsApi(api)
    names = [f"mac-{i}" for i in range(5)]

    def body(name: str, mac: str) -> dict[str, Any]:
        vm = _vm(name)
        vm["spec"]["network"] = {"pool": "p", "mac": mac}
        return vm

    for i, name in enumerate(names):
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM,
                                               body(name, f"52:54:00:00:01:0{i}"))
    pages: list[Any] = []
    real = api.request

    def counting(method: str, path: str, **kw: Any) -> Any:
        if method == "GET" and path.endswith("/failovervms"):
            pages.append((kw.get("query") or {}).get("_continue"))
        return real(method, path, **kw)

    monkeypatch.setattr(api, "request", counting)
    watch = tenancy.MacWatch(api, retry_seconds=0.2).start()
    try:
        assert watch.wait_synced(30), "the MAC watch did not start"
        assert len(pages) >= 3 and pages[0] is None and all(pages[1:])  # 5 VMs or more, 2 per page
        assert [h["metadata"]["name"] for h in watch.holders("p", "52:54:00:00:01:03")] == ["mac-3"]
        custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "mac-3",
                                              {"spec": {"network": {"mac": "52:54:00:00:01:09"}}})
        custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, "mac-4")
        deadline = time.monotonic() + 30
        while watch.holders("p", "52:54:00:00:01:03") or watch.holders("p", "52:54:00:00:01:04") \
                or not watch.holders("p", "52:54:00:00:01:09"):
            assert time.monotonic() < deadline, "the watch did not follow"
            time.sleep(0.05)
        # The connection breaks (as when the apiserver goes away): the watch resumes from the last
        # version it saw, and what happened meanwhile comes then, without a second LIST.
        listed = len(pages)
        resp = watch._watch._resp if watch._watch is not None else None
        assert resp is not None
        resp.shutdown()
        names.append("mac-5")
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM,
                                               body("mac-5", "52:54:00:00:01:05"))
        while not watch.holders("p", "52:54:00:00:01:05"):
            assert time.monotonic() < deadline, "the watch did not resume"
            time.sleep(0.05)
        assert len(pages) == listed
    finally:
        watch.stop()
        for name in names:
            try:
                custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, "kc", kube.FVM, name)
            except ApiException:
                pass
