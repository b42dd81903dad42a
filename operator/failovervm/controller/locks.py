"""Locks of the controller: the in-process locks per migration and per node, and the VM's own
lock, VM.status.migration, which the controller and the source agent write with the VM's
resourceVersion (so exactly one of two racing writes wins)."""

from __future__ import annotations

import enum
import threading
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from failovervm import migration as mg
from failovervm.kube import KubeAPI

# The VM's migration states in which the source agent has not taken the migration yet.
NOT_TAKEN = frozenset({mg.SCHEDULING, mg.TARGET_READY})


class Locks:
    """The per-migration and per-node locks of this process.

    Kopf may run the event handler and the timer of one migration at the same time, and the node
    sweep, node events, migration events and the eviction webhook all sweep nodes from their own
    threads: these locks serialise each migration's driver and each node's sweep."""

    # Placement passes of different VMs run in parallel (a VF's VFClaim create is its lock); those
    # of one VM (its event, its pod's event, its timer) one at a time, under one of these stripes.
    VM_STRIPES = 64

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._migrations: dict[tuple[str, str], threading.Lock] = {}
        self._nodes: dict[str, threading.Lock] = {}
        self._vms = [threading.Lock() for _ in range(self.VM_STRIPES)]
        # Held while an evacuation migration checks the parallel-migration limits and leaves
        # Pending (migration.evacuation_start_limit): two starts never both see the last free slot.
        self.evacuation_starts = threading.Lock()

    def vm(self, namespace: str, name: str) -> threading.Lock:
        """The lock of one VM's placement passes (shared with the VMs of the same stripe: bounded
        memory whatever the number of VMs)."""
        return self._vms[zlib.crc32(f"{namespace}/{name}".encode()) % self.VM_STRIPES]

    def migration(self, namespace: str, name: str) -> threading.Lock:
        """The lock `advance` holds while it drives this migration."""
        with self._guard:
            return self._migrations.setdefault((namespace, name), threading.Lock())

    def node(self, name: str) -> threading.Lock:
        """The lock of one node's sweep (also held while its VMs are released after fencing)."""
        with self._guard:
            return self._nodes.setdefault(name, threading.Lock())

    def forget_migration(self, namespace: str, name: str, gone: Callable[[], bool]) -> None:
        """Drop a migration's lock if `gone()` (asked while no lock can be handed out) says so."""
        with self._guard:
            if gone():
                self._migrations.pop((namespace, name), None)


class LockWrite(enum.IntEnum):
    """What update_vm_migration did; false only when it was refused."""

    REFUSED = 0  # the VM is locked by another migration, or not in one of `only_states`
    UNCHANGED = 1  # already as asked (e.g. no lock to clear)
    WRITTEN = 2


def update_vm_migration(kube: KubeAPI, vm: Mapping[str, Any], mig_name: str, fields: dict[str, Any] | None,
                        claim_only_if_free: bool = False, only_states: frozenset[str] | None = None) -> LockWrite:
    """Set (fields) or clear (None) VM.status.migration if it is free or ours.

    `only_states`: only while the VM's migration state is one of these. Releasing a migration the
    source agent has not taken uses (Scheduling, TargetReady): the agent's own write of Running is
    its commit, and the resourceVersion lets exactly one of the two writes win."""
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


def release_untaken(kube: KubeAPI, vm: Mapping[str, Any], name: str) -> bool:
    """Unlock the VM from migration `name` unless its source agent has taken it (False then)."""
    if update_vm_migration(kube, vm, name, None, only_states=NOT_TAKEN):
        return True
    meta = vm["metadata"]
    fresh = kube.get_vm(meta["namespace"], meta["name"])
    cur = ((fresh or {}).get("status") or {}).get("migration") or {}
    return not (cur.get("name") == name and cur.get("state") not in NOT_TAKEN)  # another's lock: not ours

