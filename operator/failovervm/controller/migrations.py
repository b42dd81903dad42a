"""The FailoverVMMigration driver (the controller's side of the state machine in
failovervm.migration): lock the VM, reserve the target through kube-scheduler (a target VM pod,
then a VF on the node it is bound to), hand the migration to the source node's agent (and take it
back after the handover timeout), clean up (the target pod becomes the running one, or goes),
abort on deletion."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from failovervm import conditions, failpoints, guestfailover, labels, repair, vmpod
from failovervm import migration as mg
from failovervm import migrationpolicy as mp
from failovervm.controller import policies, repairs, vmpods
from failovervm.controller.cache import node_vfs
from failovervm.controller.context import ControllerContext
from failovervm.controller.locks import NOT_TAKEN, release_untaken, update_vm_migration
from failovervm.metrics import MIGRATIONS_WITHOUT_FAILOVER
from failovervm.placement import Claimed, claim_on_node
from failovervm.scheduling import Unschedulable

log = logging.getLogger(__name__)


class WaitForAgent(Exception):
    """The abort was requested; the source agent has not stopped the migration yet."""


def _key(mig: Mapping[str, Any]) -> tuple[str, str]:
    return mig["metadata"]["namespace"], mig["metadata"]["name"]


def set_phase(ctx: ControllerContext, mig: Mapping[str, Any], new_phase: str, *,
              condition: tuple[str, bool, str, str] | None = None, only_from: str | None = None,
              **fields: Any) -> dict[str, Any] | None:
    """Move a migration to `new_phase` if the state machine allows it (None otherwise).

    `condition` (type, status, reason, message) is set on the status as read for the write;
    `only_from` refuses the move unless the migration is in that phase then."""
    ns, name = _key(mig)
    old_phase = mg.phase(mig)

    def mutate(st: dict[str, Any]) -> dict[str, Any] | None:
        cur = st.get("phase") or mg.PENDING
        if cur != new_phase and not mg.can_transition(cur, new_phase):
            return None
        if only_from is not None and cur != only_from:
            return None
        st["phase"] = new_phase
        st.update({k: v for k, v in fields.items() if v is not None})
        if condition is not None:
            st["conditions"] = conditions.set_condition(st.get("conditions"), *condition)
        if new_phase in mg.TERMINAL_PHASES and not st.get("endTimestamp"):
            st["endTimestamp"] = conditions.now_iso(precise=True)
        return st

    obj = ctx.kube.update_migration_status(ns, name, mutate)
    if obj is not None and old_phase != new_phase and mg.phase(obj) == new_phase:
        log.info("migration %s/%s: %s -> %s", ns, name, old_phase, new_phase)
    return obj


def advance(ctx: ControllerContext, namespace: str, name: str) -> str:
    """Drive one FailoverVMMigration as far as the controller can. Returns its phase.

    Kopf may run the event handler and the timer of one migration at the same time: a lock per
    migration keeps two target reservations from being made for it."""
    with ctx.locks.migration(namespace, name):
        return _advance(ctx, namespace, name)


def _advance(ctx: ControllerContext, namespace: str, name: str) -> str:
    kube = ctx.kube
    mig = kube.get_migration(namespace, name)
    if mig is None or mig["metadata"].get("deletionTimestamp"):
        return "gone"
    ph = mg.phase(mig)
    if ph in mg.TERMINAL_PHASES:
        cleanup(ctx, mig)
        return ph
    vm_name = mig["spec"]["vmName"]
    vm = kube.get_vm(namespace, vm_name)
    if vm is None:
        set_phase(ctx, mig, mg.FAILED, reason="VMNotFound",
                  message=f"FailoverVM {namespace}/{vm_name} does not exist")
        return mg.FAILED
    waited = mg.start_overdue(mig, _now(), ctx.settings.limits.start_timeout)
    if waited is not None:
        return _start_timeout(ctx, mig, waited)
    if ph == mg.PENDING:
        return _start(ctx, mig, vm)
    if ph == mg.SCHEDULING:
        return _schedule_target(ctx, mig, vm)
    if ph == mg.TARGET_READY:
        return _check_handover(ctx, mig, vm)
    return _finish_orphaned(ctx, mig, vm)  # Running: the source agent drives it, unless it is gone


def _finish_orphaned(ctx: ControllerContext, mig: dict[str, Any], vm: dict[str, Any] | None) -> str:
    """A Running migration whose VM no longer names it: its agent recorded the outcome on the VM and
    stopped before it wrote it here. Record it from the VM's status, then clean up as usual."""
    outcome = repairs.orphan_outcome(ctx, mig, vm)
    if outcome is None:
        return mg.phase(mig)
    done = set_phase(ctx, mig, outcome.phase, only_from=mg.RUNNING, reason=outcome.reason or "",
                     message=outcome.message)
    if done is None or mg.phase(done) != outcome.phase:
        return mg.phase(done or mig)
    if vm is not None:
        repairs.repair_vm(ctx, vm)  # its label, which the agent may not have moved either
    log.warning("migration %s/%s had no owner any more: %s", *_key(mig), outcome.message)
    ctx.kube.event(done, "OrphanedMigrationFinished", outcome.message,
                   type_="Normal" if outcome.phase == mg.SUCCEEDED else "Warning", component="controller")
    cleanup(ctx, done)
    return outcome.phase


