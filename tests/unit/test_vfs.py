"""Unit tests for failovervm.vfs against fake sysfs trees with real symlinks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from failovervm.vfs import VF, claim_name, discover_vfs, is_simulated, pci_sort_key

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def make_pf(
    root: Path,
    pf: str,
    pf_addr: str,
    vf_addrs: list[str],
    *,
    numvfs: int | str | None = None,
    vendor: str | None = "0x8086",
    device: str | None = "0x154c",
) -> None:
    """Build the kernel's layout for one PF:

    devices/pci0000:00/<pf_addr>/{sriov_numvfs,virtfnN -> ../<vf_addr>, net/<pf>}
    class/net/<pf> -> ../../devices/pci0000:00/<pf_addr>/net/<pf>
    <pf netdev dir>/device -> ../../../<pf_addr>
    bus/pci/devices/<addr> -> ../../../devices/pci0000:00/<addr>
    """
    pci_root = root / "devices" / "pci0000:00"
    pf_dir = pci_root / pf_addr
    (pf_dir / "net" / pf).mkdir(parents=True)
    (pf_dir / "sriov_numvfs").write_text(f"{len(vf_addrs) if numvfs is None else numvfs}\n")
    (pf_dir / "sriov_totalvfs").write_text("64\n")
    os.symlink(f"../../../{pf_addr}", pf_dir / "net" / pf / "device")
    (root / "class" / "net").mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../devices/pci0000:00/{pf_addr}/net/{pf}", root / "class" / "net" / pf)
    bus = root / "bus" / "pci" / "devices"
    bus.mkdir(parents=True, exist_ok=True)
    for addr in [pf_addr, *vf_addrs]:
        if not (bus / addr).is_symlink():
            os.symlink(f"../../../devices/pci0000:00/{addr}", bus / addr)
    for i, addr in enumerate(vf_addrs):
        vf_dir = pci_root / addr
        vf_dir.mkdir(parents=True, exist_ok=True)
        if vendor is not None:
            (vf_dir / "vendor").write_text(vendor + "\n")
        if device is not None:
            (vf_dir / "device").write_text(device + "\n")
        os.symlink(f"../{addr}", pf_dir / f"virtfn{i}")


def test_discovers_vfs_in_index_order(tmp_path: Path) -> None:
    addrs = [f"0000:3b:02.{i}" for i in range(4)] + ["0000:3b:03.0"]
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", addrs)
    result = discover_vfs(tmp_path, ["ens1f0"])
    assert result.missing_pfs == []
    assert result.simulated is False
    assert [v.pci_address for v in result.vfs] == addrs
    assert [v.index for v in result.vfs] == list(range(5))
    assert result.vfs[0] == VF(pf="ens1f0", index=0, pci_address="0000:3b:02.0", vendor="8086", device="154c")


def test_index_order_is_numeric_not_lexical(tmp_path: Path) -> None:
    addrs = [f"0000:3b:{2 + i // 8:02x}.{i % 8}" for i in range(12)]
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", addrs)
    result = discover_vfs(tmp_path, ["ens1f0"])
    assert [v.index for v in result.vfs] == list(range(12))  # virtfn10 after virtfn9


def test_pci_address_is_the_symlink_target_basename(tmp_path: Path) -> None:
    # Target does not even need to exist: only the link text matters.
    dev = tmp_path / "class" / "net" / "eth9" / "device"
    dev.mkdir(parents=True)
    (dev / "sriov_numvfs").write_text("1")
    os.symlink("../0000:AF:10.7", dev / "virtfn0")
    result = discover_vfs(tmp_path, ["eth9"])
    assert [v.pci_address for v in result.vfs] == ["0000:af:10.7"]
    assert result.vfs[0].vendor is None
    assert result.vfs[0].device is None


def test_vendor_device_from_bus_pci_devices(tmp_path: Path) -> None:
    dev = tmp_path / "class" / "net" / "eth0" / "device"
    dev.mkdir(parents=True)
    (dev / "sriov_numvfs").write_text("1")
    os.symlink("../0000:5e:00.2", dev / "virtfn0")  # dangling in this tree
    bus = tmp_path / "bus" / "pci" / "devices" / "0000:5e:00.2"
    bus.mkdir(parents=True)
    (bus / "vendor").write_text("0x15B3\n")
    (bus / "device").write_text("0x101e\n")
    vf = discover_vfs(tmp_path, ["eth0"]).vfs[0]
    assert (vf.vendor, vf.device) == ("15b3", "101e")


def test_multiple_pfs_keep_requested_order(tmp_path: Path) -> None:
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", ["0000:3b:02.0", "0000:3b:02.1"])
    make_pf(tmp_path, "ens1f1", "0000:3b:00.1", ["0000:3b:0a.0"])
    result = discover_vfs(tmp_path, ["ens1f1", "ens1f0", "ens1f1"])
    assert [(v.pf, v.pci_address) for v in result.vfs] == [
        ("ens1f1", "0000:3b:0a.0"),
        ("ens1f0", "0000:3b:02.0"),
        ("ens1f0", "0000:3b:02.1"),
    ]


def test_missing_pf_is_reported_not_raised(tmp_path: Path) -> None:
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", ["0000:3b:02.0"])
    result = discover_vfs(tmp_path, ["ens1f0", "ens9f9"])
    assert [v.pf for v in result.vfs] == ["ens1f0"]
    assert result.missing_pfs == ["ens9f9"]
    assert any("ens9f9" in r for r in result.reasons)


def test_pf_without_sriov_is_missing(tmp_path: Path) -> None:
    (tmp_path / "class" / "net" / "eth0" / "device").mkdir(parents=True)
    (tmp_path / "class" / "net" / "lo").mkdir(parents=True)
    result = discover_vfs(tmp_path, ["eth0", "lo"])
    assert result.vfs == []
    assert result.missing_pfs == ["eth0", "lo"]
    assert "not SR-IOV capable" in result.reasons[0]
    assert "not backed by a PCI device" in result.reasons[1]


def test_empty_tree(tmp_path: Path) -> None:
    result = discover_vfs(tmp_path / "nonexistent", ["ens1f0"])
    assert result.vfs == []
    assert result.missing_pfs == ["ens1f0"]
    assert result.simulated is False


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "..", ".", "", "x" * 16, "eth 0"])
def test_invalid_pf_names_never_touch_the_filesystem(tmp_path: Path, bad: str) -> None:
    result = discover_vfs(tmp_path, [bad])
    assert result.missing_pfs == [bad]
    assert "not a valid network interface name" in result.reasons[0]


def test_numvfs_limits_stale_virtfn_links(tmp_path: Path) -> None:
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", ["0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"], numvfs=2)
    result = discover_vfs(tmp_path, ["ens1f0"])
    assert [v.pci_address for v in result.vfs] == ["0000:3b:02.0", "0000:3b:02.1"]
    assert any("virtfn2" in r for r in result.reasons)


def test_numvfs_zero_means_no_vfs_but_pf_present(tmp_path: Path) -> None:
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", [], numvfs=0)
    result = discover_vfs(tmp_path, ["ens1f0"])
    assert result.vfs == []
    assert result.missing_pfs == []


def test_garbage_numvfs_falls_back_to_links(tmp_path: Path) -> None:
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", ["0000:3b:02.0"], numvfs="garbage")
    result = discover_vfs(tmp_path, ["ens1f0"])
    assert [v.pci_address for v in result.vfs] == ["0000:3b:02.0"]
    assert any("sriov_numvfs" in r for r in result.reasons)


def test_bad_link_targets_and_unrelated_entries_are_skipped(tmp_path: Path) -> None:
    dev = tmp_path / "class" / "net" / "eth0" / "device"
    dev.mkdir(parents=True)
    (dev / "sriov_numvfs").write_text("3")
    os.symlink("../not-a-pci-address", dev / "virtfn0")
    os.symlink("../0000:3b:02.1", dev / "virtfn1")
    os.symlink("../0000:3b:02.1", dev / "virtfn2")  # duplicate
    os.symlink("../0000:3b:00.0", dev / "physfn")
    (dev / "virtfnX").write_text("")
    result = discover_vfs(tmp_path, ["eth0"])
    assert [(v.index, v.pci_address) for v in result.vfs] == [(1, "0000:3b:02.1")]
    assert len(result.reasons) == 2


def test_garbage_vendor_is_none(tmp_path: Path) -> None:
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", ["0000:3b:02.0"], vendor="intel", device=None)
    vf = discover_vfs(tmp_path, ["ens1f0"]).vfs[0]
    assert vf.vendor is None
    assert vf.device is None


def test_simulated_marker(tmp_path: Path) -> None:
    assert is_simulated(tmp_path) is False
    make_pf(tmp_path, "ens1f0", "0000:3b:00.0", ["0000:3b:02.0"])
    (tmp_path / "SIMULATED").write_text("sandbox\n")
    assert is_simulated(tmp_path) is True
    assert discover_vfs(tmp_path, ["ens1f0"]).simulated is True


def test_claim_name() -> None:
    assert claim_name("sandbox-node-1", "0000:3b:02.1") == "sandbox-node-1.0000-3b-02-1"
    assert claim_name("Node-A", "0000:AF:10.7") == "node-a.0000-af-10-7"
    assert claim_name("n.example.com", "0000:00:01.0") == "n.example.com.0000-00-01-0"


def test_claim_name_long_node_is_hash_truncated() -> None:
    node_a = ("a" * 62 + ".") * 4  # 252 characters
    node_a = node_a.rstrip(".")
    node_b = node_a[:-1] + "b"
    name_a = claim_name(node_a, "0000:3b:02.1")
    name_b = claim_name(node_b, "0000:3b:02.1")
    for name in (name_a, name_b):
        assert len(name) <= 253
        assert DNS_SUBDOMAIN.match(name), name
        assert name.endswith(".0000-3b-02-1")
    assert name_a != name_b
    assert claim_name(node_a, "0000:3b:02.1") == name_a  # deterministic
    assert claim_name(node_a, "0000:3b:02.2") != name_a


def test_claim_name_truncation_never_leaves_a_trailing_separator() -> None:
    # Put a '.' exactly where the cut lands.
    for cut in range(225, 245):
        node = "a" * cut + "." + "b" * (252 - cut - 1)
        name = claim_name(node, "0000:3b:02.1")
        assert len(name) <= 253
        assert DNS_SUBDOMAIN.match(name), name


def test_pci_sort_key() -> None:
    addrs = ["0000:3b:0a.0", "0000:3b:02.1", "0001:00:00.0", "0000:3b:02.0", "0000:af:00.0"]
    assert sorted(addrs, key=pci_sort_key) == [
        "0000:3b:02.0",
        "0000:3b:02.1",
        "0000:3b:0a.0",
        "0000:af:00.0",
        "0001:00:00.0",
    ]
    with pytest.raises(ValueError, match="invalid PCI address"):
        pci_sort_key("3b:02.0")
