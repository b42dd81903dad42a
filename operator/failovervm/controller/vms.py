"""Controller-side FailoverVM logic: scheduling, status, deletion (plain functions; Kopf calls them)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from failovervm import conditions, labels, metrics
from failovervm.controller.context import ControllerContext
from failovervm.labels import AGENT_FINALIZER
from failovervm.placement import Claimed, place
from failovervm.scheduling import Unschedulable
from failovervm.vmspec import vm_mac

log = logging.getLogger(__name__)

class StillDeleting(Exception):
    """The agent has not removed the domain yet."""


def ensure_scheduled(ctx: ControllerContext, namespace: str, name: str) -> str:
    """Place the VM if it is not placed yet. Returns what happened (for logs and tests)."""
    kube = ctx.kube
    with ctx.placement_lock:
        vm = kube.get_vm(namespace, name)
        if vm is None or vm["metadata"].get("deletionTimestamp"):
            return "gone"
        status = vm.get("status") or {}
        if status.get("nodeName"):
            return "already-placed"
        spec = vm.get("spec") or {}
        uid = vm["metadata"]["uid"]
        if not spec.get("running", True):
            def stopped(st: dict[str, Any]) -> dict[str, Any]:
                st.update(phase="Stopped", mac=vm_mac(vm), observedGeneration=vm["metadata"].get("generation"))
                st["conditions"] = conditions.set_condition(
                    st.get("conditions"), "Scheduled", False, "NotRunning", "spec.running is false")
                return st

            kube.update_vm_status(namespace, name, stopped, uid=uid)
            return "not-running"
        # Claims of an unplaced VM are stale (e.g. after an eviction): release them first.
        for claim in kube.list_claims():
            if (claim["spec"].get("owner") or {}).get("uid") == uid:
                kube.delete_claim(claim["metadata"]["name"], claim["metadata"]["uid"])
        result = place(kube, vm)
        if isinstance(result, Unschedulable):
            _record_unschedulable(ctx, vm, result)
            return f"pending:{result.reason}"
        assert isinstance(result, Claimed)
        ctx.guards.ensure(result.node)
        placed = _record_placement(ctx, vm, result)
        if placed is None:
            kube.delete_claim(result.claim)
            return "gone"
        # The node label lets the node's agent watch its VMs; its finalizer goes in the same patch,
        # so the domain can never be created without the finalizer that removes it.
        kube.set_finalizer(namespace, name, AGENT_FINALIZER, True, current=placed,
                           labels={labels.VM_NODE: result.node})
        kube.event(vm, "Scheduled", f"Scheduled to {result.node} with VF {result.pci_address} ({result.claim})",
                   component="controller")
        return f"placed:{result.node}"


def _record_placement(ctx: ControllerContext, vm: Mapping[str, Any], c: Claimed) -> dict[str, Any] | None:
    kube = ctx.kube
    meta = vm["metadata"]

    def mutate(st: dict[str, Any]) -> dict[str, Any]:
        st.update(
            phase="Scheduled", nodeName=c.node, mac=vm_mac(vm),
            vf={"node": c.node, "pf": c.pf, "pciAddress": c.pci_address, "claimName": c.claim},
            observedGeneration=meta.get("generation"),
        )
        st["conditions"] = conditions.set_condition(
            st.get("conditions"), "Scheduled", True, "Scheduled", f"node {c.node}, VF {c.pci_address}",
            meta.get("generation"))
        return st

    return kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"], current=vm)


def _record_unschedulable(ctx: ControllerContext, vm: Mapping[str, Any], u: Unschedulable) -> None:
    kube = ctx.kube
    meta = vm["metadata"]
    previous = conditions.get((vm.get("status") or {}).get("conditions"), "Scheduled")

    def mutate(st: dict[str, Any]) -> dict[str, Any]:
        st.update(phase="Pending", mac=vm_mac(vm), observedGeneration=meta.get("generation"))
        st["conditions"] = conditions.set_condition(
            st.get("conditions"), "Scheduled", False, u.reason, u.message, meta.get("generation"))
        return st

    kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"])
    if not previous or previous.get("reason") != u.reason or previous.get("message") != u.message:
        kube.event(vm, "FailedScheduling", u.message, type_="Warning", component="controller")


def finalize(ctx: ControllerContext, namespace: str, name: str, uid: str) -> None:
    """Release the VM's VF claims once the agent has removed its domain."""
    kube = ctx.kube
    vm = kube.get_vm(namespace, name)
    if vm is not None and vm["metadata"]["uid"] == uid and AGENT_FINALIZER in (vm["metadata"].get("finalizers") or []):
        node = (vm.get("status") or {}).get("nodeName")
        if node:
            raise StillDeleting(f"waiting for the agent on {node} to remove the domain")
        # Not placed anywhere (e.g. evicted and not yet re-placed): no agent holds a domain for it.
        kube.set_finalizer(namespace, name, AGENT_FINALIZER, False, current=vm)
    released = []
    for claim in kube.list_claims():
        if claim["spec"].get("owner", {}).get("uid") == uid:
            kube.delete_claim(claim["metadata"]["name"], claim["metadata"]["uid"])
            released.append(claim["metadata"]["name"])
    if released and vm is not None:
        kube.event(vm, "VFReleased", f"released VF claims {', '.join(released)}", component="controller")


