"""Node failure: mark the VMs of an unready node, restart those of a fenced node elsewhere.

See failovervm.nodehealth for the rules. Called by the node sweep (every 3 s), on Node deletion
events, and by a 30 s sweep for VMs whose node no longer exists (missed deletions)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from failovervm import conditions, failpoints, labels, nodehealth, repair
from failovervm import migration as mg
from failovervm.controller import migrations
from failovervm.controller.context import ControllerContext
from failovervm.controller.locks import NOT_TAKEN
from failovervm.metrics import VMS_RECOVERED

log = logging.getLogger(__name__)


def mark(ctx: ControllerContext, vms: Iterable[Mapping[str, Any]], node: str, health: nodehealth.NodeHealth) -> int:
    """Record the node's health on its VMs (NodeHealthy) when it changed. Returns the writes made."""
    kube = ctx.kube
    writes = 0
    for vm in vms:
        if (vm.get("status") or {}).get("nodeName") != node:
            continue
        change = nodehealth.condition_change(vm, health)
        if change is None:
            continue
        status, reason, message = change
        meta = vm["metadata"]

        def mutate(st: dict[str, Any], status: bool = status, reason: str = reason,
                   message: str = message) -> dict[str, Any] | None:
            if st.get("nodeName") != node:
                return None
            st["conditions"] = conditions.set_condition(st.get("conditions"), nodehealth.CONDITION, status, reason,
                                                        message)
            if not status:
                # Like Kubernetes marking a lost node's pods not ready: nobody can vouch for the VM
                # now. Its agent sets Ready again on its next reconcile once it is back.
                st["conditions"] = conditions.set_condition(
                    st["conditions"], "Ready", "Unknown", reason,
                    f"node {node} is not ready: the VM's state is unknown")
            return st

        kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"])
        writes += 1
        if status:
            kube.event(vm, "NodeRecovered", f"node {node} is Ready again", component="controller")
        else:
            kube.event(vm, "NodeNotReady", message, type_="Warning", component="controller")
    return writes


def release(ctx: ControllerContext, vm: Mapping[str, Any], node: str, health: nodehealth.NodeHealth) -> bool:
    """The VM's node is fenced: fail its migration, take it off the node; the controller then
    places it again and its new node's agent boots it (a cold restart). True when released."""
    kube = ctx.kube
    meta = vm["metadata"]
    ns, name = meta["namespace"], meta["name"]
    current = _still_on(ctx, ns, name, meta["uid"], node)
    if current is None:
        return False
    mig_ref = (current.get("status") or {}).get("migration") or {}
    if mig_ref.get("name") and mig_ref.get("state") not in NOT_TAKEN:
        _hold_for_target(ctx, current, node, mig_ref, health)
        return False
    if mig_ref.get("name"):
        mig = kube.get_migration(ns, str(mig_ref["name"]))
        if mig is not None and mg.phase(mig) not in mg.TERMINAL_PHASES:
            with ctx.locks.migration(ns, str(mig_ref["name"])):
                failed = migrations.set_phase(ctx, mig, mg.FAILED, reason="SourceNodeFenced",
                                              message=f"{health.message}: the VM is restarted on another node")
                migrations.cleanup(ctx, failed or mig)
    # Metadata first, status last: once nodeName is gone the controller places the VM again and
    # sets the new node label, which this patch must not remove. edit_vm_metadata patches with the
    # resourceVersion it read and decides again after a conflict, so only a label that still names
    # the fenced node is removed.
    def unlabel(m: Mapping[str, Any]) -> dict[str, Any] | None:
        if m.get("uid") != meta["uid"] or (m.get("labels") or {}).get(labels.VM_NODE) != node:
            return None
        return {"labels": {labels.VM_NODE: None}}

    kube.edit_vm_metadata(ns, name, unlabel)
    failpoints.hit("release.after-unlabel")
    done = {"v": False}

    def mutate(st: dict[str, Any]) -> dict[str, Any] | None:
        if st.get("nodeName") != node:
            return None
        for key in ("nodeName", "vf", "domain", "migration"):
            st.pop(key, None)
        st["phase"] = "Pending"
        msg = f"{health.message}: the VM did not shut down cleanly there; restarting it on another node"
        st["conditions"] = conditions.set_condition(st.get("conditions"), "Ready", False, health.reason, msg,
                                                    meta.get("generation"))
        st["conditions"] = conditions.set_condition(st["conditions"], "Scheduled", False, health.reason,
                                                    f"released from fenced node {node}")
        st["conditions"] = [c for c in st["conditions"] if c.get("type") != nodehealth.CONDITION]
        done["v"] = True
        return st

    kube.update_vm_status(ns, name, mutate, uid=meta["uid"])
    if done["v"]:
        VMS_RECOVERED.labels(health.reason).inc()
        log.warning("%s/%s released from fenced node %s (%s)", ns, name, node, health.reason)
        kube.event(vm, "NodeFenced", f"{health.message}: restarting the VM on another node (a cold boot: it did "
                   "not shut down cleanly)", type_="Warning", component="controller")
    return done["v"]


