"""The controller's admission webhooks: FailoverVM validation, and the eviction of the drain guard
pods (refused while the node still runs FailoverVMs).

Both run their blocking work on the context's admission pool, never in a handler thread: the
controller's own writes (labels, finalizers) pass through the FailoverVM webhook while handler
threads wait on them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from failovervm.controller import evacuation
from failovervm.controller.context import ControllerContext
from failovervm.controller.guard import GUARD_PREFIX
from failovervm.validation import validate_vm


async def validate_failovervm(ctx: ControllerContext, body: Mapping[str, Any], operation: str | None,
                              old: Mapping[str, Any] | None) -> list[str]:
    """The errors that reject a FailoverVM create or update (none: admit it)."""
    if operation == "UPDATE" and old and dict(old.get("spec") or {}) == dict(body.get("spec") or {}):
        return []  # metadata/finalizer/label changes: the spec was validated when it was written
    return await asyncio.get_running_loop().run_in_executor(ctx.admission, _validate_vm_sync, ctx, body)


def _validate_vm_sync(ctx: ControllerContext, body: Mapping[str, Any]) -> list[str]:
    kube = ctx.kube
    vm = {"metadata": dict(body.get("metadata") or {}), "spec": dict(body.get("spec") or {}),
          "status": dict(body.get("status") or {})}
    pool = (vm["spec"].get("network") or {}).get("pool")
    return validate_vm(
        vm,
        others=kube.list_vms(),
        pool_exists=bool(pool) and kube.get_pool(str(pool)) is not None,
        storage_roots=ctx.settings.storage_roots,
    )


async def guard_pod_eviction(ctx: ControllerContext, name: str | None, namespace: str | None,
                             dryrun: bool) -> str | None:
    """Why the eviction of a guard pod must wait (None: allow it, or not a guard pod at all)."""
    if namespace != ctx.settings.namespace or not name or not name.startswith(GUARD_PREFIX):
        return None
    node_name = name[len(GUARD_PREFIX):]
    remaining = await asyncio.get_running_loop().run_in_executor(
        ctx.admission, _guard_check, ctx, node_name, name, dryrun)
    if remaining:
        return f"node {node_name} still runs {remaining} FailoverVM(s); they are being live-migrated away"
    return None


def _guard_check(ctx: ControllerContext, node_name: str, pod_name: str, dryrun: bool) -> int:
    remaining = evacuation.node_has_vms(ctx, node_name)
    evacuation.reconcile_node(ctx, node_name)  # the attempt itself starts the evacuation
    if not remaining and not dryrun:
        # Empty: remove the guard pod now with grace period 0 (a graceful delete waits for a kubelet
        # to confirm) and allow the eviction: it then finds the pod gone, which drain counts as done.
        ctx.kube.delete_pod(ctx.settings.namespace, pod_name, grace_period=0)
        ctx.guards.forget(node_name)
    return remaining
