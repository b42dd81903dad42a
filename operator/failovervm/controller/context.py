"""Everything the controller's domain functions share, in one explicit object: the settings,
the Kube adapter, and the process-wide state (locks, the VM pod index and pod retries, sweep
times, the admission thread pool). `failovervm controller` builds one; Kopf hands it to every handler
through its memo; tests build their own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from failovervm.controller.cache import ClusterCache, ListedCache
from failovervm.controller.locks import Locks
from failovervm.controller.policies import PolicySource, StaticPolicies
from failovervm.controller.tenancy import Tenancy
from failovervm.controller.vmpods import ListedPods, PodIndex, Retries
from failovervm.kube import KubeAPI
from failovervm.migration import Limits
from failovervm.placement import RecentClaims
from failovervm.storage import StorageGrant, StoragePolicy
from failovervm.tenancy import mac_range
from failovervm.vmpod import PodSettings
from failovervm.vmspec import vm_mac


@dataclass(frozen=True)
class ControllerSettings:
    """The controller's configuration (set once from the `failovervm controller` flags)."""

    storage_roots: tuple[str, ...] = ()
    # The administrator's storage grants beyond <root>/<namespace>/ (failovervm.storage).
    storage_grants: tuple[StorageGrant, ...] = ()
    pending_retry_seconds: float = 3.0
    claim_gc_grace_seconds: float = 60.0
    namespace: str = "failovervm-system"
    limits: Limits = field(default_factory=Limits)
    # How VM pods are built: the holder image and the per-VM overhead on top of the guest.
    vm_pod: PodSettings = field(default_factory=PodSettings)
    # Refuse migrations of VMs whose guest has not negotiated failover (FailoverReady != True)
    # unless the VM's spec.requireFailoverReady says otherwise. Default: run them with a warning.
    require_failover_ready: bool = False
    # Finished FailoverVMMigrations kept per VM (migration.history_to_delete).
    migration_history: int = 5
    # Seconds a migration may wait in TargetReady for its source agent before its target VF is
    # released and it fails with SourceAgentUnresponsive (0: wait forever).
    handover_timeout_seconds: float = 120.0

    @property
    def storage(self) -> StoragePolicy:
        return StoragePolicy(self.storage_roots, self.storage_grants)


@dataclass
class SweepTimes:
    """When (time.monotonic) the periodic sweeps last ran (see failovervm.controller.sweeps)."""

    node: float = 0.0
    claims: float = 0.0
    # Whether the drain guard pods of an earlier version were looked for (once per process).
    guards_removed: bool = False
    # Whether every node had one full pass since the process started (a resync after the watch
    # started): later node sweeps act only on nodes whose cached state asks for it.
    nodes_resynced: bool = False
    # Nodes being evacuated as this process last saw them: the next sweeps of such a node make a
    # full pass even once it no longer needs evacuation (dropping the migrations left pending).
    evacuating: set[str] = field(default_factory=set)


@dataclass
class Capacity:
    """Pending VMs are woken by capacity changes, not by rescanning: `epoch` counts the changes
    seen (a VM or VFClaim deleted, a Node added or changed, a VFPool or VFInventory written), and
    `seen` holds, per VM uid, the epoch of the last pass that left the VM pending for lack of
    capacity. The pending timer looks again only when the epoch moved on (controller.vms)."""

    epoch: int = 0
    # VM uid -> (epoch, time.monotonic()) of its last placement pass.
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    # What each Node and VFPool looked like when last seen (what placement reads of it), to tell a
    # change from a heartbeat or a status write.
    objects: dict[str, str] = field(default_factory=dict)

    def changed(self) -> None:
        self.epoch += 1

    def object_changed(self, key: str, fingerprint: str | None) -> bool:
        """Record what an object (a Node, a VFPool) looked like (None: deleted); True when that
        changed since it was last seen (a heartbeat or a status write of the controller's own does not)."""
        if fingerprint is None:
            return self.objects.pop(key, None) is not None
        if self.objects.get(key) == fingerprint:
            return False
        self.objects[key] = fingerprint
        return True