def _start(ctx: ControllerContext, mig: dict[str, Any], vm: dict[str, Any]) -> str:
    """Pending: check that the VM can migrate now, apply the failover gate, lock the VM for this
    migration and move on to Scheduling."""
    kube = ctx.kube
    _ns, name = _key(mig)
    vm_name = mig["spec"]["vmName"]
    status = vm.get("status") or {}
    if status.get("phase") != "Running" or not status.get("nodeName"):
        set_phase(ctx, mig, mg.FAILED, reason="VMNotRunning",
                  message=f"FailoverVM {vm_name} is not running (phase {status.get('phase')})")
        return mg.FAILED
    source = status["nodeName"]
    if mig["spec"].get("targetNode") == source:
        set_phase(ctx, mig, mg.FAILED, reason="TargetIsSource", message=f"the VM already runs on {source}")
        return mg.FAILED
    current = status.get("migration") or {}
    if current and current.get("name") != name:
        set_phase(ctx, mig, mg.PENDING, message=f"waiting: migration {current.get('name')} of this VM is active")
        return mg.PENDING
    gate = mg.failover_gate(vm, ctx.settings.require_failover_ready)
    mig_st = mig.get("status") or {}
    fo_conds = conditions.set_condition(
        mig_st.get("conditions"), guestfailover.CONDITION, gate.ready,
        guestfailover.REASON_NEGOTIATED if gate.ready else mg.FAILOVER_NOT_READY,
        "the guest negotiated failover: it keeps networking through the virtio standby while the VF is "
        "unplugged" if gate.ready else gate.message)
    if gate.refuse:
        MIGRATIONS_WITHOUT_FAILOVER.labels("refused").inc()
        set_phase(ctx, mig, mg.FAILED, reason=mg.FAILOVER_NOT_READY, message=gate.message, conditions=fo_conds)
        kube.event(mig, mg.FAILOVER_NOT_READY, gate.message, type_="Warning", component="controller")
        return mg.FAILED
    if not mg.is_evacuation(mig):
        return _lock_and_schedule(ctx, mig, vm, source, gate, fo_conds)
    with ctx.locks.evacuation_starts:  # the limits counted and the start made as one step
        why = mg.evacuation_start_limit(mig, source, kube.list_migrations(), ctx.settings.limits)
        if why is not None:
            if mig_st.get("message") != f"waiting: {why}":
                set_phase(ctx, mig, mg.PENDING, message=f"waiting: {why}")
            return mg.PENDING
        return _lock_and_schedule(ctx, mig, vm, source, gate, fo_conds)


