"""DomainManager: the agent's one boundary over libvirt, in the project's own terms.

Modelled on KubeVirt's DomainManager interface (which includes MigrateVMI and
CancelVMIMigration): everything the agent's logic (reconcile.py, migrate.py, main.py) asks of a
hypervisor is a method of the `DomainManager` protocol below, taking and returning project types:
`DomainRef` handles, plain dataclasses, and the `DomainError` family. The libvirt implementation is
`failovervm.agent.libvirt_domains.LibvirtDomainManager`, which translates libvirt's errors; the
tests use the in-memory fake of tests/fakes. Calls are blocking; the async agent runs them with
asyncio.to_thread. This module does not import libvirt.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from failovervm import domxml, guestfailover

SHUTDOWN_TIMEOUT = 60.0


class DomainError(Exception):
    """A hypervisor operation failed. `str(exc)` is libvirt's message; `code` its error number
    (virErrorNumber; 0 when the error did not come from libvirt), for logs and diagnostics."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class DomainNotFound(DomainError):
    """No such domain (any more): it was undefined, or migrated away, meanwhile."""


class OperationInvalid(DomainError):
    """The operation does not apply to the domain's state (e.g. destroying a stopped domain)."""


class OperationAborted(DomainError):
    """The job was aborted (a migration cancelled with abort_job)."""


class DomainState(enum.IntEnum):
    """A domain's state; the values are libvirt's virDomainState."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class PausedReason(enum.IntEnum):
    """Why a PAUSED domain is paused (the reasons the agent tells apart); libvirt's values."""

    UNKNOWN = 0
    USER = 1
    MIGRATION = 2
    STARTING_UP = 11


class DomainStatus(NamedTuple):
    state: DomainState
    reason: int  # libvirt's reason code for that state (PausedReason when PAUSED)


@dataclass(frozen=True)
class DomainRef:
    """A handle on one domain, as lookup and define return it. Logic reads `name` and `uuid`; what
    `impl` holds belongs to the DomainManager that made the handle (libvirt's virDomain)."""

    name: str
    uuid: str
    impl: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    active: bool
    state: DomainState
    reason: int
    owner: domxml.OwnerRef | None


@dataclass(frozen=True)
class JobProgress:
    """A running job's (migration's) memory transfer; None: not reported (yet)."""

    memory_total: int | None = None
    memory_processed: int | None = None
    memory_iteration: int | None = None
    data_remaining: int | None = None  # bytes still to copy (what the progress timeout watches)
    time_elapsed_ms: int | None = None  # since the job started
    auto_converge_throttle: int | None = None  # vCPU throttle auto-converge applies, in percent


@dataclass(frozen=True)
class MigrationRequest:
    """A live peer-to-peer migration: the domain goes on running on the destination (whose
    definition persists there) and is undefined here once it completed."""

    destination_xml: str  # the running domain's XML as the destination starts it (its VF points there)
    persistent_xml: str  # the definition the destination keeps for the next boot
    transport: str = "tcp"  # "tls": libvirt's TLS migration transport
    bandwidth_mibps: int | None = None  # None: libvirt's default (unlimited)
    auto_converge: bool = False  # let QEMU throttle the guest's vCPUs until it converges
    post_copy: bool = False  # allow start_post_copy during the migration
    parallel_connections: int = 1  # > 1: multifd over this many connections
    # The migration stream's endpoint (tcp://<address>), separate from the libvirt (management) URI,
    # and the address the destination's QEMU listens on for it. None: libvirt's own choice (the
    # destination's hostname or its qemu.conf migration_address).
    stream_uri: str | None = None
    listen_address: str | None = None
    tls_destination: str | None = None  # with TLS over stream_uri: the name the target's certificate has


