"""The generated domain XML on libvirt's real QEMU driver (a sandbox libvirt host)."""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from failovervm import domxml
from tests.conftest import Sandbox, remove_domain

pytestmark = pytest.mark.integration


def _foreign(el: etree._Element) -> str:
    """The XML without the operator's <metadata>: the session sandbox may run the operator, whose
    agents rightly remove operator-owned domains that have no FailoverVM."""
    md = el.find("metadata")
    if md is not None:
        el.remove(md)
    return domxml.to_xml(el)


def _spec(sb: Sandbox, name: str, vf: str | None = "0000:3b:02.0") -> domxml.DomainSpec:
    return domxml.DomainSpec(
        name=name, uuid=str(uuid.uuid4()), namespace="it", vm_name=name.split("_")[-1], vm_uid=str(uuid.uuid4()),
        vcpus=1, memory_mib=32, mac=domxml.generate_mac(name),
        disks=(domxml.DiskSpec("boot", str(sb.images_dir / "halt.img"), "raw", "virtio", True, 1),),
        standby=domxml.StandbySpec("bridge", sb.data["bridge"]),
        vf=domxml.PCIAddress.parse(vf) if vf else None,
        accel="kvm" if sb.data["accel"] == "kvm" else "qemu",
    )


def test_qemu_driver_accepts_the_full_failover_pair(sandbox: Sandbox) -> None:
    """The QEMU driver runs libvirt's teaming validation at define time (virtio persistent member,
    hostdev transient member, QEMU with failover support)."""
    conn = libvirt.open(sandbox.nodes[0]["uri"])
    name = "fvm_it_fullpair"
    try:
        spec = _spec(sandbox, name)
        dom = conn.defineXML(_foreign(domxml.build_domain(spec, include_vf=True)))
        xml = domxml.parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        nics = xml.findall("devices/interface")
        assert {n.get("type") for n in nics} == {"bridge", "hostdev"}
        assert {n.find("mac").get("address") for n in nics} == {spec.mac}
        hostdev = next(n for n in nics if n.get("type") == "hostdev")
        assert hostdev.find("teaming").get("type") == "transient"
        assert hostdev.find("teaming").get("persistent") == domxml.STANDBY_ALIAS
        assert domxml.parse_owner(domxml.build_domain(spec, include_vf=True)) is not None
    finally:
        try:
            conn.lookupByName(name).undefine()
        except libvirt.libvirtError:
            pass
        conn.close()


def test_qemu_driver_rejects_a_non_virtio_persistent_member(sandbox: Sandbox) -> None:
    """Shows what libvirt's own validation catches (and that our builder never emits)."""
    conn = libvirt.open(sandbox.nodes[0]["uri"])
    try:
        xml = domxml.build_domain(_spec(sandbox, "fvm_it_e1000e", vf=None), include_vf=False)
        xml.find("devices/interface/model").set("type", "e1000e")
        with pytest.raises(libvirt.libvirtError, match="must be <model type='virtio'/>"):
            conn.defineXML(_foreign(xml))
    finally:
        conn.close()


def test_domain_without_vf_starts_and_takes_a_vf_hotplug_attempt(sandbox: Sandbox) -> None:
    """The persistent definition (virtio only) starts; the VF hot-plug then reaches the host's
    PCI passthrough check, which fails here because there is no VFIO/SR-IOV hardware."""
    conn = libvirt.open(sandbox.nodes[1]["uri"])
    name = "fvm_it_hotplug"
    spec = _spec(sandbox, name)
    try:
        dom = conn.defineXML(_foreign(domxml.build_domain(spec, include_vf=False)))
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            log = Path(sandbox.nodes[1]["root"]) / "var_log_libvirt" / "qemu" / f"{name}.log"
            pytest.fail(f"start failed: {exc}\nQEMU log:\n{log.read_text() if log.exists() else '(none)'}")
        with pytest.raises(libvirt.libvirtError, match="passthrough of host PCI devices"):
            dom.attachDeviceFlags(domxml.build_vf_interface_xml(spec), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert dom.isActive()
    finally:
        remove_domain(conn, name)
        conn.close()


def test_failover_probe_on_real_qemu_reads_the_standby_state(sandbox: Sandbox) -> None:
    """x-query-virtio-status through libvirt's monitor passthrough: QEMU offers STANDBY on the
    teaming NIC; the halt-sector guest has no driver, so nothing is acknowledged."""
    from failovervm import guestfailover
    from failovervm.agent.libvirt_domains import LibvirtDomainManager

    conn = libvirt.open(sandbox.nodes[0]["uri"])
    dom = conn.createXML(_foreign(domxml.build_domain(_spec(sandbox, "fvm_it_probe", vf=None), include_vf=False)), 0)
    try:
        dm = LibvirtDomainManager(conn)
        ref = dm.lookup(dom.name())
        assert ref is not None
        probe = dm.failover_probe(ref)
        assert probe.offered and not probe.negotiated and not probe.driver_ok
        assert guestfailover.condition(probe)[1:3] == (False, "GuestDriverNotNegotiated")
    finally:
        dom.destroy()
        conn.close()


def test_failover_probe_of_a_domain_without_the_alias_fails_cleanly(sandbox: Sandbox) -> None:
    from failovervm import guestfailover

    conn = libvirt.open(sandbox.nodes[0]["uri"])
    el = domxml.build_domain(_spec(sandbox, "fvm_it_noalias", vf=None), include_vf=False)
    for alias in el.iterfind("devices/interface/alias"):
        alias.getparent().remove(alias)
    dom = conn.createXML(_foreign(el), 0)
    try:
        import libvirt_qemu

        with pytest.raises(ValueError, match="QMP error"):
            guestfailover.parse_status(libvirt_qemu.qemuMonitorCommand(dom, guestfailover.status_command(), 0))
    finally:
        dom.destroy()
        conn.close()
