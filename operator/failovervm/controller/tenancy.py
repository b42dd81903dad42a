"""What the tenancy rules (failovervm.tenancy) need from the cluster, from Kopf's in-memory indexes
(controller.main: pools, namespace labels, MACs per pool), never a cluster-wide LIST per request.
A standby replica, whose Kopf indexes are paused with its watches, reads the MACs from a watch of its
own (MacWatch), and pools and namespaces by name; until a handler bound the indexes (and in tests),
from the API itself."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from failovervm import API_GROUP, API_VERSION, domxml
from failovervm.controller import cache
from failovervm.kube import KubeAPI
from failovervm.kubeclient import ApiClient, custom_path
from failovervm.reflector import Reflector
from failovervm.tenancy import MacRange, mac_range
from failovervm.validation import vm_macs

# The index names (controller.main registers them under these function names): the pools and
# namespace labels are the controller's indexes of them, shared with the watch caches
# (controller.cache: the pool summary keeps the whole spec) and the migration policies
# (controller.policies); the MACs per pool are keys of the VM cache (controller.cache.mac_keys).
POOLS, NAMESPACES, MACS = "vfpool_index", "namespace_labels", cache.VMS

Index = Mapping[Any, Collection[Mapping[str, Any]]]


# Generated MACs remembered until the index shows them (a status write reaches it a moment later).
RECENT_MACS = 10_000
# How long a pool or a namespace read from the API (no index: a standby replica, or a pool the index
# does not show yet) answers admission: a standby admitting VM creates at 30 per second read both
# for each (1.5 requests per VM in the scale benchmark). As stale as a watch cache under load.
READ_TTL_SECONDS = 2.0


class Tenancy:
    def __init__(self, kube: KubeAPI) -> None:
        self.kube = kube
        self.indexes: dict[str, Index] = {}
        self._recent: dict[tuple[str, str], str] = {}  # (pool, MAC) -> the VM uid it was handed to
        self._lock = threading.Lock()
        self._read: dict[tuple[str, str], tuple[float, Any]] = {}  # (kind, name) -> (when, what): READ_TTL
        # Whether this replica is the active one (controller.ha.ActiveCheck): Kopf keeps the indexes
        # of the active replica only, so a standby's webhooks read the API instead.
        self.active: Callable[[], bool] = lambda: True
        # A standby's MACs (controller.main sets it with peering and starts it at start-up); stopped
        # once the indexes answer (the active replica); while it (re)lists, admission LISTs the VMs.
        self.standby_macs: Callable[[], MacWatch] | None = None
        self._mac_watch: MacWatch | None = None
        self._watch_lock = threading.Lock()  # not _lock: free_mac holds that while it asks mac_holders

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

    def _fetch(self, kind: str, name: str, read: Callable[[], Any]) -> Any:
        """`read()`, or what it gave less than READ_TTL_SECONDS ago."""
        now = time.monotonic()
        with self._lock:
            hit = self._read.get((kind, name))
        if hit is not None and now - hit[0] < READ_TTL_SECONDS:
            return hit[1]
        value = read()
        with self._lock:
            if len(self._read) > 1024:
                self._read = {k: v for k, v in self._read.items() if now - v[0] < READ_TTL_SECONDS}
            self._read[(kind, name)] = (now, value)
        return value

    def pool(self, name: str) -> Mapping[str, Any] | None:
        """The pool; one missing from the index is asked for (the index may not be filled yet after
        a restart, and a refusal must be right)."""
        found = self._one(self.indexes[POOLS], name) if self._indexed(POOLS) else None
        return found if found is not None else self._fetch("pool", name, lambda: self.kube.get_pool(name))

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        if self._indexed(NAMESPACES):
            return self._one(self.indexes[NAMESPACES], name) or {}
        ns = self._fetch("namespace", name, lambda: self.kube.get_namespace(name))
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
            self.stop_standby_watch()
            return list(self.indexes[MACS].get(cache.mac_key(pool, norm)) or ())
        watch = self.standby_watch()
        if watch is not None and watch.synced():
            return watch.holders(pool, norm)
        return [vm for vm in self.kube.list_vms()
                if ((vm.get("spec") or {}).get("network") or {}).get("pool") == pool and norm in vm_macs(vm)]

    def standby_watch(self) -> MacWatch | None:
        """The standby's MAC watch, started at the first call (None: no peering, no standby)."""
        with self._watch_lock:
            if self._mac_watch is None and self.standby_macs is not None:
                self._mac_watch = self.standby_macs().start()
            return self._mac_watch

    def stop_standby_watch(self) -> None:
        """Active now: the indexes answer; the standby's watch and what it kept go."""
        with self._watch_lock:
            watch, self._mac_watch = self._mac_watch, None
        if watch is not None:
            watch.stop()

    def mac_range(self, pool: str | None) -> MacRange | None:
        return mac_range(self.pool(pool)) if pool else None

    def note_taken(self, pool: str, mac: str, uid: str) -> None:
        """`mac` of `pool` is held by the VM `uid` (its MACLease says so, which the indexes may not
        show yet): free_mac hands it to no other VM."""
        with self._lock:
            self._recent[(pool, mac)] = uid

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