class DomainManager(Protocol):
    """The hypervisor of one node (the agent's own, or a migration target opened with open_remote).

    Every method may raise DomainError (DomainNotFound when the handle's domain is gone)."""

    # -- queries -------------------------------------------------------------------------------
    def lookup(self, name: str) -> DomainRef | None:
        """The domain of this name, None when there is none."""
        ...

    def owned_domains(self) -> list[DomainInfo]:
        """Domains carrying failovervm metadata; others are never touched."""
        ...

    def kvm_available(self) -> bool: ...
    def is_active(self, dom: DomainRef) -> bool: ...
    def state(self, dom: DomainRef) -> DomainStatus: ...

    def xml(self, dom: DomainRef, *, inactive: bool = False, migratable: bool = False) -> str:
        """The running domain's XML, or (inactive) its persistent definition, the next boot's."""
        ...

    def has_vf(self, dom: DomainRef) -> bool:
        """Whether the running domain has the VF teaming member plugged."""
        ...

    def failover_probe(self, dom: DomainRef) -> guestfailover.FailoverProbe:
        """What the guest's virtio-net driver acknowledged on the standby NIC (QEMU monitor).
        Raises DomainError or ValueError (an answer that cannot be read)."""
        ...

    def image_info(self, path: str, fmt: str) -> dict[str, Any]:
        """What the header of the image at `path`, opened as `fmt` and without its backing file,
        says: `qemu-img info --output=json` (format, backing-filename, full-backing-filename,
        backing-filename-format). Raises DomainError when it cannot be read as `fmt`."""
        ...

    # -- changes -------------------------------------------------------------------------------
    def define(self, xml: str) -> DomainRef:
        """Define (or redefine) a persistent domain; a running one keeps running as it is."""
        ...

    def start(self, dom: DomainRef) -> None: ...

    def stop(self, dom: DomainRef, timeout: float = SHUTDOWN_TIMEOUT) -> str:
        """Graceful ACPI shutdown, then destroy after `timeout`. Returns how it stopped:
        "inactive", "shutdown" or "destroyed"."""
        ...

    def destroy(self, dom: DomainRef) -> None:
        """Power off at once (nothing when it is not running)."""
        ...

    def undefine(self, dom: DomainRef) -> None:
        """Remove the persistent definition (and its NVRAM); a domain already gone is fine."""
        ...

    def attach_vf(self, dom: DomainRef, spec: domxml.DomainSpec) -> None:
        """Hot-plug the VF as the transient teaming member (live only: the persistent definition
        stays startable when the VF is broken). Raises ValueError for a teaming mismatch."""
        ...

    # -- migration -----------------------------------------------------------------------------
    def migrate(self, dom: DomainRef, uri: str, request: MigrationRequest) -> None:
        """Live-migrate the domain to the libvirt at `uri`; returns when it completed. Raises
        OperationAborted when abort_job cancelled it."""
        ...

    def abort_job(self, dom: DomainRef) -> None:
        """Cancel the domain's running job (a migration)."""
        ...

    def job_running(self, dom: DomainRef) -> bool:
        """Whether a job (a migration) is in progress on the domain."""
        ...

    def job_progress(self, dom: DomainRef) -> JobProgress: ...

    def start_post_copy(self, dom: DomainRef) -> None:
        """Switch the running migration (started with post_copy) to post-copy: the guest runs on
        the destination from now on and fetches the pages still missing over the network."""
        ...

    def set_max_downtime(self, dom: DomainRef, milliseconds: int) -> None:
        """The longest pause of the guest the running migration may take at switchover."""
        ...

    def completed_job_stats(self, dom: DomainRef) -> dict[str, int]:
        """The statistics of the domain's last completed job, as FailoverVMMigration status.stats
        (a migration's, on its destination)."""
        ...

    # -- other hosts ---------------------------------------------------------------------------
    def open_remote(self, uri: str) -> DomainManager:
        """The DomainManager of another node's libvirt (a migration target), on a connection of
        its own: close() it. Raises DomainError when that libvirt cannot be reached."""
        ...

    def clear_leftover(self, dom: DomainRef) -> None:
        """Remove the remains of an earlier migration: destroy, then undefine; a copy that is not
        running or already gone is fine."""
        ...

    def close(self) -> None:
        """Close the connection if this manager opened it (open_remote); the agent's own
        connection belongs to agent.connection and stays open."""
        ...


def real_pci_device_exists(pci_address: str) -> bool:
    """Whether the host really has this PCI device (guards simulated addresses)."""
    return Path("/sys/bus/pci/devices", pci_address).exists()
