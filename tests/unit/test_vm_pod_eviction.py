"""Drains evict VM pods: the pods/eviction webhook answers 429 while the VM runs on the pod's node
and moves it away; a stopped VM, a VM that has left, and any other pod are let through. A pod
kube-scheduler preempts makes its VM leave the node. On FakeKube."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from failovervm import labels, vmpod
from failovervm import migration as mg
from failovervm.controller import admission, evacuation, sweeps, vms
from failovervm.controller.context import ControllerContext
from tests.fakes import FakeKube
from tests.fakes.kube import node

NS = "tenant"


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    for n in ("n1", "n2"):
        k.add_node(node(n, labels={"sriov": "true"}))
    k.add_pool({"metadata": {"name": "pool"}, "spec": {}, "status": {"nodes": [
        {"node": n, "vfs": [{"pciAddress": "0000:3b:02.0", "pf": "pf0"}]} for n in ("n1", "n2")]}})
    return k


@pytest.fixture
def ctx(kube: FakeKube, controller_ctx: Callable[..., ControllerContext]) -> ControllerContext:
    return controller_ctx(kube, namespace="failovervm-system")


def running_vm(kube: FakeKube, ctx: ControllerContext, name: str = "vm", node_name: str = "n1",
               phase: str = "Running", **spec: Any) -> dict[str, Any]:
    """A VM running on `node_name`, with its pod there."""
    kube.add_vm({"metadata": {"name": name, "namespace": NS, "labels": {labels.VM_NODE: node_name}},
                 "spec": {"running": True, "cpu": 1, "memory": "128Mi", "network": {"pool": "pool"}, **spec}})
    kube.update_vm_status(NS, name, lambda st: {**st, "phase": phase, "nodeName": node_name})
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, name]) == "created"
    return kube.vms[NS, name]


def pod_of(kube: FakeKube, name: str = "vm") -> dict[str, Any]:
    return next(p for p in kube.pods.values() if (p["metadata"].get("labels") or {}).get(labels.VM_LABEL) == name)


def evict(ctx: ControllerContext, pod: dict[str, Any], dryrun: bool = False) -> str | None:
    return asyncio.run(admission.vm_pod_eviction(ctx, pod["metadata"]["name"], pod["metadata"]["namespace"], dryrun))


def cordon(kube: FakeKube, name: str = "n1") -> None:
    kube.nodes[name]["spec"] = {"unschedulable": True,
                                "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}


def test_a_drain_waits_while_the_vm_runs_there_and_starts_its_migration(kube: FakeKube,
                                                                        ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    cordon(kube)
    refusal = evict(ctx, pod_of(kube))
    assert refusal is not None and f"FailoverVM {NS}/vm still runs on node n1" in refusal
    [mig] = kube.migrations.values()
    assert mig["metadata"]["labels"] == {labels.EVACUATION_LABEL: "n1", labels.VM_LABEL: "vm"}
    assert evict(ctx, pod_of(kube)) is not None and len(kube.migrations) == 1  # retries start nothing new


def test_a_dry_run_changes_nothing(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    cordon(kube)
    assert evict(ctx, pod_of(kube), dryrun=True) is not None
    assert not kube.migrations


def test_an_eviction_on_a_node_that_is_not_drained_moves_that_vm_alone(kube: FakeKube,
                                                                       ctx: ControllerContext) -> None:
    """A descheduler, or `kubectl evict`, on a schedulable node."""
    running_vm(kube, ctx)
    running_vm(kube, ctx, "other")
    pod = pod_of(kube)
    assert evict(ctx, pod) is not None
    [mig] = kube.migrations.values()
    assert mig["spec"]["vmName"] == "vm"
    assert mig["metadata"]["labels"][labels.EVICTED_POD_LABEL] == pod["metadata"]["name"]
    evacuation.reconcile_node(ctx, "n1")  # the node is not cordoned: the node's evacuation would stop, not this
    assert list(kube.migrations.values()) == [mig]


def test_once_the_vm_has_left_the_eviction_goes_through(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    pod = pod_of(kube)
    kube.update_vm_status(NS, "vm", lambda st: {**st, "nodeName": "n2"})  # migrated (as the operator wrote it)
    assert evict(ctx, pod) is None


def test_a_stopped_vm_never_holds_a_drain_and_is_released(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube, ctx, phase="Stopped", running=False)
    cordon(kube)
    assert evict(ctx, pod_of(kube)) is None
    assert kube.vms[NS, "vm"]["metadata"]["annotations"][labels.EVICT_ANNOTATION] == "n1"
    kube.delete_pod(NS, pod_of(kube)["metadata"]["name"])  # what the allowed eviction does
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "evicting"  # no new pod there
    assert not kube.migrations


def test_a_forged_node_label_counts_for_nothing(kube: FakeKube, ctx: ControllerContext) -> None:
    """The issue's tenant: a stopped VM, never placed, labelled failovervm.io/node=n1."""
    kube.add_vm({"metadata": {"name": "forged", "namespace": "other", "labels": {labels.VM_NODE: "n1"}},
                 "spec": {"running": False, "cpu": 1, "memory": "128Mi", "network": {"pool": "pool"}}})
    running_vm(kube, ctx)
    cordon(kube)
    vms.ensure_scheduled(ctx, "other", "forged")
    assert not [p for p in kube.pods.values() if p["metadata"]["namespace"] == "other"]  # it holds nothing
    assert evacuation.vms_on(ctx, "n1") == [kube.vms[NS, "vm"]]
    kube.update_vm_status(NS, "vm", lambda st: {**st, "nodeName": "n2"})
    assert evict(ctx, pod_of(kube)) is None