def _lock_and_schedule(ctx: ControllerContext, mig: dict[str, Any], vm: dict[str, Any], source: str,
                       gate: mg.FailoverGate, fo_conds: list[dict[str, Any]]) -> str:
    """Lock the VM for the migration and move it on to Scheduling (the last part of _start)."""
    kube = ctx.kube
    _ns, name = _key(mig)
    mig_st = mig.get("status") or {}
    if not update_vm_migration(kube, vm, name, {"state": mg.SCHEDULING, "sourceNode": source}):
        return mg.PENDING
    warnings = list(mig_st.get("warnings") or [])
    if not gate.ready and gate.message not in warnings:
        warnings.append(gate.message)
    # The policy is resolved once, now, and recorded: the source agent runs the migration with it.
    policy = mig_st.get("policy") or policies.for_migration(ctx.policies, vm, mig).to_status()
    set_phase(ctx, mig, mg.SCHEDULING, sourceNode=source, startTimestamp=conditions.now_iso(precise=True),
              message="asking kube-scheduler for a target node (target VM pod)", conditions=fo_conds,
              warnings=warnings or None, failoverPolicy=gate.policy, policy=policy)
    described = (mp.EffectivePolicy.from_status(policy) or mp.EffectivePolicy()).describe()
    kube.event(vm, "MigrationStarted", f"migration {name} from {source} accepted ({described})",
               component="controller")
    if not gate.ready:
        MIGRATIONS_WITHOUT_FAILOVER.labels("warned").inc()
        for obj in (mig, vm):
            kube.event(obj, "FailoverNotNegotiated", f"migration {name}: {gate.message}", type_="Warning",
                       component="controller")
    return mg.SCHEDULING


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _start_timeout(ctx: ControllerContext, mig: dict[str, Any], waited: float) -> str:
    """A user's migration that could not start in time fails with the reason it waited for (it no
    longer holds the VM, nor a target pod that can never be placed)."""
    ph, st = mg.phase(mig), mig.get("status") or {}
    why = st.get("message") or "it could not start"
    msg = f"did not start within {waited:.0f}s ({ph}): {why}"
    done = set_phase(ctx, mig, mg.FAILED, reason=mg.START_TIMEOUT, message=msg, only_from=ph)
    if done is None or mg.phase(done) != mg.FAILED:
        return mg.phase(done or mig)
    ctx.kube.event(done, mg.START_TIMEOUT, msg, type_="Warning", component="controller")
    cleanup(ctx, done)
    return mg.FAILED


def _check_handover(ctx: ControllerContext, mig: dict[str, Any], vm: dict[str, Any]) -> str:
    """Release a target that the source agent has not taken within the handover timeout."""
    lock = repair.lock_for_target_ready(mig, vm)
    if lock is not None:  # the hand-over write was lost (the controller died between the two writes)
        update_vm_migration(ctx.kube, vm, mig["metadata"]["name"], lock, only_states=frozenset({mg.SCHEDULING}))
    waited = mg.handover_overdue(mig, _now(), ctx.settings.handover_timeout_seconds)
    if waited is None:
        return mg.TARGET_READY
    _ns, name = _key(mig)
    st = mig.get("status") or {}
    source, target = st.get("sourceNode") or "?", st.get("targetNode") or "?"
    if not release_untaken(ctx.kube, vm, name):
        return mg.TARGET_READY  # the agent took it at the last moment: it drives it now
    msg = (f"the agent on {source} did not take the migration within {waited:.0f}s (is it running, and can it "
           f"reach the API?); the VM keeps running on {source} and the VF reserved on {target} is released")
    done = set_phase(ctx, mig, mg.FAILED, reason=mg.SOURCE_AGENT_UNRESPONSIVE, message=msg, only_from=mg.TARGET_READY)
    if done is None or mg.phase(done) != mg.FAILED:
        return mg.phase(done or mig)
    log.warning("migration %s/%s: %s", _ns, name, msg)
    ctx.kube.event(done, mg.SOURCE_AGENT_UNRESPONSIVE, msg, type_="Warning", component="controller")
    cleanup(ctx, done)
    return mg.FAILED


