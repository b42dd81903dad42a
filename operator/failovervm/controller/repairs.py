"""The controller's level-triggered repair (see failovervm.repair): a VM's node label and agent
finalizer follow its status, and a FailoverVMMigration left Running by an agent that recorded the
outcome on the VM only is finished. Run by the 30 s sweep (and its first run, at start-up) and, for
migrations, by each Running migration's 1 s timer (which Kopf also starts for every active
migration when the controller starts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from failovervm import repair
from failovervm.controller.context import ControllerContext
from failovervm.controller.isolation import isolated

log = logging.getLogger(__name__)

# How long a migration must have looked orphaned before it is finished for its agent: the agent
# writes the VM, its label, then the migration within milliseconds of each other.
ORPHAN_GRACE_SECONDS = 5.0


def repair_vm(ctx: ControllerContext, vm: Mapping[str, Any]) -> bool:
    """Make the VM's node label and agent finalizer follow its status. True when it patched.
    The status is read with the metadata the patch is made against (its resourceVersion), so a
    status that changed meanwhile fails the patch and is looked at again."""
    meta = vm["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if repair.vm_metadata_patch(meta, vm.get("status") or {}) is None:
        return False
    done = {"v": False}

    def edit(m: Mapping[str, Any]) -> dict[str, Any] | None:
        current = vm if m is vm["metadata"] else ctx.kube.get_vm(ns, name)
        if current is None or current["metadata"].get("uid") != meta["uid"]:
            return None
        patch = repair.vm_metadata_patch(m, current.get("status") or {})
        done["v"] = patch is not None
        return patch

    ctx.kube.edit_vm_metadata(ns, name, edit, current=vm)
    if done["v"]:
        node = (vm.get("status") or {}).get("nodeName")
        msg = (f"repaired the node label and agent finalizer to follow status.nodeName {node}" if node
               else "removed the node label of a VM that is placed nowhere")
        log.warning("%s/%s: %s (a write was lost, e.g. a process killed between two writes)", ns, name, msg)
        ctx.kube.event(vm, "MetadataRepaired", msg, type_="Warning", component="controller")
    return done["v"]


def repair_vms(ctx: ControllerContext) -> list[str]:
    """repair_vm for every VM whose copy in the watch cache needs it (its summary keeps the node
    label, the operator's finalizers, status.nodeName and resourceVersion: a copy that is stale
    fails the patch, which is then made again on a fresh read); no LIST. Returns those patched."""
    repaired: list[str] = []
    for vm in ctx.cache.vms():
        if repair.vm_metadata_patch(vm["metadata"], vm.get("status") or {}) is None:
            continue
        key = f"{vm['metadata']['namespace']}/{vm['metadata']['name']}"
        isolated(f"repair of {key}", lambda v=vm, k=key: repaired.append(k) if repair_vm(ctx, v) else None)
    return repaired


def orphan_outcome(ctx: ControllerContext, mig: Mapping[str, Any], vm: Mapping[str, Any] | None,
                   now: float | None = None) -> repair.Outcome | None:
    """The outcome to record for a Running migration nobody owns any more, once it has looked
    orphaned for ORPHAN_GRACE_SECONDS (None before, and while its agent owns it)."""
    key = (mig["metadata"]["namespace"], mig["metadata"]["name"])
    outcome = repair.orphaned_migration_outcome(mig, vm)
    if outcome is None:
        ctx.orphans.pop(key, None)
        return None
    now = time.monotonic() if now is None else now
    first = ctx.orphans.setdefault(key, now)
    if now - first < ORPHAN_GRACE_SECONDS:
        return None
    ctx.orphans.pop(key, None)
    return outcome
