"""Node sweep and evacuation: node health, and the evacuation of a node that must be emptied
(drain, cordon, cluster-autoscaler scale-down, Karpenter disruption) by FailoverVMMigrations, or by
shutting down the VMs whose evictionStrategy is Shutdown. Also the eviction of one VM: its pod was
evicted (the eviction webhook, on a node that is not being emptied) or preempted by kube-scheduler,
so it leaves its node the same way."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from failovervm import labels, nodehealth
from failovervm import migration as mg
from failovervm.controller import recovery
from failovervm.controller.context import ControllerContext
from failovervm.scheduling import NodeInfo, node_needs_evacuation


def vms_on(ctx: ControllerContext, node: str) -> list[dict[str, Any]]:
    """The VMs placed on `node` as the operator wrote it (status.nodeName); the node label only
    narrows the list (anyone who may edit a FailoverVM can set it)."""
    return [vm for vm in ctx.kube.list_vms(f"{labels.VM_NODE}={node}")
            if (vm.get("status") or {}).get("nodeName") == node]


def needs_pass(ctx: ControllerContext, node: Mapping[str, Any]) -> bool:
    """Whether a node (as the watch cache has it) needs a reconcile_node pass, decided in memory
    from the caches: it is being emptied (or was, as this process last saw it), it is fenced with
    VMs on it, or a VM on it has a node health to record or a displaced pod to act on."""
    name = str(node["metadata"]["name"])
    if name in ctx.sweeps.evacuating or node_needs_evacuation(NodeInfo.from_k8s(node)):
        return True
    vms = ctx.cache.vms_on(name)
    if not vms:
        return False
    health = nodehealth.assess(name, node, dt.datetime.now(dt.UTC))
    if health.state == nodehealth.FENCED:
        return True
    return any((vm["metadata"].get("annotations") or {}).get(labels.DISPLACED_ANNOTATION) == name
               or nodehealth.condition_change(vm, health) is not None for vm in vms)


def reconcile_node(ctx: ControllerContext, name: str) -> dict[str, Any]:
    """Record the node's health on its VMs and evacuate the node when it must be emptied.

    The node sweep, node events, migration events and the eviction webhook all call this from
    their own threads: one sweep per node at a time, or two could both see no migration for a VM
    and both start one.

    It takes the node's name and reads the Node itself once the lock is held: a caller's copy (a
    watch event, a list made before the other nodes' sweeps) may be older than the sweep that just
    ran, and acting on a copy from before a cordon would take the evacuation it started for an
    uncordon and delete its migrations."""
    with ctx.locks.node(name):
        current = ctx.kube.get_node(name)
        if current is None:
            return {"vms": 0, "gone": True}  # deleted: its VMs are released by the DELETED event or the sweep
        return _reconcile_node(ctx, current)


def _reconcile_node(ctx: ControllerContext, node: Mapping[str, Any]) -> dict[str, Any]:
    """One node's sweep: its health, the VMs whose pod was displaced from it and, while it must be
    emptied, its evacuation."""
    name = node["metadata"]["name"]
    vms = vms_on(ctx, name)
    out: dict[str, Any] = {"vms": len(vms)}
    health = nodehealth.assess(name, node, dt.datetime.now(dt.UTC))
    if health.state == nodehealth.FENCED:
        # Known to be off: its VMs start elsewhere.
        out["released"] = [f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in vms
                           if (v.get("status") or {}).get("nodeName") == name
                           and recovery.release(ctx, v, name, health)]
        vms = vms_on(ctx, name)
    elif vms:
        recovery.mark(ctx, vms, name, health)
    if not node_needs_evacuation(NodeInfo.from_k8s(node)):
        _stop_evacuation(ctx, name)
        ctx.sweeps.evacuating.discard(name)
        displaced = [vm for vm in vms if (vm["metadata"].get("annotations") or {}).get(
            labels.DISPLACED_ANNOTATION) == name]
        if displaced:
            out["displaced"] = {f"{vm['metadata']['namespace']}/{vm['metadata']['name']}": _displaced(ctx, name, vm)
                                for vm in displaced}
        return out
    ctx.sweeps.evacuating.add(name)
    if not vms:
        return out
    start, waiting = _evacuate(ctx, name, vms)
    out.update(started=[v["metadata"]["name"] for v in start], waiting=waiting)
    return out


def evict_vm(ctx: ControllerContext, vm: Mapping[str, Any], node: str, cause: str,
             lock_timeout: float | None = None) -> str:
    """Make `vm` leave `node` because its pod there was evicted or preempted (`cause`, the pod's
    name): the whole node's evacuation when the node is being emptied anyway, else this VM alone
    (a live migration within the same limits and retries, or a shutdown with evictionStrategy
    Shutdown). Returns why it still waits ("" when it is on its way). `lock_timeout`: give up
    after that long when the node's sweep holds its lock (the webhook's callers retry)."""
    lock = ctx.locks.node(node)
    if not lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
        return f"node {node}'s sweep is running"
    with _held(lock):
        current = ctx.kube.get_node(node)
        if current is not None and node_needs_evacuation(NodeInfo.from_k8s(current)):
            _, waiting = _evacuate(ctx, node, vms_on(ctx, node))
            meta = vm["metadata"]
            return waiting.get(f"{meta['namespace']}/{meta['name']}", "")
        return _evict_one(ctx, node, vm, cause)


@contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    """Release a lock acquired before the `with`."""
    try:
        yield
    finally:
        lock.release()


def _evict_one(ctx: ControllerContext, node: str, vm: Mapping[str, Any], cause: str) -> str:
    """evict_vm for one VM, with the node's lock held."""
    meta = vm["metadata"]
    if (vm.get("spec") or {}).get("evictionStrategy") == "Shutdown":
        _evict_by_shutdown(ctx, vm, node)
        return ""
    migrations = ctx.kube.list_migrations()
    start, waiting = mg.plan_evacuation(node, [vm], migrations, ctx.settings.limits, dt.datetime.now(dt.UTC),
                                        require_failover_ready=ctx.settings.require_failover_ready)
    _report_waiting(ctx, node, [dict(vm)], waiting)
    for one in start:
        _start_migration(ctx, node, one, migrations, evicted_pod=cause)
    return waiting.get(f"{meta['namespace']}/{meta['name']}", "")