def _age_seconds(obj: Mapping[str, Any]) -> float:
    ts = obj["metadata"].get("creationTimestamp")
    if not ts:
        return 0.0
    created = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    return (dt.datetime.now(dt.UTC) - created).total_seconds()


def claim_is_orphaned(claim: Mapping[str, Any], vm: Mapping[str, Any] | None) -> bool:
    """A claim whose VM is gone, or that the VM no longer refers to (status write lost)."""
    owner = claim["spec"].get("owner") or {}
    if vm is None or vm["metadata"].get("uid") != owner.get("uid"):
        return True
    st = vm.get("status") or {}
    name = claim["metadata"]["name"]
    if (st.get("vf") or {}).get("claimName") == name:
        return False
    return bool((st.get("migration") or {}).get("targetClaim") != name)


def collect_orphaned_claims(ctx: ControllerContext) -> list[str]:
    kube = ctx.kube
    removed = []
    for claim in kube.list_claims():
        if _age_seconds(claim) < ctx.settings.claim_gc_grace_seconds:
            continue
        owner = claim["spec"].get("owner") or {}
        vm = kube.get_vm(owner.get("namespace", ""), owner.get("name", ""))
        if claim_is_orphaned(claim, vm):
            kube.delete_claim(claim["metadata"]["name"], claim["metadata"]["uid"])
            removed.append(claim["metadata"]["name"])
            log.warning("released orphaned VFClaim %s", claim["metadata"]["name"])
    return removed


def refresh_pool_status(ctx: ControllerContext, pool_name: str) -> None:
    """Count allocated/free VFs per node of the pool from the VFClaims."""
    kube = ctx.kube
    taken = {(c["spec"]["node"], c["spec"]["pciAddress"]) for c in kube.list_claims()}
    computed: list[list[dict[str, Any]]] = []  # entries of the last mutate; none: the pool is gone

    def mutate(st: dict[str, Any]) -> dict[str, Any]:
        total = alloc = 0
        simulated = False
        nodes = []
        for entry in st.get("nodes") or []:
            e = dict(entry)
            vfs = [v["pciAddress"] for v in e.get("vfs") or []]
            e["total"] = len(vfs)
            e["allocated"] = sum(1 for pci in vfs if (e["node"], pci) in taken)
            e["free"] = e["total"] - e["allocated"]
            total += e["total"]
            alloc += e["allocated"]
            simulated = simulated or bool(e.get("simulated"))
            nodes.append(e)
        st["nodes"] = nodes
        computed.append(nodes)
        st["totals"] = {"total": total, "allocated": alloc, "free": total - alloc}
        if simulated:
            st["conditions"] = conditions.set_condition(
                st.get("conditions"), "Simulated", True, "SimulatedSysfs",
                "VF inventory on some nodes comes from a simulated sysfs tree (sandbox): "
                "no SR-IOV hardware backs these VFs and VF hot-plug cannot succeed there")
        else:
            st["conditions"] = conditions.set_condition(
                st.get("conditions"), "Simulated", False, "RealHardware", "VF inventory read from host sysfs")
        return st

    kube.update_pool_status(pool_name, mutate)
    metrics.set_pool_vfs(pool_name, computed[-1] if computed else None)
