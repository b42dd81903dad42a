"""Controller side of live migration: locking the VM, reserving the target VF, cleaning up,
and evacuating nodes (drain, cordon, cluster-autoscaler scale-down)."""

from __future__ import annotations

import datetime as dt
import enum
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from failovervm import conditions, guestfailover, labels, nodehealth
from failovervm import migration as mg
from failovervm.controller import recovery
from failovervm.controller.config import CONFIG
from failovervm.metrics import MIGRATIONS_WITHOUT_FAILOVER
from failovervm.placement import Claimed, place
from failovervm.scheduling import NodeInfo, Unschedulable, node_needs_evacuation

log = logging.getLogger(__name__)


class WaitForAgent(Exception):
    """The abort was requested; the source agent has not stopped the migration yet."""


def _key(mig: Mapping[str, Any]) -> tuple[str, str]:
    return mig["metadata"]["namespace"], mig["metadata"]["name"]


def set_phase(mig: Mapping[str, Any], new_phase: str, *, condition: tuple[str, bool, str, str] | None = None,
              only_from: str | None = None, **fields: Any) -> dict[str, Any] | None:
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

    obj = CONFIG.k().update_migration_status(ns, name, mutate)
    if obj is not None and old_phase != new_phase and mg.phase(obj) == new_phase:
        log.info("migration %s/%s: %s -> %s", ns, name, old_phase, new_phase)
    return obj


class LockWrite(enum.IntEnum):
    """What _update_vm_migration did; false only when it was refused."""

    REFUSED = 0  # the VM is locked by another migration, or not in one of `only_states`
    UNCHANGED = 1  # already as asked (e.g. no lock to clear)
    WRITTEN = 2


def _update_vm_migration(vm: Mapping[str, Any], mig_name: str, fields: dict[str, Any] | None,
                         claim_only_if_free: bool = False, only_states: frozenset[str] | None = None) -> LockWrite:
    """Set (fields) or clear (None) VM.status.migration if it is free or ours.

    `only_states`: only while the VM's migration state is one of these. Releasing a migration the
    source agent has not taken uses (Scheduling, TargetReady): the agent's own write of Running is
    its commit, and the resourceVersion lets exactly one of the two writes win."""
    kube = CONFIG.k()
    meta = vm["metadata"]
    out = {"v": LockWrite.REFUSED}

    def mutate(st: dict[str, Any]) -> dict[str, Any] | None:
        out["v"] = LockWrite.REFUSED
        cur = st.get("migration") or {}
        if cur and cur.get("name") != mig_name:
            return None
        if cur and only_states is not None and cur.get("state") not in only_states:
            return None
        if fields is None:
            if not cur:
                out["v"] = LockWrite.UNCHANGED
                return None
            st.pop("migration", None)
            if st.get("phase") == "Migrating":
                st["phase"] = "Running"
        else:
            if claim_only_if_free and cur:
                out["v"] = LockWrite.UNCHANGED
                return None
            st["migration"] = {**cur, "name": mig_name, **fields}
        out["v"] = LockWrite.WRITTEN
        return st

    kube.update_vm_status(meta["namespace"], meta["name"], mutate, uid=meta["uid"])
    return out["v"]


