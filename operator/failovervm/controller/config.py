"""Runtime configuration of the controller process (set once by `failovervm controller`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from failovervm.kube import Kube
from failovervm.migration import Limits


@dataclass
class ControllerConfig:
    kube: Kube | None = None
    storage_roots: list[str] = field(default_factory=list)
    pending_retry_seconds: float = 3.0
    claim_gc_grace_seconds: float = 60.0
    namespace: str = "failovervm-system"
    guard_image: str = "registry.k8s.io/pause:3.10"
    limits: Limits = field(default_factory=Limits)
    # Refuse migrations of VMs whose guest has not negotiated failover (FailoverReady != True)
    # unless the VM's spec.requireFailoverReady says otherwise. Default: run them with a warning.
    require_failover_ready: bool = False
    # Finished FailoverVMMigrations kept per VM (migration.history_to_delete).
    migration_history: int = 5
    # Seconds a migration may wait in TargetReady for its source agent before its target VF is
    # released and it fails with SourceAgentUnresponsive (0: wait forever).
    handover_timeout_seconds: float = 120.0

    def k(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("controller is not configured")
        return self.kube


CONFIG = ControllerConfig()