def _displaced(ctx: ControllerContext, node: str, vm: Mapping[str, Any]) -> str:
    """A VM whose pod on `node` was preempted (or removed by the taint manager) keeps leaving it: the
    next attempt once the limits and back-off allow. After the retries are used up it gets its pod
    back there (and kube-scheduler may preempt it again)."""
    why = _evict_one(ctx, node, vm, str((vm["metadata"].get("annotations") or {}).get(
        labels.DISPLACED_ANNOTATION, "")))
    if why.startswith(mg.GAVE_UP):
        meta = vm["metadata"]

        def clear(m: Mapping[str, Any]) -> dict[str, Any] | None:
            if (m.get("annotations") or {}).get(labels.DISPLACED_ANNOTATION) != node:
                return None
            return {"annotations": {labels.DISPLACED_ANNOTATION: None}}

        ctx.kube.edit_vm_metadata(meta["namespace"], meta["name"], clear)
        ctx.kube.event(vm, "DisplacementGaveUp", f"the VM could not leave {node} after its pod was displaced ({why}); "
                       "it stays and gets a pod there again", type_="Warning", component="controller")
    return why


def _stop_evacuation(ctx: ControllerContext, node: str) -> None:
    """Uncordoned: start no new evacuation migrations, and drop those still looking for a target."""
    kube = ctx.kube
    for mig in kube.list_migrations():
        labels_ = mig["metadata"].get("labels") or {}
        if labels.EVICTED_POD_LABEL in labels_:
            continue  # a VM's own eviction (its pod evicted or preempted), not the node's
        if labels_.get(labels.EVACUATION_LABEL) == node and mg.phase(mig) in (mg.PENDING, mg.SCHEDULING):
            kube.delete_migration(mig["metadata"]["namespace"], mig["metadata"]["name"])


