"""Frozen, validated descriptions of a domain, from which the XML builders work.

Validation happens in ``__post_init__``: a spec that exists is one the builders
can turn into schema-valid domain XML.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

from .mac import validate_mac
from .names import MAX_NAMESPACE_LEN, MAX_VM_NAME_LEN, validate_dns_label, validate_dns_subdomain

DiskFormat = Literal["raw", "qcow2"]
DiskBus = Literal["virtio", "sata", "scsi"]
StandbyType = Literal["bridge", "direct", "network"]
Accel = Literal["kvm", "qemu"]

DISK_FORMATS: Final = ("raw", "qcow2")
DISK_BUSES: Final = ("virtio", "sata", "scsi")
STANDBY_TYPES: Final = ("bridge", "direct", "network")
#: macvtap modes accepted for a ``direct`` standby.
DIRECT_MODES: Final = ("bridge", "passthrough", "vepa", "private")
ACCELS: Final = ("kvm", "qemu")
MAX_PCIE_ROOT_PORTS: Final = 64

# A Linux interface name: at most 15 bytes, no '/', ':' or whitespace.
_IFNAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,15}")
# A libvirt network name: libvirt forbids '/', we also keep it to plain characters.
_NETNAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+")


def _check_abs_path(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, got {value!r}")
    if "\x00" in value or "\n" in value:
        raise ValueError(f"{what} {value!r} contains a NUL or newline character")


def _check_choice(value: object, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class BackingSpec:
    """One backing file of a disk image, as the FailoverVM declares it (``spec.disks[].backingChain``)."""

    path: str
    format: DiskFormat

    def __post_init__(self) -> None:
        _check_abs_path(self.path, "backing file path")
        _check_choice(self.format, DISK_FORMATS, f"format of backing file {self.path!r}")


@dataclass(frozen=True)
class DiskSpec:
    """A file-backed disk.

    ``name`` is a DNS label (a Kubernetes volume name); it becomes the disk's
    alias ``ua-fvm-disk-<name>``. A read-only SATA disk is presented as a CD-ROM,
    because QEMU has no read-only SATA hard disk.
    """

    name: str
    path: str
    format: DiskFormat
    bus: DiskBus
    read_only: bool = False
    boot_order: int | None = None
    # The image's backing chain, top down; empty: the image has none (libvirt gets an explicit
    # <backingStore/> either way and never probes a header for one).
    backing: tuple[BackingSpec, ...] = ()

    def __post_init__(self) -> None:
        validate_dns_label(self.name, "disk name")
        object.__setattr__(self, "backing", tuple(self.backing))
        if any(not isinstance(b, BackingSpec) for b in self.backing):
            raise ValueError(f"backing of disk {self.name!r} must hold BackingSpec objects")
        if self.backing and self.format == "raw":
            raise ValueError(f"disk {self.name!r} is raw: a raw image has no backing file")
        for upper, lower in zip(self.backing, self.backing[1:], strict=False):
            if upper.format == "raw":
                raise ValueError(f"backing file {upper.path!r} of disk {self.name!r} is raw but has a backing file "
                                 f"({lower.path!r})")
        _check_abs_path(self.path, f"path of disk {self.name!r}")
        _check_choice(self.format, DISK_FORMATS, f"format of disk {self.name!r}")
        _check_choice(self.bus, DISK_BUSES, f"bus of disk {self.name!r}")
        if self.boot_order is not None and (
            isinstance(self.boot_order, bool) or not isinstance(self.boot_order, int) or self.boot_order < 1
        ):
            raise ValueError(f"boot_order of disk {self.name!r} must be a positive integer, got {self.boot_order!r}")


_PCI_ADDR_RE: Final = re.compile(
    r"(?P<domain>[0-9a-fA-F]{4}):(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-1][0-9a-fA-F])\.(?P<function>[0-7])"
)


@dataclass(frozen=True)
class PCIAddress:
    """A host PCI address in sysfs form, ``DDDD:BB:SS.F``."""

    domain: int
    bus: int
    slot: int
    function: int

    LIMITS: ClassVar[dict[str, int]] = {"domain": 0xFFFF, "bus": 0xFF, "slot": 0x1F, "function": 0x7}

    def __post_init__(self) -> None:
        for field, limit in self.LIMITS.items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                raise ValueError(f"PCI {field} must be an integer in 0..{limit:#x}, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> PCIAddress:
        """Parse ``"0000:3b:02.1"`` (4-digit domain, 2-digit bus and slot, 1-digit function)."""
        m = _PCI_ADDR_RE.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(
                f"invalid PCI address {text!r}: expected DDDD:BB:SS.F in hex, "
                "slot 00-1f and function 0-7, e.g. 0000:3b:02.1"
            )
        return cls(
            domain=int(m["domain"], 16),
            bus=int(m["bus"], 16),
            slot=int(m["slot"], 16),
            function=int(m["function"], 16),
        )

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    def xml_attrs(self) -> dict[str, str]:
        """The attributes of a libvirt ``<address type='pci'/>`` for this address."""
        return {
            "domain": f"0x{self.domain:04x}",
            "bus": f"0x{self.bus:02x}",
            "slot": f"0x{self.slot:02x}",
            "function": f"0x{self.function:x}",
        }


@dataclass(frozen=True)
class StandbySpec:
    """Host side of the virtio standby NIC.

    - ``bridge``: ``source`` is a Linux bridge name;
    - ``direct``: macvtap on the netdev ``source`` (typically the PF), ``mode`` one of
      bridge/passthrough/vepa/private;
    - ``network``: ``source`` is a libvirt network name.

    ``mode`` only applies to ``direct`` and must stay ``"bridge"`` otherwise.
    """

    type: StandbyType
    source: str
    mode: str = "bridge"

    def __post_init__(self) -> None:
        _check_choice(self.type, STANDBY_TYPES, "standby type")
        if self.type == "network":
            if not isinstance(self.source, str) or not _NETNAME_RE.fullmatch(self.source):
                raise ValueError(f"invalid libvirt network name {self.source!r}")
        elif not isinstance(self.source, str) or not _IFNAME_RE.fullmatch(self.source):
            raise ValueError(
                f"invalid {self.type} source {self.source!r}: expected a host interface name "
                "of 1-15 characters from [A-Za-z0-9_.-]"
            )
        if self.type == "direct":
            _check_choice(self.mode, DIRECT_MODES, "macvtap mode")
        elif self.mode != "bridge":
            raise ValueError(f"mode {self.mode!r} only applies to a 'direct' standby, not {self.type!r}")


@dataclass(frozen=True)
class DomainSpec:
    """Everything needed to build one FailoverVM's libvirt domain.

    ``name`` is the libvirt domain name (see :func:`~failovervm.domxml.names.domain_name`);
    ``namespace``/``vm_name``/``vm_uid`` identify the owning FailoverVM and go into the
    domain's metadata. ``mac`` is shared by the virtio standby and the VF. ``vf`` is the
    VF's host PCI address, allocated on node ``vf_node``; ``None`` means no VF yet.
    ``pcie_root_ports`` is the minimum number of pcie-root-port controllers; more are
    emitted when the devices need them, always keeping one for the VF.
    """

    name: str
    uuid: str
    namespace: str
    vm_name: str
    vm_uid: str
    vcpus: int
    memory_mib: int
    mac: str
    disks: tuple[DiskSpec, ...]
    standby: StandbySpec
    vf: PCIAddress | None
    vf_node: str | None = None
    accel: Accel = "kvm"
    rom_enabled: bool = False
    pcie_root_ports: int = 8
    serial_log: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    emulator: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name or "\n" in self.name:
            raise ValueError(f"invalid domain name {self.name!r}: must be non-empty, without '/' or newline")
        try:
            canonical_uuid = str(uuidlib.UUID(self.uuid))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"invalid domain UUID {self.uuid!r}") from None
        object.__setattr__(self, "uuid", canonical_uuid)
        validate_dns_label(self.namespace, "namespace", MAX_NAMESPACE_LEN)
        validate_dns_subdomain(self.vm_name, "VM name", MAX_VM_NAME_LEN)
        if not isinstance(self.vm_uid, str) or not self.vm_uid.strip():
            raise ValueError("vm_uid must be a non-empty string")
        for field in ("vcpus", "memory_mib"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        object.__setattr__(self, "mac", validate_mac(self.mac))

        disks = tuple(self.disks)
        object.__setattr__(self, "disks", disks)
        for disk in disks:
            if not isinstance(disk, DiskSpec):
                raise ValueError(f"disks must hold DiskSpec objects, got {disk!r}")
        names = [d.name for d in disks]
        dup_names = sorted({n for n in names if names.count(n) > 1})
        if dup_names:
            raise ValueError(f"duplicate disk names: {', '.join(dup_names)}")
        orders = [d.boot_order for d in disks if d.boot_order is not None]
        dup_orders = sorted({o for o in orders if orders.count(o) > 1})
        if dup_orders:
            raise ValueError(f"duplicate disk boot_order values: {', '.join(map(str, dup_orders))}")

        if not isinstance(self.standby, StandbySpec):
            raise ValueError(f"standby must be a StandbySpec, got {self.standby!r}")
        if self.vf is not None and not isinstance(self.vf, PCIAddress):
            raise ValueError(f"vf must be a PCIAddress or None, got {self.vf!r}")
        if self.vf_node is not None:
            if self.vf is None:
                raise ValueError("vf_node is set but vf is not")
            validate_dns_subdomain(self.vf_node, "vf_node")
        _check_choice(self.accel, ACCELS, "accel")
        if (
            isinstance(self.pcie_root_ports, bool)
            or not isinstance(self.pcie_root_ports, int)
            or not 0 <= self.pcie_root_ports <= MAX_PCIE_ROOT_PORTS
        ):
            raise ValueError(
                f"pcie_root_ports must be an integer in 0..{MAX_PCIE_ROOT_PORTS}, got {self.pcie_root_ports!r}"
            )

        for field in ("serial_log", "kernel", "initrd", "emulator"):
            value = getattr(self, field)
            if value is not None:
                _check_abs_path(value, field)
        if self.kernel is None and (self.initrd is not None or self.cmdline is not None):
            raise ValueError("initrd and cmdline need kernel (direct kernel boot)")
        if self.cmdline is not None and (not isinstance(self.cmdline, str) or "\x00" in self.cmdline):
            raise ValueError("cmdline must be a string without NUL characters")
