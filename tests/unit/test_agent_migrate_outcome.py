"""The source agent never reports a migration failed while the VM may be running on the target.

A failure recorded with the domain gone from the source unlocks the VM, and its source agent then
starts it again: a second copy if it runs on the target. These tests drive Migrator's outcome
paths with the shared fake API and fake DomainManagers for the source and the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from failovervm import labels
from failovervm import migration as mg
from failovervm import migrationpolicy as mp
from failovervm.agent import migrate
from failovervm.agent.domains import DomainError, DomainRef, JobProgress
from failovervm.agent.reconcile import AgentContext
from failovervm.guestfailover import FailoverProbe
from tests.fakes import FakeDomainManager, FakeKube
from tests.fakes.kube import node

MIG = {"name": "m1", "state": mg.RUNNING, "targetNode": "n2", "targetPciAddress": "0000:3b:02.1",
       "targetClaim": "c2"}
TARGET_URI = "qemu+tls://n2/system"


def vm() -> dict[str, Any]:
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": "u1", "generation": 1},
            "status": {"phase": "Migrating", "nodeName": "n1", "migration": dict(MIG),
                       "vf": {"node": "n1", "pf": "pf0", "pciAddress": "0000:3b:02.0", "claimName": "c1"}}}


def mig_obj(policy: str | None = None, recorded: str | None = None) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": mg.RUNNING}
    if recorded is not None:
        st["conditions"] = [{"type": "FailoverReady", "status": recorded}]
    if policy:
        st["failoverPolicy"] = policy
    return {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"}, "status": st}


def cluster(fail_status_writes: int = 0, nodes: dict[str, str] | None = None,
            vm_status: dict[str, Any] | None = None, migration: dict[str, Any] | None = None) -> FakeKube:
    """The VM locked by migration m1 from n1 to n2, whose agent announced TARGET_URI."""
    kube = FakeKube()
    kube.add_vm({**vm(), "status": vm()["status"] if vm_status is None else vm_status})
    kube.add_migration(migration or mig_obj())
    for name, uri in ({"n2": TARGET_URI} if nodes is None else nodes).items():
        kube.add_node(node(name, annotations={labels.LIBVIRT_URI: uri}))
    kube.fail("update_vm_status", *[RuntimeError("apiserver: 503") for _ in range(fail_status_writes)])
    return kube


def vm_now(kube: FakeKube) -> dict[str, Any]:
    return kube.vms["ns", "vm"]


def mig_now(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.migrations["ns", "m1"]["status"])


def hosts(where: str, source_running: bool = False) -> FakeDomainManager:
    """The source's libvirt, and what the target's says: "running", "absent" or "down"."""
    dm = FakeDomainManager()
    if source_running:
        dm.add("fvm_ns_vm")
    if where != "down":
        target = dm.remote(TARGET_URI)
        if where == "running":
            target.add("fvm_ns_vm")
            target.domains["fvm_ns_vm"].completed_stats = {"downtimeMs": 31}
    return dm


def migrator(kube: FakeKube, dm: FakeDomainManager) -> migrate.Migrator:
    ctx = AgentContext(node="n1", kube=kube, dm=dm, storage_roots=[], sysfs_root=Path("/nonexistent"))
    return migrate.Migrator(ctx)


def read(kube: FakeKube) -> dict[str, Any]:
    obj = kube.get_vm("ns", "vm")
    assert obj is not None
    return obj


def test_a_failure_reported_while_the_domain_runs_on_the_target_is_recorded_as_success() -> None:
    """E.g. migrateToURI3 raised after the destination had taken over."""
    kube, dm = cluster(), hosts("running")
    migrator(kube, dm)._finish_failed(read(kube), MIG, "MigrationFailed", "confirm phase failed")
    assert vm_now(kube)["status"]["nodeName"] == "n2" and "migration" not in vm_now(kube)["status"]
    assert vm_now(kube)["status"]["vf"]["pciAddress"] == "0000:3b:02.1"
    assert mig_now(kube)["phase"] == mg.SUCCEEDED


def test_an_unreachable_target_keeps_the_vm_locked() -> None:
    kube, dm = cluster(), hosts("down")
    with pytest.raises(migrate.OutcomeUnknown):
        migrator(kube, dm)._finish_failed(read(kube), MIG, "MigrationFailed", "connection reset")
    assert vm_now(kube)["status"]["migration"]["state"] == mg.RUNNING and vm_now(kube)["status"]["nodeName"] == "n1"
    assert mig_now(kube)["phase"] == mg.RUNNING


def test_a_domain_gone_everywhere_is_reported_lost() -> None:
    kube, dm = cluster(), hosts("absent")
    migrator(kube, dm)._finish_failed(read(kube), MIG, "MigrationFailed", "boom")
    assert "migration" not in vm_now(kube)["status"] and vm_now(kube)["status"]["phase"] == "Failed"
    assert mig_now(kube)["phase"] == mg.FAILED and "is NOT running on n1" in mig_now(kube)["message"]


def test_a_failure_with_the_domain_still_here_does_not_ask_the_target() -> None:
    kube, dm = cluster(), hosts("down", source_running=True)  # would raise OutcomeUnknown if asked
    migrator(kube, dm)._finish_failed(read(kube), MIG, "MigrationFailed", "target refused")
    assert vm_now(kube)["status"]["phase"] == "Running" and vm_now(kube)["status"]["nodeName"] == "n1"
    assert mig_now(kube)["phase"] == mg.FAILED and "keeps running on n1" in mig_now(kube)["message"]


@pytest.mark.parametrize(("where", "outcome", "node"), [
    ("running", "migration-succeeded", "n2"),
    ("down", "migration-outcome-unknown", "n1"),
    ("absent", "migration-failed", "n1"),
])
def test_recovery_after_an_agent_restart(where: str, outcome: str, node: str) -> None:
    kube, dm = cluster(), hosts(where)
    out = migrator(kube, dm)._recover(read(kube), MIG, None)
    assert out.action == outcome and vm_now(kube)["status"]["nodeName"] == node
    if where == "down":
        assert out.requeue_after and vm_now(kube)["status"]["migration"]["state"] == mg.RUNNING
        assert kube.reasons() == ["MigrationOutcomeUnknown"]


def test_a_deleted_target_node_means_the_domain_is_not_there() -> None:
    kube, dm = cluster(nodes={}), hosts("down")
    assert migrator(kube, dm)._recover(read(kube), MIG, None).action == "migration-failed"


class NoTouchDM(FakeDomainManager):
    """The source domain must not even be looked up: the migration was not taken."""

    def lookup(self, name: str) -> DomainRef | None:
        raise AssertionError(f"looked up {name}: the agent went on with a migration it did not take")


@pytest.mark.parametrize("vm_migration", [
    None,  # released by the controller (deleted migration, handover timeout)
    {**MIG, "name": "m2", "state": mg.TARGET_READY},  # a newer migration locked the VM meanwhile
    {**MIG, "state": mg.SCHEDULING},  # not handed over (any more)
])
def test_a_migration_released_before_the_agent_took_it_is_not_started(vm_migration: dict[str, Any] | None) -> None:
    """The agent's thread started from a TargetReady it saw on the VM; by the time it writes the
    commit (TargetReady -> Running) the controller has released the target VF. Going on would
    migrate onto a VF that may belong to another VM."""
    status = vm()["status"]
    if vm_migration is None:
        status.pop("migration")
        status["phase"] = "Running"
    else:
        status["migration"] = vm_migration
    released = mig_obj()
    released["status"] = {"phase": mg.FAILED, "reason": "SourceAgentUnresponsive"}
    kube = cluster(vm_status=status, migration=released)
    before = dict(vm_now(kube)["status"])
    stale = {**vm(), "status": {**vm()["status"], "migration": {**MIG, "state": mg.TARGET_READY}}}
    migrator(kube, NoTouchDM())._migrate(stale)
    assert vm_now(kube)["status"] == before and mig_now(kube)["phase"] == mg.FAILED and kube.reasons() == []


def test_recording_a_completed_transfer_is_retried_and_never_becomes_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate.time, "sleep", lambda _s: None)
    kube = cluster(fail_status_writes=2)
    m = migrator(kube, hosts("running"))
    monkeypatch.setattr(m, "_migrate", lambda v: m._record_success(v, MIG, {}, 1.0))  # after migrateToURI3
    m._run(read(kube))
    assert vm_now(kube)["status"]["nodeName"] == "n2" and mig_now(kube)["phase"] == mg.SUCCEEDED

    # The API keeps refusing: the VM stays locked (no failure, no restart on the source) and the
    # next reconcile's recovery records the success.
    kube = cluster(fail_status_writes=migrate.RECORD_ATTEMPTS)
    m = migrator(kube, hosts("running"))
    monkeypatch.setattr(m, "_migrate", lambda v: m._record_success(v, MIG, {}, 1.0))  # after migrateToURI3
    m._run(read(kube))
    assert vm_now(kube)["status"]["migration"]["state"] == mg.RUNNING and mig_now(kube)["phase"] == mg.RUNNING
    assert kube.reasons() == ["MigrationOutcomeUnknown"]
    assert m._recover(read(kube), MIG, None).action == "migration-succeeded"
    assert vm_now(kube)["status"]["nodeName"] == "n2"


# -- FailoverReady checked again just before the transfer ------------------------------------------
def recheck(probe: FailoverProbe | Exception, policy: str | None, recorded: str) -> tuple[str, FakeKube]:
    kube = cluster(migration=mig_obj(policy, recorded))
    dm = FakeDomainManager()
    dom = dm.add("fvm_ns_vm", probe=probe)
    return migrator(kube, dm)._recheck_failover(read(kube), mig_obj(policy, recorded), dom), kube


def test_recheck_passes_a_negotiated_guest_without_writing() -> None:
    why, kube = recheck(FailoverProbe(offered=True, negotiated=True, driver_ok=True), mg.POLICY_REQUIRE, "True")
    assert why == "" and kube.reasons() == [] and not mig_now(kube).get("warnings")


def test_recheck_refuses_under_require_when_the_guest_lost_failover() -> None:
    """The controller saw True; the guest rebooted into an OS without net_failover since."""
    why, _ = recheck(FailoverProbe(offered=True, negotiated=False, driver_ok=True), mg.POLICY_REQUIRE, "True")
    assert "just before the transfer" in why and "refused because requireFailoverReady is set" in why
    why, _ = recheck(DomainError("monitor gone"), mg.POLICY_REQUIRE, "True")
    assert "could not query" in why and "refused" in why  # unknown is not ready


def test_recheck_warns_once_under_warn() -> None:
    lost = FailoverProbe(offered=True, negotiated=False, driver_ok=True)
    why, kube = recheck(lost, mg.POLICY_WARN, "True")
    assert why == ""
    assert mig_now(kube)["conditions"][0]["status"] == "False"
    assert "just before the transfer" in mig_now(kube)["warnings"][0]
    assert kube.reasons() == ["FailoverNotNegotiated", "FailoverNotNegotiated"]  # on the migration and the VM
    # Already known not ready when the controller accepted it: nothing new to say.
    why, kube = recheck(lost, mg.POLICY_WARN, "False")
    assert why == "" and kube.reasons() == [] and not mig_now(kube).get("warnings")
    # A migration created before the policy was recorded counts as Warn.
    assert recheck(lost, None, "True")[0] == ""


def test_a_migration_recovered_after_an_agent_restart_is_still_bounded() -> None:
    """libvirtd drove the migration on while the agent restarted: past its completion timeout (by
    libvirt's clock) the recovered migration is aborted, and fails with CompletionTimeout."""
    mig = mig_obj()
    mig["status"]["policy"] = mp.EffectivePolicy(completion_timeout_seconds=30).to_status()
    kube = cluster(migration=mig)
    dm = hosts("absent", source_running=True)
    dm.domains["fvm_ns_vm"].job = JobProgress(memory_total=1, data_remaining=1, time_elapsed_ms=10_000)
    m = migrator(kube, dm)
    dom = dm.lookup("fvm_ns_vm")
    assert m._recover(read(kube), MIG, dom).action == "migrating" and "abort_job" not in dm.calls
    dm.domains["fvm_ns_vm"].job = JobProgress(memory_total=1, data_remaining=1, time_elapsed_ms=31_000)
    assert m._recover(read(kube), MIG, dom).action == "migrating" and "abort_job" in dm.calls
    assert m._recover(read(kube), MIG, dom).action == "migration-failed"  # the job is gone: record it
    st = mig_now(kube)
    assert (st["phase"], st["reason"]) == (mg.FAILED, mp.COMPLETION_TIMEOUT) and "keeps running on n1" in st["message"]
