"""Unit tests for the sandbox's pure parts: PKI, simulated sysfs, images, process helpers."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from failovervm import kubeclient, pki
from failovervm_sandbox import controlplane, images, nodes, procs, sriov
from tests.fakes.http import api_server


def test_pki_issues_verifiable_certs(tmp_path: Path) -> None:
    ca = pki.make_ca(tmp_path, "ca", "failovervm-sandbox-ca")
    leaf = pki.issue(ca, tmp_path, "srv", "kube-apiserver", server=True, dns_names=("localhost",),
                     ip_addresses=("127.0.0.1",))
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert = x509.load_pem_x509_certificate(leaf.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert oct(leaf.key.stat().st_mode & 0o777) == "0o600"


def test_simulated_sysfs_has_the_real_layout(tmp_path: Path) -> None:
    addrs = sriov.create(tmp_path, 10, "n1")
    assert addrs[0] == "0000:3b:02.0" and addrs[8] == "0000:3b:03.0" and len(set(addrs)) == 10
    dev = tmp_path / "class" / "net" / sriov.SANDBOX_PF / "device"
    assert dev.resolve() == (tmp_path / "bus/pci/devices" / sriov.PF_ADDRESS).resolve()
    assert (dev / "sriov_numvfs").read_text().strip() == "10"
    for k, addr in enumerate(addrs):
        link = dev / f"virtfn{k}"
        assert os.path.basename(os.readlink(link)) == addr
        assert (link / "physfn").resolve() == dev.resolve()
    assert (tmp_path / "SIMULATED").exists()


def test_halt_sector_is_a_boot_sector(tmp_path: Path) -> None:
    img = images.ensure_images(tmp_path, guest=False)["halt"]
    data = img.read_bytes()
    assert len(data) == 512 and data[510:] == b"\x55\xaa" and data[:2] == b"\xfa\xf4"


def test_procs_spawn_alive_stop(tmp_path: Path) -> None:
    pid = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
    # Popen returns once the child's close-on-exec pipe closed, which the kernel does in execve before
    # it lays out the new command line: for a moment /proc/<pid>/cmdline is empty (a loaded machine).
    deadline = time.monotonic() + 10
    while not procs.alive(pid, "time.sleep") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procs.alive(pid, "time.sleep")
    assert not procs.alive(pid, "no-such-marker")
    assert procs.stop(pid, "time.sleep", timeout=5)
    assert not procs.alive(pid)
    assert not procs.stop(pid)


def test_node_manifest_labels() -> None:
    n = nodes.SandboxNode("sandbox-node-1", "127.0.0.11", "qemu+tcp://127.0.0.11/system", "/x", "kvm", "8", "8Gi")
    m = nodes.node_manifest(n)
    lab = m["metadata"]["labels"]
    assert lab["kubernetes.io/hostname"] == "sandbox-node-1"
    assert lab["kubernetes.io/os"] == "linux" and lab["kubernetes.io/arch"]
    assert m["metadata"]["annotations"]["failovervm.io/libvirt-uri"] == "qemu+tcp://127.0.0.11/system"
    assert "failovervm.io/migration-address" not in m["metadata"]["annotations"]
    st = nodes.node_status(n, "v1.36.3")["status"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in st["conditions"])


def test_sandbox_nodes_migrate_over_their_second_loopback_address() -> None:
    assert nodes.migration_address("127.0.0.11") == "127.0.1.11"
    n = nodes.SandboxNode("sandbox-node-1", "127.0.0.11", "qemu+tcp://127.0.0.11/system", "/x", "kvm", "8", "8Gi",
                          migration_address="127.0.1.11")
    assert nodes.node_manifest(n)["metadata"]["annotations"]["failovervm.io/migration-address"] == "127.0.1.11"


def test_kvm_probe_reports() -> None:
    from failovervm_sandbox import libvirthost

    ok, detail = libvirthost.kvm_usable()
    assert isinstance(ok, bool) and detail
    assert ("KVM API version" in detail) if ok else ("/dev/kvm" in detail or "KVM_GET_API_VERSION" in detail)


def _fake_apiserver(method: str, _path: str) -> tuple[int, dict[str, Any]]:
    """POST of an existing Node gets 409 (a re-registration); everything else 200."""
    return (409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}) if method == "POST" else (200, {})


def _no_deleting_directives(value: Any) -> bool:
    """True when a strategic merge patch cannot delete or replace anything: no null values and no
    $patch/$retainKeys/$deleteFromPrimitiveList/$setElementOrder directives."""
    if value is None:
        return False
    if isinstance(value, dict):
        return all(not k.startswith("$") and _no_deleting_directives(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_no_deleting_directives(v) for v in value)
    return True


def test_node_patches_leave_others_resources_alone() -> None:
    """Registration and the heartbeat write Node status with strategic merge patches of the sandbox's
    own keys only, so agents' extended resources (vf.failovervm.io/<pool>) in capacity/allocatable
    survive a re-registration (every `sandbox up`) and every heartbeat."""
    n = nodes.SandboxNode("sandbox-node-1", "127.0.0.11", "qemu+tcp://127.0.0.11/system", "/x", "kvm", "8", "8Gi")
    with api_server(_fake_apiserver) as (api, seen):
        core = kubeclient.CoreV1Api(api)
        nodes.register(core, [n], "v1.36.3")  # the Node exists already: a re-registration
        nodes.post_ready(core, n.name)

    node_writes = [(s["method"], s["path"], s["type"], s["body"]) for s in seen
                   if s["path"].startswith("/api/v1/nodes")]
    assert [(m, p) for m, p, _, _ in node_writes] == [
        ("POST", "/api/v1/nodes"), ("PATCH", "/api/v1/nodes/sandbox-node-1"),
        ("PATCH", "/api/v1/nodes/sandbox-node-1/status"), ("PATCH", "/api/v1/nodes/sandbox-node-1/status")]
    _, _, meta_type, meta_patch = node_writes[1]
    _, _, reg_type, reg_patch = node_writes[2]
    _, _, beat_type, beat_patch = node_writes[3]
    assert {meta_type, reg_type, beat_type} == {"application/strategic-merge-patch+json"}
    assert set(meta_patch) == {"metadata"} and set(meta_patch["metadata"]) == {"name", "labels", "annotations"}
    # Registration: only the sandbox's own resources, merged into the capacity/allocatable maps.
    assert set(reg_patch) == {"status"}
    assert set(reg_patch["status"]) == {"capacity", "allocatable", "conditions", "addresses", "nodeInfo"}
    for key in ("capacity", "allocatable"):
        assert set(reg_patch["status"][key]) == set(nodes.OWN_RESOURCES), key
        assert not any("/" in r for r in reg_patch["status"][key]), "an extended resource is the agents'"
    # Heartbeat: the conditions and nothing else.
    assert beat_patch == {"status": {"conditions": beat_patch["status"]["conditions"]}}
    assert {c["type"] for c in beat_patch["status"]["conditions"]} == {
        "Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
    for patch in (meta_patch, reg_patch, beat_patch):
        assert _no_deleting_directives(patch), patch


def test_controller_manager_keeps_resource_quota_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kube-apiserver's quota admission enforces only what a ResourceQuota's status lists, which
    kube-controller-manager's resourcequota-controller writes: without it no quota refuses a pod."""
    spawned: list[list[str]] = []
    monkeypatch.setattr(controlplane, "write_kubeconfig", lambda *a: None)
    monkeypatch.setattr(controlplane.procs, "spawn", lambda argv, log: spawned.append(list(argv)) or 1)
    controlplane.start_controller_manager(Path("/bin/kcm"), controlplane.ControlPlanePaths(tmp_path), "https://x")
    [flag] = [a for a in spawned[0] if a.startswith("--controllers=")]
    assert "resourcequota-controller" in flag.removeprefix("--controllers=").split(",")


