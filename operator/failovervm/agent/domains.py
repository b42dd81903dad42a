"""DomainManager: the agent's synchronous interface over one libvirt connection.

Modelled on KubeVirt's DomainManager: every libvirt operation the agent performs goes
through here, so the reconcile logic never touches libvirt-python directly. Calls are
blocking; the async agent runs them with asyncio.to_thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
from lxml import etree

from failovervm import domxml, guestfailover

SHUTDOWN_TIMEOUT = 60.0


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    active: bool
    state: int
    reason: int
    owner: domxml.OwnerRef | None


class DomainManager:
    def __init__(self, conn: libvirt.virConnect) -> None:
        self.conn = conn

    # -- queries -------------------------------------------------------------------
    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def info(self, dom: libvirt.virDomain) -> DomainInfo:
        state, reason = dom.state()
        return DomainInfo(
            name=dom.name(), uuid=dom.UUIDString(), active=bool(dom.isActive()), state=state, reason=reason,
            owner=domxml.parse_owner(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)),
        )

    def owned_domains(self) -> list[DomainInfo]:
        """Domains carrying failovervm metadata; others are never touched."""
        out = []
        for dom in self.conn.listAllDomains():
            try:
                info = self.info(dom)
            except libvirt.libvirtError:
                continue  # vanished meanwhile
            if info.owner is not None:
                out.append(info)
        return out

    def kvm_available(self) -> bool:
        try:
            caps = self.conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0)
        except libvirt.libvirtError:
            return False
        return etree.fromstring(caps.encode()).findtext("domain") == "kvm"

    def live_xml(self, dom: libvirt.virDomain) -> etree._Element:
        return domxml.parse_xml(dom.XMLDesc(0))

    def has_vf(self, dom: libvirt.virDomain) -> bool:
        xml = self.live_xml(dom)
        return any(a.get("name") == domxml.VF_ALIAS for a in xml.iterfind("devices/interface/alias"))

    def failover_probe(self, dom: libvirt.virDomain) -> guestfailover.FailoverProbe:
        """What the guest's virtio-net driver acknowledged on the standby NIC (QEMU monitor
        passthrough; libvirt marks the domain tainted "custom-monitor", which is harmless).
        Raises libvirt.libvirtError or ValueError."""
        reply = libvirt_qemu.qemuMonitorCommand(dom, guestfailover.status_command(), 0)
        return guestfailover.parse_status(reply)

    # -- changes ---------------------------------------------------------------------
    def define(self, xml: str) -> libvirt.virDomain:
        return self.conn.defineXML(xml)

    def start(self, dom: libvirt.virDomain) -> None:
        dom.create()

    def resume(self, dom: libvirt.virDomain) -> None:
        dom.resume()

    def stop(self, dom: libvirt.virDomain, timeout: float = SHUTDOWN_TIMEOUT) -> str:
        """Graceful ACPI shutdown, then destroy after `timeout`. Returns how it stopped."""
        if not dom.isActive():
            return "inactive"
        if timeout <= 0:
            self.destroy(dom)
            return "destroyed"
        try:
            dom.shutdown()
        except libvirt.libvirtError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return "shutdown"
            time.sleep(0.5)
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise exc
        return "destroyed"

    def destroy(self, dom: libvirt.virDomain) -> None:
        if dom.isActive():
            dom.destroy()

    def undefine(self, dom: libvirt.virDomain) -> None:
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise

    def attach_vf(self, dom: libvirt.virDomain, spec: domxml.DomainSpec) -> None:
        """Hot-plug the VF as the transient teaming member (live only: the persistent
        definition stays startable when the VF is broken)."""
        xml = domxml.build_vf_interface_xml(spec)
        domxml.check_teaming(self.live_xml(dom), extra_devices=[domxml.parse_xml(xml)])
        dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)


def real_pci_device_exists(pci_address: str) -> bool:
    """Whether the host really has this PCI device (guards simulated addresses)."""
    return Path("/sys/bus/pci/devices", pci_address).exists()
