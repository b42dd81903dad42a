"""The sandbox cluster does what the operator will need (issue #2)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree
from lxml.builder import E

from failovervm_sandbox import procs
from tests.conftest import REPO, Sandbox, remove_domain

pytestmark = pytest.mark.e2e


def test_apiserver_answers_with_pinned_version(sandbox: Sandbox) -> None:
    version = sandbox.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"] == sandbox.data["versions"]["KUBERNETES_VERSION"]


def test_rbac_is_enforced_for_a_serviceaccount_without_permissions(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.kubectl("create", "namespace", "rbac-probe")
    sandbox.kubectl("-n", "rbac-probe", "create", "serviceaccount", "nobody")
    token = sandbox.kubectl("-n", "rbac-probe", "create", "token", "nobody").stdout.strip()
    kc = sandbox.token_kubeconfig(token, tmp_path / "nobody.kubeconfig")
    res = sandbox.kubectl_as(kc, "-n", "rbac-probe", "get", "pods")
    assert res.returncode != 0
    assert "forbidden" in res.stderr.lower()
    # ... and the same token is authenticated: it becomes allowed once RBAC grants it.
    sandbox.kubectl("-n", "rbac-probe", "create", "role", "pod-reader", "--verb=list", "--resource=pods")
    sandbox.kubectl("-n", "rbac-probe", "create", "rolebinding", "pod-reader", "--role=pod-reader",
                    "--serviceaccount=rbac-probe:nobody")
    deadline = time.monotonic() + 10
    while True:
        res = sandbox.kubectl_as(kc, "-n", "rbac-probe", "get", "pods")
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.returncode == 0, res.stderr
    assert sandbox.kubectl_as(kc, "-n", "rbac-probe", "get", "secrets").returncode != 0
    sandbox.kubectl("delete", "namespace", "rbac-probe", "--wait=false")


def test_nodes_are_registered_ready_and_heartbeating(sandbox: Sandbox) -> None:
    nodes = sandbox.kubectl_json("get", "nodes")["items"]
    names = sorted(n["metadata"]["name"] for n in nodes)
    assert names == [f"sandbox-node-{i}" for i in range(1, len(sandbox.nodes) + 1)]
    for n in nodes:
        labels = n["metadata"]["labels"]
        assert labels["kubernetes.io/hostname"] == n["metadata"]["name"]
        assert labels["kubernetes.io/os"] == "linux"
        assert labels["kubernetes.io/arch"]
        assert labels["failovervm.io/sandbox-node"] == "true"
        assert n["metadata"]["annotations"]["failovervm.io/libvirt-uri"].startswith("qemu+tcp://127.")
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        assert int(n["status"]["capacity"]["cpu"]) > 0
        assert not n.get("spec", {}).get("taints"), "node lifecycle controller tainted a sandbox node"
    lease = sandbox.kubectl_json("-n", "kube-node-lease", "get", "lease", "sandbox-node-1")
    renew = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    assert (dt.datetime.now(dt.UTC) - renew).total_seconds() < 40


def test_each_libvirt_host_answers_with_a_distinct_uuid(sandbox: Sandbox) -> None:
    uuids = set()
    for node in sandbox.nodes:
        conn = libvirt.open(node["uri"])
        try:
            caps = etree.fromstring(conn.getCapabilities().encode())
            uuids.add(caps.findtext("host/uuid"))
            assert conn.getType() == "QEMU"
        finally:
            conn.close()
    assert len(uuids) == len(sandbox.nodes)


def _teaming_domain(name: str, sandbox: Sandbox) -> str:
    """A tiny halt-sector VM whose virtio NIC is a failover (teaming persistent) member."""
    accel = "kvm" if sandbox.data["accel"] == "kvm" else "qemu"
    halt = sandbox.images_dir / "halt.img"
    dom = E.domain(
        E.name(name),
        E.memory("32", unit="MiB"),
        E.vcpu("1"),
        E.os(E.type("hvm", machine="q35"), E.boot(dev="hd")),
        E.features(E.acpi(), E.apic()),
        E.devices(
            E.disk(E.driver(name="qemu", type="raw"), E.source(file=str(halt)), E.target(dev="vda", bus="virtio"),
                   E.readonly(), type="file", device="disk"),
            E.interface(E.mac(address="52:54:00:aa:bb:01"), E.source(bridge=sandbox.data["bridge"]),
                        E.model(type="virtio"), E.teaming(type="persistent"), E.alias(name="ua-standby"),
                        E.rom(enabled="no"), type="bridge"),
            E.memballoon(model="none"),
        ),
        type=accel,
    )
    return etree.tostring(dom, encoding="unicode")


def test_raw_live_migration_of_a_teaming_vm(sandbox: Sandbox) -> None:
    src_uri, dst_uri = sandbox.nodes[0]["uri"], sandbox.nodes[1]["uri"]
    src, dst = libvirt.open(src_uri), libvirt.open(dst_uri)
    name = "raw-migration-probe"
    try:
        dom = src.defineXML(_teaming_domain(name, sandbox))
        dom.create()
        pidfile = Path(sandbox.nodes[0]["root"]) / "run_libvirt" / "qemu" / f"{name}.pid"
        pid = int(pidfile.read_text())
        cmd = " ".join(procs.cmdline(pid))
        assert '"failover":true' in cmd or "failover=on" in cmd, cmd
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        dom.migrateToURI3(dst_uri, {}, flags)
        moved = dst.lookupByName(name)
        state, reason = moved.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        assert reason == libvirt.VIR_DOMAIN_RUNNING_MIGRATED
        with pytest.raises(libvirt.libvirtError):
            src.lookupByName(name)
        stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        assert stats.get("downtime") is not None
        xml = etree.fromstring(moved.XMLDesc(0).encode())
        assert xml.find("devices/interface/teaming").get("type") == "persistent"
    finally:
        for conn in (src, dst):
            remove_domain(conn, name)
            conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "failovervm.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(text in part for part in procs.cmdline(int(entry.name))):
            out.append(int(entry.name))
    return out


def test_up_and_down_are_idempotent_and_leave_nothing(sandbox_prereqs: None) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="fvm-idem-"))
    args = ["--state-dir", str(state_dir)]
    up_args = ["sandbox", "up", "--no-operator", "--nodes", "1", "--vfs-per-node", "2",
               "--address-base", "127.0.78.10", "--bridge", "fvmtbr1", *args]
    try:
        first = _cli(*up_args)
        assert first.returncode == 0, first.stderr
        assert f"export KUBECONFIG={state_dir}/kubeconfig" in first.stdout
        pids1 = json.loads((state_dir / "sandbox.json").read_text())
        second = _cli(*up_args)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stderr
        pids2 = json.loads((state_dir / "sandbox.json").read_text())
        for key in ("etcd", "apiserver", "controller_manager", "heartbeat", "libvirt-1"):
            assert pids1[key]["pid"] == pids2[key]["pid"], key
        st = _cli("sandbox", "status", "-o", "json", *args)
        assert st.returncode == 0, st.stdout
        report = json.loads(st.stdout)
        assert report["ok"] and report["accel"] in ("kvm", "tcg")
        assert {r["component"] for r in report["components"]} >= {
            "etcd", "kube-apiserver", "kube-controller-manager", "libvirtd sandbox-node-1"}
        all_pids = [pids2[k]["pid"] for k in ("etcd", "apiserver", "controller_manager", "heartbeat", "libvirt-1")]
    finally:
        down = _cli("sandbox", "down", *args)
    assert down.returncode == 0, down.stderr
    for pid in all_pids:
        assert not procs.alive(pid), pid
    assert _processes_mentioning(str(state_dir)) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(state_dir) not in mounts
    assert not Path("/sys/class/net/fvmtbr1").exists()
    again = _cli("sandbox", "down", *args)
    assert again.returncode == 0
    st = _cli("sandbox", "status", *args)
    assert st.returncode != 0