_Held = tuple[str, str, str, tuple[str, ...]]  # a VM's namespace, name, pool and MACs


class MacWatch(Reflector):
    """The MACs every FailoverVM holds (spec.network.mac, status.mac) by pool, from one watch of all
    FailoverVMs: what a standby replica's admission checks a MAC against instead of listing every
    FailoverVM for each request (its Kopf indexes are paused with its watches). Keeps the namespace,
    name, pool and MACs of each VM (~0.3 KiB; 100,000 VMs: ~30 MiB)."""

    def __init__(self, api: ApiClient, **kw: Any) -> None:
        super().__init__(api, custom_path(API_GROUP, API_VERSION, "failovervms"), name="standby-macs", **kw)
        self._vms: dict[str, _Held] = {}  # uid -> (namespace, name, pool, MACs)
        self._by_key: dict[tuple[str, str], set[str]] = {}  # (pool, MAC) -> uids
        self._lock = threading.Lock()

    @staticmethod
    def _entry(vm: Mapping[str, Any]) -> tuple[str, _Held | None]:
        meta = vm.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        pool = str(((vm.get("spec") or {}).get("network") or {}).get("pool") or "")
        macs = tuple(sorted(vm_macs(vm)))
        if not uid or not pool or not macs:
            return uid, None
        return uid, (sys.intern(str(meta.get("namespace") or "")), str(meta.get("name") or ""), sys.intern(pool),
                     tuple(sys.intern(m) for m in macs))

    @staticmethod
    def _put(vms: dict[str, _Held], by_key: dict[tuple[str, str], set[str]], uid: str, entry: _Held) -> None:
        vms[uid] = entry
        for mac in entry[3]:
            by_key.setdefault((entry[2], mac), set()).add(uid)

    def _drop(self, uid: str) -> None:
        old = self._vms.pop(uid, None)
        if old is None:
            return
        _, _, pool, macs = old
        for mac in macs:
            held = self._by_key.get((pool, mac))
            if held is not None:
                held.discard(uid)
                if not held:
                    del self._by_key[(pool, mac)]

    def reset(self, objs: Iterable[Mapping[str, Any]]) -> None:
        vms: dict[str, _Held] = {}
        by_key: dict[tuple[str, str], set[str]] = {}
        for vm in objs:  # a page at a time from the API, while holders() answers from the old state
            uid, entry = self._entry(vm)
            if entry is not None:
                self._put(vms, by_key, uid, entry)
        with self._lock:
            self._vms, self._by_key = vms, by_key

    def see(self, event_type: str, obj: Mapping[str, Any]) -> None:
        uid, entry = self._entry(obj)
        with self._lock:
            self._drop(uid)
            if event_type != "DELETED" and entry is not None:
                self._put(self._vms, self._by_key, uid, entry)

    def holders(self, pool: str, mac: str) -> list[dict[str, Any]]:
        """The VMs of `pool` holding `mac` (normalized), shaped as validation.validate_vm reads them."""
        with self._lock:
            found = [(uid, self._vms[uid]) for uid in self._by_key.get((pool, mac), ())]
        return [{"metadata": {"uid": uid, "namespace": ns, "name": name}, "spec": {"network": {"pool": p, "mac": mac}}}
                for uid, (ns, name, p, _) in found]

    def __len__(self) -> int:
        with self._lock:
            return len(self._vms)
