"""Kopf handlers of the controller. Thin: each one calls into failovervm.controller.vms."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from failovervm import API_GROUP, API_VERSION
from failovervm.controller import evacuation, guard, migrations, recovery, sweeps, vms
from failovervm.controller.config import CONFIG
from failovervm.validation import validate_vm

log = logging.getLogger(__name__)
FVM = (API_GROUP, API_VERSION, "failovervms")
POOL = (API_GROUP, API_VERSION, "vfpools")


def _unplaced(*, status: kopf.Status, **_: Any) -> bool:
    return not status.get("nodeName")


@kopf.on.event(*FVM)
def on_vm_event(*, type: str, name: str, namespace: str | None, status: kopf.Status, meta: kopf.Meta,
                **_: Any) -> None:
    if namespace is None or type == "DELETED" or meta.get("deletionTimestamp") or status.get("nodeName"):
        return
    outcome = vms.ensure_scheduled(namespace, name)
    log.debug("scheduling %s/%s: %s", namespace, name, outcome)


@kopf.timer(*FVM, interval=3.0, initial_delay=3.0, when=_unplaced)
def retry_pending(*, name: str, namespace: str | None, **_: Any) -> None:
    """Capacity may have appeared (a VM deleted, a node added, a pool grown): try again."""
    vms.ensure_scheduled(namespace or "", name)


@kopf.on.delete(*FVM)
def on_vm_delete(*, name: str, namespace: str | None, uid: str, **_: Any) -> None:
    try:
        vms.finalize(namespace or "", name, uid)
    except vms.StillDeleting as exc:
        raise kopf.TemporaryError(str(exc), delay=2) from None


_last_claim_sweep = 0.0
_last_node_sweep = 0.0


@kopf.timer(*POOL, interval=3.0)
def pool_status(*, name: str, **_: Any) -> None:
    """Per pool: refresh allocated/free counts. Also, at most every 3 s for all pools together, sweep
    the nodes (guard pods, evacuation, node health) and, every 30 s, orphaned VFClaims, migration
    history, VM locks left by migrations that vanished, and VMs whose node was deleted while no
    controller watched.

    The node sweep hangs off the VFPool timers because Kopf puts a finalizer on every object a
    timer runs for: that must never happen to Nodes (the controller may not even patch them) or to
    objects Helm installs. No pool means no VM, so nothing to sweep then."""
    global _last_claim_sweep, _last_node_sweep
    vms.refresh_pool_status(name)
    now = time.monotonic()
    if now - _last_node_sweep >= 3.0:
        _last_node_sweep = now
        for node in CONFIG.k().list_nodes():
            evacuation.reconcile_node(node["metadata"]["name"])
    if now - _last_claim_sweep >= 30.0:
        _last_claim_sweep = now
        vms.collect_orphaned_claims()
        sweeps.sweep_migrations()
        recovery.sweep_deleted_nodes()


@kopf.on.validate(*FVM, operations=["CREATE", "UPDATE"], id="failovervm-validate")
async def validate_failovervm(*, body: kopf.Body, **kwargs: Any) -> None:
    # Async on purpose: admission must never wait for a handler thread, because the controller's
    # own writes (labels, finalizers) pass through this webhook while handler threads wait on them.
    old = kwargs.get("old")
    if kwargs.get("operation") == "UPDATE" and old and dict(old.get("spec") or {}) == dict(body.get("spec") or {}):
        return  # metadata/finalizer/label changes: the spec was validated when it was written
    errors = await asyncio.get_running_loop().run_in_executor(_ADMISSION_POOL, _validate_vm_sync, body)
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


_ADMISSION_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="admission")


def _validate_vm_sync(body: kopf.Body) -> list[str]:
    kube = CONFIG.k()
    vm = {"metadata": dict(body.get("metadata") or {}), "spec": dict(body.get("spec") or {}),
          "status": dict(body.get("status") or {})}
    pool = (vm["spec"].get("network") or {}).get("pool")
    return validate_vm(
        vm,
        others=kube.list_vms(),
        pool_exists=bool(pool) and kube.get_pool(str(pool)) is not None,
        storage_roots=CONFIG.storage_roots,
    )


# -- FailoverVMMigration -----------------------------------------------------------------------
FVMM = (API_GROUP, API_VERSION, "failovervmmigrations")


def _active(*, status: kopf.Status, **_: Any) -> bool:
    return (status.get("phase") or "Pending") not in ("Succeeded", "Failed", "Aborted") or not any(
        c.get("type") == "CleanedUp" and c.get("status") == "True" for c in status.get("conditions") or [])


@kopf.on.event(*FVMM)
def on_migration_event(*, type: str, name: str, namespace: str | None, meta: kopf.Meta, status: kopf.Status,
                       **_: Any) -> None:
    if type == "DELETED" or meta.get("deletionTimestamp") or namespace is None:
        return
    phase = migrations.advance(namespace, name)
    source = status.get("sourceNode")
    if phase in ("Succeeded", "Failed", "Aborted") and source:
        # A slot on the source node is free: start the next evacuation migration right away.
        evacuation.reconcile_node(str(source))



@kopf.timer(*FVMM, interval=1.0, when=_active)
def drive_migration(*, name: str, namespace: str | None, **_: Any) -> None:
    migrations.advance(namespace or "", name)


@kopf.on.delete(*FVMM)
def on_migration_delete(*, name: str, namespace: str | None, **_: Any) -> None:
    try:
        migrations.on_delete(namespace or "", name)
    except migrations.WaitForAgent as exc:
        raise kopf.TemporaryError(str(exc), delay=1) from None


# -- Nodes: drain guard pods and evacuation -------------------------------------------------------
@kopf.on.event("", "v1", "nodes")
def on_node_event(*, type: str, name: str, **_: Any) -> None:
    if type != "DELETED":
        evacuation.reconcile_node(name)
    elif name:
        # A deleted Node counts as fenced: the VMs it ran start elsewhere.
        recovery.release_all(name, None)




@kopf.on.validate("", "v1", "pods", subresource="eviction", operations=["CREATE"], id="guard-pod-eviction",
                  ignore_failures=True)
async def guard_pod_eviction(*, name: str | None, namespace: str | None, dryrun: bool = False,
                             **_: Any) -> None:
    """`kubectl drain` and cluster-autoscaler evict the node's guard pod: answer 429 (retry) while
    FailoverVMs are still on the node. Any other pod's eviction is none of our business."""
    if namespace != CONFIG.namespace or not name or not name.startswith(guard.GUARD_PREFIX):
        return
    node_name = name[len(guard.GUARD_PREFIX):]
    remaining = await asyncio.get_running_loop().run_in_executor(
        _ADMISSION_POOL, _guard_check, node_name, name, dryrun)
    if remaining:
        raise kopf.AdmissionError(
            f"node {node_name} still runs {remaining} FailoverVM(s); they are being live-migrated away", code=429)


def _guard_check(node_name: str, pod_name: str, dryrun: bool) -> int:
    remaining = evacuation.node_has_vms(node_name)
    kube = CONFIG.k()
    evacuation.reconcile_node(node_name)  # the attempt itself starts the evacuation
    if not remaining and not dryrun:
        # Empty: remove the guard pod now with grace period 0 (a graceful delete waits for a kubelet
        # to confirm) and allow the eviction: it then finds the pod gone, which drain counts as done.
        kube.delete_pod(CONFIG.namespace, pod_name, grace_period=0)
        guard.forget_guard(node_name)
    return remaining
