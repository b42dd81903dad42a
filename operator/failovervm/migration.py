"""Pure logic of live migration and node evacuation: phases, limits, retry backoff.

The FailoverVMMigration state machine:

    Pending -> Scheduling -> TargetReady -> Running -> Succeeded | Failed | Aborted

- Pending:     accepted; the controller checks the VM and locks it (VM.status.migration).
- Scheduling:  the controller looks for a target node and reserves its VF with a VFClaim.
- TargetReady: the target VF is reserved; the source node's agent takes over.
- Running:     the source agent runs the libvirt peer-to-peer live migration.
- Succeeded:   the VM runs on the target; its status, node label and VF moved; source VF released.
- Failed:      the VM still runs on the source; the target VF is released; `reason` says why.
- Aborted:     the migration object was deleted while it ran; the VM stays on the source.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from failovervm import conditions, guestfailover, labels

PENDING, SCHEDULING, TARGET_READY, RUNNING = "Pending", "Scheduling", "TargetReady", "Running"
SUCCEEDED, FAILED, ABORTED = "Succeeded", "Failed", "Aborted"
ACTIVE_PHASES = frozenset({PENDING, SCHEDULING, TARGET_READY, RUNNING})
TERMINAL_PHASES = frozenset({SUCCEEDED, FAILED, ABORTED})
ABORTING = "Aborting"  # VM.status.migration.state while the controller asks the agent to abort

GAVE_UP = "gave up"

_ALLOWED = {
    PENDING: {SCHEDULING, FAILED, ABORTED},
    SCHEDULING: {TARGET_READY, FAILED, ABORTED},
    TARGET_READY: {RUNNING, FAILED, ABORTED},
    RUNNING: {SUCCEEDED, FAILED, ABORTED},
}


def can_transition(old: str, new: str) -> bool:
    return new in _ALLOWED.get(old, set())


def phase(mig: Mapping[str, Any]) -> str:
    return str((mig.get("status") or {}).get("phase") or PENDING)


def is_active(mig: Mapping[str, Any]) -> bool:
    return phase(mig) in ACTIVE_PHASES and not (mig.get("metadata") or {}).get("deletionTimestamp")


@dataclass(frozen=True)
class Limits:
    # Parallel evacuation migrations (drains, evictions): only those count against these two, so
    # migrations users create (`failovervm migrate`, tenants) never hold up a drain (issue #14).
    per_cluster: int = 5
    per_node_outbound: int = 2
    max_attempts: int = 5
    backoff_start: float = 5.0
    backoff_max: float = 60.0
    # Seconds a migration users created may stay Pending or Scheduling (it cannot start: its
    # targetNode does not exist or has no room, the VM's other migration goes on) before it fails
    # with StartTimeout and the reason it waited for (0: wait forever). Evacuations wait as long
    # as it takes (an autoscaler may be adding the node they need).
    start_timeout: float = 300.0


def _ts(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _ended(mig: Mapping[str, Any]) -> dt.datetime:
    """When a finished migration ended (its creation when it never recorded an end)."""
    return (_ts((mig.get("status") or {}).get("endTimestamp")) or _ts(mig["metadata"].get("creationTimestamp"))
            or dt.datetime.min.replace(tzinfo=dt.UTC))


def is_evacuation(mig: Mapping[str, Any]) -> bool:
    """A migration the controller started to empty a node or answer an eviction (labelled so);
    any other was created by a user."""
    found = mig["metadata"].get("labels") or {}
    return bool(found.get(labels.EVACUATION_LABEL) or found.get(labels.EVICTED_POD_LABEL))


def evacuation_start_limit(mig: Mapping[str, Any], source: str, migrations: Iterable[Mapping[str, Any]],
                           limits: Limits) -> str | None:
    """Why evacuation migration `mig` (Pending, its VM on `source`) must not start yet, or None.

    plan_evacuation keeps the limits when it *creates* evacuation migrations, but two processes may
    create them at once (a standby replica's eviction webhook and the active replica's node sweep,
    each under its own process's node lock), one over the limit. The limits are therefore checked
    again when one *starts* (leaves Pending): only the active replica does that, one start at a time
    (Locks.evacuation_starts), counting the evacuations that have started (past Pending)."""
    if not is_evacuation(mig):
        return None
    me = (mig["metadata"].get("namespace"), mig["metadata"].get("name"))
    started = [m for m in migrations if is_evacuation(m) and is_active(m) and phase(m) != PENDING
               and (m["metadata"].get("namespace"), m["metadata"].get("name")) != me]
    if len(started) >= limits.per_cluster:
        return f"cluster limit of {limits.per_cluster} parallel migrations reached"
    if sum(1 for m in started if (m.get("status") or {}).get("sourceNode") == source) >= limits.per_node_outbound:
        return f"node limit of {limits.per_node_outbound} outbound migrations reached"
    return None


START_TIMEOUT = "StartTimeout"


def start_overdue(mig: Mapping[str, Any], now: dt.datetime, timeout: float) -> float | None:
    """How long a user's migration has waited to start (Pending or Scheduling since it was created),
    when that is `timeout` seconds or more; None otherwise, for evacuations, and when `timeout` is 0."""
    if timeout <= 0 or phase(mig) not in (PENDING, SCHEDULING) or is_evacuation(mig):
        return None
    created = _ts(mig["metadata"].get("creationTimestamp"))
    if created is None:
        return None
    waited = (now - created).total_seconds()
    return waited if waited >= timeout else None


def _of_vm(mig: Mapping[str, Any], vm_namespace: str, vm_name: str) -> bool:
    return bool(mig["metadata"].get("namespace") == vm_namespace and (mig.get("spec") or {}).get("vmName") == vm_name)


def failed_attempts(vm_name: str, vm_namespace: str, migrations: Iterable[Mapping[str, Any]],
                    node: str) -> list[Mapping[str, Any]]:
    """The failed (or aborted) evacuation migrations of the VM off `node` that count against its
    retries: those since the VM last migrated successfully. A drain weeks later starts afresh
    instead of inheriting the failures of an earlier one."""
    mine = [m for m in migrations if _of_vm(m, vm_namespace, vm_name)]
    successes = [_ended(m) for m in mine if phase(m) == SUCCEEDED]
    since = max(successes) if successes else None
    return [
        m for m in mine
        if (m["metadata"].get("labels") or {}).get(labels.EVACUATION_LABEL) == node and phase(m) in (FAILED, ABORTED)
        and (since is None or _ended(m) > since)
    ]


def retry_state(vm_name: str, vm_namespace: str, migrations: Iterable[Mapping[str, Any]], node: str,
                limits: Limits, now: dt.datetime) -> tuple[bool, str]:
    """Whether an evacuation may start another migration of the VM now, and why not."""
    failed = failed_attempts(vm_name, vm_namespace, migrations, node)
    if len(failed) >= limits.max_attempts:
        selector = f"{labels.EVACUATION_LABEL}={node},{labels.VM_LABEL}={vm_name}"
        return False, (f"{GAVE_UP}: {len(failed)} failed migration attempts; delete them to retry "
                       f"(kubectl -n {vm_namespace} delete fvmm -l {selector}) "
                       "or migrate the VM by hand")
    if failed:
        latest = max(failed, key=_ended)
        last = _ended(latest)
        delay = min(limits.backoff_start * 2 ** (len(failed) - 1), limits.backoff_max)
        if (now - last).total_seconds() < delay:
            return False, (f"retrying in {delay - (now - last).total_seconds():.0f}s after {len(failed)} failure(s)"
                           f"{last_failure(latest)}")
    return True, ""


def last_failure(mig: Mapping[str, Any]) -> str:
    """', the last: <reason> (<migration>: <message>)' for a drain's waiting reason ("" without a reason)."""
    st = mig.get("status") or {}
    if not st.get("reason"):
        return ""
    message = str(st.get("message") or "")
    if len(message) > 200:
        message = message[:197] + "..."
    return f", the last: {st['reason']} ({mig['metadata'].get('name')}: {message})"


@dataclass(frozen=True)
class FailoverGate:
    """Whether a migration of this VM keeps the guest's network, and what policy says about it."""

    ready: bool  # FailoverReady=True: the guest enslaves the virtio standby to a failover master
    refuse: bool  # not ready, and the policy refuses such migrations
    message: str  # why (empty when ready)
    require: bool = False  # the policy for this VM: refuse a migration of a guest that has not negotiated

    @property
    def policy(self) -> str:
        """FailoverVMMigration.status.failoverPolicy: what the source agent applies when it checks
        the guest again just before the transfer."""
        return POLICY_REQUIRE if self.require else POLICY_WARN


# The condition set when the target VF is reserved (phase TargetReady); its lastTransitionTime
# starts the source agent's handover clock.
TARGET_RESERVED = "TargetReserved"
SOURCE_AGENT_UNRESPONSIVE = "SourceAgentUnresponsive"


def handover_overdue(mig: Mapping[str, Any], now: dt.datetime, timeout: float) -> float | None:
    """How long a migration has waited in TargetReady for its source agent to take it, when that
    is `timeout` seconds or more (None otherwise, and always when `timeout` is 0: never).

    A live agent takes a TargetReady migration within a second (it watches its VMs). One that does
    not is down, hung or cut off, and the VF reserved on the target must not stay held for it: a
    drain of a NotReady (but not fenced) node would otherwise hold a target VF per VM forever."""
    if phase(mig) != TARGET_READY or timeout <= 0:
        return None
    st = mig.get("status") or {}
    cond = conditions.get(st.get("conditions"), TARGET_RESERVED)
    since = _ts((cond or {}).get("lastTransitionTime")) or _ts(st.get("startTimestamp"))
    if since is None:
        return None
    waited = (now - since).total_seconds()
    return waited if waited >= timeout else None


FAILOVER_NOT_READY = "FailoverNotReady"
POLICY_REQUIRE, POLICY_WARN = "Require", "Warn"


def failover_gate(vm: Mapping[str, Any], require_by_default: bool) -> FailoverGate:
    """Gate a migration on the VM's FailoverReady condition.

    A guest that has not negotiated failover loses its VF traffic while the VF is unplugged: the
    migration still runs (and records a warning) unless spec.requireFailoverReady, or the
    controller's default when the VM does not say, asks to refuse it."""
    cond = conditions.get((vm.get("status") or {}).get("conditions"), guestfailover.CONDITION)
    spec_require = (vm.get("spec") or {}).get("requireFailoverReady")
    require = require_by_default if spec_require is None else bool(spec_require)
    if cond is not None and cond.get("status") == "True":
        return FailoverGate(ready=True, refuse=False, message="", require=require)
    detail = (f"FailoverReady={cond.get('status')} ({cond.get('reason')})" if cond is not None
              else "FailoverReady is not known yet")
    message = (f"the guest has not negotiated failover ({detail}): its VF traffic stops while the VF is "
               "unplugged for the migration, because the guest has no virtio standby path")
    if require:
        message += "; refused because requireFailoverReady is set"
    return FailoverGate(ready=False, refuse=require, message=message, require=require)


def plan_evacuation(
    node: str,
    vms: Iterable[Mapping[str, Any]],
    migrations: Iterable[Mapping[str, Any]],
    limits: Limits,
    now: dt.datetime,
    require_failover_ready: bool = False,
) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
    """Which LiveMigrate VMs on `node` to start migrating now (within the parallelism limits),
    and why each other VM waits (namespace/name -> reason). A VM whose migration the failover
    policy refuses waits, blocking the drain, with the reason."""
    migrations = list(migrations)
    active = [m for m in migrations if is_active(m)]
    evacuating = [m for m in active if is_evacuation(m)]  # users' migrations use none of this capacity
    cluster_budget = limits.per_cluster - len(evacuating)
    vms = list(vms)
    node_budget = limits.per_node_outbound - sum(1 for m in evacuating if _vm_node(m, vms) == node)
    busy = {(m["metadata"].get("namespace"), (m.get("spec") or {}).get("vmName")) for m in active}
    start: list[Mapping[str, Any]] = []
    waiting: dict[str, str] = {}
    for vm in sorted(vms, key=lambda v: (v["metadata"]["namespace"], v["metadata"]["name"])):
        meta = vm["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if meta.get("deletionTimestamp"):
            continue
        if (vm.get("spec") or {}).get("evictionStrategy", "LiveMigrate") != "LiveMigrate":
            continue
        if (meta["namespace"], meta["name"]) in busy or (vm.get("status") or {}).get("migration"):
            earlier = failed_attempts(meta["name"], meta["namespace"], migrations, node)
            waiting[key] = (f"migrating (attempt {len(earlier) + 1}{last_failure(max(earlier, key=_ended))})"
                            if earlier else "migrating")
            continue
        if (vm.get("status") or {}).get("phase") != "Running":
            waiting[key] = f"not running (phase {(vm.get('status') or {}).get('phase')})"
            continue
        gate = failover_gate(vm, require_failover_ready)
        if gate.refuse:
            waiting[key] = f"{FAILOVER_NOT_READY}: {gate.message}"
            continue
        ok, why = retry_state(meta["name"], meta["namespace"], migrations, node, limits, now)
        if not ok:
            waiting[key] = why
            continue
        if cluster_budget <= 0:
            waiting[key] = f"cluster limit of {limits.per_cluster} parallel migrations reached"
            continue
        if node_budget <= 0:
            waiting[key] = f"node limit of {limits.per_node_outbound} outbound migrations reached"
            continue
        start.append(vm)
        cluster_budget -= 1
        node_budget -= 1
    return start, waiting


def evacuation_name(vm: Mapping[str, Any], node: str, existing: Iterable[str]) -> str:
    """The name of the next evacuation migration of `vm` off `node`.

    It is derived from the VM's uid, the node and the first attempt number whose name is not taken,
    so two controllers (or two threads) that saw the same migrations compute the same name: the
    second create is answered 409 AlreadyExists instead of starting a second migration that would
    only fail on the VM's migration lock (and count against its retries)."""
    taken = set(existing)
    meta = vm["metadata"]
    prefix = f"evac-{meta['name']}"[:53].rstrip(".-")
    attempt = 0
    while True:
        digest = hashlib.sha256(f"{meta.get('uid', meta['name'])}/{node}/{attempt}".encode()).hexdigest()[:8]
        candidate = f"{prefix}-{digest}"
        if candidate not in taken:
            return candidate
        attempt += 1


def _vm_node(mig: Mapping[str, Any], vms: Iterable[Mapping[str, Any]]) -> str | None:
    src = (mig.get("status") or {}).get("sourceNode")
    if src:
        return str(src)
    ns, name = mig["metadata"].get("namespace"), (mig.get("spec") or {}).get("vmName")
    for vm in vms:
        if vm["metadata"]["namespace"] == ns and vm["metadata"]["name"] == name:
            return (vm.get("status") or {}).get("nodeName")
    return None


def job_stats(stats: Mapping[str, Any]) -> dict[str, int]:
    """libvirt's completed-job statistics -> FailoverVMMigration status.stats."""
    out: dict[str, int] = {}
    for src, dst in (("downtime", "downtimeMs"), ("time_elapsed", "totalTimeMs"), ("setup_time", "setupTimeMs"),
                     ("memory_iteration", "memoryIteration")):
        if stats.get(src) is not None:
            out[dst] = int(stats[src])
    total = stats.get("data_total", stats.get("memory_total"))
    if total is not None:
        out["dataTotalBytes"] = int(total)
    return out


def is_finished(mig: Mapping[str, Any]) -> bool:
    """Terminal, and its VF and the VM's lock are released: only history is left of it."""
    return phase(mig) in TERMINAL_PHASES and conditions.is_true((mig.get("status") or {}).get("conditions"),
                                                                 "CleanedUp")


def stale_locks(vms: Iterable[Mapping[str, Any]],
                migrations: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str]]:
    """VMs locked (status.migration) by a migration that no longer exists, and that their source
    agent has not taken (Scheduling, TargetReady): (vm, migration name).

    Deleting a migration unlocks its VM through the controller's deletion handler. A migration
    deleted before Kopf put its finalizer on it never reaches that handler, and its lock would
    keep the VM from ever migrating again (a drain waits forever). A lock the agent has taken
    (Running, Aborting) is the agent's to release: it finishes or recovers the transfer."""
    existing = {(m["metadata"].get("namespace"), m["metadata"].get("name")) for m in migrations}
    out: list[tuple[Mapping[str, Any], str]] = []
    for vm in vms:
        lock = (vm.get("status") or {}).get("migration") or {}
        if lock.get("state") in (SCHEDULING, TARGET_READY) and lock.get("name") \
                and (vm["metadata"].get("namespace"), lock["name"]) not in existing:
            out.append((vm, str(lock["name"])))
    return out


def history_to_delete(migrations: Iterable[Mapping[str, Any]], existing_vms: set[tuple[str, str]], keep: int,
                      evacuating_nodes: set[str]) -> list[tuple[str, str]]:
    """Finished migrations (namespace, name) that are no longer worth keeping.

    - of a VM that no longer exists: all of them;
    - otherwise all but the `keep` newest per VM, except the failed attempts of an evacuation
      still going on (a node in `evacuating_nodes`): they are its retry count, and deleting them
      would restart its retries."""
    by_vm: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for m in migrations:
        if is_finished(m) and not m["metadata"].get("deletionTimestamp"):
            by_vm.setdefault((str(m["metadata"].get("namespace")), str((m.get("spec") or {}).get("vmName"))),
                             []).append(m)
    out: list[tuple[str, str]] = []
    for (ns, vm), mine in sorted(by_vm.items()):
        if (ns, vm) not in existing_vms:
            out.extend((ns, m["metadata"]["name"]) for m in mine)
            continue
        ledger = {id(m) for node in evacuating_nodes for m in failed_attempts(vm, ns, mine, node)}
        mine.sort(key=lambda m: (_ended(m), m["metadata"]["name"]), reverse=True)
        out.extend((ns, m["metadata"]["name"]) for m in mine[max(keep, 0):] if id(m) not in ledger)
    return out