def test_virtual_nodes_publish_their_vfs_as_an_agent_would(tmp_path: Path) -> None:
    """`sandbox up --virtual-nodes M --vfs-per-node K`: M agent-less nodes, each with a simulated sysfs
    tree of K VFs, published by the heartbeat with the agent's own code (its VFInventory and its
    extended resources), once per change; the example pool selects them like the other sandbox nodes."""
    import yaml

    from failovervm import labels
    from failovervm_sandbox import virtualnodes
    from tests.fakes import FakeKube

    vnodes = virtualnodes.sandbox_nodes(tmp_path, 3, "tcg")
    assert [n.name for n in vnodes] == ["sandbox-vnode-1", "sandbox-vnode-2", "sandbox-vnode-3"]
    virtualnodes.create_trees(vnodes, 4, 1)
    kube = FakeKube()
    for n in vnodes:
        obj = nodes.node_manifest(n)
        obj["metadata"]["labels"][labels.SANDBOX_VIRTUAL_NODE] = "true"
        obj["status"] = {"capacity": {"cpu": "16"}, "allocatable": {"cpu": "16"}}
        kube.add_node(obj)
    pool = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "vfpool.yaml").read_text())
    kube.add_pool(pool)
    publisher = virtualnodes.Publisher(kube, vnodes)
    assert publisher.round() == 3
    for n in vnodes:
        [entry] = kube.inventories[n.name]["spec"]["pools"]
        assert entry["name"] == "sandbox-pool" and entry["total"] == 4 and entry["simulated"] is True
        assert kube.nodes[n.name]["status"]["allocatable"][labels.vf_resource("sandbox-pool")] == "4"
    kube.calls.clear()
    assert publisher.round(skip={"sandbox-vnode-3"}) == 2
    # Nothing changed: one LIST of the pools and of the nodes for all of them, no write.
    assert [c.method for c in kube.calls] == ["list_pools", "list_nodes"]


@pytest.mark.parametrize("profiling", [False, True])
def test_apiserver_serves_profiles_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  profiling: bool) -> None:
    """/debug/pprof is off unless `sandbox up --profiling` (benchmarks.scale --pprof) asked for it."""
    spawned: list[list[str]] = []
    monkeypatch.setattr(controlplane.procs, "spawn", lambda argv, log: spawned.append(list(argv)) or 1)
    monkeypatch.setattr(controlplane, "wait_http", lambda *a, **k: None)
    monkeypatch.setattr(controlplane, "_ssl_context", lambda paths: None)
    controlplane.start_apiserver(Path("/bin/kas"), controlplane.ControlPlanePaths(tmp_path), 1, 2, profiling=profiling)
    assert [a for a in spawned[0] if a.startswith("--profiling=")] == [f"--profiling={str(profiling).lower()}"]
