"""Everything the controller's domain functions share, in one explicit object: the settings,
the Kube adapter, and the process-wide state (locks, the VM pod index and pod retries, sweep
times, the admission thread pool). `failovervm controller` builds one; Kopf hands it to every handler
through its memo; tests build their own."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from failovervm.controller.locks import Locks
from failovervm.controller.tenancy import Tenancy
from failovervm.controller.vmpods import ListedPods, PodIndex, Retries
from failovervm.kube import KubeAPI
from failovervm.migration import Limits
from failovervm.storage import StorageGrant, StoragePolicy
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


def _admission_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="admission")


@dataclass
class ControllerContext:
    """What every controller domain function gets as its first argument (`ctx`)."""

    settings: ControllerSettings
    kube: KubeAPI
    locks: Locks = field(default_factory=Locks)
    # One active controller (Kopf peering); this lock serialises placement inside it so that
    # CPU/memory accounting and VF choice never race between two VMs.
    placement_lock: threading.Lock = field(default_factory=threading.Lock)
    sweeps: SweepTimes = field(default_factory=SweepTimes)
    # The admission webhooks' blocking work runs here, never in a handler thread (see admission).
    admission: ThreadPoolExecutor = field(default_factory=_admission_pool)
    # The VM pods by VM uid: Kopf's in-memory index once a handler bound it (controller.main), until
    # then (and in tests) the API itself.
    pods: PodIndex = field(init=False)
    # VMs whose pod the API server refused: when to try again.
    pod_retries: Retries = field(default_factory=Retries)

    # Pools, namespace labels and MACs per pool for the tenancy rules: Kopf's indexes once bound.
    tenancy: Tenancy = field(init=False)

    def __post_init__(self) -> None:
        self.pods = ListedPods(self.kube)
        self.tenancy = Tenancy(self.kube)

    def vm_mac(self, vm: Mapping[str, Any]) -> str:
        """The VM's MAC (vmspec.vm_mac); a generated one inside its pool's spec.macRange and not held
        by another VM of the pool."""
        network = (vm.get("spec") or {}).get("network") or {}
        pool = str(network.get("pool") or "")
        rng = self.tenancy.mac_range(pool)
        if rng is None or network.get("mac") or (vm.get("status") or {}).get("mac"):
            return vm_mac(vm, rng)
        return self.tenancy.free_mac(pool, rng, str(vm["metadata"]["uid"]))
