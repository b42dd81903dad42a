"""restart_diff: what changes at the next restart, without false positives from runtime details."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from failovervm.domxml.diff import restart_diff

GOLDEN = Path(__file__).parent / "golden"


def live_copy(xml: str) -> str:
    """What libvirt's live XML adds to a persistent definition: an id, aliases, PCI addresses,
    the bridge behind a network, a memory size in KiB, the hot-plugged VF."""
    el = etree.fromstring(xml.encode())
    el.set("id", "7")
    mem = el.find("memory")
    mib = int(mem.text)
    mem.text, mem.attrib["unit"] = str(mib * 1024), "KiB"
    for n, dev in enumerate(el.find("devices")):
        etree.SubElement(dev, "alias", name=f"ua-x{n}")
        etree.SubElement(dev, "address", type="pci", domain="0x0000", bus="0x01", slot=f"0x{n:02x}", function="0x0")
    for iface in el.iterfind("devices/interface[@type='network']"):
        iface.set("type", "bridge")  # libvirt reports the network's actual type in the live XML
        src = iface.find("source")
        src.set("bridge", "fvmsbr0n1")
        src.set("portid", "1b2c")
    vf = etree.SubElement(el.find("devices"), "interface", type="hostdev", managed="yes")
    etree.SubElement(vf, "source").append(etree.Element("address", type="pci", domain="0x0000", bus="0x3b",
                                                       slot="0x02", function="0x1"))
    return etree.tostring(el, encoding="unicode")


def test_running_domain_matches_its_definition() -> None:
    domains = [g for g in GOLDEN.glob("*.xml") if etree.fromstring(g.read_bytes()).tag == "domain"]
    assert len(domains) >= 5 and any("network" in g.name for g in domains)
    for golden in domains:
        xml = golden.read_text()
        assert restart_diff(live_copy(xml), xml) == [], golden.name


def test_spec_changes_are_named() -> None:
    xml = (GOLDEN / "kernel_tcg_serial.xml").read_text()
    nxt = etree.fromstring(xml.encode())
    mem = nxt.find("memory")
    before = int(mem.text)
    mem.text = str(before * 2)
    nxt.find("vcpu").text = "2"
    nxt.find("os/cmdline").text = "console=ttyS0 quiet"
    changes = restart_diff(live_copy(xml), etree.tostring(nxt, encoding="unicode"))
    assert changes[0] == f"memory {before} MiB -> {before * 2} MiB"
    assert changes[1].startswith("vCPUs 1 -> 2")
    assert changes[2].startswith("kernel command line ") and changes[2].endswith("-> console=ttyS0 quiet")
    assert len(changes) == 3
