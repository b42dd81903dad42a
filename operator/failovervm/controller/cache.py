"""What the controller knows of the cluster without asking the API server: its watch caches.

The controller answers placement, admission, the sweeps, evacuation and recovery from in-memory
indexes that Kopf keeps over its watches (registered in controller.main, bound to the context by
the first handler that runs): FailoverVMs, VFClaims, VFPools, VFInventories and Nodes. Each index
keeps only the fields the controller reads (`*_summary` below: no managedFields, no status parts it
never reads), so its memory is proportional to what it must know. A full LIST happens only when a
watch (re)starts.

A cache lags behind the API server by a watch event. Nothing is ever allocated from it alone: a
VFClaim's create is the lock (its name is derived from node and PCI address), and a VM is read again
before a decision that writes it. Domain functions take a `ClusterCache`; tests pass `IndexedCache`
over plain dicts, or `ListedCache` (the API itself, what the controller uses before the indexes
are bound).

Keys of the indexes (Kopf's index maps each key to the values of all objects that returned it):

- `fvm_keys`: ("uid", uid), ("node", status.nodeName), ("pending", "") for an
  unplaced VM that is not being deleted, ("mac", pool, MAC) for each MAC it holds (admission's
  uniqueness per pool, controller.tenancy) -> VM summary
- `vfclaim_keys`: ("on", node, pool), ("of", owner uid) -> claim summary
- `maclease_keys`: ("name", name), ("of", owner uid) -> MACLease summary (failovervm.macleases)
- `vfpool_index`: name -> pool summary
- `vfinventory_index`: node name -> inventory summary
- `node_index`: name -> node summary
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Protocol

from failovervm import jsoncopy, labels, macleases
from failovervm.kube import KubeAPI
from failovervm.validation import vm_macs

Obj = dict[str, Any]
Index = Mapping[Any, Collection[Mapping[str, Any]]]

# The index names of controller.main (the keyword arguments Kopf passes to every handler).
VMS, CLAIMS, POOLS, INVENTORIES, NODES = "fvm_keys", "vfclaim_keys", "vfpool_index", "vfinventory_index", "node_index"
MAC_LEASES = "maclease_keys"
INDEX_NAMES = (VMS, CLAIMS, POOLS, INVENTORIES, NODES, MAC_LEASES)

# The VM conditions the controller reads from its cache (node health, scheduling).
_VM_CONDITIONS = ("NodeHealthy", "Scheduled")


def _pick(src: Mapping[str, Any] | None, keys: Iterable[str]) -> Obj:
    src = src or {}
    return {k: jsoncopy.copy(src[k]) for k in keys if k in src and src[k] is not None}


def _condition(c: Mapping[str, Any]) -> Obj:
    return _pick(c, ("type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"))


def vm_summary(vm: Mapping[str, Any]) -> Obj:
    """What the controller keeps of a FailoverVM: enough to decide in memory whether anything needs
    doing (node health, displaced pods, its pod, its claims, MAC uniqueness). Acting reads it again."""
    meta, spec, status = vm.get("metadata") or {}, vm.get("spec") or {}, vm.get("status") or {}
    ann = {k: v for k, v in (meta.get("annotations") or {}).items() if str(k).startswith(labels.PREFIX)}
    out_meta = _pick(meta, ("name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp",
                            "deletionTimestamp"))
    if ann:
        out_meta["annotations"] = ann
    node_label = (meta.get("labels") or {}).get(labels.VM_NODE)
    if node_label:
        out_meta["labels"] = {labels.VM_NODE: node_label}
    fins = [str(f) for f in meta.get("finalizers") or [] if str(f).startswith(labels.PREFIX)]
    if fins:
        out_meta["finalizers"] = fins  # the operator's own (the repair of a placement reads them)
    net = _pick(spec.get("network"), ("pool", "mac"))
    out_spec = _pick(spec, ("running", "evictionStrategy"))
    if net:
        out_spec["network"] = net
    out_status = _pick(status, ("phase", "nodeName", "mac", "observedGeneration"))
    if status.get("vf"):
        out_status["vf"] = _pick(status["vf"], ("node", "pciAddress", "claimName"))
    if status.get("migration"):
        out_status["migration"] = _pick(status["migration"], ("name", "state", "targetNode", "targetClaim"))
    conds = [_condition(c) for c in status.get("conditions") or [] if c.get("type") in _VM_CONDITIONS]
    if conds:
        out_status["conditions"] = conds
    return {"apiVersion": vm.get("apiVersion"), "kind": vm.get("kind"),  # for Events about it
            "metadata": out_meta, "spec": out_spec, "status": out_status}


def vm_keys(vm: Mapping[str, Any]) -> dict[tuple[str, ...], Obj]:
    """The keys of a VM in the `fvm_keys` index, all to one summary (one object in memory)."""
    s = vm_summary(vm)
    keys: dict[tuple[str, ...], Obj] = {("uid", str(s["metadata"].get("uid"))): s}
    node = s["status"].get("nodeName")
    if node:
        keys[("node", str(node))] = s
    elif not s["metadata"].get("deletionTimestamp"):
        keys[("pending", "")] = s
    keys.update(dict.fromkeys(mac_keys(s), s))
    return keys


def mac_keys(vm: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The `fvm_keys` keys under which the VMs holding a MAC in a pool are found: one per MAC the VM
    holds (spec.network.mac, status.mac). Kept in the VM index rather than one of their own: Kopf
    calls every index function on every event of its kind."""
    pool = str(((vm.get("spec") or {}).get("network") or {}).get("pool") or "")
    return [mac_key(pool, mac) for mac in sorted(vm_macs(vm))] if pool else []