def _evacuate(ctx: ControllerContext, node: str,
              vms: list[dict[str, Any]]) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
    """Start the evacuation migrations the limits allow now, say why the other VMs wait, and shut
    down the VMs whose evictionStrategy is Shutdown. Returns the VMs started and those waiting."""
    migrations = ctx.kube.list_migrations()
    start, waiting = mg.plan_evacuation(node, vms, migrations, ctx.settings.limits, dt.datetime.now(dt.UTC),
                                        require_failover_ready=ctx.settings.require_failover_ready)
    _report_waiting(ctx, node, vms, waiting)
    for vm in start:
        _start_migration(ctx, node, vm, migrations)
    for vm in vms:
        meta = vm["metadata"]
        if (vm.get("spec") or {}).get("evictionStrategy") == "Shutdown" and not meta.get("deletionTimestamp"):
            _evict_by_shutdown(ctx, vm, node)
    return start, waiting


def _report_waiting(ctx: ControllerContext, node: str, vms: list[dict[str, Any]], waiting: dict[str, str]) -> None:
    """Warn on the VMs that block the drain (failover not negotiated, or the retries given up)."""
    for blocked in vms:
        why = waiting.get(f"{blocked['metadata']['namespace']}/{blocked['metadata']['name']}", "")
        # Events are de-duplicated, so repeating these on every sweep does not flood.
        if why.startswith(mg.FAILOVER_NOT_READY):
            ctx.kube.event(blocked, "EvacuationBlocked", f"node {node} is being drained but {why}", type_="Warning",
                           component="controller")
        elif why.startswith(mg.GAVE_UP):
            ctx.kube.event(blocked, "EvacuationGaveUp", f"node {node} is being drained but the operator {why}",
                           type_="Warning", component="controller")


def _start_migration(ctx: ControllerContext, node: str, vm: Mapping[str, Any],
                     migrations: list[dict[str, Any]], evicted_pod: str | None = None) -> None:
    """Create the VM's evacuation migration, under a name fixed by VM and node (see
    migration.evacuation_name) so that a second creator gets a conflict instead of a second one.
    `evicted_pod`: started for the eviction (or preemption) of that VM pod, not for the node's."""
    ns = vm["metadata"]["namespace"]
    mig_name = mg.evacuation_name(vm, node, (m["metadata"]["name"] for m in migrations
                                             if m["metadata"].get("namespace") == ns))
    body = {
        "apiVersion": labels.API_GROUP_VERSION,
        "kind": "FailoverVMMigration",
        "metadata": {
            "name": mig_name,
            "namespace": ns,
            "labels": {labels.EVACUATION_LABEL: node, labels.VM_LABEL: vm["metadata"]["name"],
                       **({labels.EVICTED_POD_LABEL: evicted_pod} if evicted_pod else {})},
        },
        "spec": {"vmName": vm["metadata"]["name"]},
    }
    if ctx.kube.create_migration_once(body) is None:
        return  # another sweep (or a standby replica's admission webhook) created it first
    why = f"its pod {evicted_pod} was evicted" if evicted_pod else f"node {node} is being drained"
    ctx.kube.event(vm, "Evacuating", f"{why}: live-migrating away from {node} with {mig_name}", component="controller")


def release_stopped(ctx: ControllerContext, vm: Mapping[str, Any], node: str) -> None:
    """A stopped or failed VM whose pod on `node` is evicted leaves the node without holding up the
    drain: its agent undefines the domain and releases it, as for evictionStrategy Shutdown; the
    controller places it again when it should run."""
    meta = vm["metadata"]
    if (meta.get("annotations") or {}).get(labels.EVICT_ANNOTATION) == node:
        return
    ctx.kube.patch_vm(meta["namespace"], meta["name"], {"metadata": {"annotations": {labels.EVICT_ANNOTATION: node}}})
    ctx.kube.event(vm, "Evicting", f"its pod on {node} was evicted while the VM was not running there: it is "
                   f"released from {node}", component="controller")


def _evict_by_shutdown(ctx: ControllerContext, vm: Mapping[str, Any], node: str) -> None:
    """evictionStrategy Shutdown: ask the agent to shut the VM down and release it from the node."""
    kube = ctx.kube
    meta = vm["metadata"]
    if (meta.get("annotations") or {}).get(labels.EVICT_ANNOTATION) == node:
        return
    kube.patch_vm(meta["namespace"], meta["name"], {"metadata": {"annotations": {labels.EVICT_ANNOTATION: node}}})
    kube.event(vm, "Evicting", f"node {node} is being drained: shutting the VM down (evictionStrategy Shutdown); "
               "it starts again on another node", component="controller")

