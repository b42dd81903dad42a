"""Unit tests for the sandbox's pure parts: PKI, simulated sysfs, images, process helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography import x509

from failovervm import pki
from failovervm_sandbox import images, nodes, procs, sriov


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
    st = nodes.node_status(n, "v1.36.3")["status"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in st["conditions"])


def test_kvm_probe_reports() -> None:
    from failovervm_sandbox import libvirthost

    ok, detail = libvirthost.kvm_usable()
    assert isinstance(ok, bool) and detail
    assert ("KVM API version" in detail) if ok else ("/dev/kvm" in detail or "KVM_GET_API_VERSION" in detail)
