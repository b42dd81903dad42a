"""What the tenancy rules (failovervm.tenancy) need from the cluster, from Kopf's in-memory indexes
(controller.main: pools, namespace labels, MACs per pool), never a cluster-wide LIST per request;
until a handler bound them (and in tests), from the API itself."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from failovervm import domxml
from failovervm.kube import KubeAPI
from failovervm.tenancy import MacRange, mac_range
from failovervm.validation import vm_macs

# The index names (controller.main registers them under these function names).
POOLS, NAMESPACES, MACS = "tenancy_pools", "tenancy_namespaces", "tenancy_macs"


def pool_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the pools index keeps of a VFPool: its name and the spec fields the rules read."""
    spec = body.get("spec") or {}
    return {"metadata": {"name": body["metadata"]["name"]},
            "spec": {k: spec[k] for k in ("namespaceSelector", "macRange") if k in spec}}


def mac_keys(body: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(pool, MAC): the VM} for each MAC the VM holds (spec.network.mac, status.mac)."""
    pool = str(((body.get("spec") or {}).get("network") or {}).get("pool") or "")
    meta = body.get("metadata") or {}
    ref = {"metadata": {"namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid")},
           "spec": {"network": dict((body.get("spec") or {}).get("network") or {})},
           "status": {"mac": (body.get("status") or {}).get("mac")}}
    return {(pool, mac): ref for mac in vm_macs(body)} if pool else {}


Index = Mapping[Any, Collection[Mapping[str, Any]]]


# Generated MACs remembered until the index shows them (a status write reaches it a moment later).
RECENT_MACS = 10_000


class Tenancy:
    def __init__(self, kube: KubeAPI) -> None:
        self.kube = kube
        self.indexes: dict[str, Index] = {}
        self._recent: dict[tuple[str, str], str] = {}  # (pool, MAC) -> the VM uid it was handed to
        self._lock = threading.Lock()
        # Whether this replica is the active one (controller.ha.ActiveCheck): Kopf keeps the indexes
        # of the active replica only, so a standby's webhooks read the API instead.
        self.active: Callable[[], bool] = lambda: True

    def _indexed(self, name: str) -> bool:
        return name in self.indexes and self.active()

    def bind(self, indices: Mapping[str, Any]) -> None:
        for name in (POOLS, NAMESPACES, MACS):
            if name in indices and name not in self.indexes:
                self.indexes[name] = indices[name]

    @staticmethod
    def _one(index: Index, key: Any) -> Mapping[str, Any] | None:
        found = list(index.get(key) or ())
        return found[0] if found else None

    def pool(self, name: str) -> Mapping[str, Any] | None:
        """The pool; one missing from the index is asked for once (the index may not be filled yet
        after a restart, and a refusal must be right)."""
        found = self._one(self.indexes[POOLS], name) if self._indexed(POOLS) else None
        return found if found is not None else self.kube.get_pool(name)

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        if self._indexed(NAMESPACES):
            return self._one(self.indexes[NAMESPACES], name) or {}
        ns = self.kube.get_namespace(name)
        return dict(((ns or {}).get("metadata") or {}).get("labels") or {})

    def mac_holders(self, pool: str, mac: str | None) -> Iterable[Mapping[str, Any]]:
        """The VMs of `pool` that hold `mac` (explicit or recorded)."""
        if not mac:
            return []
        try:
            norm = domxml.normalize_mac(mac)
        except ValueError:
            return []
        if self._indexed(MACS):
            return list(self.indexes[MACS].get((pool, norm)) or ())
        return [vm for vm in self.kube.list_vms()
                if ((vm.get("spec") or {}).get("network") or {}).get("pool") == pool and norm in vm_macs(vm)]

    def mac_range(self, pool: str | None) -> MacRange | None:
        return mac_range(self.pool(pool)) if pool else None

    def free_mac(self, pool: str, rng: MacRange, uid: str) -> str:
        """A MAC from the pool's range for the VM `uid` that no other VM of the pool holds: its stable
        one (from its UID) unless taken, else the next of a stable sequence. A small range can hold
        only so many VMs: past 64 taken candidates the stable one is returned (admission's duplicate
        check is then the last word)."""
        with self._lock:
            for attempt in range(64):
                mac = rng.generate(uid if attempt == 0 else f"{uid}/{attempt}")
                held = {str((h.get("metadata") or {}).get("uid")) for h in self.mac_holders(pool, mac)}
                held.add(self._recent.get((pool, mac), uid))
                if held <= {uid}:
                    break
            else:
                mac = rng.generate(uid)
            self._recent[(pool, mac)] = uid
            while len(self._recent) > RECENT_MACS:
                del self._recent[next(iter(self._recent))]
            return mac
