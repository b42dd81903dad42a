"""The source agent's migration thread (Migrator._migrate) from the commit point to the recorded
outcome, with the shared fakes: the checks before the transfer, the request it makes, success,
failure and abort."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from failovervm import labels
from failovervm import migration as mg
from failovervm.agent import migrate
from failovervm.agent.domains import DomainError, DomainState, OperationAborted
from failovervm.agent.reconcile import AgentContext
from failovervm.guestfailover import FailoverProbe
from tests.fakes import FakeDomainManager, FakeKube
from tests.fakes.kube import node

UID = "0b6f4a52-3c1d-4e8f-9a7b-2d5e6f708192"
DNAME = "fvm_ns_vm"
TARGET_URI = "qemu+tls://n2/system"
MIG = {"name": "m1", "state": mg.TARGET_READY, "targetNode": "n2", "targetPciAddress": "0000:3b:02.1",
       "targetClaim": "c2"}
LIVE_XML = ("<domain type='kvm'><name>fvm_ns_vm</name><devices><interface type='hostdev'><source>"
            "<address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x0'/></source>"
            "</interface></devices></domain>")


def setup(tmp_path: Path, *, migration_state: str = mg.TARGET_READY, policy: str = mg.POLICY_WARN,
          announced: bool = True) -> tuple[migrate.Migrator, FakeKube, FakeDomainManager]:
    kube = FakeKube()
    kube.add_vm({
        "metadata": {"name": "vm", "namespace": "ns", "uid": UID, "generation": 1, "labels": {labels.VM_NODE: "n1"}},
        "spec": {"cpu": 1, "memory": "32Mi", "disks": [{"name": "boot", "path": str(tmp_path / "ns" / "boot.img")}],
                 "network": {"pool": "p"}},
        "status": {"phase": "Running", "nodeName": "n1", "migration": {**MIG, "state": migration_state},
                   "vf": {"node": "n1", "pf": "pf0", "pciAddress": "0000:3b:02.0", "claimName": "c1"}},
    })
    kube.add_pool({"metadata": {"name": "p"}, "spec": {"standby": {"type": "bridge", "source": "br0"}}})
    kube.add_migration({"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm", "bandwidthMiBps": 100},
                        "status": {"phase": mg.TARGET_READY, "failoverPolicy": policy,
                                   "conditions": [{"type": "FailoverReady", "status": "True"}]}})
    kube.add_node(node("n2", annotations={labels.LIBVIRT_URI: TARGET_URI} if announced else {}))
    dm = FakeDomainManager()
    dm.add(DNAME)
    dm.domains[DNAME].live_xml = LIVE_XML
    dm.domains[DNAME].completed_stats = {"downtimeMs": 31}
    dm.remote(TARGET_URI)
    ctx = AgentContext(node="n1", kube=kube, dm=dm, storage_roots=[str(tmp_path)], sysfs_root=Path("/nonexistent"))
    return migrate.Migrator(ctx, transport="tls"), kube, dm


def run(m: migrate.Migrator, kube: FakeKube) -> None:
    vm = kube.get_vm("ns", "vm")
    assert vm is not None
    m._migrate(vm)


def vm_status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.vms["ns", "vm"]["status"])


def mig_status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.migrations["ns", "m1"]["status"])


def test_a_migration_moves_the_vm_to_the_target(tmp_path: Path) -> None:
    m, kube, dm = setup(tmp_path)
    run(m, kube)
    (dname, uri, request), = dm.migrations
    assert (dname, uri, request.transport, request.bandwidth_mibps) == (DNAME, TARGET_URI, "tls", 100)
    assert 'bus="0x3b" slot="0x02" function="0x1"' in request.destination_xml  # the target's VF
    assert "<name>fvm_ns_vm</name>" in request.persistent_xml and "hostdev" not in request.persistent_xml
    assert dm.domains == {} and DNAME in dm.remotes[TARGET_URI].domains
    st = vm_status(kube)
    assert st["nodeName"] == "n2" and "migration" not in st and st["phase"] == "Running"
    assert st["vf"] == {"node": "n2", "pf": "pf0", "pciAddress": "0000:3b:02.1", "claimName": "c2"}
    assert kube.vms["ns", "vm"]["metadata"]["labels"][labels.VM_NODE] == "n2"
    ms = mig_status(kube)
    assert ms["phase"] == mg.SUCCEEDED and ms["message"].startswith("migrated from n1 to n2 in ")
    # libvirt's statistics, and how long the guest ran on its standby (the fake transfer is instant)
    assert ms["stats"]["downtimeMs"] == 31 and 0 <= ms["stats"]["standbyMs"] < 1000
    # no policy recorded (accepted before policies existed): the built-in defaults, bounded
    assert ms["migrationEndpoint"] == "n2 (libvirt host, management network)"
    assert kube.reasons() == []


def test_a_migration_deleted_before_it_started_is_aborted(tmp_path: Path) -> None:
    m, kube, dm = setup(tmp_path, migration_state=mg.ABORTING)
    run(m, kube)
    assert dm.migrations == [] and "migration" not in vm_status(kube) and vm_status(kube)["nodeName"] == "n1"
    assert mig_status(kube)["phase"] == mg.ABORTED and mig_status(kube)["reason"] == "Aborted"
    assert "aborted before the transfer started" in mig_status(kube)["message"]


@pytest.mark.parametrize(("case", "reason", "message"), [
    ("unannounced", "TargetUnknown", "node n2 has no failovervm.io/libvirt-uri annotation"),
    ("no-domain", "SourceNotRunning", "the domain is not running on the source node"),
    ("running-copy", "TargetHasDomain", "a running domain fvm_ns_vm already exists on n2"),
    ("no-failover", mg.FAILOVER_NOT_READY, "refused because requireFailoverReady is set"),
    # issue #14: the node's announced URI is checked before it is opened
    ("elsewhere", "DestinationRefused", "host 'attacker.example' is not one of the node's names or addresses"),
    ("tcp", "DestinationRefused", "scheme 'qemu+tcp' is not allowed"),
])
def test_checks_before_the_transfer(tmp_path: Path, case: str, reason: str, message: str) -> None:
    m, kube, dm = setup(tmp_path, announced=case != "unannounced",
                        policy=mg.POLICY_REQUIRE if case == "no-failover" else mg.POLICY_WARN)
    if case == "no-domain":
        dm.domains.clear()
    if case == "running-copy":
        dm.remotes[TARGET_URI].add(DNAME)
    if case == "no-failover":
        dm.domains[DNAME].probe = FailoverProbe(offered=True, negotiated=False, driver_ok=True)
    if case in ("elsewhere", "tcp"):
        uri = "qemu+tls://attacker.example/system" if case == "elsewhere" else "qemu+tcp://n2/system"
        kube.nodes["n2"]["metadata"]["annotations"][labels.LIBVIRT_URI] = uri
        dm.remote(uri)
    run(m, kube)
    ms = mig_status(kube)
    assert dm.migrations == [] and ms["phase"] == mg.FAILED and ms["reason"] == reason and message in ms["message"]
    if reason == "DestinationRefused":
        assert dm.opened == [] and "DestinationRefused" in kube.reasons()  # refused, never opened
    assert "migration" not in vm_status(kube) and vm_status(kube)["nodeName"] == "n1"


def test_a_paused_leftover_on_the_target_is_removed_first(tmp_path: Path) -> None:
    m, kube, dm = setup(tmp_path)
    dm.remotes[TARGET_URI].add(DNAME, DomainState.PAUSED)
    run(m, kube)
    assert dm.remotes[TARGET_URI].calls == ["clear_leftover"] and mig_status(kube)["phase"] == mg.SUCCEEDED
    assert kube.reasons() == ["StaleDomainRemoved"]


@pytest.mark.parametrize(("error", "phase", "reason"), [
    (DomainError("operation failed: migration out job: unexpectedly failed"), mg.FAILED, "MigrationFailed"),
    (OperationAborted("operation aborted: migration out job: canceled by client"), mg.ABORTED, "Aborted"),
])
def test_a_failed_or_aborted_transfer_leaves_the_vm_running_here(tmp_path: Path, error: DomainError, phase: str,
                                                                 reason: str) -> None:
    m, kube, dm = setup(tmp_path)
    dm.fail("migrate", error)
    run(m, kube)
    ms = mig_status(kube)
    assert (ms["phase"], ms["reason"]) == (phase, reason) and str(error) in ms["message"]
    assert "keeps running on n1" in ms["message"]
    assert vm_status(kube)["phase"] == "Running" and vm_status(kube)["nodeName"] == "n1"


def test_the_source_libvirtd_lost_mid_transfer_keeps_the_vm_locked_and_is_named(tmp_path: Path) -> None:
    """#13, found by the e2e crash matrix: libvirtd on the source killed (and restarted) while it
    migrates. migrateToURI3 fails, and where the domain is cannot be asked: the VM stays locked
    (never unlocked on a guess), and once libvirtd answers again the reconcile records the failure
    with its cause, not as an agent restart."""
    m, kube, dm = setup(tmp_path)
    dm.before("migrate", lambda: dm.fail("lookup", DomainError("internal error: client socket is closed")))
    dm.fail("migrate", DomainError("End of file while reading data: Input/output error"))
    with pytest.raises(migrate.OutcomeUnknown):
        run(m, kube)
    assert vm_status(kube)["migration"]["state"] == mg.RUNNING and mig_status(kube)["phase"] == mg.RUNNING
    vm = kube.get_vm("ns", "vm")
    assert vm is not None
    out = m._recover(vm, vm["status"]["migration"], dm.lookup(DNAME))
    assert out.action == "migration-failed"
    ms = mig_status(kube)
    assert (ms["phase"], ms["reason"]) == (mg.FAILED, "LibvirtConnectionLost"), ms
    assert "End of file" in ms["message"] and "keeps running on n1" in ms["message"]
    assert vm_status(kube)["phase"] == "Running" and "migration" not in vm_status(kube)