def mac_key(pool: str, mac: str) -> tuple[str, ...]:
    return ("mac", pool, mac)


def claim_summary(claim: Mapping[str, Any]) -> Obj:
    meta, spec = claim.get("metadata") or {}, claim.get("spec") or {}
    return {"metadata": _pick(meta, ("name", "uid", "creationTimestamp", "deletionTimestamp")),
            "spec": _pick(spec, ("node", "pool", "pf", "pciAddress", "purpose", "migration", "owner"))}


def claim_keys(claim: Mapping[str, Any]) -> dict[tuple[str, ...], Obj]:
    s = claim_summary(claim)
    spec = s["spec"]
    return {("on", str(spec.get("node")), str(spec.get("pool"))): s,
            ("of", str((spec.get("owner") or {}).get("uid"))): s}


def pool_summary(pool: Mapping[str, Any]) -> Obj:
    """A VFPool without the per-node VF lists an older version kept in its status (ignored now)."""
    meta, status = pool.get("metadata") or {}, pool.get("status") or {}
    out = {"apiVersion": pool.get("apiVersion"), "kind": pool.get("kind"),
           "metadata": _pick(meta, ("name", "uid", "resourceVersion", "generation")),
           "spec": jsoncopy.copy(pool.get("spec") or {}),
           "status": _pick(status, ("totals", "nodeCount", "conditions", "observedGeneration"))}
    if "nodes" in status:
        out["legacyNodes"] = True  # the controller's next status write drops them
    return out


def inventory_summary(inv: Mapping[str, Any]) -> Obj:
    """A node's VFInventory as {"node", "pools": {pool: {"vfs": {pci: pf}, "simulated", "total"}}}."""
    spec = inv.get("spec") or {}
    pools: dict[str, Any] = {}
    for entry in spec.get("pools") or []:
        vfs = {str(v["pciAddress"]): str(v.get("pf") or "") for v in entry.get("vfs") or [] if v.get("pciAddress")}
        pools[str(entry.get("name"))] = {"vfs": vfs, "simulated": bool(entry.get("simulated")), "total": len(vfs)}
    return {"node": str((inv.get("metadata") or {}).get("name") or spec.get("nodeName") or ""), "pools": pools}


