"""SR-IOV virtual function discovery from a Linux sysfs tree.

The layout read here is the kernel's::

    <root>/class/net/<pf>/device/sriov_numvfs          number of enabled VFs
    <root>/class/net/<pf>/device/virtfn<N> -> ../0000:3b:02.1   one symlink per enabled VF
    <root>/class/net/<pf>/device/virtfn<N>/vendor      "0x8086"  (through the symlink)
    <root>/bus/pci/devices/<pci-address>/vendor        same files, by PCI address

``<root>`` is normally ``/sys``; tests and the sandbox point it at a fake tree. A file named
``SIMULATED`` at the top of the tree marks the inventory as simulated (no real hardware behind it),
which the operator reports in ``VFInventory.spec.pools[].simulated`` (and the VFPool's Simulated condition).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PCI_ADDRESS_RE",
    "SIMULATED_MARKER",
    "VF",
    "DiscoveryResult",
    "claim_name",
    "discover_vfs",
    "is_simulated",
    "pci_sort_key",
]

SIMULATED_MARKER = "SIMULATED"

#: Full PCI address as the kernel prints it (domain:bus:device.function), lowercase.
PCI_ADDRESS_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# A netdev name: at most 15 bytes (IFNAMSIZ-1), no '/', no whitespace, not '.' or '..'.
_NETDEV_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}$")
_VIRTFN_RE = re.compile(r"^virtfn([0-9]+)$")
_HEX_ID_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{1,4})$")

_MAX_DNS_SUBDOMAIN = 253


@dataclass(frozen=True, order=True)
class VF:
    """One SR-IOV virtual function of a physical function (PF) netdev."""

    pf: str
    index: int
    pci_address: str
    vendor: str | None = None
    """PCI vendor ID, 4 lowercase hex digits without ``0x`` (e.g. ``"8086"``), if sysfs has it."""
    device: str | None = None
    """PCI device ID, 4 lowercase hex digits without ``0x`` (e.g. ``"154c"``), if sysfs has it."""


@dataclass(frozen=True)
class DiscoveryResult:
    """What :func:`discover_vfs` found."""

    vfs: list[VF]
    """VFs of all PFs that were found, in PF order (as requested) then VF index order."""
    missing_pfs: list[str]
    """Requested PF names that do not exist (or are not SR-IOV capable) on this node."""
    simulated: bool
    """True when the tree carries the ``SIMULATED`` marker."""
    reasons: list[str] = field(default_factory=list)
    """Human-readable explanations: one per missing PF and per skipped ``virtfn`` entry."""


def is_simulated(sysfs_root: Path) -> bool:
    """True when ``<sysfs_root>/SIMULATED`` exists: the inventory is a simulated sysfs tree."""
    return (Path(sysfs_root) / SIMULATED_MARKER).exists()


def pci_sort_key(pci_address: str) -> tuple[int, int, int, int]:
    """Numeric sort key for a ``dddd:bb:dd.f`` PCI address (ValueError if malformed)."""
    addr = pci_address.lower()
    if not PCI_ADDRESS_RE.match(addr):
        raise ValueError(f"invalid PCI address {pci_address!r}: expected dddd:bb:dd.f, e.g. 0000:3b:02.1")
    dom, bus, rest = addr.split(":")
    dev, fn = rest.split(".")
    return (int(dom, 16), int(bus, 16), int(dev, 16), int(fn, 16))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _read_hex_id(*candidates: Path) -> str | None:
    for path in candidates:
        raw = _read_text(path)
        if raw is None:
            continue
        m = _HEX_ID_RE.match(raw)
        if m:
            return m.group(1).lower().zfill(4)
    return None


def _vf_pci_address(link: Path) -> str:
    """The PCI address a ``virtfnN`` entry points at: the basename of the symlink target."""
    if link.is_symlink():
        return os.path.basename(os.readlink(link)).lower()
    # Not a symlink (some fake trees use plain directories): fall back to the resolved name.
    return link.resolve().name.lower()


def discover_vfs(sysfs_root: Path, pf_names: list[str]) -> DiscoveryResult:
    """List the enabled VFs of ``pf_names`` under ``sysfs_root`` (normally ``/sys``).

    A PF that is missing, has no ``device`` directory, or is not SR-IOV capable (no
    ``sriov_numvfs``) is reported in ``missing_pfs`` rather than raising. When
    ``sriov_numvfs`` is readable, ``virtfn`` entries with an index at or above it are ignored (the
    kernel removes them when VFs are disabled; a stale fake tree may not). PF names that are not
    valid netdev names (e.g. containing ``/``) are treated as missing, so a VFPool spec can never
    make the agent read outside ``class/net``.
    """
    root = Path(sysfs_root)
    vfs: list[VF] = []
    missing: list[str] = []
    reasons: list[str] = []
    seen_pfs: set[str] = set()
    seen_addrs: set[str] = set()
    for pf in pf_names:
        if pf in seen_pfs:
            continue
        seen_pfs.add(pf)
        if not _NETDEV_RE.match(pf) or pf in (".", ".."):
            missing.append(pf)
            reasons.append(f"PF {pf!r}: not a valid network interface name")
            continue
        dev_dir = root / "class" / "net" / pf / "device"
        if not (root / "class" / "net" / pf).exists():
            missing.append(pf)
            reasons.append(f"PF {pf}: no such network interface ({root / 'class' / 'net' / pf} is missing)")
            continue
        if not dev_dir.is_dir():
            missing.append(pf)
            reasons.append(f"PF {pf}: not backed by a PCI device ({dev_dir} is missing)")
            continue
        numvfs_text = _read_text(dev_dir / "sriov_numvfs")
        if numvfs_text is None:
            missing.append(pf)
            reasons.append(f"PF {pf}: not SR-IOV capable ({dev_dir / 'sriov_numvfs'} is missing)")
            continue
        try:
            numvfs: int | None = int(numvfs_text)
        except ValueError:
            numvfs = None
            reasons.append(f"PF {pf}: unreadable sriov_numvfs {numvfs_text!r}; using the virtfn links")
        entries: list[tuple[int, Path]] = []
        for entry in dev_dir.iterdir():
            m = _VIRTFN_RE.match(entry.name)
            if m:
                entries.append((int(m.group(1)), entry))
        entries.sort()
        for index, link in entries:
            if numvfs is not None and index >= numvfs:
                reasons.append(f"PF {pf}: ignoring {link.name}: index >= sriov_numvfs ({numvfs})")
                continue
            try:
                addr = _vf_pci_address(link)
            except OSError as exc:
                reasons.append(f"PF {pf}: cannot read {link}: {exc}")
                continue
            if not PCI_ADDRESS_RE.match(addr):
                reasons.append(f"PF {pf}: {link.name} points at {addr!r}, which is not a PCI address")
                continue
            if addr in seen_addrs:
                reasons.append(f"PF {pf}: {link.name} -> {addr} was already listed; skipped")
                continue
            seen_addrs.add(addr)
            by_addr = root / "bus" / "pci" / "devices" / addr
            vendor = _read_hex_id(link / "vendor", by_addr / "vendor")
            device = _read_hex_id(link / "device", by_addr / "device")
            vfs.append(VF(pf=pf, index=index, pci_address=addr, vendor=vendor, device=device))
    return DiscoveryResult(vfs=vfs, missing_pfs=missing, simulated=is_simulated(root), reasons=reasons)


def claim_name(node: str, pci_address: str) -> str:
    """Deterministic VFClaim name for a VF: ``<node>.<address with ':' and '.' as '-'>``.

    ``claim_name("sandbox-node-1", "0000:3b:02.1") == "sandbox-node-1.0000-3b-02-1"``. The result is
    a valid DNS subdomain (lowercase, at most 253 characters): if it would be longer, the node part
    is truncated and a hash of the full name is appended, so distinct inputs keep distinct names.
    """
    addr = pci_address.lower().replace(":", "-").replace(".", "-")
    node_l = node.lower()
    name = f"{node_l}.{addr}"
    if len(name) <= _MAX_DNS_SUBDOMAIN:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    tail = f"-{digest}.{addr}"
    head = node_l[: _MAX_DNS_SUBDOMAIN - len(tail)].rstrip(".-")
    return f"{head}{tail}"