def _hold_for_target(ctx: ControllerContext, vm: Mapping[str, Any], node: str, mig: Mapping[str, Any],
                     health: nodehealth.NodeHealth) -> None:
    """The source agent had taken the migration (it was running) when `node` was fenced: the VM may
    run on the target already. Never start it elsewhere: it stays locked by the migration, with a
    condition saying so, until the target's agent finds it running there (then it records the
    migration's success) or an administrator resolves it."""
    meta = vm["metadata"]
    target = mig.get("targetNode") or "?"
    msg = (f"{health.message} while migration {mig.get('name')} to {target} was running: the VM may already run "
           f"on {target}, so it is not restarted elsewhere. It stays locked until the agent on {target} finds "
           f"it running there (recorded as the migration's success); if {target} does not run it, see "
           "docs/reliability.md")

    wrote = {"v": False}

    def mutate(st: dict[str, Any]) -> dict[str, Any] | None:
        wrote["v"] = False
        if st.get("nodeName") != node or (st.get("migration") or {}).get("name") != mig.get("name"):
            return None
        if conditions.is_true(st.get("conditions"), repair.FENCED_DURING_MIGRATION):
            return None
        wrote["v"] = True
        st["conditions"] = conditions.set_condition(st.get("conditions"), repair.FENCED_DURING_MIGRATION, True,
                                                    "WaitingForTarget", msg, meta.get("generation"))
        return st

    ctx.kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"], current=vm)
    if wrote["v"]:
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], msg)
        ctx.kube.event(vm, repair.FENCED_DURING_MIGRATION, msg, type_="Warning", component="controller")


def _still_on(ctx: ControllerContext, ns: str, name: str, uid: str, node: str) -> dict[str, Any] | None:
    """The VM as it is now, if it is still this VM and still placed on `node`."""
    vm = ctx.kube.get_vm(ns, name)
    if vm is None or vm["metadata"].get("uid") != uid or (vm.get("status") or {}).get("nodeName") != node:
        return None
    return vm


def release_all(ctx: ControllerContext, node: str, node_obj: Mapping[str, Any] | None) -> list[str]:
    """Release every VM of a fenced node (None: the Node is gone: only the VMs confirmed down)."""
    health = nodehealth.assess(node, node_obj)
    if health.state not in (nodehealth.FENCED, nodehealth.GONE):
        return []
    with ctx.locks.node(node):
        return [f"{vm['metadata']['namespace']}/{vm['metadata']['name']}" for vm in ctx.kube.list_vms(
            f"{labels.VM_NODE}={node}") if release_gone(ctx, vm, node, health)]


def release_gone(ctx: ControllerContext, vm: Mapping[str, Any], node: str, health: nodehealth.NodeHealth) -> bool:
    """release() for a fenced node; for a deleted one only with the host-down confirmation, else
    the VM is marked (NodeHealthy=False, NodeDeleted) and stays where it is."""
    if health.state == nodehealth.GONE:
        confirmed = nodehealth.host_down_confirmed(vm, node)
        if confirmed is None:
            mark(ctx, [vm], node, health)
            return False
        health = confirmed
    return release(ctx, vm, node, health)


def sweep_deleted_nodes(ctx: ControllerContext) -> list[str]:
    """VMs placed on a node that no longer exists (its deletion event was missed): release them.
    The node is looked up once more by name first, since the VM list may be newer than a node list."""
    kube = ctx.kube
    known = {n["metadata"]["name"] for n in ctx.cache.nodes()}
    released: list[str] = []
    for vm in ctx.cache.vms():
        node = (vm.get("status") or {}).get("nodeName")
        if node and node not in known and kube.get_node(str(node)) is None:
            with ctx.locks.node(str(node)):
                if release_gone(ctx, vm, str(node), nodehealth.assess(str(node), None)):
                    released.append(f"{vm['metadata']['namespace']}/{vm['metadata']['name']}")
    return released
