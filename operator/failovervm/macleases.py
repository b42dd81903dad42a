"""MAC leases: a MAC is used by at most one FailoverVM per VFPool (one L2 network).

Admission refuses a MAC another VM of the pool already holds, from the controller's watch cache;
but two creates within the moment a watch takes to show the first can both be admitted. The lease
is the last word: before a VM is first placed, the controller creates a cluster-scoped MACLease
named after the pool and the MAC (`lease_name`), and the API server's name uniqueness lets only one
VM have it, on any replica. The other VM stays Pending (Scheduled=False, reason MACConflict) until
the lease is released: when its holder is deleted, or by the orphan sweep when the holder no longer
uses that MAC.

A lease is taken for an explicit spec.network.mac and for a MAC generated from the pool's
spec.macRange (a small range, where collisions are what it is designed around). A MAC generated
without a range comes from 46 bits of the VM's UID hash and takes no lease (a collision at 100,000
VMs in one pool has odds of about 1 in 14,000).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from failovervm import API_GROUP, API_VERSION, jsoncopy
from failovervm.validation import named_for, vm_macs

Obj = dict[str, Any]
CONFLICT: Final[Literal["MACConflict"]] = "MACConflict"


def lease_name(pool: str, mac: str) -> str:
    """``lease_name("pool-a", "52:54:00:12:34:56") == "pool-a.52-54-00-12-34-56"``."""
    return f"{pool}.{mac.replace(':', '-')}"


def needs_lease(vm: Mapping[str, Any], pool: Mapping[str, Any]) -> bool:
    """Whether the VM's MAC is leased: an explicit one, or one generated from the pool's macRange."""
    explicit = (((vm.get("spec") or {}).get("network") or {}).get("mac"))
    return bool(explicit) or bool((pool.get("spec") or {}).get("macRange"))


def lease_body(vm: Mapping[str, Any], pool: str, mac: str) -> Obj:
    meta = vm["metadata"]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "MACLease",
        "metadata": {"name": lease_name(pool, mac)},
        "spec": {"pool": pool, "mac": mac,
                 "owner": {"namespace": meta["namespace"], "name": meta["name"], "uid": str(meta["uid"])}},
    }


def owner(lease: Mapping[str, Any]) -> Mapping[str, Any]:
    return (lease.get("spec") or {}).get("owner") or {}


def lease_summary(lease: Mapping[str, Any]) -> Obj:
    """What the controller keeps of a MACLease (no managedFields)."""
    meta = lease.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "uid", "creationTimestamp") if meta.get(k)},
            "spec": jsoncopy.copy(lease.get("spec") or {})}


def lease_keys(lease: Mapping[str, Any]) -> dict[tuple[str, ...], Obj]:
    """Its keys in the controller's `maclease_keys` index: ("name", name), ("of", owner uid)."""
    s = lease_summary(lease)
    return {("name", str(s["metadata"].get("name"))): s, ("of", str(owner(s).get("uid"))): s}


def is_orphaned(lease: Mapping[str, Any], vm: Mapping[str, Any] | None) -> bool:
    """A lease whose VM is gone (or was recreated: another UID), or that no longer uses the MAC in
    that pool (its spec changed)."""
    held = owner(lease)
    if vm is None or (vm.get("metadata") or {}).get("uid") != held.get("uid"):
        return True
    spec = lease.get("spec") or {}
    if ((vm.get("spec") or {}).get("network") or {}).get("pool") != spec.get("pool"):
        return True
    return spec.get("mac") not in vm_macs(vm)


def conflict_message(vm: Mapping[str, Any], lease: Mapping[str, Any], explicit: bool) -> str:
    """Why the VM waits, naming the holder only within the VM's own namespace (tenancy)."""
    spec, held = lease.get("spec") or {}, owner(lease)
    namespace = str((vm.get("metadata") or {}).get("namespace") or "")
    holder = named_for(namespace, held.get("namespace"), held.get("name")) if held.get("uid") else "another FailoverVM"
    what = "spec.network.mac" if explicit else "the MAC generated from the pool's macRange,"
    return (f"{what} {spec.get('mac')} is leased in VFPool {spec.get('pool')!r} to {holder} (MACLease "
            f"{(lease.get('metadata') or {}).get('name')}); the VM waits until that VM is deleted or uses "
            "another MAC")
