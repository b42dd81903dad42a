"""Kopf handlers of the controller. Thin: each one calls into the controller's domain modules
with the ControllerContext that `failovervm controller` put into Kopf's memo."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from failovervm import API_GROUP, API_VERSION
from failovervm.controller import admission, evacuation, migrations, recovery, sweeps, vms
from failovervm.controller.context import ControllerContext

log = logging.getLogger(__name__)
FVM = (API_GROUP, API_VERSION, "failovervms")
POOL = (API_GROUP, API_VERSION, "vfpools")


def _ctx(memo: kopf.Memo) -> ControllerContext:
    ctx = memo.ctx
    assert isinstance(ctx, ControllerContext)
    return ctx


def _unplaced(*, status: kopf.Status, **_: Any) -> bool:
    return not status.get("nodeName")


@kopf.on.event(*FVM)
def on_vm_event(*, type: str, name: str, namespace: str | None, status: kopf.Status, meta: kopf.Meta,
                memo: kopf.Memo, **_: Any) -> None:
    if namespace is None or type == "DELETED" or meta.get("deletionTimestamp") or status.get("nodeName"):
        return
    outcome = vms.ensure_scheduled(_ctx(memo), namespace, name)
    log.debug("scheduling %s/%s: %s", namespace, name, outcome)


@kopf.timer(*FVM, interval=3.0, initial_delay=3.0, when=_unplaced)
def retry_pending(*, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Capacity may have appeared (a VM deleted, a node added, a pool grown): try again."""
    vms.ensure_scheduled(_ctx(memo), namespace or "", name)


@kopf.on.delete(*FVM)
def on_vm_delete(*, name: str, namespace: str | None, uid: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        vms.finalize(_ctx(memo), namespace or "", name, uid)
    except vms.StillDeleting as exc:
        raise kopf.TemporaryError(str(exc), delay=2) from None


@kopf.timer(*POOL, interval=3.0)
def pool_status(*, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Per pool: refresh allocated/free counts. Also, at most every 3 s for all pools together, sweep
    the nodes (guard pods, evacuation, node health) and, every 30 s, orphaned VFClaims, migration
    history, VM locks left by migrations that vanished, and VMs whose node was deleted while no
    controller watched.

    The node sweep hangs off the VFPool timers because Kopf puts a finalizer on every object a
    timer runs for: that must never happen to Nodes (the controller may not even patch them) or to
    objects Helm installs. No pool means no VM, so nothing to sweep then."""
    ctx = _ctx(memo)
    vms.refresh_pool_status(ctx, name)
    sweeps.tick(ctx)


@kopf.on.validate(*FVM, operations=["CREATE", "UPDATE"], id="failovervm-validate")
async def validate_failovervm(*, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # Async on purpose: admission must never wait for a handler thread, because the controller's
    # own writes (labels, finalizers) pass through this webhook while handler threads wait on them.
    errors = await admission.validate_failovervm(_ctx(memo), body, kwargs.get("operation"), kwargs.get("old"))
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


# -- FailoverVMMigration -----------------------------------------------------------------------
FVMM = (API_GROUP, API_VERSION, "failovervmmigrations")


def _active(*, status: kopf.Status, **_: Any) -> bool:
    return (status.get("phase") or "Pending") not in ("Succeeded", "Failed", "Aborted") or not any(
        c.get("type") == "CleanedUp" and c.get("status") == "True" for c in status.get("conditions") or [])


@kopf.on.event(*FVMM)
def on_migration_event(*, type: str, name: str, namespace: str | None, meta: kopf.Meta, status: kopf.Status,
                       memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED" or meta.get("deletionTimestamp") or namespace is None:
        return
    ctx = _ctx(memo)
    phase = migrations.advance(ctx, namespace, name)
    source = status.get("sourceNode")
    if phase in ("Succeeded", "Failed", "Aborted") and source:
        # A slot on the source node is free: start the next evacuation migration right away.
        evacuation.reconcile_node(ctx, str(source))



@kopf.timer(*FVMM, interval=1.0, when=_active)
def drive_migration(*, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    migrations.advance(_ctx(memo), namespace or "", name)


@kopf.on.delete(*FVMM)
def on_migration_delete(*, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    try:
        migrations.on_delete(_ctx(memo), namespace or "", name)
    except migrations.WaitForAgent as exc:
        raise kopf.TemporaryError(str(exc), delay=1) from None


# -- Nodes: drain guard pods and evacuation -------------------------------------------------------
@kopf.on.event("", "v1", "nodes")
def on_node_event(*, type: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    if type != "DELETED":
        evacuation.reconcile_node(ctx, name)
    elif name:
        # A deleted Node counts as fenced: the VMs it ran start elsewhere.
        recovery.release_all(ctx, name, None)




@kopf.on.validate("", "v1", "pods", subresource="eviction", operations=["CREATE"], id="guard-pod-eviction",
                  ignore_failures=True)
async def guard_pod_eviction(*, name: str | None, namespace: str | None, memo: kopf.Memo, dryrun: bool = False,
                             **_: Any) -> None:
    """`kubectl drain` and cluster-autoscaler evict the node's guard pod: answer 429 (retry) while
    FailoverVMs are still on the node. Any other pod's eviction is none of our business."""
    refusal = await admission.guard_pod_eviction(_ctx(memo), name, namespace, dryrun)
    if refusal:
        raise kopf.AdmissionError(refusal, code=429)
