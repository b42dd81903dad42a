"""Unit tests for failovervm.domxml: golden files, libvirt RelaxNG validation, parsing edge cases.

Regenerate the golden files with ``UPDATE_GOLDEN=1 pytest tests/unit/test_domxml.py``
and review the diff before committing it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from failovervm.domxml import (
    MAX_VM_NAME_LEN,
    METADATA_NS,
    STANDBY_ALIAS,
    VF_ALIAS,
    BackingSpec,
    DiskSpec,
    DomainSpec,
    OwnerRef,
    PCIAddress,
    StandbySpec,
    build_domain,
    build_owner_element,
    build_vf_interface_xml,
    check_teaming,
    domain_name,
    generate_mac,
    normalize_mac,
    parse_domain_name,
    parse_owner,
    parse_xml,
    to_xml,
    validate_mac,
)
from failovervm.domxml.devices.controllers import pcie_devices_needed, root_port_count
from failovervm.domxml.devices.disk import target_dev
from tests.prereq import require

GOLDEN_DIR = Path(__file__).parent / "golden"
DOMAIN_RNG = Path("/usr/share/libvirt/schemas/domain.rng")

UID = "0d7f6c1e-4a8b-4c2d-9e3f-5a6b7c8d9e0f"
DOM_UUID = "6f1c2a4e-3b5d-4c7e-9f10-2a3b4c5d6e7f"


def make_spec(**overrides: Any) -> DomainSpec:
    base = DomainSpec(
        name=domain_name("default", "web-1"),
        uuid=DOM_UUID,
        namespace="default",
        vm_name="web-1",
        vm_uid=UID,
        vcpus=2,
        memory_mib=512,
        mac=generate_mac(UID),
        disks=(DiskSpec("root", "/var/lib/failovervm/default/web-1/root.qcow2", "qcow2", "virtio"),),
        standby=StandbySpec("bridge", "br-fvm"),
        vf=PCIAddress.parse("0000:3b:02.1"),
        vf_node="node-a",
    )
    return dataclasses.replace(base, **overrides)


def attrs(el: etree._Element) -> dict[str, str]:
    """The attributes of ``el`` as a plain dict."""
    return {str(k): str(v) for k, v in el.items()}


def req(el: etree._Element, path: str) -> etree._Element:
    """``el.find(path)``, asserting that it found something."""
    found = el.find(path)
    assert found is not None, f"no {path} in <{el.tag}>"
    return found


def assert_golden(name: str, text: str) -> None:
    """Compare ``text`` with tests/unit/golden/<name>.xml; rewrite it when UPDATE_GOLDEN=1."""
    path = GOLDEN_DIR / f"{name}.xml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"golden file {path} is missing; regenerate with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs; regenerate with UPDATE_GOLDEN=1"


# name -> (spec factory, include_vf)
CASES: dict[str, tuple[Callable[[], DomainSpec], bool]] = {
    "minimal_vf": (make_spec, True),
    "no_vf_persistent": (make_spec, False),
    "standby_bridge": (lambda: make_spec(standby=StandbySpec("bridge", "br0"), rom_enabled=True), True),
    "standby_direct": (lambda: make_spec(standby=StandbySpec("direct", "ens1f0", mode="passthrough")), True),
    "standby_network": (lambda: make_spec(standby=StandbySpec("network", "fvm-net")), True),
    "kernel_tcg_serial": (
        lambda: make_spec(
            name=domain_name("team-b", "tcg.vm"),
            namespace="team-b",
            vm_name="tcg.vm",
            accel="qemu",
            vcpus=1,
            memory_mib=128,
            disks=(
                DiskSpec("root", "/srv/img/root.raw", "raw", "virtio", boot_order=1),
                DiskSpec("seed", "/srv/img/seed.iso", "raw", "sata", read_only=True),
                DiskSpec("data", "/srv/img/data.qcow2", "qcow2", "scsi",
                         backing=(BackingSpec("/srv/img/base.qcow2", "qcow2"), BackingSpec("/srv/img/os.raw", "raw"))),
                DiskSpec("scratch", "/srv/img/scratch.raw", "raw", "virtio", read_only=True),
            ),
            kernel="/srv/boot/vmlinuz",
            initrd="/srv/boot/initrd.img",
            cmdline="console=ttyS0 rdinit=/init quiet",
            serial_log="/var/log/failovervm/team-b_tcg.vm.log",
            emulator="/usr/bin/qemu-system-x86_64",
            pcie_root_ports=2,
            vf=None,
            vf_node=None,
        ),
        True,
    ),
}


@pytest.fixture(scope="module")
def relaxng() -> etree.RelaxNG:
    require(DOMAIN_RNG.exists(), f"{DOMAIN_RNG} (libvirt-daemon / libvirt-common)")
    # domain.rng includes its siblings by relative path: parse it from its real location.
    return etree.RelaxNG(etree.parse(str(DOMAIN_RNG)))


def assert_valid(relaxng: etree.RelaxNG, el: etree._Element) -> None:
    # Validate what libvirt would receive: the serialised text, parsed back.
    doc = etree.fromstring(to_xml(el).encode())
    assert relaxng.validate(doc), str(relaxng.error_log)


# ---------------------------------------------------------------- golden + schema


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    factory, include_vf = CASES[case]
    assert_golden(case, to_xml(build_domain(factory(), include_vf=include_vf)))


def test_golden_vf_hotplug_snippet() -> None:
    assert_golden("vf_hotplug_interface", build_vf_interface_xml(make_spec()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_relaxng_valid(case: str, relaxng: etree.RelaxNG) -> None:
    factory, include_vf = CASES[case]
    assert_valid(relaxng, build_domain(factory(), include_vf=include_vf))


def test_relaxng_valid_after_hotplug(relaxng: etree.RelaxNG) -> None:
    """The hot-plug snippet is a valid device: the persistent definition plus it validates."""
    spec = make_spec()
    dom = build_domain(spec, include_vf=False)
    vf = parse_xml(build_vf_interface_xml(spec))
    check_teaming(dom, [vf])
    devices = dom.find("devices")
    assert devices is not None
    devices.append(vf)
    assert_valid(relaxng, dom)


def test_relaxng_rejects_broken_document(relaxng: etree.RelaxNG) -> None:
    """Guard against a schema that accepts anything."""
    dom = build_domain(make_spec())
    teaming = dom.find("devices/interface/teaming")
    assert teaming is not None
    teaming.set("type", "sideways")
    assert not relaxng.validate(etree.fromstring(to_xml(dom).encode()))


# ---------------------------------------------------------------- domain content


def _interfaces(dom: etree._Element) -> list[etree._Element]:
    return dom.findall("devices/interface")


def test_identical_mac_on_both_nics() -> None:
    spec = make_spec(mac="52:54:00:AB:CD:EF")
    assert spec.mac == "52:54:00:ab:cd:ef"
    standby, vf = _interfaces(build_domain(spec))
    assert standby.get("type") == "bridge" and vf.get("type") == "hostdev"
    macs = {req(iface, "mac").get("address") for iface in (standby, vf)}
    assert macs == {"52:54:00:ab:cd:ef"}
    snippet = parse_xml(build_vf_interface_xml(spec))
    assert req(snippet, "mac").get("address") == "52:54:00:ab:cd:ef"


def test_teaming_elements_and_aliases() -> None:
    standby, vf = _interfaces(build_domain(make_spec()))
    assert req(standby, "model").get("type") == "virtio"
    assert attrs(req(standby, "teaming")) == {"type": "persistent"}
    assert req(standby, "alias").get("name") == STANDBY_ALIAS == "ua-fvm-standby"
    assert req(standby, "rom").get("enabled") == "no"
    assert vf.get("managed") == "yes"
    assert attrs(req(vf, "teaming")) == {"type": "transient", "persistent": STANDBY_ALIAS}
    assert req(vf, "alias").get("name") == VF_ALIAS == "ua-fvm-vf"
    addr = vf.find("source/address")
    assert addr is not None
    assert attrs(addr) == {"type": "pci", "domain": "0x0000", "bus": "0x3b", "slot": "0x02", "function": "0x1"}


def test_rom_enabled_drops_rom_element() -> None:
    standby = _interfaces(build_domain(make_spec(rom_enabled=True)))[0]
    assert standby.find("rom") is None


def test_include_vf_false_and_vf_none_give_the_same_devices() -> None:
    a = to_xml(build_domain(make_spec(), include_vf=False))
    b = to_xml(build_domain(make_spec(vf=None, vf_node=None), include_vf=True))
    assert len(_interfaces(parse_xml(a))) == 1
    # Only the vf-node record in the metadata differs.
    assert a.replace(' vf-node="node-a"', "") == b


def test_controllers_keep_a_root_port_for_the_vf() -> None:
    disks = tuple(DiskSpec(f"d{i}", f"/img/d{i}.raw", "raw", "virtio") for i in range(10))
    spec = make_spec(disks=disks, pcie_root_ports=4)
    assert pcie_devices_needed(disks) == 12  # 10 disks + standby + VF
    assert root_port_count(spec) == 12
    for include_vf in (True, False):
        ports = build_domain(spec, include_vf=include_vf).findall("devices/controller[@model='pcie-root-port']")
        assert [p.get("index") for p in ports] == [str(i) for i in range(1, 13)]
    assert root_port_count(make_spec()) == 8


def test_boot_dev_only_without_per_device_boot_order() -> None:
    dom = build_domain(make_spec())
    assert req(dom, "os/boot").get("dev") == "hd"
    disks = (DiskSpec("root", "/img/r.raw", "raw", "virtio", boot_order=1),)
    dom = build_domain(make_spec(disks=disks))
    assert dom.find("os/boot") is None
    assert req(dom, "devices/disk/boot").get("order") == "1"


def test_disk_target_names() -> None:
    assert [target_dev("vd", i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "vda", "vdb", "vdz", "vdaa", "vdab", "vdzz", "vdaaa"
    ]  # fmt: skip
    with pytest.raises(ValueError):
        target_dev("vd", -1)
    disks = (
        DiskSpec("a", "/a", "raw", "virtio"),
        DiskSpec("b", "/b", "raw", "sata"),
        DiskSpec("c", "/c", "raw", "scsi"),
        DiskSpec("d", "/d", "raw", "virtio"),
    )
    dom = build_domain(make_spec(disks=disks))
    assert [t.get("dev") for t in dom.findall("devices/disk/target")] == ["vda", "sda", "sdb", "vdb"]
    assert req(dom, "devices/controller[@type='scsi']").get("model") == "virtio-scsi"


def test_no_graphics_no_host_cpu() -> None:
    dom = build_domain(make_spec())
    assert dom.find("devices/graphics") is None and dom.find("devices/video") is None
    cpu = dom.find("cpu")
    assert cpu is not None and cpu.get("mode") == "custom"
    assert dom.get("type") == "kvm"
    assert build_domain(make_spec(accel="qemu")).get("type") == "qemu"
    assert req(dom, "os/type").get("machine") == "q35"
    assert [dom.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy", "restart", "destroy"]


def test_serial_pty_without_log_and_file_with_append() -> None:
    dom = build_domain(make_spec())
    assert req(dom, "devices/serial").get("type") == "pty"
    assert req(dom, "devices/console").get("type") == "pty"
    dom = build_domain(make_spec(serial_log="/var/log/fvm.log"))
    src = dom.find("devices/serial/source")
    assert src is not None and attrs(src) == {"path": "/var/log/fvm.log", "append": "on"}


def test_vf_interface_xml_needs_vf() -> None:
    with pytest.raises(ValueError, match="no VF"):
        build_vf_interface_xml(make_spec(vf=None, vf_node=None))


# ---------------------------------------------------------------- metadata


def test_metadata_round_trip() -> None:
    xml = to_xml(build_domain(make_spec()))
    want = OwnerRef(namespace="default", name="web-1", uid=UID)
    assert parse_owner(xml) == want
    assert parse_owner(xml.encode()) == want
    dom = parse_xml(xml)
    assert parse_owner(dom) == want
    md = dom.find("metadata")
    assert md is not None
    assert parse_owner(md) == want
    owner = md[0]
    assert owner.tag == f"{{{METADATA_NS}}}vm" and owner.prefix == "fvm"
    assert owner.get("vf-node") == "node-a"
    assert parse_owner(owner) == want
    assert parse_owner(to_xml(build_owner_element("default", "web-1", UID))) == want
    # virDomainGetMetadata(ELEMENT, METADATA_NS) hands the element back without its namespace.
    assert parse_owner(f'<vm namespace="default" name="web-1" uid="{UID}"/>') == want


@pytest.mark.parametrize(
    "xml",
    [
        "<domain type='kvm'><name>other</name></domain>",
        "<domain type='kvm'><name>other</name><metadata/></domain>",
        "<domain><metadata><x:vm xmlns:x='https://example.com/other' namespace='a' name='b' uid='c'/>"
        "</metadata></domain>",
        # Our namespace but missing the uid: not a record we wrote.
        f"<domain><metadata><fvm:vm xmlns:fvm='{METADATA_NS}' namespace='a' name='b'/></metadata></domain>",
        # An un-namespaced <vm> inside metadata is someone else's.
        "<domain><metadata><vm namespace='a' name='b' uid='c'/></metadata></domain>",
        "<network><name>default</name></network>",
    ],
)
def test_parse_owner_foreign_domains(xml: str) -> None:
    assert parse_owner(xml) is None


def test_parse_owner_rejects_non_xml() -> None:
    with pytest.raises(ValueError, match="well-formed"):
        parse_owner("<domain><metadata>")


def test_parse_owner_ignores_external_entities(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    doctype = f'<!DOCTYPE domain [<!ENTITY x SYSTEM "file://{secret}">]>'
    owner = f"<fvm:vm xmlns:fvm='{METADATA_NS}' namespace='a' name='b' uid='c'/>"
    # In text the entity is left unresolved...
    xml = f"{doctype}<domain><name>&x;</name><metadata>{owner}</metadata></domain>"
    assert parse_owner(xml) == OwnerRef("a", "b", "c")
    assert b"s3cret" not in etree.tostring(parse_xml(xml))
    # ...and in an attribute it is an error, never the file's content.
    with pytest.raises(ValueError, match="external entity"):
        bad_owner = owner.replace("uid='c'", "uid='&x;'")
        parse_owner(f"{doctype}<domain><metadata>{bad_owner}</metadata></domain>")


# ---------------------------------------------------------------- check_teaming


def _standby(dom: etree._Element) -> etree._Element:
    return _interfaces(dom)[0]


def _vf(dom: etree._Element) -> etree._Element:
    return _interfaces(dom)[1]


def test_check_teaming_accepts_built_domains() -> None:
    for factory, include_vf in CASES.values():
        check_teaming(build_domain(factory(), include_vf=include_vf))


def test_check_teaming_wrong_persistent_alias() -> None:
    dom = build_domain(make_spec())
    req(_vf(dom), "teaming").set("persistent", "ua-fvm-nope")
    with pytest.raises(ValueError, match=r"ua-fvm-nope.*names no persistent"):
        check_teaming(dom)


def test_check_teaming_standby_without_persistent_teaming() -> None:
    dom = build_domain(make_spec())
    standby = _standby(dom)
    standby.remove(req(standby, "teaming"))
    with pytest.raises(ValueError, match="names no persistent"):
        check_teaming(dom)


def test_check_teaming_attach_to_live_domain() -> None:
    spec = make_spec()
    dom = build_domain(spec, include_vf=False)
    before = to_xml(dom)
    check_teaming(dom, [parse_xml(build_vf_interface_xml(spec))])
    assert to_xml(dom) == before, "check_teaming must not modify the domain"

    wrong = parse_xml(build_vf_interface_xml(spec))
    req(wrong, "teaming").set("persistent", "ua-typo")
    with pytest.raises(ValueError, match="ua-typo"):
        check_teaming(dom, [wrong])
    # Attaching a second VF to the full pair collides on the alias.
    with pytest.raises(ValueError, match="more than once"):
        check_teaming(build_domain(spec), [parse_xml(build_vf_interface_xml(spec))])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: req(_vf(d), "mac").set("address", "52:54:00:00:00:01"), "MACs differ"),
        (lambda d: _vf(d).remove(req(_vf(d), "mac")), "explicit <mac"),
        (lambda d: req(_standby(d), "model").set("type", "e1000e"), "must be <model type='virtio'/>"),
        (lambda d: req(_standby(d), "alias").set("name", "net0"), "without a user alias"),
        (lambda d: req(_vf(d), "teaming").attrib.pop("persistent"), "lacks persistent="),
        (lambda d: _vf(d).set("type", "bridge"), "must be type 'hostdev' or 'network'"),
        (lambda d: req(_vf(d), "teaming").set("type", "sideways"), "unknown teaming type"),
        (lambda d: req(_vf(d), "alias").set("name", STANDBY_ALIAS), "more than once"),
    ],
)
def test_check_teaming_errors(mutate: Callable[[etree._Element], object], message: str) -> None:
    dom = build_domain(make_spec())
    mutate(dom)
    with pytest.raises(ValueError, match=message):
        check_teaming(dom)


def test_check_teaming_two_transients_for_one_standby() -> None:
    dom = build_domain(make_spec())
    second = copy.deepcopy(_vf(dom))
    req(second, "alias").set("name", "ua-fvm-vf2")
    with pytest.raises(ValueError, match="more than one transient"):
        check_teaming(dom, [second])


def test_check_teaming_needs_domain() -> None:
    with pytest.raises(ValueError, match="expected a <domain>"):
        check_teaming(parse_xml(build_vf_interface_xml(make_spec())))


# ---------------------------------------------------------------- escaping


NASTY = "a\"b'c&d<e>f]]>g"


def test_escaping_round_trips(relaxng: etree.RelaxNG) -> None:
    path = f"/var/lib/{NASTY}/root.qcow2"
    cmdline = f'console=ttyS0 msg="{NASTY}"'
    uid = 'x"/><fvm:vm namespace="evil" name="evil" uid="evil'
    spec = make_spec(
        disks=(DiskSpec("root", path, "qcow2", "virtio"),),
        kernel=f"/boot/{NASTY}",
        cmdline=cmdline,
        serial_log=f"/log/{NASTY}.log",
        vm_uid=uid,
    )
    xml = to_xml(build_domain(spec))
    dom = parse_xml(xml)
    assert req(dom, "devices/disk/source").get("file") == path
    assert dom.findtext("os/cmdline") == cmdline
    assert dom.findtext("os/kernel") == f"/boot/{NASTY}"
    assert req(dom, "devices/serial/source").get("path") == f"/log/{NASTY}.log"
    assert parse_owner(xml) == OwnerRef("default", "web-1", uid)
    assert len(dom.findall(f"metadata/{{{METADATA_NS}}}vm")) == 1, "the uid must not inject an element"
    assert len(dom.findall("devices/disk")) == 1
    assert to_xml(dom) == xml
    assert_valid(relaxng, dom)


@pytest.mark.parametrize("bad", ['root"', "a&b", "<x>", "Root", "a_b", ""])
def test_names_that_reach_attributes_are_validated(bad: str) -> None:
    with pytest.raises(ValueError):
        DiskSpec(bad, "/img", "raw", "virtio")
    with pytest.raises(ValueError):
        domain_name(bad, "vm")
    with pytest.raises(ValueError):
        domain_name("default", bad)


def test_xml_incompatible_characters_are_refused() -> None:
    with pytest.raises(ValueError):
        build_domain(make_spec(vm_uid="uid\x01"))


# ---------------------------------------------------------------- names


def test_domain_name() -> None:
    assert domain_name("default", "web-1") == "fvm_default_web-1"
    assert domain_name("kube-system", "a.b.c") == "fvm_kube-system_a.b.c"
    assert parse_domain_name("fvm_default_web-1") == ("default", "web-1")
    assert parse_domain_name("fvm_kube-system_a.b.c") == ("kube-system", "a.b.c")
    for foreign in ("web-1", "fvm_default", "fvm_a_b_c", "xyz_default_web", "fvm_Default_web", "fvm__web"):
        assert parse_domain_name(foreign) is None


def test_domain_name_limits() -> None:
    assert MAX_VM_NAME_LEN == 63
    domain_name("a" * 63, "b" * 63)
    with pytest.raises(ValueError, match=r"VM name .* 64 characters .* limit is 63"):
        domain_name("default", "b" * 64)
    with pytest.raises(ValueError, match=r"namespace .* 64 characters"):
        domain_name("a" * 64, "vm")
    with pytest.raises(ValueError, match=r"namespace .* not a DNS label"):
        domain_name("a.b", "vm")
    for bad in ("-vm", "vm-", "vm..x", ".vm", "vm.", "v m", "vé"):
        with pytest.raises(ValueError, match="VM name"):
            domain_name("default", bad)


# ---------------------------------------------------------------- MAC


def test_generate_mac_is_stable_local_unicast() -> None:
    mac = generate_mac(UID)
    assert mac == generate_mac(UID)
    assert mac != generate_mac(UID + "x")
    assert validate_mac(mac) == mac
    for seed in (str(i) for i in range(200)):
        first = int(generate_mac(seed)[:2], 16)
        assert first & 0x01 == 0 and first & 0x02 == 0x02
    with pytest.raises(ValueError):
        generate_mac("")


@pytest.mark.parametrize(
    "text", ["52:54:00:AB:cd:ef", "52-54-00-ab-cd-ef", "525400abcdef", "5254.00ab.cdef", " 52:54:00:ab:cd:ef "]
)
def test_normalize_mac(text: str) -> None:
    assert normalize_mac(text) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("52:54:00:ab:cd", "malformed"),
        ("52:54:00:ab:cd:ef:00", "malformed"),
        ("52:54-00:ab:cd:ef", "malformed"),
        ("52:54:00:ab:cd:eg", "malformed"),
        ("5254:00ab:cdef", "malformed"),
        ("", "malformed"),
        ("01:00:5e:00:00:01", "multicast"),
        ("53:54:00:ab:cd:ef", "multicast"),
        ("00:00:00:00:00:00", "all zeros"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
    ],
)
def test_validate_mac_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_mac(text)


def test_domain_spec_rejects_bad_mac() -> None:
    with pytest.raises(ValueError, match="multicast"):
        make_spec(mac="01:00:5e:00:00:01")


# ---------------------------------------------------------------- PCI


def test_pci_parse_and_str() -> None:
    addr = PCIAddress.parse("0000:3b:02.1")
    assert addr == PCIAddress(0, 0x3B, 2, 1)
    assert str(addr) == "0000:3b:02.1"
    assert str(PCIAddress.parse("00AF:FF:1F.7")) == "00af:ff:1f.7"
    assert PCIAddress.parse(str(PCIAddress(0xFFFF, 0xFF, 0x1F, 7))) == PCIAddress(0xFFFF, 0xFF, 0x1F, 7)


@pytest.mark.parametrize(
    "text",
    [
        "3b:02.1",
        "0:3b:02.1",
        "00000:3b:02.1",
        "0000:3b:2.1",
        "0000:3b:20.0",
        "0000:3b:02.8",
        "0000:3b:02",
        "0000-3b-02.1",
        " 0000:3b:02.1",
        "0000:3b:02.1\n",
        "0000:3g:02.1",
        "",
    ],
)
def test_pci_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid PCI address"):
        PCIAddress.parse(text)


@pytest.mark.parametrize("fields", [(0x10000, 0, 0, 0), (0, 0x100, 0, 0), (0, 0, 0x20, 0), (0, 0, 0, 8), (-1, 0, 0, 0)])
def test_pci_constructor_ranges(fields: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="PCI"):
        PCIAddress(*fields)


# ---------------------------------------------------------------- spec validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"uuid": "not-a-uuid"}, "UUID"),
        ({"name": "a/b"}, "domain name"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": True}, "memory_mib"),
        ({"vm_uid": " "}, "vm_uid"),
        ({"initrd": "/boot/initrd"}, "need kernel"),
        ({"cmdline": "quiet"}, "need kernel"),
        ({"kernel": "vmlinuz"}, "absolute path"),
        ({"vf": None}, "vf_node is set but vf is not"),
        ({"pcie_root_ports": 65}, "pcie_root_ports"),
        ({"accel": "hvf"}, "accel"),
        (
            {"disks": (DiskSpec("a", "/a", "raw", "virtio"), DiskSpec("a", "/b", "raw", "virtio"))},
            "duplicate disk names: a",
        ),
        (
            {
                "disks": (
                    DiskSpec("a", "/a", "raw", "virtio", boot_order=1),
                    DiskSpec("b", "/b", "raw", "virtio", boot_order=1),
                )
            },
            "duplicate disk boot_order",
        ),
    ],
)
def test_domain_spec_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(**overrides)


def test_domain_spec_canonicalises_uuid() -> None:
    assert make_spec(uuid=DOM_UUID.upper().replace("-", "")).uuid == DOM_UUID


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bridge", "br0", "vepa"), "only applies to a 'direct'"),
        (("direct", "eth0", "loopback"), "macvtap mode"),
        (("bridge", "a-very-long-bridge-name"), "interface name"),
        (("bridge", "br/0"), "interface name"),
        (("network", "net/x"), "network name"),
        (("vhostuser", "x"), "standby type"),
    ],
)
def test_standby_spec_validation(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StandbySpec(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("d", "rel/path", "raw", "virtio"), "absolute path"),
        (("d", "/p", "vmdk", "virtio"), "format"),
        (("d", "/p", "raw", "ide"), "bus"),
        (("d", "/p", "raw", "virtio", False, 0), "boot_order"),
    ],
)
def test_disk_spec_validation(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiskSpec(*args)  # type: ignore[arg-type]


def test_check_teaming_ignores_libvirt_assigned_duplicate_aliases() -> None:
    """A live domain's <console> carries the alias of its <serial> (serial0); that is not a conflict."""
    from failovervm.domxml import parse_xml

    live = parse_xml(
        "<domain type='kvm'><name>x</name><devices>"
        "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='b'/>"
        "<model type='virtio'/><teaming type='persistent'/><alias name='ua-fvm-standby'/></interface>"
        "<serial type='pty'><alias name='serial0'/></serial><console type='pty'><alias name='serial0'/></console>"
        "</devices></domain>"
    )
    check_teaming(live)
