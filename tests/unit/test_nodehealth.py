"""Node failure: unready nodes mark their VMs; fenced nodes have their VMs restarted elsewhere."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from failovervm import migration as mg
from failovervm import nodehealth as nh
from failovervm.controller import evacuation, recovery
from failovervm.controller.context import ControllerContext
from tests.fakes import FakeKube
from tests.unit.conftest import MakeControllerContext

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
    fenced = nh.assess("n1", node("True", OUT))
    assert (fenced.state, fenced.reason) == (nh.FENCED, "NodeOutOfService")
    # The message names the evidence: the taint as set, value and effect.
    assert f"tainted {nh.OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute (shut down)" in fenced.message
    no_schedule = nh.assess("n1", node("Unknown", [{"key": nh.OUT_OF_SERVICE_TAINT, "effect": "NoSchedule"}]))
    assert no_schedule.state == nh.FENCED and f"{nh.OUT_OF_SERVICE_TAINT}:NoSchedule" in no_schedule.message
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
    gone = nh.assess("n1", None)  # #13: a deleted Node is no proof: marked like an unready one
    assert gone.state == nh.GONE and nh.condition_change(vm(), gone) == (False, "NodeDeleted", gone.message)


CLAIMS = [{"metadata": {"name": "c1", "uid": "cu1"}, "spec": {"owner": {"uid": "u1"}, "purpose": "Running"}},
          {"metadata": {"name": "c2", "uid": "cu2"}, "spec": {"owner": {"uid": "u1"}, "purpose": "Target"}}]
Cluster = Callable[..., tuple[FakeKube, ControllerContext]]


@pytest.fixture
def kube(controller_ctx: MakeControllerContext) -> Cluster:
    """`kube(vms, nodes, migrations)`: the fake API (with the VM's claims c1 and c2) and a controller
    context over it."""
    def make(vms: list[dict[str, Any]], nodes: list[dict[str, Any]],
             migrations: Iterable[dict[str, Any]] = ()) -> tuple[FakeKube, ControllerContext]:
        k = FakeKube().add(vms=vms, nodes=nodes, migrations=migrations, claims=CLAIMS)
        return k, controller_ctx(k)
    return make


def stored(k: FakeKube) -> dict[str, Any]:
    return k.vms["ns", "vm"]


def test_unready_node_marks_its_vms_once_and_clears_on_recovery(kube: Cluster) -> None:
    k, ctx = kube([vm()], [node("Unknown")])
    evacuation.reconcile_node(ctx, "n1")
    st = stored(k)["status"]
    assert st["nodeName"] == "n1"  # not moved: it may still run there
    cond = next(c for c in st["conditions"] if c["type"] == nh.CONDITION)
    assert cond["status"] == "False" and cond["reason"] == "NodeNotReady"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "Unknown" and ready["reason"] == "NodeNotReady"
    assert k.reasons() == ["NodeNotReady"]
    evacuation.reconcile_node(ctx, "n1")
    assert k.reasons() == ["NodeNotReady"]  # no second write
    k.add_node(node("True"))
    evacuation.reconcile_node(ctx, "n1")
    cond = next(c for c in stored(k)["status"]["conditions"] if c["type"] == nh.CONDITION)
    assert cond["status"] == "True" and k.reasons() == ["NodeNotReady", "NodeRecovered"]


def test_fenced_node_releases_its_vms(kube: Cluster) -> None:
    k, ctx = kube([vm()], [node("Unknown", OUT)])
    out = evacuation.reconcile_node(ctx, "n1")
    assert out["released"] == ["ns/vm"]
    st = stored(k)["status"]
    assert "nodeName" not in st and "vf" not in st and "domain" not in st and st["phase"] == "Pending"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NodeOutOfService" and "restarting it on another node" in ready["message"]
    assert f"{nh.OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute" in ready["message"]  # the evidence used
    assert "failovervm.io/node" not in stored(k)["metadata"]["labels"]
    assert k.reasons() == ["NodeFenced"]
    assert evacuation.reconcile_node(ctx, "n1")["released"] == []  # idempotent


def test_fencing_fails_the_vms_migration_and_releases_its_target(kube: Cluster) -> None:
    mig = {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"},
           "status": {"phase": mg.TARGET_READY, "sourceNode": "n1", "targetNode": "n2",
                      "targetVF": {"claimName": "c2"}}}
    k, ctx = kube([vm(migration={"name": "m1", "state": mg.TARGET_READY, "targetClaim": "c2"})],
                  [node("Unknown", OUT), node(name="n2")], [mig])
    evacuation.reconcile_node(ctx, "n1")
    assert k.migrations["ns", "m1"]["status"]["phase"] == mg.FAILED
    assert k.migrations["ns", "m1"]["status"]["reason"] == "SourceNodeFenced"
    assert "c2" not in k.claims  # the target reservation
    assert "migration" not in stored(k)["status"] and "nodeName" not in stored(k)["status"]


def test_deleted_node_marks_its_vms_and_releases_them_once_confirmed_down(kube: Cluster) -> None:
    """#13: a deleted Node is no proof that its machine stopped (kubectl delete node, an autoscaler
    provider that deletes the Nodes of running machines): marked, kept, and released only once the
    host-down annotation names the node."""
    k, ctx = kube([vm(node_name="gone")], [node()])
    assert recovery.sweep_deleted_nodes(ctx) == []
    st = stored(k)["status"]
    assert st["nodeName"] == "gone"
    cond = next(c for c in st["conditions"] if c["type"] == nh.CONDITION)
    assert cond["status"] == "False" and cond["reason"] == "NodeDeleted" and "host-down" in cond["message"]
    k.patch_vm("ns", "vm", {"metadata": {"annotations": {"failovervm.io/host-down": "gone"}}})
    assert recovery.sweep_deleted_nodes(ctx) == ["ns/vm"]
    ready = next(c for c in stored(k)["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "HostDownConfirmed" and "failovervm.io/host-down=gone on the VM" in ready["message"]
    k2, ctx = kube([vm(node_name="gone")], [node()])
    assert recovery.release_all(ctx, "gone", None) == [] and k2.reasons() == ["NodeNotReady"]
    k2.patch_vm("ns", "vm", {"metadata": {"annotations": {"failovervm.io/host-down": "gone"}}})
    assert recovery.release_all(ctx, "gone", None) == ["ns/vm"] and k2.reasons() == ["NodeNotReady", "NodeFenced"]
    # An existing node that is merely missing from an older list is looked up again first: here n1
    # joins after the node list was read, before the VM list is.
    k3, ctx = kube([vm(node_name="n1")], [])
    k3.before("list_vms", lambda: k3.add_node(node()))
    assert recovery.sweep_deleted_nodes(ctx) == []
    assert k3.list_nodes()


def test_release_never_strips_the_label_of_a_vm_placed_again_meanwhile(kube: Cluster) -> None:
    """Between the check and the label patch the VM was released and placed on n2 by another
    path: the resourceVersion precondition fails (409), the re-check sees n2, nothing is touched."""
    k, ctx = kube([vm()], [node("Unknown", OUT), node(name="n2")])
    placed: list[dict[str, Any]] = []

    def placed_on_n2() -> None:
        k.update_vm_status("ns", "vm", lambda st: {**st, "nodeName": "n2"})
        placed.append(k.patch_vm("ns", "vm", {"metadata": {"labels": {"failovervm.io/node": "n2"}}}))

    k.before("patch_vm", placed_on_n2)
    assert recovery.release(ctx, stored(k), "n1", nh.assess("n1", k.nodes["n1"])) is False
    assert stored(k)["metadata"]["labels"]["failovervm.io/node"] == "n2" and stored(k) == placed[0]  # no write since
    assert stored(k)["status"]["nodeName"] == "n2" and k.reasons() == []


@pytest.mark.parametrize("state", [mg.RUNNING, mg.ABORTING])
def test_fencing_during_a_taken_migration_keeps_the_vm_locked(kube: Cluster, state: str) -> None:
    """#13: the source agent had taken the migration: the VM may already run on the target. It is
    not released (no cold start elsewhere: a second copy), stays locked, and says so once."""
    mig = {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"},
           "status": {"phase": mg.RUNNING, "sourceNode": "n1", "targetNode": "n2", "targetVF": {"claimName": "c2"}}}
    k, ctx = kube([vm(migration={"name": "m1", "state": state, "targetNode": "n2", "targetClaim": "c2"})],
                  [node("Unknown", OUT), node(name="n2")], [mig])
    for _ in range(2):
        assert evacuation.reconcile_node(ctx, "n1")["released"] == []
    st = stored(k)["status"]
    assert st["nodeName"] == "n1" and st["migration"]["name"] == "m1"
    cond = next(c for c in st["conditions"] if c["type"] == "FencedDuringMigration")
    assert cond["status"] == "True" and cond["reason"] == "WaitingForTarget" and "n2" in cond["message"]
    assert k.migrations["ns", "m1"]["status"]["phase"] == mg.RUNNING and "c2" in k.claims
    assert k.reasons() == ["FencedDuringMigration"]


def test_a_release_cut_after_its_unlabel_converges(kube: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """#13, failpoint release.after-unlabel: the label is gone, the status not released, so the
    node's sweep (which finds VMs by label) no longer sees the VM. The repair puts the label back
    from status, and the next node sweep releases it."""
    from failovervm import failpoints
    from failovervm.controller import repairs

    k, ctx = kube([vm()], [node("Unknown", OUT)])
    monkeypatch.setenv(failpoints.ENV, "release.after-unlabel=error")
    with pytest.raises(failpoints.FailpointError):
        evacuation.reconcile_node(ctx, "n1")
    monkeypatch.delenv(failpoints.ENV)
    assert "failovervm.io/node" not in stored(k)["metadata"]["labels"] and stored(k)["status"]["nodeName"] == "n1"
    assert evacuation.reconcile_node(ctx, "n1")["released"] == []  # invisible to the sweep
    assert repairs.repair_vms(ctx) == ["ns/vm"]
    assert evacuation.reconcile_node(ctx, "n1")["released"] == ["ns/vm"]
    assert "nodeName" not in stored(k)["status"]
