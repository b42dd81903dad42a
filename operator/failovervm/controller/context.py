"""Everything the controller's domain functions share, in one explicit object: the settings,
the Kube adapter, and the process-wide state (locks, the VM pod index and pod retries, sweep
times, the admission thread pool). `failovervm controller` builds one; Kopf hands it to every handler
through its memo; tests build their own."""

from __future__ import annotations

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
    # Running migrations whose VM no longer names them: since when (controller.repairs).
    orphans: dict[tuple[str, str], float] = field(default_factory=dict)
    # FailoverMigrationPolicies and namespace labels: Kopf's indexes once a handler bound them
    # (controller.main); until then (and in tests) none, so the built-in defaults.
    policies: PolicySource = field(default_factory=StaticPolicies)

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
