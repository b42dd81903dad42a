"""The generated domain XML against libvirt's test driver (no daemon, no QEMU).

Each test opens ``test://<tmp_path>/node.xml``: a private, file-defined host. The
``test:///default`` driver is shared by the whole process and is deliberately not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from failovervm.domxml import (
    METADATA_NS,
    STANDBY_ALIAS,
    VF_ALIAS,
    DiskSpec,
    DomainSpec,
    OwnerRef,
    PCIAddress,
    StandbySpec,
    build_domain,
    check_teaming,
    domain_name,
    generate_mac,
    parse_owner,
    parse_xml,
    to_xml,
)

pytestmark = pytest.mark.integration

UID = "3c9a1f0e-7b2d-4e5f-8a6b-1c2d3e4f5a6b"

# The test driver's host description; see https://libvirt.org/drvtest.html.
NODE_XML = """\
<node>
  <cpu>
    <mhz>2000</mhz>
    <model>i686</model>
    <active>2</active>
    <nodes>1</nodes>
    <sockets>1</sockets>
    <cores>2</cores>
    <threads>1</threads>
  </cpu>
  <memory>4194304</memory>
</node>
"""


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Any]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    c = libvirt.open(f"test://{node}")
    try:
        assert c.listAllDomains() == [], "a file-defined test host starts empty"
        yield c
    finally:
        c.close()


def attrs(el: etree._Element) -> dict[str, str]:
    """The attributes of ``el`` as a plain dict."""
    return {str(k): str(v) for k, v in el.items()}


def req(el: etree._Element, path: str) -> etree._Element:
    found = el.find(path)
    assert found is not None, f"no {path} in <{el.tag}>"
    return found


def attr(el: etree._Element, name: str) -> str:
    value = el.get(name)
    assert value is not None, f"<{el.tag}> has no {name}="
    return value


def make_spec() -> DomainSpec:
    return DomainSpec(
        name=domain_name("default", "pair"),
        uuid="9b2e4d6f-1a3c-4e5f-8d7c-6b5a4f3e2d1c",
        namespace="default",
        vm_name="pair",
        vm_uid=UID,
        vcpus=1,
        memory_mib=128,
        mac=generate_mac(UID),
        disks=(DiskSpec("root", "/var/lib/failovervm/pair.qcow2", "qcow2", "virtio", boot_order=1),),
        standby=StandbySpec("bridge", "br-fvm"),
        vf=PCIAddress.parse("0000:3b:02.1"),
        vf_node="node-a",
        serial_log="/var/log/failovervm/pair.log",
    )


def test_full_pair_define_start_readback(conn: Any) -> None:
    spec = make_spec()
    dom = conn.defineXML(to_xml(build_domain(spec)))
    try:
        dom.create()
        assert dom.isActive()
        live = parse_xml(dom.XMLDesc(0))

        ifaces = live.findall("devices/interface")
        assert [i.get("type") for i in ifaces] == ["bridge", "hostdev"]
        standby, vf = ifaces
        assert [req(i, "mac").get("address") for i in ifaces] == [spec.mac, spec.mac]
        assert req(standby, "model").get("type") == "virtio"
        assert attrs(req(standby, "teaming")) == {"type": "persistent"}
        assert req(standby, "alias").get("name") == STANDBY_ALIAS
        assert attrs(req(vf, "teaming")) == {"type": "transient", "persistent": STANDBY_ALIAS}
        assert req(vf, "alias").get("name") == VF_ALIAS
        assert vf.get("managed") == "yes"
        addr = req(vf, "source/address")
        fields = (int(attr(addr, f), 16) for f in ("domain", "bus", "slot", "function"))
        assert PCIAddress(*fields) == spec.vf
        check_teaming(live)

        owner = OwnerRef("default", "pair", UID)
        assert parse_owner(live) == owner
        # What virDomainGetMetadata returns for our namespace parses too.
        assert parse_owner(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)) == owner

        # The persistent config holds the same pair.
        inactive = parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        check_teaming(inactive)
        assert len(inactive.findall("devices/interface")) == 2
        assert req(live, "devices/serial/source").get("append") == "on"

        dom.destroy()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    assert conn.listAllDomains() == []


def test_persistent_definition_without_vf(conn: Any) -> None:
    spec = make_spec()
    dom = conn.defineXML(to_xml(build_domain(spec, include_vf=False)))
    try:
        xml = parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        ifaces = xml.findall("devices/interface")
        assert len(ifaces) == 1 and req(ifaces[0], "teaming").get("type") == "persistent"
        assert req(ifaces[0], "mac").get("address") == spec.mac
        check_teaming(xml)
        assert parse_owner(xml) == OwnerRef("default", "pair", UID)
    finally:
        dom.undefine()


def test_foreign_domain_has_no_owner(conn: Any) -> None:
    dom = conn.defineXML(
        "<domain type='test'><name>foreign</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
    )
    try:
        assert parse_owner(dom.XMLDesc(0)) is None
    finally:
        dom.undefine()
