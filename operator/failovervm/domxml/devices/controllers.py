"""Controllers: the q35 PCIe root complex, hot-pluggable root ports, USB off, virtio-scsi when needed."""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from ..spec import DiskSpec, DomainSpec
from ..xmlutil import element


def pcie_devices_needed(disks: Sequence[DiskSpec]) -> int:
    """PCIe endpoints of the full failover pair that each take a root port on q35.

    Every virtio disk, the virtio-scsi controller (if any SCSI disk), the virtio
    standby NIC and a slot for the VF. SATA disks sit on the chipset's AHCI
    controller, serial ports on ISA; USB and the balloon are disabled.
    """
    virtio_disks = sum(1 for d in disks if d.bus == "virtio")
    scsi_controller = 1 if any(d.bus == "scsi" for d in disks) else 0
    return virtio_disks + scsi_controller + 1 + 1


def root_port_count(spec: DomainSpec) -> int:
    """Number of pcie-root-port controllers: ``spec.pcie_root_ports``, but at least enough
    for every device of the full pair, so the VF can always be hot-plugged.

    The VF's slot is counted whether or not the VF is in this XML, so the persistent
    definition and the live domain have the same controllers.
    """
    return max(spec.pcie_root_ports, pcie_devices_needed(spec.disks))


def build_controllers(spec: DomainSpec) -> list[etree._Element]:
    """``pcie-root`` (index 0), the root ports (1..N), ``usb model='none'`` and, if a disk
    uses the SCSI bus, a ``virtio-scsi`` controller."""
    controllers = [element("controller", type="pci", index="0", model="pcie-root")]
    controllers.extend(
        element("controller", type="pci", index=str(i), model="pcie-root-port")
        for i in range(1, root_port_count(spec) + 1)
    )
    controllers.append(element("controller", type="usb", index="0", model="none"))
    if any(d.bus == "scsi" for d in spec.disks):
        controllers.append(element("controller", type="scsi", index="0", model="virtio-scsi"))
    return controllers
