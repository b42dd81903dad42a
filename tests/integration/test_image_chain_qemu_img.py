"""The agent's image checks (agent.reconcile.check_images) against real images read by the real
qemu-img, as on a node (issue #14): a raw disk whose guest wrote a qcow2 header naming a host file,
then switched to qcow2, is refused; a declared chain is accepted; a raw disk is opened as raw."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from failovervm import domxml
from failovervm.agent.domains import DomainError
from failovervm.agent.libvirt_domains import LibvirtDomainManager
from failovervm.agent.reconcile import check_images
from failovervm.storage import BackingChainRefused, StoragePolicy
from failovervm.vmspec import domain_spec
from tests.prereq import require

pytestmark = pytest.mark.integration
UID = "5d1c0b9a-8e7f-4a6b-9c5d-4e3f2a1b0c9d"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    require(shutil.which("qemu-img") is not None, "qemu-img (Debian qemu-utils)")
    r = Path(os.path.realpath(tmp_path))
    (r / "ns").mkdir()
    return r


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True)


def spec_for(root: Path, disk: dict[str, Any]) -> domxml.DomainSpec:
    vm = {"metadata": {"name": "vm", "namespace": "ns", "uid": UID},
          "spec": {"cpu": 1, "memory": "32Mi", "disks": [{"name": "d", "bus": "virtio", **disk}]}}
    return domain_spec(vm, {}, storage=StoragePolicy((str(root),)), vf=None, vf_node=None, kvm_available=False)


def test_a_qcow2_header_written_by_the_guest_is_refused_and_a_raw_disk_stays_raw(root: Path) -> None:
    dm = LibvirtDomainManager(None)  # type: ignore[arg-type]  # image_info needs no libvirt connection
    disk = root / "ns" / "disk.img"
    # What a guest can write onto its own raw disk: a qcow2 header naming a host file.
    qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(disk))
    check_images(dm, spec_for(root, {"path": str(disk), "format": "raw"}))  # opened as raw: it is just data
    with pytest.raises(BackingChainRefused, match="names backing file '/etc/hostname', which backingChain does not"):
        check_images(dm, spec_for(root, {"path": str(disk), "format": "qcow2"}))


def test_a_declared_chain_is_accepted_and_anything_else_refused(root: Path) -> None:
    dm = LibvirtDomainManager(None)  # type: ignore[arg-type]
    base, other, top = root / "ns" / "base.raw", root / "ns" / "other.raw", root / "ns" / "top.qcow2"
    qemu_img("create", "-f", "raw", str(base), "1M")
    qemu_img("create", "-f", "raw", str(other), "1M")
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top))
    check_images(dm, spec_for(root, {"path": str(top), "format": "qcow2",
                                     "backingChain": [{"path": str(base), "format": "raw"}]}))
    with pytest.raises(BackingChainRefused, match="but backingChain declares"):
        check_images(dm, spec_for(root, {"path": str(top), "format": "qcow2",
                                         "backingChain": [{"path": str(other), "format": "raw"}]}))
    with pytest.raises(BackingChainRefused, match="in format 'raw', but backingChain declares 'qcow2'"):
        check_images(dm, spec_for(root, {"path": str(top), "format": "qcow2",
                                         "backingChain": [{"path": str(base), "format": "qcow2"}]}))
    with pytest.raises(DomainError, match="cannot read"):
        check_images(dm, spec_for(root, {"path": str(base), "format": "qcow2"}))  # raw is not qcow2
