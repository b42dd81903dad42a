"""The controller's admission webhooks: FailoverVM validation, and the eviction of VM pods (refused
while the VM still runs on the pod's node, which starts its live migration).

Both run their blocking work on the context's admission pool, never in a handler thread: the
controller's own writes (labels, finalizers) pass through the FailoverVM webhook while handler
threads wait on them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from failovervm import labels, vmpod
from failovervm.controller import evacuation
from failovervm.controller.context import ControllerContext
from failovervm.tenancy import pool_refusals
from failovervm.validation import validate_vm


async def validate_failovervm(ctx: ControllerContext, body: Mapping[str, Any], operation: str | None,
                              old: Mapping[str, Any] | None) -> list[str]:
    """The errors that reject a FailoverVM create or update (none: admit it)."""
    if operation == "UPDATE" and old and dict(old.get("spec") or {}) == dict(body.get("spec") or {}):
        return []  # metadata/finalizer/label changes: the spec was validated when it was written
    return await asyncio.get_running_loop().run_in_executor(ctx.admission, _validate_vm_sync, ctx, body)


def _validate_vm_sync(ctx: ControllerContext, body: Mapping[str, Any]) -> list[str]:
    """From the watch caches (controller.tenancy): the pool, the namespace's labels and the VMs of the
    pool that hold the same MAC, so an admission costs no API call whatever the number of VMs. A
    standby replica, whose Kopf indexes are paused, asks the API instead (Tenancy.active)."""
    vm = {"metadata": dict(body.get("metadata") or {}), "spec": dict(body.get("spec") or {}),
          "status": dict(body.get("status") or {})}
    network = vm["spec"].get("network") or {}
    pool_name = str(network.get("pool") or "")
    pool = ctx.tenancy.pool(pool_name) if pool_name else None
    return validate_vm(
        vm,
        others=ctx.tenancy.mac_holders(pool_name, network.get("mac")),
        pool_exists=pool is not None,
        storage=ctx.settings.storage,
    ) + pool_refusals(vm, pool, ctx.tenancy.namespace_labels(vm["metadata"].get("namespace") or ""))


async def vm_pod_eviction(ctx: ControllerContext, name: str | None, namespace: str | None,
                          dryrun: bool) -> str | None:
    """Why the eviction of a VM pod must wait (HTTP 429, so `kubectl drain`, cluster-autoscaler and
    Karpenter retry), or None: allow it (also for any pod that is not a VM's)."""
    if not name or not namespace:
        return None
    return await asyncio.get_running_loop().run_in_executor(
        ctx.eviction, _vm_pod_eviction, ctx, namespace, name, dryrun)


# Seconds the eviction webhook waits for a node's sweep (which holds the node's lock) before it
# answers 429 anyway: the sweep moves the VM itself when the node is being emptied, and the caller
# retries; the webhook never waits on a slow sweep up to its own timeout.
EVICTION_LOCK_WAIT = 2.0

# Phases of a placed VM whose domain is not running and is not about to: its pod's eviction is let
# through at once, and the VM is released from the node (the agent undefines the domain).
NOT_RUNNING = frozenset({"Stopped", "Failed"})


def _vm_pod_eviction(ctx: ControllerContext, namespace: str, name: str, dryrun: bool) -> str | None:
    """The eviction answer. What counts is the VM's status as the operator wrote it (status.nodeName,
    phase, migration), never a label: the pod's node is where kube-scheduler or the operator bound it.

    - not a VM's pod, unbound, or its VM is elsewhere (it has left, or never ran there): allow;
    - a target pod while a migration to its node is under way: wait (the VM then leaves again);
    - the VM is stopped or failed there: allow, and release the VM from the node (a stopped or
      failed VM never holds up a drain);
    - the VM runs there: wait, and start its live migration (or its shutdown with evictionStrategy
      Shutdown), as the node's evacuation does. Once it has left, the controller deletes the pod
      itself, and the next retry finds it gone."""
    kube = ctx.kube
    pod = kube.get_pod(namespace, name)
    if pod is None:
        return None
    vm_name = ((pod["metadata"].get("labels") or {}).get(labels.VM_LABEL))
    vm = kube.get_vm(namespace, str(vm_name)) if vm_name else None
    node = vmpod.node_of(pod)
    if vm is None or node is None or not vmpod.owned_by(pod, vm) or vm["metadata"].get("deletionTimestamp"):
        return None
    status = vm.get("status") or {}
    key = f"FailoverVM {namespace}/{vm['metadata']['name']}"
    lock = status.get("migration") or {}
    if status.get("nodeName") != node:
        if vmpod.role_of(pod) == labels.ROLE_TARGET and lock.get("targetNode") == node:
            return (f"{key} is being live-migrated to node {node} (migration {lock.get('name')}); once it has "
                    "arrived it is migrated away again")
        return None
    if status.get("phase") in NOT_RUNNING and not lock:
        if not dryrun:
            evacuation.release_stopped(ctx, vm, node)
        return None
    why = "" if dryrun else evacuation.evict_vm(ctx, vm, node, name, lock_timeout=EVICTION_LOCK_WAIT)
    return (f"{key} still runs on node {node}; it is being moved away (live migration, or shutdown with "
            f"evictionStrategy Shutdown), retry{f': waiting, {why}' if why else ''}")