def test_a_shutdown_vm_is_shut_down_and_the_drain_waits_until_it_left(kube: FakeKube,
                                                                      ctx: ControllerContext) -> None:
    running_vm(kube, ctx, evictionStrategy="Shutdown")
    cordon(kube)
    assert evict(ctx, pod_of(kube)) is not None
    assert kube.vms[NS, "vm"]["metadata"]["annotations"][labels.EVICT_ANNOTATION] == "n1"
    assert not kube.migrations


def test_other_pods_are_let_through(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.create_pod({"metadata": {"name": "fvm-lookalike", "namespace": NS}, "spec": {"nodeName": "n1"}})
    assert asyncio.run(admission.vm_pod_eviction(ctx, "fvm-lookalike", NS, False)) is None
    assert asyncio.run(admission.vm_pod_eviction(ctx, "gone", NS, False)) is None
    running_vm(kube, ctx)
    forged = vmpod.build(kube.vms[NS, "vm"], {}, ctx.settings.vm_pod, node="n1")
    forged["metadata"].update(name="fvm-forged", ownerReferences=[])  # the VM's labels, not its pod
    kube.create_pod(forged)
    assert asyncio.run(admission.vm_pod_eviction(ctx, "fvm-forged", NS, False)) is None


def test_a_target_pod_waits_while_the_vm_migrates_to_its_node(kube: FakeKube, ctx: ControllerContext) -> None:
    vm = running_vm(kube, ctx)
    mig = kube.add_migration({"metadata": {"name": "m1", "namespace": NS}, "spec": {"vmName": "vm"}})
    target = vmpod.build(vm, {}, ctx.settings.vm_pod, migration=mig, source_node="n1")
    target["spec"]["nodeName"] = "n2"
    kube.create_pod(target)
    kube.update_vm_status(NS, "vm", lambda st: {**st, "migration": {"name": "m1", "state": mg.RUNNING,
                                                                    "targetNode": "n2"}})
    refusal = evict(ctx, target)
    assert refusal is not None and "being live-migrated to node n2" in refusal
    kube.update_vm_status(NS, "vm", lambda st: {k: v for k, v in st.items() if k != "migration"})
    assert evict(ctx, target) is None


# -- preemption -------------------------------------------------------------------------------------------
def preempt(kube: FakeKube, pod: dict[str, Any], reason: str = "PreemptionByScheduler") -> dict[str, Any]:
    """kube-scheduler's preemption: DisruptionTarget on the victim, then a delete (grace 0: at once)."""
    pod = kube.pods[pod["metadata"]["namespace"], pod["metadata"]["name"]]
    pod["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": reason}]
    kube.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
    return pod


