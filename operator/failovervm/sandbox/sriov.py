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

SANDBOX_PF = "sbxpf0"
PF_ADDRESS = "0000:3b:00.0"
VENDOR = "0x8086"  # Intel
PF_DEVICE = "0x1572"  # X710 PF
VF_DEVICE = "0x154c"  # X710/XL710 VF


def vf_address(k: int) -> str:
    """PCI address of VF k: functions 0-7 of slots 02, 03, ... on bus 3b."""
    return f"0000:3b:{2 + k // 8:02x}.{k % 8}"


def create(root: Path, vfs: int, node: str, pf: str = SANDBOX_PF) -> list[str]:
    """(Re)create the simulated tree under `root`; returns the VF PCI addresses."""
    if root.exists():
        shutil.rmtree(root)
    devices = root / "bus" / "pci" / "devices"
    pf_dir = devices / PF_ADDRESS
    (pf_dir / "net" / pf).mkdir(parents=True)
    (root / "class" / "net").mkdir(parents=True)
    (pf_dir / "vendor").write_text(VENDOR + "\n")
    (pf_dir / "device").write_text(PF_DEVICE + "\n")
    (pf_dir / "sriov_totalvfs").write_text("64\n")
    (pf_dir / "sriov_numvfs").write_text(f"{vfs}\n")
    os.symlink("../..", pf_dir / "net" / pf / "device")
    os.symlink(f"../../bus/pci/devices/{PF_ADDRESS}/net/{pf}", root / "class" / "net" / pf)
    addresses = []
    for k in range(vfs):
        addr = vf_address(k)
        vf_dir = devices / addr
        vf_dir.mkdir()
        (vf_dir / "vendor").write_text(VENDOR + "\n")
        (vf_dir / "device").write_text(VF_DEVICE + "\n")
        os.symlink(f"../{PF_ADDRESS}", vf_dir / "physfn")
        os.symlink(f"../{addr}", pf_dir / f"virtfn{k}")
        addresses.append(addr)
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