def node_summary(node: Mapping[str, Any]) -> Obj:
    """A Node as the operator reads it: labels, taints, cordon, readiness, allocatable; no images,
    no managedFields, no heartbeat-only fields."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    conds = [_pick(c, ("type", "status", "reason", "lastTransitionTime")) for c in status.get("conditions") or []
             if c.get("type") == "Ready"]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": _pick(meta, ("name", "uid", "labels", "annotations")),
            "spec": _pick(spec, ("unschedulable", "taints")),
            "status": {"conditions": conds, "allocatable": dict(status.get("allocatable") or {})}}


def node_fingerprint(summary: Mapping[str, Any]) -> str:
    """What placement reads of a Node (labels, taints, cordon, readiness, allocatable), as a string:
    it changes when capacity may have, not with a heartbeat."""
    status = summary.get("status") or {}
    return json.dumps([(summary.get("metadata") or {}).get("labels"), summary.get("spec"),
                       [(c.get("type"), c.get("status")) for c in status.get("conditions") or []],
                       status.get("allocatable")], sort_keys=True)


class ClusterCache(Protocol):
    """The cluster as the controller's watches show it (see the module's docstring)."""

    def vm(self, uid: str) -> Obj | None: ...
    def vms(self) -> list[Obj]: ...
    def vms_on(self, node: str) -> list[Obj]: ...
    def pending_vms(self) -> list[Obj]: ...
    def claims_on(self, node: str, pool: str) -> list[Obj]: ...
    def claims_of(self, owner_uid: str) -> list[Obj]: ...
    def claims(self) -> list[Obj]: ...
    def mac_lease(self, name: str) -> Obj | None: ...
    def mac_leases_of(self, owner_uid: str) -> list[Obj]: ...
    def mac_leases(self) -> list[Obj]: ...
    def pool(self, name: str) -> Obj | None: ...
    def pools(self) -> list[Obj]: ...
    def inventory(self, node: str) -> Obj | None: ...
    def inventories(self) -> list[Obj]: ...
    def node(self, name: str) -> Obj | None: ...
    def nodes(self) -> list[Obj]: ...


def node_vfs(cache: ClusterCache, node: str, pool: str) -> dict[str, str]:
    """{pci address: pf} of `pool`'s VFs on `node`, as its agent published them."""
    inv = cache.inventory(node)
    return dict((((inv or {}).get("pools") or {}).get(pool) or {}).get("vfs") or {})


class IndexedCache:
    """A ClusterCache over Kopf's indexes (or plain dicts of the same shape in tests)."""

    def __init__(self, indexes: Mapping[str, Index]) -> None:
        self.indexes = indexes

    def _values(self, index: str, key: Any) -> list[Obj]:
        return [dict(v) for v in self.indexes[index].get(key, ())]

    def _one(self, index: str, key: Any) -> Obj | None:
        found = self._values(index, key)
        return found[0] if found else None

    def _keyed(self, index: str, kind: str) -> list[Obj]:
        idx = self.indexes[index]
        return [dict(v) for key in list(idx) if isinstance(key, tuple) and key[0] == kind for v in idx.get(key, ())]

    def vm(self, uid: str) -> Obj | None:
        return self._one(VMS, ("uid", uid))

    def vms(self) -> list[Obj]:
        return self._keyed(VMS, "uid")

    def vms_on(self, node: str) -> list[Obj]:
        return self._values(VMS, ("node", node))

    def pending_vms(self) -> list[Obj]:
        return self._values(VMS, ("pending", ""))

    def claims_on(self, node: str, pool: str) -> list[Obj]:
        return self._values(CLAIMS, ("on", node, pool))

    def claims_of(self, owner_uid: str) -> list[Obj]:
        return self._values(CLAIMS, ("of", owner_uid))

    def claims(self) -> list[Obj]:
        return self._keyed(CLAIMS, "of")

    def mac_lease(self, name: str) -> Obj | None:
        return self._one(MAC_LEASES, ("name", name))

    def mac_leases_of(self, owner_uid: str) -> list[Obj]:
        return self._values(MAC_LEASES, ("of", owner_uid))

    def mac_leases(self) -> list[Obj]:
        return self._keyed(MAC_LEASES, "name")

    def pool(self, name: str) -> Obj | None:
        return self._one(POOLS, name)

    def pools(self) -> list[Obj]:
        idx = self.indexes[POOLS]
        return [dict(v) for key in list(idx) for v in idx.get(key, ())]

    def inventory(self, node: str) -> Obj | None:
        return self._one(INVENTORIES, node)

    def inventories(self) -> list[Obj]:
        idx = self.indexes[INVENTORIES]
        return [dict(v) for key in list(idx) for v in idx.get(key, ())]

    def node(self, name: str) -> Obj | None:
        return self._one(NODES, name)

    def nodes(self) -> list[Obj]:
        idx = self.indexes[NODES]
        return [dict(v) for key in list(idx) for v in idx.get(key, ())]