def _schedule_target(ctx: ControllerContext, mig: dict[str, Any], vm: dict[str, Any]) -> str:
    """Scheduling: the target VM pod (kept off the source node, or pinned to spec.targetNode) asks
    kube-scheduler for a node; once it is bound, a VF of the pool is claimed on that node. While the
    pod cannot be bound the migration waits here with kube-scheduler's message (the pending pod is
    also what an autoscaler adds a node for)."""
    kube = ctx.kube
    _ns, name = _key(mig)
    source = str((mig.get("status") or {}).get("sourceNode") or (vm.get("status") or {}).get("nodeName") or "")
    pool_name = str(((vm.get("spec") or {}).get("network") or {}).get("pool", ""))
    pool = ctx.cache.pool(pool_name) if pool_name else None
    if pool is None:
        return _no_target(ctx, mig, Unschedulable("NoMatchingNode", f"VFPool {pool_name!r} does not exist"))
    pod = _target_pod(ctx, mig, vm, pool, source)
    if isinstance(pod, Unschedulable):
        return _no_target(ctx, mig, pod)
    node = vmpod.node_of(pod)
    if node is None:
        message = vmpod.unschedulable(pod)
        if message is not None:
            return _no_target(ctx, mig, Unschedulable("Unschedulable", message))
        waiting = f"waiting for kube-scheduler to bind target pod {vmpods.describe(pod)}"
        return _no_target(ctx, mig, Unschedulable("WaitingForScheduler", waiting), event=False)
    result = (Unschedulable("NoMatchingNode", f"the target pod was bound to the source node {node}") if node == source
              else claim_on_node(kube, vm, pool, node, inventory=node_vfs(ctx.cache, node, pool_name),
                                 node_obj=ctx.cache.node(node), claims=ctx.cache.claims_on(node, pool_name),
                                 recent=ctx.recent_claims, purpose="MigrationTarget", migration=name))
    if isinstance(result, Unschedulable):
        # Bound where the VM cannot go after all: let kube-scheduler choose again, after a back-off.
        vmpods.delete(kube, pod)
        ctx.pod_retries.failed(vmpods.Retries.key(vm, name), result.reason, result.message)
        return _no_target(ctx, mig, result)
    assert isinstance(result, Claimed)
    failpoints.hit("migration.after-target-claim")
    ctx.pod_retries.succeeded(vmpods.Retries.key(vm, name))
    # The migration object says TargetReady first; only then may the agent see it on the VM.
    reserved = f"VF {result.pci_address} reserved on {result.node}"
    set_phase(ctx, mig, mg.TARGET_READY, targetNode=result.node, reason="",
              targetVF={"pciAddress": result.pci_address, "claimName": result.claim}, message=reserved,
              condition=(mg.TARGET_RESERVED, True, "VFClaimed",
                         f"{reserved} (kube-scheduler bound target pod {vmpods.describe(pod)} there); "
                         "waiting for the source agent"))
    failpoints.hit("migration.after-target-ready")
    if not update_vm_migration(kube, vm, name, {
        "state": mg.TARGET_READY, "targetNode": result.node, "targetPciAddress": result.pci_address,
        "targetClaim": result.claim,
    }):
        kube.delete_claim(result.claim)
        vmpods.delete(kube, pod)
        set_phase(ctx, mig, mg.FAILED, reason="VMBusy", message="the VM is locked by another migration")
        return mg.FAILED
    return mg.TARGET_READY


