"""Controller-side FailoverVM logic: placement through the VM pod, the pod of a placed VM, status,
deletion (plain functions; Kopf calls them).

Placement: a VM that should run and has no node gets an unbound VM pod (failovervm.vmpod);
kube-scheduler binds it; the controller then claims a free VF of the VM's pool on that node
(failovervm.placement) and records the placement (status.nodeName and vf, the node label, the
agent finalizer), and the node's agent starts the domain. A placed VM always has a pod on its node:
one is created bound to it when it has none (an upgrade over running VMs, a pod deleted behind the
operator's back), and the VM keeps running."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from failovervm import conditions, failpoints, labels, macleases, metrics, nodehealth, vmpod
from failovervm import migration as mg
from failovervm.controller import evacuation, leases, vmpods
from failovervm.controller.cache import node_vfs
from failovervm.controller.context import ControllerContext
from failovervm.controller.orphans import release_orphans
from failovervm.kube import age_seconds
from failovervm.labels import AGENT_FINALIZER, CONTROLLER_FINALIZER
from failovervm.placement import Claimed, claim_on_node
from failovervm.scheduling import Unschedulable

log = logging.getLogger(__name__)


class StillDeleting(Exception):
    """The agent has not removed the domain yet."""


class PlacedMeanwhile(Exception):
    """The VM's status, read again after a conflict, shows it placed: this pass stops."""