class ListedCache:
    """A ClusterCache that asks the API server every time: before Kopf's indexes are bound, and in
    the unit tests that check the logic on FakeKube. Same summaries as the indexes."""

    def __init__(self, kube: KubeAPI) -> None:
        self.kube = kube

    def vm(self, uid: str) -> Obj | None:
        return next((vm_summary(v) for v in self.kube.list_vms() if v["metadata"].get("uid") == uid), None)

    def vms(self) -> list[Obj]:
        return [vm_summary(v) for v in self.kube.list_vms()]

    def vms_on(self, node: str) -> list[Obj]:
        return [vm_summary(v) for v in self.kube.list_vms(f"{labels.VM_NODE}={node}")
                if (v.get("status") or {}).get("nodeName") == node]

    def pending_vms(self) -> list[Obj]:
        return [vm_summary(v) for v in self.kube.list_vms() if not (v.get("status") or {}).get("nodeName")
                and not v["metadata"].get("deletionTimestamp")]

    def claims_on(self, node: str, pool: str) -> list[Obj]:
        return [claim_summary(c) for c in self.kube.list_claims(cached=True)
                if (c.get("spec") or {}).get("node") == node and (c.get("spec") or {}).get("pool") == pool]

    def claims_of(self, owner_uid: str) -> list[Obj]:
        return [claim_summary(c) for c in self.kube.list_claims(cached=True)
                if ((c.get("spec") or {}).get("owner") or {}).get("uid") == owner_uid]

    def claims(self) -> list[Obj]:
        return [claim_summary(c) for c in self.kube.list_claims(cached=True)]

    def mac_lease(self, name: str) -> Obj | None:
        lease = self.kube.get_mac_lease(name)
        return macleases.lease_summary(lease) if lease is not None else None

    def mac_leases_of(self, owner_uid: str) -> list[Obj]:
        return [s for s in self.mac_leases() if str(macleases.owner(s).get("uid")) == owner_uid]

    def mac_leases(self) -> list[Obj]:
        return [macleases.lease_summary(lease) for lease in self.kube.list_mac_leases()]

    def pool(self, name: str) -> Obj | None:
        pool = self.kube.get_pool(name)
        return pool_summary(pool) if pool is not None else None

    def pools(self) -> list[Obj]:
        return [pool_summary(p) for p in self.kube.list_pools()]

    def inventory(self, node: str) -> Obj | None:
        inv = self.kube.get_inventory(node)
        return inventory_summary(inv) if inv is not None else None

    def inventories(self) -> list[Obj]:
        return [inventory_summary(i) for i in self.kube.list_inventories()]

    def node(self, name: str) -> Obj | None:
        node = self.kube.get_node(name)
        return node_summary(node) if node is not None else None

    def nodes(self) -> list[Obj]:
        return [node_summary(n) for n in self.kube.list_nodes()]
