"""The controller's side of MAC leases (failovervm.macleases): taken before a VM is first placed,
released when it is deleted, and swept when orphaned. The lease's create is the lock; the watch
cache (index `maclease_keys`) only saves the request for a lease the VM already holds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from failovervm import macleases
from failovervm.controller.context import ControllerContext
from failovervm.controller.orphans import release_orphans
from failovervm.kube import ApiException
from failovervm.scheduling import Unschedulable

log = logging.getLogger(__name__)

# A MAC generated from a pool's macRange that another VM leased meanwhile: how many other candidates
# the VM tries in one pass before it waits (each conflict is a race lost, so one more is plenty).
GENERATED_ATTEMPTS = 4


def take_mac_lease(ctx: ControllerContext, vm: Mapping[str, Any], pool: Mapping[str, Any]) -> Unschedulable | None:
    """Lease the VM's MAC in its pool before it is placed: None when it holds the lease (or needs
    none), else why it waits (MACConflict)."""
    if not macleases.needs_lease(vm, pool):
        return None
    pool_name = str(pool["metadata"]["name"])
    explicit = bool(((vm.get("spec") or {}).get("network") or {}).get("mac"))
    fixed = explicit or bool((vm.get("status") or {}).get("mac"))  # a recorded MAC stays the VM's MAC
    for _ in range(1 if fixed else GENERATED_ATTEMPTS):
        mac = ctx.vm_mac(vm)
        held = _lease(ctx, vm, pool_name, mac)
        if held is None:
            return None
        if fixed:
            return Unschedulable(macleases.CONFLICT, macleases.conflict_message(vm, held, explicit))
        # Generated: the next candidate of the range (Tenancy.free_mac skips a MAC noted as taken).
        ctx.tenancy.note_taken(pool_name, mac, str(macleases.owner(held).get("uid")))
    return Unschedulable(macleases.CONFLICT, f"{GENERATED_ATTEMPTS} MACs generated from VFPool {pool_name!r}'s "
                         "macRange were leased to other VMs meanwhile; trying again")


def _lease(ctx: ControllerContext, vm: Mapping[str, Any], pool: str, mac: str) -> Mapping[str, Any] | None:
    """Create the lease of (pool, mac) for the VM: None once the VM holds it, else the other VM's
    lease. A lease whose holder is gone (deleted, or recreated under a new UID) is taken over."""
    uid = str(vm["metadata"]["uid"])
    name = macleases.lease_name(pool, mac)
    cached = ctx.cache.mac_lease(name)
    if cached is not None and str(macleases.owner(cached).get("uid")) == uid:
        return None
    body = macleases.lease_body(vm, pool, mac)
    other: Mapping[str, Any] | None = None
    for _ in range(2):
        try:
            if ctx.kube.create_mac_lease(body):
                log.info("MAC %s of VFPool %s leased to %s/%s", mac, pool, vm["metadata"]["namespace"],
                         vm["metadata"]["name"])
                return None
        except ApiException as exc:
            if exc.status != 404:
                raise
            _unavailable(ctx)
            return None
        other = ctx.kube.get_mac_lease(name)
        if other is None:
            continue  # released meanwhile: create again
        if str(macleases.owner(other).get("uid")) == uid:
            return None
        if not _holder_gone(ctx, other):
            return other
        log.warning("MACLease %s: its VM %s/%s is gone; taken over", name, macleases.owner(other).get("namespace"),
                    macleases.owner(other).get("name"))
        ctx.kube.delete_mac_lease(name, (other.get("metadata") or {}).get("uid"))
    if other is not None:
        return other
    # Taken and released twice while this pass looked: someone else's for now (the VM tries again).
    return {"metadata": {"name": name}, "spec": {"pool": pool, "mac": mac, "owner": {}}}


def _holder_gone(ctx: ControllerContext, lease: Mapping[str, Any]) -> bool:
    """Whether the lease's VM no longer exists (asked from the API: a cache may not show a VM just
    created, and a lease is never taken from a live VM on a cache's word)."""
    held = macleases.owner(lease)
    vm = ctx.kube.get_vm(str(held.get("namespace") or ""), str(held.get("name") or ""))
    return vm is None or str(vm["metadata"].get("uid")) != str(held.get("uid"))


def _unavailable(ctx: ControllerContext) -> None:
    """The MACLease CRD is not installed (an upgrade that did not apply crds/): placement goes on
    without leases, as before them, with one warning per process."""
    if not ctx.mac_leases_missing:
        ctx.mac_leases_missing = True
        log.warning("the MACLease CRD (macleases.failovervm.io) is not installed: VMs are placed without MAC "
                    "leases, so two VMs admitted at the same moment with one MAC can both run; apply crds/")


def release_mac_leases(ctx: ControllerContext, uid: str) -> list[str]:
    """A VM was deleted: its leases go (from the watch cache by owner; one it has not seen yet is
    released by the orphan sweep)."""
    released = []
    for lease in ctx.cache.mac_leases_of(uid):
        name = str(lease["metadata"]["name"])
        ctx.kube.delete_mac_lease(name, lease["metadata"].get("uid"))
        released.append(name)
    if released:
        log.info("released MAC leases %s", ", ".join(released))
    return released


def collect_orphaned_mac_leases(ctx: ControllerContext) -> list[str]:
    """Release MACLeases whose VM is gone or no longer uses that MAC in that pool: decided from the
    watch caches after the claims' grace, confirmed by reading the VM before a lease is deleted."""
    return release_orphans(ctx, ctx.cache.mac_leases(), macleases.is_orphaned, ctx.kube.delete_mac_lease,
                           "MACLease")