def _no_target(ctx: ControllerContext, mig: dict[str, Any], why: Unschedulable, event: bool = True) -> str:
    """The migration stays in Scheduling, saying why (and a NoTarget Warning when that changed)."""
    st = mig.get("status") or {}
    if st.get("reason") != why.reason or st.get("message") != why.message:
        set_phase(ctx, mig, mg.SCHEDULING, reason=why.reason, message=why.message)
        if event:
            ctx.kube.event(mig, "NoTarget", why.message, type_="Warning", component="controller")
    return mg.SCHEDULING


def _target_pod(ctx: ControllerContext, mig: Mapping[str, Any], vm: Mapping[str, Any], pool: Mapping[str, Any],
                source: str) -> dict[str, Any] | Unschedulable:
    """The migration's target pod: found (the index, then the API by its fixed name) or created."""
    kube = ctx.kube
    name = vmpod.pod_name(vm, mig)
    retry = vmpods.Retries.key(vm, mig["metadata"]["name"])
    waiting = ctx.pod_retries.waiting(retry)  # the pod was refused, or given up: none until the back-off ends
    if waiting is not None:
        return waiting
    for pod in vmpods.pods_of(ctx.pods, vm, labels.ROLE_TARGET):
        if pod["metadata"]["name"] == name:
            return pod
    existing = kube.get_pod(vm["metadata"]["namespace"], name)
    if existing is not None and vmpod.owned_by(existing, vm) and not vmpod.is_terminating(existing):
        return existing
    body = vmpod.build(vm, pool, ctx.settings.vm_pod, migration=mig, source_node=source,
                       target_node=(mig.get("spec") or {}).get("targetNode") or None)
    created = vmpods.create(kube, body)
    if created.rejected is not None:
        ctx.pod_retries.failed(retry, "PodRejected", created.rejected)
        return Unschedulable("PodRejected", created.rejected)
    assert created.pod is not None
    if created.new:
        vmpods.log_created(created.pod, None)
    return created.pod


def cleanup(ctx: ControllerContext, mig: Mapping[str, Any]) -> None:
    """After a terminal phase: release the VF that is not used any more, unlock the VM. Idempotent."""
    kube = ctx.kube
    ns, name = _key(mig)
    if conditions.is_true((mig.get("status") or {}).get("conditions"), "CleanedUp"):
        return
    vm = kube.get_vm(ns, mig["spec"]["vmName"])
    released: list[str] = []
    if vm is not None:
        update_vm_migration(kube, vm, name, None)
        failpoints.hit("migration.cleanup.after-unlock")
        vm = kube.get_vm(ns, mig["spec"]["vmName"]) or vm
        released = _release_claims(ctx, vm, name)
        _settle_pods(ctx, mig, vm)
        _report_outcome(ctx, mig, vm)

    def mark(s: dict[str, Any]) -> dict[str, Any]:
        s["conditions"] = conditions.set_condition(s.get("conditions"), "CleanedUp", True, "Released",
                                                   f"released {', '.join(released) or 'nothing'}")
        return s

    kube.update_migration_status(ns, name, mark)


def _release_claims(ctx: ControllerContext, vm: Mapping[str, Any], mig_name: str = "") -> list[str]:
    """Delete the VM's VFClaims except its running VF's and another migration's target (recorded
    on the VM, or only just reserved: repair.claim_released_by_cleanup); returns the claims
    deleted. The running VF's claim, when it was this migration's target, becomes the VM's
    Running claim."""
    kube = ctx.kube
    keep = ((vm.get("status") or {}).get("vf") or {}).get("claimName")
    other = (vm.get("status") or {}).get("migration") or {}
    released = []
    # From the watch cache, by owner (a claim it has not seen yet is left to the orphan sweep).
    for claim in ctx.cache.claims_of(str(vm["metadata"]["uid"])):
        spec = claim["spec"]
        name_c = claim["metadata"]["name"]
        if name_c == keep and spec.get("purpose") != "Running":
            # The migration target's reservation is now the VM's running VF.
            kube.patch_claim(name_c, {"spec": {"purpose": "Running", "migration": None}})
        if not repair.claim_released_by_cleanup(claim, mig_name, {str(keep), str(other.get("targetClaim"))}):
            continue
        kube.delete_claim(name_c, claim["metadata"].get("uid"))
        released.append(name_c)
    return released


