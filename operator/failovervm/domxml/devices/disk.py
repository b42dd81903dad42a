"""File-backed disks."""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from ..names import disk_alias
from ..spec import DiskSpec
from ..xmlutil import element, sub

#: Guest device-name prefix per bus; SATA and SCSI share the ``sd`` namespace.
TARGET_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd"}


def target_dev(prefix: str, index: int) -> str:
    """``target_dev("vd", 0) == "vda"``, ``25 -> "vdz"``, ``26 -> "vdaa"`` (as the kernel names them)."""
    if index < 0:
        raise ValueError(f"disk index must be >= 0, got {index}")
    suffix = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        suffix = chr(ord("a") + rem) + suffix
    return prefix + suffix


def build_disk(disk: DiskSpec, dev: str) -> etree._Element:
    """One ``<disk type='file'>`` with guest device name ``dev``.

    A read-only SATA disk becomes a CD-ROM: QEMU refuses read-only SATA hard disks.
    """
    device = "cdrom" if disk.read_only and disk.bus == "sata" else "disk"
    el = element("disk", type="file", device=device)
    sub(el, "driver", name="qemu", type=disk.format)
    sub(el, "source", file=disk.path)
    _backing_store(el, disk)
    sub(el, "target", dev=dev, bus=disk.bus)
    if disk.boot_order is not None:
        sub(el, "boot", order=str(disk.boot_order))
    if disk.read_only:
        sub(el, "readonly")
    sub(el, "alias", name=disk_alias(disk.name))
    return el


def _backing_store(el: etree._Element, disk: DiskSpec) -> None:
    """The explicit backing chain: nested ``<backingStore type='file'>`` per declared backing file,
    ended by an empty ``<backingStore/>``, so libvirt opens exactly these files in these formats and
    never follows a backing file named in an image's header."""
    parent = el
    for layer in disk.backing:
        parent = sub(parent, "backingStore", type="file")
        sub(parent, "format", type=layer.format)
        sub(parent, "source", file=layer.path)
    sub(parent, "backingStore")


def build_disks(disks: Sequence[DiskSpec]) -> list[etree._Element]:
    """All disks, in order, with guest device names assigned per prefix (vda.., sda..)."""
    counters: dict[str, int] = {}
    out = []
    for disk in disks:
        prefix = TARGET_PREFIX[disk.bus]
        index = counters.get(prefix, 0)
        counters[prefix] = index + 1
        out.append(build_disk(disk, target_dev(prefix, index)))
    return out