def test_a_preempted_vm_live_migrates_away_instead_of_getting_its_pod_back(kube: FakeKube,
                                                                           ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    victim = preempt(kube, pod_of(kube))
    assert vms.on_running_pod_event(ctx, "DELETED", victim) == "displaced"
    vm = kube.vms[NS, "vm"]
    assert vm["metadata"]["annotations"][labels.DISPLACED_ANNOTATION] == "n1"
    assert not [p for p in kube.pods.values() if labels.VM_UID_LABEL in p["metadata"].get("labels", {})]
    [mig] = kube.migrations.values()
    assert mig["metadata"]["labels"][labels.EVICTED_POD_LABEL] == victim["metadata"]["name"]
    assert "VMPodDisplaced" in kube.reasons()
    # The node sweep keeps at it (the same attempt: nothing new) and gives no pod back there.
    evacuation.reconcile_node(ctx, "n1")
    assert len(kube.migrations) == 1 and vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "displaced"
    # It arrived on n2 (its target pod became the running one): the mark goes.
    kube.update_vm_status(NS, "vm", lambda st: {**st, "nodeName": "n2"})
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "created"
    assert labels.DISPLACED_ANNOTATION not in (kube.vms[NS, "vm"]["metadata"].get("annotations") or {})


def test_a_displaced_vm_that_cannot_leave_gets_its_pod_back(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    vms.on_running_pod_event(ctx, "DELETED", preempt(kube, pod_of(kube)))
    for i in range(5):  # every attempt failed
        kube.add_migration({"metadata": {"name": f"f{i}", "namespace": NS, "labels": {
            labels.EVACUATION_LABEL: "n1", labels.VM_LABEL: "vm"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"vmName": "vm"}, "status": {"phase": mg.FAILED, "endTimestamp": "2026-01-01T00:00:00Z"}})
    for m in [m for m in kube.migrations.values() if m["metadata"]["name"].startswith("evac-")]:
        kube.update_migration_status(NS, m["metadata"]["name"], lambda st: {**st, "phase": mg.FAILED,
                                                                             "endTimestamp": "2026-01-01T00:00:00Z"})
    evacuation.reconcile_node(ctx, "n1")
    assert labels.DISPLACED_ANNOTATION not in (kube.vms[NS, "vm"]["metadata"].get("annotations") or {})
    assert "DisplacementGaveUp" in kube.reasons()
    assert vms.ensure_pod_of_placed(ctx, kube.vms[NS, "vm"]) == "created"


def test_a_pod_deleted_for_another_reason_comes_back(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    gone = preempt(kube, pod_of(kube), reason="DeletionByPodGC")
    assert vms.on_running_pod_event(ctx, "DELETED", gone) == "created"
    assert not kube.migrations and vmpod.node_of(pod_of(kube)) == "n1"


def test_karpenter_disruption_evacuates_like_a_cordon(kube: FakeKube, ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    kube.nodes["n1"]["spec"] = {"taints": [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]}
    out = evacuation.reconcile_node(ctx, "n1")
    assert out["started"] == ["vm"] and len(kube.migrations) == 1


def test_the_guard_pods_of_an_earlier_version_are_removed(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.create_pod({"metadata": {"name": "fvm-guard-n1", "namespace": "failovervm-system",
                                  "labels": {labels.GUARD_LABEL: "true"}}, "spec": {"nodeName": "n1"}})
    kube.create_pod({"metadata": {"name": "keep", "namespace": "failovervm-system"}, "spec": {}})
    sweeps.tick(ctx)
    assert sorted(name for _ns, name in kube.pods) == ["keep"]
    assert ctx.sweeps.guards_removed


def test_the_taint_manager_emptying_a_fenced_node_is_left_to_node_recovery(kube: FakeKube,
                                                                          ctx: ControllerContext) -> None:
    running_vm(kube, ctx)
    kube.nodes["n1"]["spec"] = {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}
    vms.on_running_pod_event(ctx, "DELETED", preempt(kube, pod_of(kube), reason="DeletionByTaintManager"))
    assert not kube.migrations and not [p for p in kube.pods.values() if vmpod.node_of(p) == "n1"]
    assert labels.DISPLACED_ANNOTATION not in (kube.vms[NS, "vm"]["metadata"].get("annotations") or {})