class Placing:
    """What this process itself did to the VMs it is placing, which its watch caches show only a
    moment later: the VM as its last status write returned it, and when it created a VM's pod.

    The next placement pass of that VM (kube-scheduler's binding) starts from that copy instead of a
    GET while the VM cache shows the same resourceVersion (nobody wrote the VM since, as far as the
    watch shows; a write that it does not show yet fails the status write with a 409, and the write
    is made again on a fresh read). A pod created lately counts as the VM's pod until the pod index
    shows it, so the VM's own status event does not cost a placement pass. Unplaced VMs only: a
    copy goes when the VM is placed or deleted; at most `limit` of each, the oldest dropped first."""

    def __init__(self, limit: int = 20_000, pod_ttl: float = 30.0) -> None:
        self.limit, self.pod_ttl = limit, pod_ttl
        self._copies: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(vm: Mapping[str, Any]) -> tuple[str, str]:
        return str(vm["metadata"]["namespace"]), str(vm["metadata"]["name"])

    def wrote(self, vm: Mapping[str, Any]) -> None:
        with self._lock:
            self._copies.pop(self._key(vm), None)
            self._copies[self._key(vm)] = dict(vm)
            while len(self._copies) > self.limit:
                del self._copies[next(iter(self._copies))]

    def copy(self, namespace: str, name: str, cached_version: Callable[[str], str | None]) -> dict[str, Any] | None:
        """The VM as this process last wrote it, if the VM cache (`cached_version(uid)`: the
        resourceVersion it shows) has seen nothing newer."""
        with self._lock:
            mine = self._copies.get((namespace, name))
        if mine is None or cached_version(str(mine["metadata"]["uid"])) != mine["metadata"].get("resourceVersion"):
            return None
        return mine

    def pod_created(self, uid: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._pods[uid] = now
            if len(self._pods) > self.limit:
                self._pods = {u: t for u, t in self._pods.items() if now - t < self.pod_ttl}

    def pod_created_lately(self, uid: str) -> bool:
        return time.monotonic() - self._pods.get(uid, -1e9) < self.pod_ttl

    def forget(self, namespace: str, name: str, uid: str | None = None) -> None:
        with self._lock:
            self._copies.pop((namespace, name), None)
            if uid:
                self._pods.pop(uid, None)


def _admission_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="admission")


def _eviction_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="eviction")


@dataclass
class ControllerContext:
    """What every controller domain function gets as its first argument (`ctx`)."""

    settings: ControllerSettings
    kube: KubeAPI
    # Per migration, per node, and per VM (placement passes: kube-scheduler does the CPU and
    # memory accounting, a VF's VFClaim create is its lock, so different VMs are placed in parallel).
    locks: Locks = field(default_factory=Locks)
    sweeps: SweepTimes = field(default_factory=SweepTimes)
    # The admission webhooks' blocking work runs here, never in a handler thread (see admission).
    admission: ThreadPoolExecutor = field(default_factory=_admission_pool)
    # The VM pod eviction webhook's own threads: parallel drains never delay FailoverVM admission
    # (failurePolicy Fail), which the controller's own metadata writes pass through.
    eviction: ThreadPoolExecutor = field(default_factory=_eviction_pool)
    # The VM pods by VM uid: Kopf's in-memory index once a handler bound it (controller.main), until
    # then (and in tests) the API itself.
    pods: PodIndex = field(init=False)
    # VMs whose pod the API server refused: when to try again.
    pod_retries: Retries = field(default_factory=Retries)
    # The watch caches (controller.cache): Kopf's indexes once a handler bound them
    # (controller.main), until then (and in tests) the API itself.
    cache: ClusterCache = field(init=False)
    # Whether this replica is the active one (controller.ha.ActiveCheck; always, without peering).
    active: Callable[[], bool] = field(default=lambda: True)
    capacity: Capacity = field(default_factory=Capacity)
    # VFs claimed lately, which the claim cache may not show yet (placement.RecentClaims).
    recent_claims: RecentClaims = field(default_factory=RecentClaims)
    # What this process wrote to the VMs it is placing, and their pods it created (Placing).
    placing: Placing = field(default_factory=Placing)
    # Running migrations whose VM no longer names them: since when (controller.repairs).
    orphans: dict[tuple[str, str], float] = field(default_factory=dict)
    # FailoverMigrationPolicies and namespace labels: Kopf's indexes once a handler bound them
    # (controller.main); until then (and in tests) none, so the built-in defaults.
    policies: PolicySource = field(default_factory=StaticPolicies)
    # The MACLease CRD was found missing (warned once; placement goes on without leases).
    mac_leases_missing: bool = False

    # Pools, namespace labels and MACs per pool for the tenancy rules: Kopf's indexes once bound.
    tenancy: Tenancy = field(init=False)

    def __post_init__(self) -> None:
        self.pods = ListedPods(self.kube)
        self.cache = ListedCache(self.kube)
        self.tenancy = Tenancy(self.kube)

    def vm_mac(self, vm: Mapping[str, Any]) -> str:
        """The VM's MAC (vmspec.vm_mac); a generated one inside its pool's spec.macRange and not held
        by another VM of the pool."""
        network = (vm.get("spec") or {}).get("network") or {}
        pool = str(network.get("pool") or "")
        rng = mac_range(self.cache.pool(pool)) if pool else None  # the controller's own watch cache
        if rng is None or network.get("mac") or (vm.get("status") or {}).get("mac"):
            return vm_mac(vm, rng)
        return self.tenancy.free_mac(pool, rng, str(vm["metadata"]["uid"]))
