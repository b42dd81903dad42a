"""A simulated SR-IOV inventory: a sysfs-shaped tree with one PF and its VFs.

The layout is the real Linux one, so the agent's VF discovery reads it exactly
as it reads /sys on a real host:

  <root>/class/net/<pf>              -> ../../bus/pci/devices/<pf-addr>/net/<pf>
  <root>/bus/pci/devices/<pf-addr>/net/<pf>/device -> ../..
  <root>/bus/pci/devices/<pf-addr>/sriov_numvfs, sriov_totalvfs
  <root>/bus/pci/devices/<pf-addr>/virtfn<K>      -> ../<vf-addr>
  <root>/bus/pci/devices/<vf-addr>/{vendor,device,physfn}

There is no real PCI device behind any of it: the tree carries a SIMULATED
marker file, and the operator reports that in VFPool status and conditions.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SANDBOX_PF = "sbxpf0"  # the first PF; more are sbxpf1, sbxpf2, ... (--pfs-per-node)
PF_ADDRESS = "0000:3b:00.0"
VENDOR = "0x8086"  # Intel
PF_DEVICE = "0x1572"  # X710 PF
VF_DEVICE = "0x154c"  # X710/XL710 VF


def pf_name(p: int) -> str:
    return f"sbxpf{p}"


def pf_address(p: int) -> str:
    return f"0000:{0x3b + p:02x}:00.0"


def vf_address(k: int, p: int = 0) -> str:
    """PCI address of VF k of PF p: functions 0-7 of slots 02, 03, ... on bus 3b + p."""
    return f"0000:{0x3b + p:02x}:{2 + k // 8:02x}.{k % 8}"


def create(root: Path, vfs: int, node: str, pfs: int = 1) -> list[str]:
    """(Re)create the simulated tree under `root` with `pfs` PFs (sbxpf0, sbxpf1, ...) of `vfs`
    VFs each; returns the VF PCI addresses."""
    if root.exists():
        shutil.rmtree(root)
    (root / "class" / "net").mkdir(parents=True)
    addresses = []
    for p in range(pfs):
        addresses += _create_pf(root, p, vfs)
    (root / "SIMULATED").write_text(
        json.dumps(
            {
                "simulated": True,
                "node": node,
                "note": "failovervm sandbox: no real SR-IOV hardware backs this tree",
            }
        )
        + "\n"
    )
    return addresses


def _create_pf(root: Path, p: int, vfs: int) -> list[str]:
    pf = pf_name(p)
    devices = root / "bus" / "pci" / "devices"
    pf_dir = devices / pf_address(p)
    (pf_dir / "net" / pf).mkdir(parents=True)
    (pf_dir / "vendor").write_text(VENDOR + "\n")
    (pf_dir / "device").write_text(PF_DEVICE + "\n")
    (pf_dir / "sriov_totalvfs").write_text("64\n")
    (pf_dir / "sriov_numvfs").write_text(f"{vfs}\n")
    os.symlink("../..", pf_dir / "net" / pf / "device")
    os.symlink(f"../../bus/pci/devices/{pf_address(p)}/net/{pf}", root / "class" / "net" / pf)
    addresses = []
    for k in range(vfs):
        addr = vf_address(k, p)
        vf_dir = devices / addr
        vf_dir.mkdir()
        (vf_dir / "vendor").write_text(VENDOR + "\n")
        (vf_dir / "device").write_text(VF_DEVICE + "\n")
        os.symlink(f"../{pf_address(p)}", vf_dir / "physfn")
        os.symlink(f"../{addr}", pf_dir / f"virtfn{k}")
        addresses.append(addr)
    return addresses