def _current(ctx: ControllerContext, namespace: str, name: str, hint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The VM a placement pass starts from: `hint` (a VM without any status, as its creation event
    shows it, holding no claim in the cache), else the copy this process last wrote while the VM
    cache shows nothing newer (Placing), else a GET. A copy that is stale after all fails the pass's
    first write with a 409, and that write is made again on a fresh read."""
    if hint is not None and not hint.get("status") and not ctx.cache.claims_of(str(hint["metadata"]["uid"])):
        return hint

    def cached_version(uid: str) -> str | None:
        cached = ctx.cache.vm(uid)
        return None if cached is None else cached["metadata"].get("resourceVersion")

    mine = ctx.placing.copy(namespace, name, cached_version)
    return mine if mine is not None else ctx.kube.get_vm(namespace, name)


def forget(ctx: ControllerContext, namespace: str, name: str, uid: str) -> None:
    """A VM was deleted (placed or not): drop what the controller remembered of it; its pod and VF
    are capacity other VMs may wait for."""
    ctx.capacity.seen.pop(uid, None)
    ctx.capacity.changed()
    ctx.placing.forget(namespace, name, uid)


def ensure_scheduled(ctx: ControllerContext, namespace: str, name: str, hint: dict[str, Any] | None = None) -> str:
    """Place the VM if it is not placed yet (else keep its pod on its node). Returns what happened
    (for logs and tests). `hint`: the VM as an event shows it (see _current)."""
    with ctx.locks.vm(namespace, name):
        try:
            return _ensure_scheduled(ctx, namespace, name, hint)
        except PlacedMeanwhile:
            return "placed-meanwhile"


def _ensure_scheduled(ctx: ControllerContext, namespace: str, name: str, hint: dict[str, Any] | None) -> str:
    kube = ctx.kube
    vm = _current(ctx, namespace, name, hint)
    if vm is None or vm["metadata"].get("deletionTimestamp"):
        return "gone"
    status = vm.get("status") or {}
    if status.get("nodeName"):
        return ensure_pod_of_placed(ctx, vm, fresh=True)
    spec = vm.get("spec") or {}
    uid = vm["metadata"]["uid"]
    if not spec.get("running", True):
        def stopped(st: dict[str, Any]) -> dict[str, Any]:
            st.update(phase="Stopped", mac=ctx.vm_mac(vm), observedGeneration=vm["metadata"].get("generation"))
            st["conditions"] = conditions.set_condition(
                st.get("conditions"), "Scheduled", False, "NotRunning", "spec.running is false")
            return st

        kube.update_vm_status(namespace, name, stopped, uid=uid, current=vm)
        for pod in vmpods.pods_of(ctx.pods, vm, labels.ROLE_RUNNING):
            vmpods.delete(kube, pod)  # stopped before it was placed: it holds nothing
        return "not-running"
    # Capacity seen by this pass: the pending timer looks again once it changed (needs_look).
    ctx.capacity.seen[uid] = (ctx.capacity.epoch, time.monotonic())
    # Claims of an unplaced VM are stale (e.g. after an eviction, or made by a pass that died
    # before recording them): release them first. Found by owner in the watch cache; one it has
    # not seen yet is left to the sweep of orphaned claims. The cache may still show them for a
    # moment: the VF choice must not take one of them up again (placement.own_claim).
    released = set()
    for claim in ctx.cache.claims_of(uid):
        kube.delete_claim(claim["metadata"]["name"], claim["metadata"].get("uid"))
        released.add(str(claim["metadata"]["name"]))
    return _place(ctx, vm, released)


# A pending VM the timer looks at again although nothing it waits for changed (a missed event).
PENDING_RESYNC_SECONDS = 300.0
# A VM without any status gets its first pass from its creation event, not from the sweep, unless
# it is older than this (an event whose handler failed).
NEW_VM_GRACE_SECONDS = 30.0
# Why a VM waits that only a capacity change (or the resync) can end.
_WAITS_FOR_CAPACITY = frozenset({"NoMatchingNode", "NoFreeVF", "NodesUnschedulable"})


def wake_pending(ctx: ControllerContext) -> list[str]:
    """The pending sweep (every 3 s, controller.sweeps): a placement pass for each unplaced VM in
    the cache that needs one (needs_look); the others cost nothing. One loop over the pending VMs
    instead of a timer per VM (5,000 pending VMs were 1,700 timer calls a second). Returns the VMs
    passed over."""
    done = []
    for vm in ctx.cache.pending_vms():
        if needs_look(ctx, vm):
            meta = vm["metadata"]
            ensure_scheduled(ctx, str(meta["namespace"]), str(meta["name"]))
            done.append(f"{meta['namespace']}/{meta['name']}")
    return done


def needs_look(ctx: ControllerContext, vm: Mapping[str, Any]) -> bool:
    """Whether the pending sweep should make a placement pass for an unplaced VM (`vm` as the watch
    cache has it), which costs API calls: not while kube-scheduler has its pod (its binding is an
    event), a back-off runs, a stopped VM's status is written, or the VM waits for capacity and
    none changed since its last pass (see Capacity). Answered in memory."""
    meta, status = vm["metadata"], vm.get("status") or {}
    if status.get("nodeName") or meta.get("deletionTimestamp"):
        return False
    uid = str(meta["uid"])
    seen = ctx.capacity.seen.get(uid)
    if seen is None and not status and age_seconds(vm) < NEW_VM_GRACE_SECONDS:
        return False  # just created: its creation event makes the first pass
    stale = seen is None or time.monotonic() - seen[1] >= PENDING_RESYNC_SECONDS
    if stale:
        return True
    if not (vm.get("spec") or {}).get("running", True):
        return not (status.get("phase") == "Stopped" and status.get("observedGeneration") == meta.get("generation"))
    if status.get("observedGeneration") != meta.get("generation"):
        return True
    if ctx.pod_retries.waiting(vmpods.Retries.key(vm)) is not None:
        return False  # refused or given up: the back-off runs
    cond = conditions.get(status.get("conditions"), "Scheduled") or {}
    reason = cond.get("reason")
    pods = vmpods.pods_of(ctx.pods, vm, labels.ROLE_RUNNING)
    if reason in ("WaitingForScheduler", "Unschedulable"):
        # kube-scheduler has the pod (it retries unschedulable pods itself): its answer, the binding,
        # is an event of the pod, whose handler makes the pass (a bound pod waiting for the placement
        # lock needs no second pass from here).
        return len(pods) != 1 and not (not pods and ctx.placing.pod_created_lately(uid))
    if reason in _WAITS_FOR_CAPACITY:
        return seen is not None and seen[0] != ctx.capacity.epoch
    return True


def waiting_for_kube_scheduler(ctx: ControllerContext, vm: Mapping[str, Any]) -> bool:
    """An unplaced VM whose status already says it waits for kube-scheduler to bind its pod, for
    its current spec, while its pod (in the index) is unbound and not found unschedulable: nothing
    to do until the pod's binding (or Unschedulable) event, so an event of the VM itself (the
    controller's own status write, Kopf's finalizer) need not cost a pass of API calls that would
    hold the VM's placement lock when that binding comes. The 3 s timer still looks again."""
    meta, status = vm["metadata"], vm.get("status") or {}
    if status.get("nodeName") or meta.get("deletionTimestamp") or not (vm.get("spec") or {}).get("running", True):
        return False
    cond = conditions.get(status.get("conditions"), "Scheduled")
    if (status.get("phase") != "Pending" or status.get("observedGeneration") != meta.get("generation")
            or cond is None or cond.get("status") != "False" or cond.get("reason") != "WaitingForScheduler"):
        return False
    pods = vmpods.pods_of(ctx.pods, vm, labels.ROLE_RUNNING)
    if not pods:  # the pod index may not show the pod this process has just created yet
        return ctx.placing.pod_created_lately(str(meta["uid"]))
    return len(pods) == 1 and _unbound_and_schedulable(pods[0])