def _settle_pods(ctx: ControllerContext, mig: Mapping[str, Any], vm: Mapping[str, Any]) -> None:
    """The target pod after the migration: where the VM now runs it becomes the running pod and the
    source's pod goes (only now that status.nodeName has moved); otherwise it goes."""
    kube = ctx.kube
    node = (vm.get("status") or {}).get("nodeName")
    if not mig["metadata"].get("uid"):
        return
    target = kube.get_pod(vm["metadata"]["namespace"], vmpod.pod_name(vm, mig))
    if target is None or not vmpod.owned_by(target, vm):
        return
    if node and vmpod.node_of(target) == node and not vmpod.is_terminating(target):
        vmpods.make_running(kube, target)
        for pod in vmpods.fresh_pods_of(kube, vm, labels.ROLE_RUNNING):
            if vmpod.node_of(pod) != node:
                vmpods.delete(kube, pod)
    else:
        vmpods.delete(kube, target)


def _report_outcome(ctx: ControllerContext, mig: Mapping[str, Any], vm: Mapping[str, Any]) -> None:
    """Events on the VM (and, after a success, on both nodes) saying how the migration ended."""
    kube = ctx.kube
    ns, name = _key(mig)
    ph = mg.phase(mig)
    st = mig.get("status") or {}
    if ph == mg.SUCCEEDED:
        note = (f"migrated from {st.get('sourceNode')} to {st.get('targetNode')}, downtime "
                f"{(st.get('stats') or {}).get('downtimeMs', '?')} ms (migration {name})")
        kube.event(vm, "Migrated", note, component="controller")
        for node in (st.get("sourceNode"), st.get("targetNode")):
            node_obj = ctx.cache.node(node) if node else None
            if node_obj:
                kube.event(node_obj, "VMMigrated", f"{ns}/{vm['metadata']['name']}: {note}",
                           component="controller")
    else:
        kube.event(vm, f"Migration{ph}", f"migration {name} {ph.lower()}: {st.get('reason', '')} "
                   f"{st.get('message', '')}".strip(), type_="Warning", component="controller")


def on_delete(ctx: ControllerContext, namespace: str, name: str) -> None:
    """Deleting a migration aborts it: before it runs, just release; while it runs, ask the agent."""
    with ctx.locks.migration(namespace, name):
        _on_delete(ctx, namespace, name)
    ctx.locks.forget_migration(namespace, name, lambda: ctx.kube.get_migration(namespace, name) is None)
    ctx.orphans.pop((namespace, name), None)


def _on_delete(ctx: ControllerContext, namespace: str, name: str) -> None:
    kube = ctx.kube
    mig = kube.get_migration(namespace, name)
    if mig is None:
        return
    ph = mg.phase(mig)
    vm = kube.get_vm(namespace, mig["spec"]["vmName"])
    if ph in (mg.PENDING, mg.SCHEDULING, mg.TARGET_READY):
        vm_mig = ((vm or {}).get("status") or {}).get("migration") or {}
        taken = vm_mig.get("name") == name and vm_mig.get("state") not in (None, *NOT_TAKEN)
        if vm is not None and not taken:
            taken = not release_untaken(kube, vm, name)  # the agent may take it between our read and our write
        if taken:
            ph = mg.RUNNING  # the agent has just started it: ask it to abort
        else:
            mig = set_phase(ctx, mig, mg.ABORTED, reason="Deleted", message="deleted before it ran") or mig
            cleanup(ctx, mig)
            return
    if ph == mg.RUNNING:
        if vm is not None:
            update_vm_migration(kube, vm, name, {"state": mg.ABORTING})
        raise WaitForAgent(f"asked the agent on {(mig.get('status') or {}).get('sourceNode')} to abort")
    cleanup(ctx, mig)
