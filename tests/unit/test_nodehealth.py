"""Node failure: unready nodes mark their VMs; fenced nodes have their VMs restarted elsewhere."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from failovervm import migration as mg
from failovervm import nodehealth as nh
from failovervm.controller import evacuation, recovery
from failovervm.controller.context import ControllerContext
from failovervm.kube import Kube as RealKube

NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)


def node(ready: str | None = "True", taints: list[dict[str, str]] | None = None, name: str = "n1") -> dict[str, Any]:
    conds = [] if ready is None else [{"type": "Ready", "status": ready, "reason": "NodeStatusUnknown",
                                       "lastTransitionTime": "2026-11-25T11:59:00Z"}]
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": {}},
            "spec": {"taints": taints or []}, "status": {"conditions": conds}}


OUT = [{"key": nh.OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}]


def test_assess() -> None:
    assert nh.assess("n1", node()).state == nh.HEALTHY
    h = nh.assess("n1", node("Unknown"), NOW)
    assert h.state == nh.NOT_READY and h.reason == "NodeNotReady"
    assert "for 60s" in h.message and "Ready=Unknown (NodeStatusUnknown)" in h.message
    assert nh.OUT_OF_SERVICE_TAINT in h.message  # says what would restart the VM elsewhere
    assert nh.assess("n1", node(None)).state == nh.NOT_READY
    assert nh.assess("n1", node("True", OUT)) == nh.NodeHealth(
        nh.FENCED, "NodeOutOfService", f"node n1 is tainted {nh.OUT_OF_SERVICE_TAINT} (shut down)")
    assert nh.assess("n1", None).reason == "NodeDeleted"
    # The unreachable taint node-lifecycle adds is not fencing: the machine may still run the VM.
    unreachable = node("Unknown", [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}])
    assert nh.assess("n1", unreachable).state == nh.NOT_READY


def vm(conds: list[dict[str, Any]] | None = None, migration: dict[str, Any] | None = None,
       node_name: str = "n1") -> dict[str, Any]:
    st: dict[str, Any] = {"phase": "Running", "nodeName": node_name, "conditions": conds or [],
                          "vf": {"node": node_name, "pciAddress": "0000:3b:02.0", "claimName": "c1"},
                          "domain": {"name": "fvm_ns_vm"}}
    if migration:
        st["migration"] = migration
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": "u1", "generation": 1, "resourceVersion": "1",
                         "labels": {"failovervm.io/node": node_name}}, "spec": {}, "status": st}


def test_condition_changes_only_when_needed() -> None:
    unready = nh.assess("n1", node("Unknown"), NOW)
    healthy = nh.assess("n1", node())
    assert nh.condition_change(vm(), healthy) is None  # no write for every healthy VM
    assert nh.condition_change(vm(), unready) == (False, "NodeNotReady", unready.message)
    marked = [{"type": nh.CONDITION, "status": "False", "reason": "NodeNotReady", "message": "older text"}]
    assert nh.condition_change(vm(marked), unready) is None
    assert nh.condition_change(vm(marked), healthy) == (True, "NodeReady", "node n1 is Ready")
    assert nh.condition_change(vm(), nh.assess("n1", None)) is None


class Kube:
    # The real resourceVersion-guarded metadata edit, over this fake's get_vm and patch_vm.
    edit_vm_metadata = RealKube.edit_vm_metadata

    def __init__(self, vms: list[dict[str, Any]], nodes: list[dict[str, Any]],
                 migrations: list[dict[str, Any]] | None = None) -> None:
        self.vms = {v["metadata"]["name"]: v for v in vms}
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.migrations = {m["metadata"]["name"]: m for m in migrations or []}
        self.events: list[str] = []
        self.patches: list[dict[str, Any]] = []
        self.deleted_claims: list[str] = []

    def list_vms(self, selector: str = "") -> list[dict[str, Any]]:
        if not selector:
            return list(self.vms.values())
        key, value = selector.split("=")
        return [v for v in self.vms.values() if (v["metadata"].get("labels") or {}).get(key) == value]

    def get_vm(self, _ns: str, name: str) -> dict[str, Any] | None:
        return self.vms.get(name)

    def update_vm_status(self, _ns: str, name: str, mutate: Any, **_kw: Any) -> dict[str, Any] | None:
        new = mutate(dict(self.vms[name]["status"]))
        if new is not None:
            self.vms[name]["status"] = new
        return self.vms[name]

    def patch_vm(self, _ns: str, name: str, body: dict[str, Any]) -> None:
        self.patches.append(body)
        for k, v in body["metadata"].get("labels", {}).items():
            if v is None:
                self.vms[name]["metadata"]["labels"].pop(k, None)

    def list_nodes(self) -> list[dict[str, Any]]:
        return list(self.nodes.values())

    def get_node(self, name: str) -> dict[str, Any] | None:
        return self.nodes.get(name)

    def get_migration(self, _ns: str, name: str) -> dict[str, Any] | None:
        return self.migrations.get(name)

    def update_migration_status(self, _ns: str, name: str, mutate: Any) -> dict[str, Any] | None:
        m = self.migrations[name]
        new = mutate(dict(m.get("status") or {}))
        if new is not None:
            m["status"] = new
        return m

    def list_claims(self) -> list[dict[str, Any]]:
        return [{"metadata": {"name": "c1", "uid": "cu1"}, "spec": {"owner": {"uid": "u1"}, "purpose": "Running"}},
                {"metadata": {"name": "c2", "uid": "cu2"}, "spec": {"owner": {"uid": "u1"}, "purpose": "Target"}}]

    def delete_claim(self, name: str, _uid: str | None = None) -> None:
        self.deleted_claims.append(name)

    def patch_claim(self, *_a: Any) -> None:
        pass

    def ensure_pod(self, _pod: Any) -> None:
        pass

    def delete_pod(self, *_a: Any, **_kw: Any) -> None:
        pass

    def list_migrations(self) -> list[dict[str, Any]]:
        return list(self.migrations.values())

    def event(self, _obj: Any, reason: str, _msg: str, **_kw: Any) -> None:
        self.events.append(reason)


@pytest.fixture
def kube(controller_ctx: Callable[..., ControllerContext]) -> Any:
    """`kube(vms, nodes, migrations)`: the fake API and a controller context over it."""
    def make(*args: Any, **kw: Any) -> tuple[Kube, ControllerContext]:
        k = Kube(*args, **kw)
        return k, controller_ctx(k)
    return make


def test_unready_node_marks_its_vms_once_and_clears_on_recovery(kube: Any) -> None:
    k, ctx = kube([vm()], [node("Unknown")])
    evacuation.reconcile_node(ctx, "n1")
    st = k.vms["vm"]["status"]
    assert st["nodeName"] == "n1"  # not moved: it may still run there
    cond = next(c for c in st["conditions"] if c["type"] == nh.CONDITION)
    assert cond["status"] == "False" and cond["reason"] == "NodeNotReady"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "Unknown" and ready["reason"] == "NodeNotReady"
    assert k.events == ["NodeNotReady"]
    evacuation.reconcile_node(ctx, "n1")
    assert k.events == ["NodeNotReady"]  # no second write
    k.nodes["n1"] = node("True")
    evacuation.reconcile_node(ctx, "n1")
    cond = next(c for c in k.vms["vm"]["status"]["conditions"] if c["type"] == nh.CONDITION)
    assert cond["status"] == "True" and k.events == ["NodeNotReady", "NodeRecovered"]


def test_fenced_node_releases_its_vms(kube: Any) -> None:
    k, ctx = kube([vm()], [node("Unknown", OUT)])
    out = evacuation.reconcile_node(ctx, "n1")
    assert out["released"] == ["ns/vm"]
    st = k.vms["vm"]["status"]
    assert "nodeName" not in st and "vf" not in st and "domain" not in st and st["phase"] == "Pending"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NodeOutOfService" and "restarting it on another node" in ready["message"]
    assert "failovervm.io/node" not in k.vms["vm"]["metadata"]["labels"]
    assert k.events == ["NodeFenced"]
    assert evacuation.reconcile_node(ctx, "n1")["released"] == []  # idempotent


def test_fencing_fails_the_vms_migration_and_releases_its_target(kube: Any) -> None:
    mig = {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"},
           "status": {"phase": mg.TARGET_READY, "sourceNode": "n1", "targetNode": "n2",
                      "targetVF": {"claimName": "c2"}}}
    k, ctx = kube([vm(migration={"name": "m1", "state": mg.TARGET_READY, "targetClaim": "c2"})],
                  [node("Unknown", OUT), node(name="n2")], [mig])
    evacuation.reconcile_node(ctx, "n1")
    assert k.migrations["m1"]["status"]["phase"] == mg.FAILED
    assert k.migrations["m1"]["status"]["reason"] == "SourceNodeFenced"
    assert "c2" in k.deleted_claims  # the target reservation
    assert "migration" not in k.vms["vm"]["status"] and "nodeName" not in k.vms["vm"]["status"]


def test_deleted_node_releases_its_vms(kube: Any) -> None:
    k, ctx = kube([vm(node_name="gone")], [node()])
    assert recovery.sweep_deleted_nodes(ctx) == ["ns/vm"]
    assert k.vms["vm"]["status"]["conditions"][0]["reason"] == "NodeDeleted"
    k2, ctx = kube([vm(node_name="gone")], [node()])
    assert recovery.release_all(ctx, "gone", None) == ["ns/vm"] and k2.events == ["NodeFenced"]
    # An existing node that is merely missing from an older list is looked up again first.
    k3, ctx = kube([vm(node_name="n1")], [node()])
    monkey_list = k3.list_nodes
    k3.list_nodes = lambda: []  # type: ignore[method-assign]
    assert recovery.sweep_deleted_nodes(ctx) == []
    assert monkey_list()


def test_release_never_strips_the_label_of_a_vm_placed_again_meanwhile(kube: Any) -> None:
    """Between the check and the label patch the VM was released and placed on n2 by another
    path: the resourceVersion precondition fails (409), the re-check sees n2, nothing is touched."""
    from kubernetes.client import ApiException

    k, ctx = kube([vm()], [node("Unknown", OUT), node(name="n2")])
    moved = {"done": False}

    def patch_vm(_ns: str, name: str, body: dict[str, Any]) -> None:
        if not moved["done"]:
            moved["done"] = True
            k.vms[name]["status"]["nodeName"] = "n2"
            k.vms[name]["metadata"]["labels"]["failovervm.io/node"] = "n2"
            raise ApiException(status=409, reason="Conflict")
        k.patches.append(body)

    k.patch_vm = patch_vm
    assert recovery.release(ctx, k.vms["vm"], "n1", nh.assess("n1", k.nodes["n1"])) is False
    assert k.vms["vm"]["metadata"]["labels"]["failovervm.io/node"] == "n2" and k.patches == []
    assert k.vms["vm"]["status"]["nodeName"] == "n2" and k.events == []