def _unbound_and_schedulable(pod: Mapping[str, Any]) -> bool:
    """A live VM pod that kube-scheduler has neither bound nor found unschedulable (yet)."""
    return vmpod.node_of(pod) is None and vmpod.unschedulable(pod) is None and not vmpod.is_terminating(pod)


def _place(ctx: ControllerContext, vm: dict[str, Any], released: frozenset[str] | set[str] = frozenset()) -> str:
    """An unplaced VM that should run: its pod, kube-scheduler's answer, then a VF on that node
    (pool, node, inventory and claims from the watch caches)."""
    kube = ctx.kube
    pool_name = str(((vm.get("spec") or {}).get("network") or {}).get("pool", ""))
    pool = ctx.cache.pool(pool_name) if pool_name else None
    if pool is None:
        return _pending(ctx, vm, Unschedulable("NoMatchingNode", f"VFPool {pool_name!r} does not exist"),
                        "FailedScheduling")
    # Its MAC before anything else: a VM that may not have it holds no pod and no VF meanwhile.
    conflict = leases.take_mac_lease(ctx, vm, pool)
    if conflict is not None:
        return _pending(ctx, vm, conflict, macleases.CONFLICT)
    pod, vm = _pending_pod(ctx, vm, pool)
    if isinstance(pod, Unschedulable):
        return _pending(ctx, vm, pod, "PodRejected" if pod.reason == "PodRejected" else "FailedScheduling")
    node = vmpod.node_of(pod)
    if node is None:
        message = vmpod.unschedulable(pod)
        if message is not None:  # kube-scheduler's own words; what cluster-autoscaler scales up for
            return _pending(ctx, vm, Unschedulable("Unschedulable", message), "FailedScheduling")
        return _pending(ctx, vm, _waiting_for_scheduler(pod), None)
    result = claim_on_node(kube, vm, pool, node, inventory=node_vfs(ctx.cache, node, pool_name),
                           node_obj=ctx.cache.node(node), recent=ctx.recent_claims,
                           claims=[c for c in ctx.cache.claims_on(node, pool_name)
                                   if str(c["metadata"]["name"]) not in released])
    if isinstance(result, Unschedulable):
        # Bound where the VM cannot go after all (no free VF there, the node draining): let
        # kube-scheduler choose again, after a back-off.
        vmpods.delete(kube, pod)
        ctx.pod_retries.failed(vmpods.Retries.key(vm), result.reason, result.message)
        return _pending(ctx, vm, result, "FailedScheduling")
    assert isinstance(result, Claimed)
    failpoints.hit("placement.after-claim")
    placed = _record_placement(ctx, vm, result)
    if placed is None:
        kube.delete_claim(result.claim)
        return "gone"
    failpoints.hit("placement.after-status")
    # The node label lets the node's agent watch its VMs; its finalizer goes in the same patch,
    # so the domain can never be created without the finalizer that removes it; and Kopf's, so that
    # the controller releases the VF when the VM is deleted (controller.main._holds_finalizers).
    meta = vm["metadata"]
    ctx.placing.forget(meta["namespace"], meta["name"], str(meta["uid"]))
    kube.set_finalizer(meta["namespace"], meta["name"], (AGENT_FINALIZER, CONTROLLER_FINALIZER), True,
                       current=placed, labels={labels.VM_NODE: result.node})
    kube.event(vm, "Scheduled", f"Scheduled to {result.node} with VF {result.pci_address} ({result.claim}); "
               f"kube-scheduler bound pod {vmpods.describe(pod)} there", component="controller")
    ctx.pod_retries.succeeded(vmpods.Retries.key(vm))
    ctx.capacity.seen.pop(str(meta["uid"]), None)
    return f"placed:{result.node}"


