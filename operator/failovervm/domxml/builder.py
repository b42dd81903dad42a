"""Assemble a FailoverVM's libvirt domain XML from a :class:`DomainSpec`.

The result validates against libvirt's ``domain.rng``. Nothing host-specific goes
in: no host CPU model, no host paths other than those in the spec.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Final

from lxml import etree

from .devices.controllers import build_controllers
from .devices.disk import build_disks
from .devices.hostdev import build_vf_interface
from .devices.interface import build_standby_interface
from .devices.metadata import build_metadata
from .devices.serial import build_serial_console
from .spec import DomainSpec
from .xmlutil import element, sub, to_xml

__all__ = ["ARCH", "CPU_MODEL", "MACHINE", "build_domain", "build_vf_interface_xml", "check_teaming", "to_xml"]

ARCH: Final = "x86_64"
MACHINE: Final = "q35"
#: QEMU's own default x86 model, named explicitly: identical on every host, so
#: migration never depends on the hosts' CPUs (host-passthrough/host-model fail here).
CPU_MODEL: Final = "qemu64"


def build_domain(spec: DomainSpec, include_vf: bool = True) -> etree._Element:
    """Return the ``<domain>`` element for ``spec``.

    With ``include_vf`` and ``spec.vf`` set, the VF is in the XML as the transient
    member of the team; otherwise only the virtio standby is, and the VF is
    hot-plugged later with :func:`build_vf_interface_xml`.
    """
    dom = element("domain", type=spec.accel)
    sub(dom, "name", spec.name)
    sub(dom, "uuid", spec.uuid)
    dom.append(build_metadata(spec.namespace, spec.vm_name, spec.vm_uid, vf_node=spec.vf_node))
    sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    sub(dom, "currentMemory", str(spec.memory_mib), unit="MiB")
    sub(dom, "vcpu", str(spec.vcpus), placement="static")
    dom.append(_build_os(spec))
    features = sub(dom, "features")
    sub(features, "acpi")
    sub(features, "apic")
    cpu = sub(dom, "cpu", mode="custom", match="exact", check="none")
    sub(cpu, "model", CPU_MODEL, fallback="forbid")
    clock = sub(dom, "clock", offset="utc")
    sub(clock, "timer", name="rtc", tickpolicy="catchup")
    sub(clock, "timer", name="pit", tickpolicy="delay")
    sub(clock, "timer", name="hpet", present="no")
    sub(dom, "on_poweroff", "destroy")
    sub(dom, "on_reboot", "restart")
    sub(dom, "on_crash", "destroy")

    devices = sub(dom, "devices")
    if spec.emulator is not None:
        sub(devices, "emulator", spec.emulator)
    devices.extend(build_disks(spec.disks))
    devices.extend(build_controllers(spec))
    devices.append(build_standby_interface(spec.standby, spec.mac, rom_enabled=spec.rom_enabled))
    if include_vf and spec.vf is not None:
        devices.append(build_vf_interface(spec.vf, spec.mac))
    devices.extend(build_serial_console(spec.serial_log))
    sub(devices, "memballoon", model="none")

    check_teaming(dom)
    return dom


def _build_os(spec: DomainSpec) -> etree._Element:
    os_el = element("os")
    sub(os_el, "type", "hvm", arch=ARCH, machine=MACHINE)
    if spec.kernel is not None:
        sub(os_el, "kernel", spec.kernel)
        if spec.initrd is not None:
            sub(os_el, "initrd", spec.initrd)
        if spec.cmdline is not None:
            sub(os_el, "cmdline", spec.cmdline)
    elif not any(d.boot_order is not None for d in spec.disks):
        # Per-device <boot order> and <os><boot dev> are mutually exclusive in libvirt.
        sub(os_el, "boot", dev="hd")
    return os_el


def build_vf_interface_xml(spec: DomainSpec) -> str:
    """The VF ``<interface type='hostdev'>`` alone, for ``virDomainAttachDeviceFlags``."""
    if spec.vf is None:
        raise ValueError(f"domain {spec.name!r} has no VF to attach")
    return to_xml(build_vf_interface(spec.vf, spec.mac))


def _describe(iface: etree._Element) -> str:
    alias = iface.find("alias")
    name = alias.get("name") if alias is not None else None
    return f"<interface type={iface.get('type')!r}" + (f" alias={name!r}>" if name else ">")


def _mac_of(iface: etree._Element) -> str | None:
    mac = iface.find("mac")
    address = mac.get("address") if mac is not None else None
    return address.lower() if address else None


def check_teaming(domain_el: etree._Element, extra_devices: Iterable[etree._Element] = ()) -> None:
    """Raise :class:`ValueError` unless every failover team in the domain is well formed.

    ``extra_devices`` are checked as if appended to ``<devices>`` (e.g. a VF about to be
    attached to a live domain); ``domain_el`` is not modified. libvirt checks none of
    the cross references on ``attach --config``; this does:

    - a persistent member is a ``<model type='virtio'/>`` NIC with a ``ua-`` alias;
    - a transient member is ``type='hostdev'`` or ``'network'`` and its ``persistent=``
      names exactly one persistent member in the same domain;
    - each persistent member has at most one transient member;
    - both members carry the same, explicit MAC (the guest pairs them by MAC).
    """
    if domain_el.tag != "domain":
        raise ValueError(f"expected a <domain> element, got <{domain_el.tag}>")
    devices = domain_el.find("devices")
    extras = list(extra_devices)
    if extras:
        devices = copy.deepcopy(devices) if devices is not None else etree.Element("devices")
        devices.extend(copy.deepcopy(e) for e in extras)
    if devices is None:
        return

    # Only user aliases (ua-*) must be unique: in a live domain libvirt gives the
    # <console> the same alias as the <serial> it mirrors (serial0).
    aliases: dict[str, int] = {}
    for dev in devices:
        alias = dev.find("alias")
        name = alias.get("name") if alias is not None else None
        if name and name.startswith("ua-"):
            aliases[name] = aliases.get(name, 0) + 1
    dup = sorted(a for a, n in aliases.items() if n > 1)
    if dup:
        raise ValueError(f"device alias used more than once: {', '.join(dup)}")

    persistent: dict[str, etree._Element] = {}
    transient: list[tuple[etree._Element, str]] = []
    for iface in devices.iterfind("interface"):
        teaming = iface.find("teaming")
        if teaming is None:
            continue
        kind = teaming.get("type")
        if kind == "persistent":
            alias = iface.find("alias")
            name = alias.get("name") if alias is not None else None
            if not name or not name.startswith("ua-"):
                raise ValueError(
                    f"{_describe(iface)} is a persistent teaming member without a user alias "
                    "('ua-...'), so no transient member can refer to it"
                )
            model = iface.find("model")
            if model is None or model.get("type") != "virtio":
                raise ValueError(f"{_describe(iface)}: a persistent teaming member must be <model type='virtio'/>")
            persistent[name] = iface
        elif kind == "transient":
            ref = teaming.get("persistent")
            if not ref:
                raise ValueError(f"{_describe(iface)}: transient teaming member lacks persistent=")
            if iface.get("type") not in ("hostdev", "network"):
                raise ValueError(f"{_describe(iface)}: a transient teaming member must be type 'hostdev' or 'network'")
            transient.append((iface, ref))
        else:
            raise ValueError(f"{_describe(iface)}: unknown teaming type {kind!r}")

    paired: dict[str, etree._Element] = {}
    for iface, ref in transient:
        standby = persistent.get(ref)
        if standby is None:
            known = ", ".join(sorted(persistent)) or "none"
            raise ValueError(
                f"{_describe(iface)}: teaming persistent={ref!r} names no persistent virtio interface "
                f"in this domain (persistent members: {known})"
            )
        if ref in paired:
            raise ValueError(f"persistent member {ref!r} has more than one transient member")
        paired[ref] = iface
        mac_t, mac_p = _mac_of(iface), _mac_of(standby)
        if mac_t is None or mac_p is None:
            raise ValueError(f"teaming pair {ref!r}: both members need an explicit <mac address=.../>")
        if mac_t != mac_p:
            raise ValueError(f"teaming pair {ref!r}: MACs differ ({mac_p} on the standby, {mac_t} on the VF)")
