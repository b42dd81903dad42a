"""The last line of defence against two copies of a VM (#13): QEMU's image locking on the shared
storage refuses a second writer of the same disk, whoever starts it, and the operator reports a
start it refused (reason DiskLocked) instead of a generic failure."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.conftest import TEST_IMAGES_DIR, Sandbox, make_namespace, wait_for
from tests.e2e.helpers import apply, condition, get_vm, halt, libvirt_conn, pool_manifest, vm_manifest, wait_phase

pytestmark = pytest.mark.e2e
POOL = "lock-pool"


def by_hand_copy(sb: Sandbox, src: str, dst: str, dname: str) -> libvirt.virDomain:
    """Define on `dst` a copy of the VM's domain as an administrator would by hand: same disks,
    another name, no NICs (virsh dumpxml | edit | virsh define)."""
    conn = libvirt_conn(sb, src)
    try:
        xml = etree.fromstring(conn.lookupByName(dname).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    finally:
        conn.close()
    xml.find("name").text = f"byhand-{uuid.uuid4().hex[:6]}"
    for path in ("uuid", "metadata", "devices/interface", "devices/hostdev"):
        for el in xml.findall(path):
            el.getparent().remove(el)
    there = libvirt_conn(sb, dst)
    return there.defineXML(etree.tostring(xml).decode())


def test_a_second_writer_of_a_disk_is_refused_and_reported(operator_sandbox: Sandbox) -> None:
    sb = operator_sandbox
    ns = make_namespace(sb, "disklock")
    disk = Path(TEST_IMAGES_DIR) / ns / f"lock-{uuid.uuid4().hex[:8]}.raw"  # the namespace's own directory
    disk.write_bytes(b"\0" * (1 << 20))
    copy: libvirt.virDomain | None = None
    try:
        spec = vm_manifest("lk", ns, POOL)
        spec["spec"]["disks"] = [{"name": "boot", "path": halt(ns), "readOnly": True, "bootOrder": 1},
                                 {"name": "data", "path": str(disk)}]
        apply(sb, pool_manifest(POOL, sb.data["bridge"]), spec)
        vm = wait_phase(sb, ns, "lk", "Running")
        node, dname = vm["status"]["nodeName"], vm["status"]["domain"]["name"]
        other = next(n["node"] for n in sb.nodes if n["node"] != node)
        # 1. While the VM runs: a copy started by hand on another node is refused by QEMU.
        copy = by_hand_copy(sb, node, other, dname)
        with pytest.raises(libvirt.libvirtError, match='write" lock'):
            copy.create()
        # 2. The copy runs first (the VM stopped meanwhile): the operator's start is refused and
        #    reported as DiskLocked; once the copy is gone the agent's retry starts the VM.
        sb.kubectl("-n", ns, "patch", "fvm", "lk", "--type", "merge", "-p", json.dumps({"spec": {"running": False}}))
        wait_phase(sb, ns, "lk", "Stopped")
        copy.create()
        sb.kubectl("-n", ns, "patch", "fvm", "lk", "--type", "merge", "-p", json.dumps({"spec": {"running": True}}))
        vm = wait_for(lambda: (v := get_vm(sb, ns, "lk")) and (condition(v, "Ready") or {}).get("reason")
                      == "DiskLocked" and v, 60, what="the refused start reported")
        assert vm["status"]["phase"] == "Failed" and "second copy" in condition(vm, "Ready")["message"]
        events = sb.kubectl_json("-n", ns, "get", "events")["items"]
        assert any(e["reason"] == "DiskLocked" and e["involvedObject"]["name"] == "lk" for e in events)
        copy.destroy()
        wait_phase(sb, ns, "lk", "Running", timeout=120)
    finally:
        if copy is not None:
            try:
                if copy.isActive():
                    copy.destroy()
                copy.undefine()
            except libvirt.libvirtError:
                pass
        sb.kubectl("delete", "namespace", ns, "--ignore-not-found", "--timeout=120s", check=False, timeout=150)
        disk.unlink(missing_ok=True)