def _waiting_for_scheduler(pod: Mapping[str, Any]) -> Unschedulable:
    return Unschedulable("WaitingForScheduler", f"waiting for kube-scheduler to bind pod {vmpods.describe(pod)}")


def _ts(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def _predates_release(pod: Mapping[str, Any], vm: Mapping[str, Any]) -> bool:
    """A bound pod of an unplaced VM that was made before the VM was taken off its node (evicted
    with evictionStrategy Shutdown, released from a fenced node): it stood for that placement. The
    Scheduled condition turned False then; every pod for the next placement is created after the
    controller has written Scheduled=False (_pending before the create), so never before it."""
    cond = conditions.get((vm.get("status") or {}).get("conditions"), "Scheduled")
    if cond is None or cond.get("status") != "False":
        return False
    released, created = _ts(cond.get("lastTransitionTime")), _ts(pod["metadata"].get("creationTimestamp"))
    return released is not None and created is not None and created < released


def _pending_pod(ctx: ControllerContext, vm: dict[str, Any], pool: Mapping[str, Any],
                 ) -> tuple[dict[str, Any] | Unschedulable, dict[str, Any]]:
    """The running pod of an unplaced VM: the one kube-scheduler has bound (or is to bind), created
    when there is none, or why there is none (the API server refused it, or a back-off runs); and
    the VM as last written (its status says it waits for kube-scheduler once a pod is created)."""
    kube = ctx.kube

    def usable(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
        for pod in [p for p in pods if vmpod.node_of(p) and _predates_release(p, vm)]:
            vmpods.delete(kube, pod)
            pods = [p for p in pods if p is not pod]
        # Bound first: kube-scheduler's answer.
        return min(pods, key=lambda p: (vmpod.node_of(p) is None, p["metadata"]["name"])) if pods else None

    waiting = ctx.pod_retries.waiting(vmpods.Retries.key(vm))  # refused, or given up: none until the back-off ends
    if waiting is not None:
        return waiting, vm
    pod = usable(vmpods.pods_of(ctx.pods, vm, labels.ROLE_RUNNING))
    if pod is not None:
        return pod, vm
    # The index may lag: ask the API before creating, unless the VM never had a pod (the controller
    # writes Scheduled=False before it creates the first one, see _predates_release); a pod of the
    # same name made meanwhile costs an AlreadyExists, never a second pod.
    if conditions.get((vm.get("status") or {}).get("conditions"), "Scheduled") is not None:
        pod = usable(vmpods.fresh_pods_of(kube, vm, labels.ROLE_RUNNING))
        if pod is not None:
            return pod, vm
    # Scheduled=False is on the VM before its pod exists (see _predates_release).
    body = vmpod.build(vm, pool, ctx.settings.vm_pod)
    vm = _write_pending(ctx, vm, _waiting_for_scheduler(body))
    if (vm.get("status") or {}).get("nodeName"):
        raise PlacedMeanwhile()
    created = vmpods.create(kube, body)
    if created.rejected is not None:
        ctx.pod_retries.failed(vmpods.Retries.key(vm), "PodRejected", created.rejected)
        return Unschedulable("PodRejected", created.rejected), vm
    assert created.pod is not None
    ctx.placing.pod_created(str(vm["metadata"]["uid"]))
    if created.new:
        vmpods.log_created(created.pod, None)
    return created.pod, vm


def placed_and_settled(ctx: ControllerContext, vm: Mapping[str, Any]) -> bool:
    """A placed VM (as an event or the cache shows it) whose pods need nothing (ensure_pod_of_placed
    would do nothing): answered in memory, on the event loop."""
    return _placed_pods(ctx, vm, vmpods.pods_of(ctx.pods, vm))[0] in ("ok", "skip")


def settled_pod_event(ctx: ControllerContext, event_type: str | None, pod: Mapping[str, Any]) -> str | None:
    """What on_running_pod_event would answer without any API call, or None when it has work to
    do: a pod created and not bound yet (kube-scheduler's answer is the next event), or a pod bound
    where its VM, as the cache shows it, is placed and needs nothing (the binding event of a VM
    placed since, every pod when the controller starts)."""
    if event_type == "DELETED":
        return None
    if _unbound_and_schedulable(pod):
        return "waiting-for-kube-scheduler"
    node = vmpod.node_of(pod)
    uid = ((pod.get("metadata") or {}).get("labels") or {}).get(labels.VM_UID_LABEL)
    cached = ctx.cache.vm(str(uid)) if node and uid else None
    if (cached is not None and (cached.get("status") or {}).get("nodeName") == node
            and not cached["metadata"].get("deletionTimestamp") and placed_and_settled(ctx, cached)):
        return "ok"
    return None


def ensure_pod_of_placed(ctx: ControllerContext, vm: Mapping[str, Any], *, fresh: bool = False) -> str:
    """A placed VM has a pod on its node: create one bound there when it has none (an upgrade over
    running VMs, a pod deleted out of band), drop extra running pods, turn a finished migration's
    target pod into the running one. `vm` may come from a watch event (`fresh` False): what it and
    the pod index say is only trusted when nothing needs doing; otherwise both are read again."""
    kube = ctx.kube
    verdict = _placed_pods(ctx, vm, vmpods.pods_of(ctx.pods, vm))
    if verdict[0] in ("ok", "skip"):
        return verdict[1]
    if not fresh:
        meta = vm["metadata"]
        current = kube.get_vm(meta["namespace"], meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return "gone"
        vm = current
        if not (vm.get("status") or {}).get("nodeName"):
            return "unplaced"
    pods = vmpods.fresh_pods_of(kube, vm)
    verdict = _placed_pods(ctx, vm, pods)
    if verdict[0] == "skip":
        return verdict[1]
    status = vm.get("status") or {}
    node = str(status["nodeName"])
    if labels.DISPLACED_ANNOTATION in (vm["metadata"].get("annotations") or {}):
        def clear(m: Mapping[str, Any]) -> dict[str, Any] | None:
            left = (m.get("annotations") or {}).get(labels.DISPLACED_ANNOTATION) not in (None, node)
            return {"annotations": {labels.DISPLACED_ANNOTATION: None}} if left else None

        meta = vm["metadata"]
        kube.edit_vm_metadata(meta["namespace"], meta["name"], clear)
    here = [p for p in pods if vmpod.node_of(p) == node]
    if not status.get("migration"):
        # No migration between the pods: the one on the VM's node is its running pod, any other
        # running pod is left over (a migration's source, a race).
        for pod in here:
            if vmpod.role_of(pod) == labels.ROLE_TARGET:
                vmpods.make_running(kube, pod)
        for pod in pods:
            if vmpod.role_of(pod) == labels.ROLE_RUNNING and vmpod.node_of(pod) != node:
                vmpods.delete(kube, pod)
    if here:
        return "ok"
    return _recreate(ctx, vm, node)


def _placed_pods(ctx: ControllerContext, vm: Mapping[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str]:
    """("skip" | "ok" | "fix", what): whether a placed VM's pods need anything done."""
    meta = vm["metadata"]
    status = vm.get("status") or {}
    node = status.get("nodeName")
    annotations = meta.get("annotations") or {}
    if not node or meta.get("deletionTimestamp"):
        return "skip", "unplaced" if not node else "deleting"
    if annotations.get(labels.EVICT_ANNOTATION) == node:
        return "skip", "evicting"  # evictionStrategy Shutdown: its agent shuts it down and releases it
    if annotations.get(labels.DISPLACED_ANNOTATION) == node:
        return "skip", "displaced"  # leaving the node its pod was preempted from (evacuation._displaced)
    if labels.DISPLACED_ANNOTATION in annotations:
        return "fix", ""  # it has left that node: the annotation goes
    here = [p for p in pods if vmpod.node_of(p) == node]
    extra = [p for p in pods if vmpod.role_of(p) == labels.ROLE_RUNNING and vmpod.node_of(p) != node]
    targets_here = [p for p in here if vmpod.role_of(p) == labels.ROLE_TARGET]
    if here and (status.get("migration") or not (extra or targets_here)):
        return "ok", "ok"
    return "fix", ""


def _recreate(ctx: ControllerContext, vm: Mapping[str, Any], node: str) -> str:
    """A VM runs on `node` without a pod there: create one bound to the node (no kube-scheduler: the
    VM is there already). The VM keeps running whatever happens to its pod."""
    kube = ctx.kube
    if ctx.pod_retries.waiting(vmpods.Retries.key(vm)) is not None:
        return "waiting"
    if nodehealth.is_fenced(ctx.cache.node(node)):
        return "fenced"  # the VM is about to be released and restarted elsewhere (recovery)
    created = vmpods.create(kube, vmpod.build(vm, {}, ctx.settings.vm_pod, node=node))
    if created.rejected is not None:
        delay = ctx.pod_retries.failed(vmpods.Retries.key(vm), "PodRejected", created.rejected)
        kube.event(vm, "VMPodRejected", f"the VM keeps running on {node}, but without a pod there kube-scheduler "
                   f"and autoscalers do not see what it uses; retrying in {delay:.0f}s: {created.rejected}",
                   type_="Warning", component="controller")
        return "rejected"
    ctx.pod_retries.succeeded(vmpods.Retries.key(vm))
    if not created.new:
        return "ok"
    assert created.pod is not None
    vmpods.log_created(created.pod, node)
    kube.event(vm, "VMPodCreated", f"created pod {vmpods.describe(created.pod)} bound to {node}, where the VM runs "
               "(it had no pod there: installed over running VMs, or its pod was deleted); the VM keeps running",
               component="controller")
    return "created"


def on_running_pod_event(ctx: ControllerContext, event_type: str | None, pod: Mapping[str, Any]) -> str:
    """A VM's running pod changed (bound, found unschedulable, deleted): act on the VM. A pod that
    kube-scheduler preempted (or the taint manager removed) makes the VM leave its node instead of
    getting the pod back there."""
    meta = pod.get("metadata") or {}
    name = (meta.get("labels") or {}).get(labels.VM_LABEL)
    if not name or not meta.get("namespace"):
        return "not-a-vm-pod"
    node = vmpod.node_of(pod)
    if event_type == "DELETED" and node and vmpod.disruption_reason(pod) in vmpod.DISPLACING_REASONS:
        _displace(ctx, pod, str(name), node)
    if event_type != "DELETED" and _unbound_and_schedulable(pod):
        # Created (by this controller, which wrote the VM's Pending status before), not yet bound:
        # kube-scheduler's answer is the next event. A pass now would only hold the VM's placement lock
        # when the binding comes.
        return "waiting-for-kube-scheduler"
    return ensure_scheduled(ctx, str(meta["namespace"]), str(name))


def _displace(ctx: ControllerContext, pod: Mapping[str, Any], name: str, node: str) -> None:
    """The VM's pod on `node` was preempted by kube-scheduler or deleted by the taint manager while
    the VM runs there: it is moved away like an evicted one (live migration, or a shutdown with
    evictionStrategy Shutdown), and gets no new pod there meanwhile (annotation
    failovervm.io/displaced-from). A VM that is not running there is released from the node."""
    kube = ctx.kube
    ns = pod["metadata"]["namespace"]
    vm = kube.get_vm(ns, name)
    if vm is None or not vmpod.owned_by(pod, vm) or (vm.get("status") or {}).get("nodeName") != node:
        return
    if nodehealth.is_fenced(ctx.cache.node(node)):
        return  # the taint manager empties a fenced node: its VMs are restarted elsewhere (recovery)
    reason = vmpod.disruption_reason(pod)
    if (vm.get("status") or {}).get("phase") in ("Stopped", "Failed"):
        evacuation.release_stopped(ctx, vm, node)
        return

    def mark(m: Mapping[str, Any]) -> dict[str, Any] | None:
        if (m.get("annotations") or {}).get(labels.DISPLACED_ANNOTATION) == node:
            return None
        return {"annotations": {labels.DISPLACED_ANNOTATION: node}}

    vm = kube.edit_vm_metadata(ns, name, mark, current=vm) or vm
    what = "preempted by kube-scheduler" if reason == "PreemptionByScheduler" else f"deleted ({reason})"
    kube.event(vm, "VMPodDisplaced", f"pod {vmpods.describe(pod)} on {node} was {what}: the VM moves away from "
               f"{node} instead of getting its pod back there", type_="Warning", component="controller")
    evacuation.evict_vm(ctx, vm, node, pod["metadata"]["name"])


def sweep_pods(ctx: ControllerContext) -> list[str]:
    """The 30 s sweep of VM pods: every placed VM has its pod (also the upgrade from a version
    without VM pods, and pods deleted while no controller watched), and no target pod outlives its
    migration (a controller that stopped between a migration's end and its cleanup). Returns what
    was done."""
    kube = ctx.kube
    done = []
    vms = ctx.cache.vms()  # summaries: a VM that needs anything done is read again
    for vm in vms:
        if (vm.get("status") or {}).get("nodeName"):
            outcome = ensure_pod_of_placed(ctx, vm)
            if outcome not in ("ok", "evicting", "deleting"):
                done.append(f"{vm['metadata']['namespace']}/{vm['metadata']['name']}:{outcome}")
    by_uid = {vm["metadata"]["uid"]: vm for vm in vms}
    for pod in ctx.pods.all():
        owner = by_uid.get(((pod.get("metadata") or {}).get("labels") or {}).get(labels.VM_UID_LABEL))
        if owner is None or vmpod.role_of(pod) != labels.ROLE_TARGET or not vmpod.owned_by(pod, owner):
            continue  # a pod of a deleted VM goes with it (garbage collector: the VM owns it)
        if _target_pod_is_over(ctx, owner, pod) and vmpods.delete(kube, pod):
            done.append(f"{vmpods.describe(pod)}:deleted")
    return done


def _target_pod_is_over(ctx: ControllerContext, vm: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    status = vm.get("status") or {}
    name = (pod["metadata"].get("labels") or {}).get(labels.MIGRATION_LABEL)
    mig = ctx.kube.get_migration(vm["metadata"]["namespace"], str(name)) if name else None
    if mig is not None and vmpod.pod_name(vm, mig) == pod["metadata"]["name"] and not mg.is_finished(mig):
        return False  # its migration still needs it
    # Where the VM runs now (and no migration between): it is the VM's pod (ensure_pod_of_placed).
    return not (vmpod.node_of(pod) == status.get("nodeName") and not status.get("migration"))


def _record_placement(ctx: ControllerContext, vm: Mapping[str, Any], c: Claimed) -> dict[str, Any] | None:
    kube = ctx.kube
    meta = vm["metadata"]

    def mutate(st: dict[str, Any]) -> dict[str, Any]:
        st.update(
            phase="Scheduled", nodeName=c.node, mac=ctx.vm_mac(vm),
            vf={"node": c.node, "pf": c.pf, "pciAddress": c.pci_address, "claimName": c.claim},
            observedGeneration=meta.get("generation"),
        )
        st["conditions"] = conditions.set_condition(
            st.get("conditions"), "Scheduled", True, "Scheduled", f"node {c.node}, VF {c.pci_address}",
            meta.get("generation"))
        return st

    # `vm` was read under the VM's placement lock in this pass: no GET first (a concurrent metadata
    # write, e.g. Kopf's finalizer, costs a 409 and a GET).
    return kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"], current=vm)


def _pending(ctx: ControllerContext, vm: dict[str, Any], u: Unschedulable, event: str | None) -> str:
    """The VM waits for a node: phase Pending, Scheduled=False with the reason and message, and an
    Event (`event`, a Warning) when they changed."""
    previous = conditions.get((vm.get("status") or {}).get("conditions"), "Scheduled")
    _write_pending(ctx, vm, u)
    changed = not previous or previous.get("reason") != u.reason or previous.get("message") != u.message
    if event and changed:
        ctx.kube.event(vm, event, u.message, type_="Warning", component="controller")
    return f"pending:{u.reason}"


def _write_pending(ctx: ControllerContext, vm: dict[str, Any], u: Unschedulable) -> dict[str, Any]:
    """Write phase Pending and Scheduled=False (u) into the VM's status; returns the VM as written.
    `vm` was read (or written) under the VM's placement lock in this pass, so a status it already shows
    is not written again and costs no request."""
    meta = vm["metadata"]

    def mutate(st: dict[str, Any]) -> dict[str, Any] | None:
        if st.get("nodeName"):
            return None  # placed since `vm` was read (a conflict made it read again): never undone here
        st.update(phase="Pending", observedGeneration=meta.get("generation"))
        if u.reason != macleases.CONFLICT:  # never a MAC the VM could not lease
            st["mac"] = ctx.vm_mac(vm)
        st["conditions"] = conditions.set_condition(
            st.get("conditions"), "Scheduled", False, u.reason, u.message, meta.get("generation"))
        return st

    written = ctx.kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"], current=vm)
    if written is None:
        return vm
    if not (written.get("status") or {}).get("nodeName"):
        ctx.placing.wrote(written)  # the binding's pass starts from it (Placing)
    return written


def finalize(ctx: ControllerContext, namespace: str, name: str, uid: str) -> None:
    """Release the VM's VF claims once the agent has removed its domain."""
    kube = ctx.kube
    ctx.capacity.seen.pop(uid, None)
    ctx.capacity.changed()  # its pod and VF free capacity other VMs may wait for
    vm = kube.get_vm(namespace, name)
    if vm is not None and vm["metadata"]["uid"] == uid and AGENT_FINALIZER in (vm["metadata"].get("finalizers") or []):
        node = (vm.get("status") or {}).get("nodeName")
        if node:
            raise StillDeleting(f"waiting for the agent on {node} to remove the domain")
        # Not placed anywhere (e.g. evicted and not yet re-placed): no agent holds a domain for it.
        kube.set_finalizer(namespace, name, AGENT_FINALIZER, False, current=vm)
    failpoints.hit("finalize.before-claims")
    released = []
    # From the watch cache (by owner); a claim it has not seen yet is released by the orphan sweep.
    for claim in ctx.cache.claims_of(uid):
        kube.delete_claim(claim["metadata"]["name"], claim["metadata"].get("uid"))
        released.append(claim["metadata"]["name"])
    if released and vm is not None:
        kube.event(vm, "VFReleased", f"released VF claims {', '.join(released)}", component="controller")


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
    """Release VFClaims whose VM is gone or no longer refers to them: decided from the watch
    caches, confirmed by reading the VM before a claim is deleted."""
    return release_orphans(ctx, ctx.cache.claims(), claim_is_orphaned, ctx.kube.delete_claim, "VFClaim")


def pool_counts(ctx: ControllerContext, pool_name: str) -> tuple[list[dict[str, Any]], bool]:
    """Per node of the pool (its VFInventory lists VFs of it): total, allocated, free; and whether
    any node's VFs are simulated. From the watch caches, no API call."""
    entries, simulated = [], False
    for inv in ctx.cache.inventories():
        mine = (inv.get("pools") or {}).get(pool_name)
        if mine is None:
            continue
        node = str(inv["node"])
        vfs = set(mine.get("vfs") or {})
        allocated = sum(1 for c in ctx.cache.claims_on(node, pool_name) if c["spec"].get("pciAddress") in vfs)
        entries.append({"node": node, "total": len(vfs), "allocated": allocated, "free": len(vfs) - allocated})
        simulated = simulated or bool(mine.get("simulated"))
    return sorted(entries, key=lambda e: e["node"]), simulated


def refresh_pool_status(ctx: ControllerContext, pool_name: str) -> None:
    """The pool's totals and Simulated condition, from the VFInventories and VFClaims in the watch
    caches; written only when they changed (no request at all otherwise). The per-node VF lists an
    earlier version kept in the status are dropped on the way."""
    cached = ctx.cache.pool(pool_name)
    if cached is None:
        metrics.set_pool_vfs(pool_name, None)
        return
    entries, simulated = pool_counts(ctx, pool_name)
    total = sum(e["total"] for e in entries)
    alloc = sum(e["allocated"] for e in entries)

    def mutate(st: dict[str, Any]) -> dict[str, Any]:
        st.pop("nodes", None)
        st["totals"] = {"total": total, "allocated": alloc, "free": total - alloc}
        st["nodeCount"] = len(entries)
        if simulated:
            st["conditions"] = conditions.set_condition(
                st.get("conditions"), "Simulated", True, "SimulatedSysfs",
                "VF inventory on some nodes comes from a simulated sysfs tree (sandbox): "
                "no SR-IOV hardware backs these VFs and VF hot-plug cannot succeed there")
        else:
            st["conditions"] = conditions.set_condition(
                st.get("conditions"), "Simulated", False, "RealHardware", "VF inventory read from host sysfs")
        return st

    # A pool whose stored status still has an earlier version's VF lists is read in full once, so
    # that they are removed; otherwise the cached copy is compared (and used for resourceVersion).
    ctx.kube.update_pool_status(pool_name, mutate, current=None if cached.get("legacyNodes") else cached)
    metrics.set_pool_vfs(pool_name, entries)
