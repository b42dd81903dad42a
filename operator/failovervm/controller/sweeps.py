"""The controller's periodic sweeps: every node (3 s), and every 30 s orphaned VFClaims and
MACLeases, the VM
pods (each placed VM has one on its node; no migration target pod outlives its migration), the
migration sweep (VM locks left by migrations that vanished, the history of finished migrations
kept per VM) and VMs of deleted nodes."""

from __future__ import annotations

import logging
import time
from typing import Any

from failovervm import labels, malloc
from failovervm import migration as mg
from failovervm.controller import evacuation, leases, recovery, repairs
from failovervm.controller.context import ControllerContext
from failovervm.controller.isolation import isolated
from failovervm.controller.locks import NOT_TAKEN, LockWrite, update_vm_migration
from failovervm.controller.vms import collect_orphaned_claims, sweep_pods, wake_pending
from failovervm.scheduling import NodeInfo, node_needs_evacuation

log = logging.getLogger(__name__)

NODE_SWEEP_SECONDS = 3.0
SLOW_SWEEP_SECONDS = 30.0


def tick(ctx: ControllerContext) -> None:
    """Called by every VFPool's timer: sweeps the nodes (evacuation, displaced VMs, node health) at
    most every 3 s for all pools together and, every 30 s, orphaned VFClaims, VM pods, migration
    history, VM locks left by migrations that vanished, and VMs whose node was deleted while no
    controller watched. Once per process: the drain guard pods an earlier version left."""
    now = time.monotonic()
    if now - ctx.sweeps.node >= NODE_SWEEP_SECONDS:
        ctx.sweeps.node = now
        isolated("sweep of nodes", sweep_nodes, ctx)
        isolated("wake of pending VMs", wake_pending, ctx)
    if not ctx.sweeps.guards_removed:
        remove_guard_pods(ctx)
        ctx.sweeps.guards_removed = True
    if now - ctx.sweeps.claims >= SLOW_SWEEP_SECONDS:
        ctx.sweeps.claims = now
        for what, sweep in (("orphaned VFClaims", collect_orphaned_claims),
                            ("orphaned MACLeases", leases.collect_orphaned_mac_leases), ("VM pods", sweep_pods),
                            ("migrations", sweep_migrations), ("deleted nodes", recovery.sweep_deleted_nodes),
                            ("VM metadata", repairs.repair_vms)):
            isolated(f"sweep of {what}", sweep, ctx)
        malloc.trim()  # what the last 30 s freed goes back to the kernel (failovervm.malloc)


def sweep_nodes(ctx: ControllerContext) -> list[str]:
    """The node sweep, from the watch caches: the first after start passes over every node (a
    resync); later ones only over the nodes whose cached state asks for a pass (being emptied,
    fenced with VMs, a VM whose node health or displaced pod needs handling): a node with nothing
    to do costs no API call. Returns the nodes passed over."""
    full = not ctx.sweeps.nodes_resynced
    passed = []
    for node in ctx.cache.nodes():
        name = str(node["metadata"]["name"])
        if full or evacuation.needs_pass(ctx, node):
            isolated(f"sweep of node {name}", evacuation.reconcile_node, ctx, name)
            passed.append(name)
    ctx.sweeps.nodes_resynced = True
    return passed


def remove_guard_pods(ctx: ControllerContext) -> list[str]:
    """Versions before VM pods kept a drain guard pod per node in the operator's namespace (label
    failovervm.io/guard). The VM pods hold drains now (their eviction webhook), so those go."""
    removed = []
    for pod in ctx.kube.list_pods(ctx.settings.namespace, f"{labels.GUARD_LABEL}=true"):
        meta = pod["metadata"]
        if ctx.kube.delete_pod(meta["namespace"], meta["name"], grace_period=0, uid=meta.get("uid")):
            removed.append(meta["name"])
    if removed:
        log.info("removed the drain guard pods of an earlier version: %s", ", ".join(removed))
    return removed


def sweep_migrations(ctx: ControllerContext) -> None:
    """The controller's 30 s migration sweep: stale VM locks, then history. VMs are listed before
    migrations, so a lock seen on a VM names a migration that existed before that list."""
    kube = ctx.kube
    vms = ctx.cache.vms()
    migrations = kube.list_migrations()
    release_stale_locks(ctx, vms, migrations)
    collect_history(ctx, vms, migrations)


def release_stale_locks(ctx: ControllerContext, vms: list[dict[str, Any]],
                        migrations: list[dict[str, Any]]) -> list[str]:
    """Unlock VMs whose (untaken) migration no longer exists (see migration.stale_locks). The
    target VF it may have reserved is then an orphaned claim, released by the claim sweep."""
    kube = ctx.kube
    released = []
    for vm, name in mg.stale_locks(vms, migrations):
        meta = vm["metadata"]
        if kube.get_migration(meta["namespace"], name) is not None:
            continue  # it does exist (created after the list)
        # Refused: the agent took it meanwhile. Unchanged: released meanwhile (its deletion handler did run).
        if update_vm_migration(kube, vm, name, None, only_states=NOT_TAKEN) is LockWrite.WRITTEN:
            msg = f"migration {name} no longer exists but still locked the VM; released it (the VM can migrate again)"
            log.warning("%s/%s: %s", meta["namespace"], meta["name"], msg)
            kube.event(vm, "StaleMigrationLockReleased", msg, type_="Warning", component="controller")
            released.append(f"{meta['namespace']}/{meta['name']}")
    return released


def collect_history(ctx: ControllerContext, vms: list[dict[str, Any]] | None = None,
                    migrations: list[dict[str, Any]] | None = None) -> list[str]:
    """Delete finished migrations beyond the history kept per VM, and those of deleted VMs."""
    kube = ctx.kube
    existing = {(vm["metadata"]["namespace"], vm["metadata"]["name"])
                for vm in (ctx.cache.vms() if vms is None else vms)}
    evacuating = {n["metadata"]["name"] for n in ctx.cache.nodes() if node_needs_evacuation(NodeInfo.from_k8s(n))}
    removed = []
    migrations = kube.list_migrations() if migrations is None else migrations
    for ns, name in mg.history_to_delete(migrations, existing, ctx.settings.migration_history, evacuating):
        kube.delete_migration(ns, name)
        removed.append(f"{ns}/{name}")
    if removed:
        log.info("deleted %d finished migration(s) beyond the history kept: %s", len(removed), ", ".join(removed))
    return removed