_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def migration_lock(namespace: str, name: str) -> threading.Lock:
    """The lock `advance` holds while it drives this migration."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((namespace, name), threading.Lock())


def advance(namespace: str, name: str) -> str:
    """Drive one FailoverVMMigration as far as the controller can. Returns its phase.

    Kopf may run the event handler and the timer of one migration at the same time: a lock per
    migration keeps two target reservations from being made for it."""
    with migration_lock(namespace, name):
        return _advance(namespace, name)


def _advance(namespace: str, name: str) -> str:
    kube = CONFIG.k()
    mig = kube.get_migration(namespace, name)
    if mig is None or mig["metadata"].get("deletionTimestamp"):
        return "gone"
    ph = mg.phase(mig)
    if ph in mg.TERMINAL_PHASES:
        cleanup(mig)
        return ph
    vm_name = mig["spec"]["vmName"]
    vm = kube.get_vm(namespace, vm_name)
    if vm is None:
        set_phase(mig, mg.FAILED, reason="VMNotFound", message=f"FailoverVM {namespace}/{vm_name} does not exist")
        return mg.FAILED
    status = vm.get("status") or {}
    if ph == mg.PENDING:
        if status.get("phase") != "Running" or not status.get("nodeName"):
            set_phase(mig, mg.FAILED, reason="VMNotRunning",
                       message=f"FailoverVM {vm_name} is not running (phase {status.get('phase')})")
            return mg.FAILED
        source = status["nodeName"]
        if mig["spec"].get("targetNode") == source:
            set_phase(mig, mg.FAILED, reason="TargetIsSource", message=f"the VM already runs on {source}")
            return mg.FAILED
        current = status.get("migration") or {}
        if current and current.get("name") != name:
            set_phase(mig, mg.PENDING, message=f"waiting: migration {current.get('name')} of this VM is active")
            return mg.PENDING
        gate = mg.failover_gate(vm, CONFIG.require_failover_ready)
        mig_st = mig.get("status") or {}
        fo_conds = conditions.set_condition(
            mig_st.get("conditions"), guestfailover.CONDITION, gate.ready,
            guestfailover.REASON_NEGOTIATED if gate.ready else mg.FAILOVER_NOT_READY,
            "the guest negotiated failover: it keeps networking through the virtio standby while the VF is "
            "unplugged" if gate.ready else gate.message)
        if gate.refuse:
            MIGRATIONS_WITHOUT_FAILOVER.labels("refused").inc()
            set_phase(mig, mg.FAILED, reason=mg.FAILOVER_NOT_READY, message=gate.message, conditions=fo_conds)
            kube.event(mig, mg.FAILOVER_NOT_READY, gate.message, type_="Warning", component="controller")
            return mg.FAILED
        if not _update_vm_migration(vm, name, {"state": mg.SCHEDULING, "sourceNode": source}):
            return mg.PENDING
        warnings = list(mig_st.get("warnings") or [])
        if not gate.ready and gate.message not in warnings:
            warnings.append(gate.message)
        set_phase(mig, mg.SCHEDULING, sourceNode=source, startTimestamp=conditions.now_iso(precise=True),
                   message="looking for a target node with a free VF", conditions=fo_conds,
                   warnings=warnings or None, failoverPolicy=gate.policy)
        kube.event(vm, "MigrationStarted", f"migration {name} from {source} accepted", component="controller")
        if not gate.ready:
            MIGRATIONS_WITHOUT_FAILOVER.labels("warned").inc()
            for obj in (mig, vm):
                kube.event(obj, "FailoverNotNegotiated", f"migration {name}: {gate.message}", type_="Warning",
                           component="controller")
        return mg.SCHEDULING
    if ph == mg.SCHEDULING:
        return _schedule_target(mig, vm)
    if ph == mg.TARGET_READY:
        return _check_handover(mig, vm)
    return ph  # Running: the source agent drives it


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# The VM's migration states in which the source agent has not taken the migration yet.
NOT_TAKEN = frozenset({mg.SCHEDULING, mg.TARGET_READY})


def _release_untaken(vm: Mapping[str, Any], name: str) -> bool:
    """Unlock the VM from migration `name` unless its source agent has taken it (False then)."""
    if _update_vm_migration(vm, name, None, only_states=NOT_TAKEN):
        return True
    meta = vm["metadata"]
    fresh = CONFIG.k().get_vm(meta["namespace"], meta["name"])
    cur = ((fresh or {}).get("status") or {}).get("migration") or {}
    return not (cur.get("name") == name and cur.get("state") not in NOT_TAKEN)  # another's lock: not ours


def _check_handover(mig: dict[str, Any], vm: dict[str, Any]) -> str:
    """Release a target that the source agent has not taken within the handover timeout."""
    waited = mg.handover_overdue(mig, _now(), CONFIG.handover_timeout_seconds)
    if waited is None:
        return mg.TARGET_READY
    _ns, name = _key(mig)
    st = mig.get("status") or {}
    source, target = st.get("sourceNode") or "?", st.get("targetNode") or "?"
    if not _release_untaken(vm, name):
        return mg.TARGET_READY  # the agent took it at the last moment: it drives it now
    msg = (f"the agent on {source} did not take the migration within {waited:.0f}s (is it running, and can it "
           f"reach the API?); the VM keeps running on {source} and the VF reserved on {target} is released")
    done = set_phase(mig, mg.FAILED, reason=mg.SOURCE_AGENT_UNRESPONSIVE, message=msg, only_from=mg.TARGET_READY)
    if done is None or mg.phase(done) != mg.FAILED:
        return mg.phase(done or mig)
    log.warning("migration %s/%s: %s", _ns, name, msg)
    CONFIG.k().event(done, mg.SOURCE_AGENT_UNRESPONSIVE, msg, type_="Warning", component="controller")
    cleanup(done)
    return mg.FAILED


def _schedule_target(mig: dict[str, Any], vm: dict[str, Any]) -> str:
    kube = CONFIG.k()
    _ns, name = _key(mig)
    source = str((mig.get("status") or {}).get("sourceNode") or (vm.get("status") or {}).get("nodeName") or "")
    result = place(kube, vm, exclude_nodes={source}, target_node=mig["spec"].get("targetNode"),
                   purpose="MigrationTarget", migration=name)
    if isinstance(result, Unschedulable):
        st = mig.get("status") or {}
        if st.get("reason") != result.reason or st.get("message") != result.message:
            set_phase(mig, mg.SCHEDULING, reason=result.reason, message=result.message)
            kube.event(mig, "NoTarget", result.message, type_="Warning", component="controller")
        return mg.SCHEDULING
    assert isinstance(result, Claimed)
    ensure_guard(result.node)
    # The migration object says TargetReady first; only then may the agent see it on the VM.
    reserved = f"VF {result.pci_address} reserved on {result.node}"
    set_phase(mig, mg.TARGET_READY, targetNode=result.node, reason="",
              targetVF={"pciAddress": result.pci_address, "claimName": result.claim}, message=reserved,
              condition=(mg.TARGET_RESERVED, True, "VFClaimed", f"{reserved}; waiting for the source agent"))
    if not _update_vm_migration(vm, name, {
        "state": mg.TARGET_READY, "targetNode": result.node, "targetPciAddress": result.pci_address,
        "targetClaim": result.claim,
    }):
        kube.delete_claim(result.claim)
        set_phase(mig, mg.FAILED, reason="VMBusy", message="the VM is locked by another migration")
        return mg.FAILED
    return mg.TARGET_READY


def cleanup(mig: Mapping[str, Any]) -> None:
    """After a terminal phase: release the VF that is not used any more, unlock the VM. Idempotent."""
    kube = CONFIG.k()
    ns, name = _key(mig)
    if conditions.is_true((mig.get("status") or {}).get("conditions"), "CleanedUp"):
        return
    vm = kube.get_vm(ns, mig["spec"]["vmName"])
    ph = mg.phase(mig)
    released = []
    if vm is not None:
        _update_vm_migration(vm, name, None)
        vm = kube.get_vm(ns, mig["spec"]["vmName"]) or vm
        keep = ((vm.get("status") or {}).get("vf") or {}).get("claimName")
        other = (vm.get("status") or {}).get("migration") or {}
        for claim in kube.list_claims():
            spec = claim["spec"]
            if spec.get("owner", {}).get("uid") != vm["metadata"]["uid"]:
                continue
            name_c = claim["metadata"]["name"]
            if name_c == keep and spec.get("purpose") != "Running":
                # The migration target's reservation is now the VM's running VF.
                kube.patch_claim(name_c, {"spec": {"purpose": "Running", "migration": None}})
            if name_c in (keep, other.get("targetClaim")):
                continue
            kube.delete_claim(name_c, claim["metadata"]["uid"])
            released.append(name_c)
    st = mig.get("status") or {}
    if vm is not None:
        if ph == mg.SUCCEEDED:
            note = (f"migrated from {st.get('sourceNode')} to {st.get('targetNode')}, downtime "
                    f"{(st.get('stats') or {}).get('downtimeMs', '?')} ms (migration {name})")
            kube.event(vm, "Migrated", note, component="controller")
            for node in (st.get("sourceNode"), st.get("targetNode")):
                node_obj = kube.get_node(node) if node else None
                if node_obj:
                    kube.event(node_obj, "VMMigrated", f"{ns}/{vm['metadata']['name']}: {note}",
                               component="controller")
        else:
            kube.event(vm, f"Migration{ph}", f"migration {name} {ph.lower()}: {st.get('reason', '')} "
                       f"{st.get('message', '')}".strip(), type_="Warning", component="controller")

    def mark(s: dict[str, Any]) -> dict[str, Any]:
        s["conditions"] = conditions.set_condition(s.get("conditions"), "CleanedUp", True, "Released",
                                                   f"released {', '.join(released) or 'nothing'}")
        return s

    kube.update_migration_status(ns, name, mark)


def on_delete(namespace: str, name: str) -> None:
    """Deleting a migration aborts it: before it runs, just release; while it runs, ask the agent."""
    with migration_lock(namespace, name):
        _on_delete(namespace, name)
    with _LOCKS_GUARD:
        mig_gone = CONFIG.k().get_migration(namespace, name) is None
        if mig_gone:
            _LOCKS.pop((namespace, name), None)


def _on_delete(namespace: str, name: str) -> None:
    kube = CONFIG.k()
    mig = kube.get_migration(namespace, name)
    if mig is None:
        return
    ph = mg.phase(mig)
    vm = kube.get_vm(namespace, mig["spec"]["vmName"])
    if ph in (mg.PENDING, mg.SCHEDULING, mg.TARGET_READY):
        vm_mig = ((vm or {}).get("status") or {}).get("migration") or {}
        taken = vm_mig.get("name") == name and vm_mig.get("state") not in (None, *NOT_TAKEN)
        if vm is not None and not taken:
            taken = not _release_untaken(vm, name)  # the agent may take it between our read and our write
        if taken:
            ph = mg.RUNNING  # the agent has just started it: ask it to abort
        else:
            mig = set_phase(mig, mg.ABORTED, reason="Deleted", message="deleted before it ran") or mig
            cleanup(mig)
            return
    if ph == mg.RUNNING:
        if vm is not None:
            _update_vm_migration(vm, name, {"state": mg.ABORTING})
        raise WaitForAgent(f"asked the agent on {(mig.get('status') or {}).get('sourceNode')} to abort")
    cleanup(mig)


def sweep() -> None:
    """The controller's 30 s migration sweep: stale VM locks, then history. VMs are listed before
    migrations, so a lock seen on a VM names a migration that existed before that list."""
    kube = CONFIG.k()
    vms = kube.list_vms()
    migrations = kube.list_migrations()
    release_stale_locks(vms, migrations)
    collect_history(vms, migrations)


def release_stale_locks(vms: list[dict[str, Any]], migrations: list[dict[str, Any]]) -> list[str]:
    """Unlock VMs whose (untaken) migration no longer exists (see migration.stale_locks). The
    target VF it may have reserved is then an orphaned claim, released by the claim sweep."""
    kube = CONFIG.k()
    released = []
    for vm, name in mg.stale_locks(vms, migrations):
        meta = vm["metadata"]
        if kube.get_migration(meta["namespace"], name) is not None:
            continue  # it does exist (created after the list)
        # Refused: the agent took it meanwhile. Unchanged: released meanwhile (its deletion handler did run).
        if _update_vm_migration(vm, name, None, only_states=NOT_TAKEN) is LockWrite.WRITTEN:
            msg = f"migration {name} no longer exists but still locked the VM; released it (the VM can migrate again)"
            log.warning("%s/%s: %s", meta["namespace"], meta["name"], msg)
            kube.event(vm, "StaleMigrationLockReleased", msg, type_="Warning", component="controller")
            released.append(f"{meta['namespace']}/{meta['name']}")
    return released


def collect_history(vms: list[dict[str, Any]] | None = None,
                    migrations: list[dict[str, Any]] | None = None) -> list[str]:
    """Delete finished migrations beyond the history kept per VM, and those of deleted VMs."""
    kube = CONFIG.k()
    existing = {(vm["metadata"]["namespace"], vm["metadata"]["name"])
                for vm in (kube.list_vms() if vms is None else vms)}
    evacuating = {n["metadata"]["name"] for n in kube.list_nodes() if node_needs_evacuation(NodeInfo.from_k8s(n))}
    removed = []
    migrations = kube.list_migrations() if migrations is None else migrations
    for ns, name in mg.history_to_delete(migrations, existing, CONFIG.migration_history, evacuating):
        kube.delete_migration(ns, name)
        removed.append(f"{ns}/{name}")
    if removed:
        log.info("deleted %d finished migration(s) beyond the history kept: %s", len(removed), ", ".join(removed))
    return removed


# -- evacuation -----------------------------------------------------------------------------

GUARD_PREFIX = "fvm-guard-"
_GUARDS: set[str] = set()  # nodes whose guard pod this controller created (or found)
_GUARDS_SYNCED: dict[str, bool] = {}  # nodes checked for a stale guard pod since start
_GUARDS_VERIFIED: dict[str, float] = {}
GUARD_VERIFY_SECONDS = 30.0


def forget_guard(node: str) -> None:
    """The guard pod of `node` was deleted by someone else (eviction, kubectl): recreate when needed."""
    _GUARDS.discard(node)


def guard_pod_name(node: str) -> str:
    return f"{GUARD_PREFIX}{node}"[:253]


def guard_pod(node: Mapping[str, Any], namespace: str, image: str) -> dict[str, Any]:
    meta = node["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": guard_pod_name(meta["name"]),
            "namespace": namespace,
            "labels": {labels.GUARD_LABEL: "true", labels.VM_NODE: meta["name"]},
            "annotations": {
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
                labels.PURPOSE_ANNOTATION: "Holds `kubectl drain` until the node's FailoverVMs have live-migrated away",
            },
            # A controller owner keeps `kubectl drain` from refusing the pod without --force, and
            # lets the garbage collector remove it with its Node.
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": False}],
        },
        "spec": {
            "nodeName": meta["name"],
            "containers": [{"name": "guard", "image": image,
                            "resources": {"requests": {"cpu": "1m", "memory": "4Mi"},
                                          "limits": {"cpu": "10m", "memory": "16Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                                "runAsUser": 65535, "capabilities": {"drop": ["ALL"]},
                                                "readOnlyRootFilesystem": True}}],
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
        },
    }


def ensure_guard(node_name: str) -> None:
    """Make sure the node's guard pod exists *before* a VM is placed or migrated there, so that no
    drain can slip through between the placement and the next node sweep."""
    if node_name in _GUARDS:
        return
    node = CONFIG.k().get_node(node_name)
    if node is not None:
        CONFIG.k().ensure_pod(guard_pod(node, CONFIG.namespace, CONFIG.guard_image))
        _GUARDS.add(node_name)
        _GUARDS_VERIFIED[node_name] = time.monotonic()


def vms_on(node: str) -> list[dict[str, Any]]:
    return [vm for vm in CONFIG.k().list_vms(f"{labels.VM_NODE}={node}")
            if (vm.get("status") or {}).get("nodeName") == node or not (vm.get("status") or {}).get("nodeName")]


_NODE_LOCKS: dict[str, threading.Lock] = {}


def reconcile_node(name: str) -> dict[str, Any]:
    """Keep the guard pod in step with the node's VMs and evacuate the node when it must be emptied.

    The node sweep, node events, migration events and the eviction webhook all call this from
    their own threads: one sweep per node at a time, or two could both see no migration for a VM
    and both start one.

    It takes the node's name and reads the Node itself once the lock is held: a caller's copy (a
    watch event, a list made before the other nodes' sweeps) may be older than the sweep that just
    ran, and acting on a copy from before a cordon would take the evacuation it started for an
    uncordon and delete its migrations."""
    with node_lock(name):
        current = CONFIG.k().get_node(name)
        if current is None:
            return {"vms": 0, "gone": True}  # deleted: its VMs are released by the DELETED event or the sweep
        return _reconcile_node(current)


def node_lock(name: str) -> threading.Lock:
    """The lock of one node's sweep (also held while its VMs are released after fencing)."""
    with _LOCKS_GUARD:
        return _NODE_LOCKS.setdefault(name, threading.Lock())


def _reconcile_node(node: Mapping[str, Any]) -> dict[str, Any]:
    kube = CONFIG.k()
    name = node["metadata"]["name"]
    vms = vms_on(name)
    out: dict[str, Any] = {"vms": len(vms)}
    health = nodehealth.assess(name, node, dt.datetime.now(dt.UTC))
    if health.state == nodehealth.FENCED:
        # Known to be off: its VMs start elsewhere, and with none left the guard pod goes (a drain
        # of the dead node completes).
        out["released"] = [f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in vms
                           if (v.get("status") or {}).get("nodeName") == name and recovery.release(v, name, health)]
        vms = vms_on(name)
    elif vms:
        recovery.mark(vms, name, health)
    # Remember which guard pods exist so the periodic tick does not hit the API for nothing; an
    # eviction or deletion always goes through the API (and clears the memory).
    if vms:
        now_m = time.monotonic()
        if name not in _GUARDS or now_m - _GUARDS_VERIFIED.get(name, 0.0) > GUARD_VERIFY_SECONDS:
            # Create it, or (every 30 s) make sure nobody deleted it behind our back.
            kube.ensure_pod(guard_pod(node, CONFIG.namespace, CONFIG.guard_image))
            _GUARDS.add(name)
            _GUARDS_VERIFIED[name] = now_m
    elif name in _GUARDS or not _GUARDS_SYNCED.get(name):
        kube.delete_pod(CONFIG.namespace, guard_pod_name(name), grace_period=0)
        _GUARDS.discard(name)
        _GUARDS_SYNCED[name] = True
    if not node_needs_evacuation(NodeInfo.from_k8s(node)):
        # Uncordoned: start no new evacuation migrations, and drop those still looking for a target.
        for mig in kube.list_migrations():
            labels_ = mig["metadata"].get("labels") or {}
            if labels_.get(labels.EVACUATION_LABEL) == name and mg.phase(mig) in (mg.PENDING, mg.SCHEDULING):
                kube.delete_migration(mig["metadata"]["namespace"], mig["metadata"]["name"])
        return out
    if not vms:
        return out
    now = dt.datetime.now(dt.UTC)
    migrations = kube.list_migrations()
    start, waiting = mg.plan_evacuation(name, vms, migrations, CONFIG.limits, now,
                                        require_failover_ready=CONFIG.require_failover_ready)
    for blocked in vms:
        why = waiting.get(f"{blocked['metadata']['namespace']}/{blocked['metadata']['name']}", "")
        # Events are de-duplicated, so repeating these on every sweep does not flood.
        if why.startswith(mg.FAILOVER_NOT_READY):
            kube.event(blocked, "EvacuationBlocked", f"node {name} is being drained but {why}", type_="Warning",
                       component="controller")
        elif why.startswith(mg.GAVE_UP):
            kube.event(blocked, "EvacuationGaveUp", f"node {name} is being drained but the operator {why}",
                       type_="Warning", component="controller")
    for vm in start:
        ns = vm["metadata"]["namespace"]
        mig_name = mg.evacuation_name(vm, name, (m["metadata"]["name"] for m in migrations
                                                 if m["metadata"].get("namespace") == ns))
        body = {
            "apiVersion": labels.API_GROUP_VERSION,
            "kind": "FailoverVMMigration",
            "metadata": {
                "name": mig_name,
                "namespace": ns,
                "labels": {labels.EVACUATION_LABEL: name, labels.VM_LABEL: vm["metadata"]["name"]},
            },
            "spec": {"vmName": vm["metadata"]["name"]},
        }
        if kube.create_migration_once(body) is None:
            continue  # another sweep (or a standby replica's admission webhook) created it first
        kube.event(vm, "Evacuating", f"node {name} is being drained: live-migrating with {mig_name}",
                   component="controller")
    for vm in vms:
        meta = vm["metadata"]
        if (vm.get("spec") or {}).get("evictionStrategy") == "Shutdown" and not meta.get("deletionTimestamp"):
            _evict_by_shutdown(vm, name)
    out.update(started=[v["metadata"]["name"] for v in start], waiting=waiting)
    return out


def _evict_by_shutdown(vm: Mapping[str, Any], node: str) -> None:
    """evictionStrategy Shutdown: ask the agent to shut the VM down and release it from the node."""
    kube = CONFIG.k()
    meta = vm["metadata"]
    if (meta.get("annotations") or {}).get(labels.EVICT_ANNOTATION) == node:
        return
    kube.patch_vm(meta["namespace"], meta["name"], {"metadata": {"annotations": {labels.EVICT_ANNOTATION: node}}})
    kube.event(vm, "Evicting", f"node {node} is being drained: shutting the VM down (evictionStrategy Shutdown); "
               "it starts again on another node", component="controller")


def node_has_vms(node: str) -> int:
    return len([vm for vm in vms_on(node) if not vm["metadata"].get("deletionTimestamp")])
