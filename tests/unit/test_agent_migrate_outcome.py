"""The source agent never reports a migration failed while the VM may be running on the target.

A failure recorded with the domain gone from the source unlocks the VM, and its source agent then
starts it again: a second copy if it runs on the target. These tests drive Migrator's outcome
paths with a fake API and fake libvirt connections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest

from failovervm import migration as mg
from failovervm.agent import migrate
from failovervm.agent.reconcile import AgentContext
from failovervm.guestfailover import FailoverProbe

MIG = {"name": "m1", "state": mg.RUNNING, "targetNode": "n2", "targetPciAddress": "0000:3b:02.1",
       "targetClaim": "c2"}


def vm() -> dict[str, Any]:
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": "u1", "generation": 1},
            "status": {"phase": "Migrating", "nodeName": "n1", "migration": dict(MIG),
                       "vf": {"node": "n1", "pf": "pf0", "pciAddress": "0000:3b:02.0", "claimName": "c1"}}}


class Kube:
    def __init__(self, fail_status_writes: int = 0, nodes: dict[str, str] | None = None) -> None:
        self.vm = vm()
        self.mig: dict[str, Any] = {"phase": mg.RUNNING}
        self.fail_status_writes = fail_status_writes
        self.events: list[str] = []
        self.nodes = {"n2": "test:///n2"} if nodes is None else nodes

    def update_vm_status(self, _ns: str, _name: str, mutate: Any, **_kw: Any) -> dict[str, Any] | None:
        if self.fail_status_writes:
            self.fail_status_writes -= 1
            raise RuntimeError("apiserver: 503")
        new = mutate(dict(self.vm["status"]))
        if new is not None:
            self.vm["status"] = new
        return self.vm

    def patch_vm(self, *_a: Any, **_kw: Any) -> None:
        pass

    def update_migration_status(self, _ns: str, _name: str, mutate: Any) -> None:
        self.mig = mutate(dict(self.mig)) or self.mig

    def get_node(self, name: str) -> dict[str, Any] | None:
        if name not in self.nodes:
            return None
        return {"metadata": {"name": name, "annotations": {"failovervm.io/libvirt-uri": self.nodes[name]}}}

    def event(self, _obj: Any, reason: str, _msg: str, **_kw: Any) -> None:
        self.events.append(reason)


class DM:
    def __init__(self, dom: Any = None) -> None:
        self.dom = dom

    def lookup(self, _name: str) -> Any:
        return self.dom


class Dom:
    def __init__(self, state: int = libvirt.VIR_DOMAIN_RUNNING) -> None:
        self._state = state

    def isActive(self) -> bool:
        return self._state == libvirt.VIR_DOMAIN_RUNNING

    def state(self) -> tuple[int, int]:
        return self._state, 0

    def jobStats(self, _flags: int = 0) -> dict[str, int]:
        return {"downtime": 31}


class NoDomain(libvirt.libvirtError):
    def __init__(self) -> None:
        super().__init__("Domain not found")

    def get_error_code(self) -> int:
        return int(libvirt.VIR_ERR_NO_DOMAIN)


class Conn:
    def __init__(self, dom: Dom | None) -> None:
        self.dom = dom

    def lookupByName(self, _name: str) -> Dom:
        if self.dom is None:
            raise NoDomain()
        return self.dom

    def close(self) -> None:
        pass


def target(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """What the target's libvirtd says: "running", "absent" or "down"."""
    def open_(_uri: str) -> Conn:
        if where == "down":
            raise libvirt.libvirtError("unable to connect to server: Connection refused")
        return Conn(Dom() if where == "running" else None)

    monkeypatch.setattr(migrate.libvirt, "open", open_)


def migrator(kube: Kube, source_dom: Any = None) -> migrate.Migrator:
    ctx = AgentContext(node="n1", kube=kube, dm=DM(source_dom), storage_roots=[],  # type: ignore[arg-type]
                       sysfs_root=Path("/nonexistent"))
    return migrate.Migrator(ctx)


def test_a_failure_reported_while_the_domain_runs_on_the_target_is_recorded_as_success(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. migrateToURI3 raised after the destination had taken over."""
    target(monkeypatch, "running")
    kube = Kube()
    migrator(kube)._finish_failed(kube.vm, MIG, "MigrationFailed", "confirm phase failed")
    assert kube.vm["status"]["nodeName"] == "n2" and "migration" not in kube.vm["status"]
    assert kube.vm["status"]["vf"]["pciAddress"] == "0000:3b:02.1"
    assert kube.mig["phase"] == mg.SUCCEEDED


def test_an_unreachable_target_keeps_the_vm_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    target(monkeypatch, "down")
    kube = Kube()
    with pytest.raises(migrate.OutcomeUnknown):
        migrator(kube)._finish_failed(kube.vm, MIG, "MigrationFailed", "connection reset")
    assert kube.vm["status"]["migration"]["state"] == mg.RUNNING and kube.vm["status"]["nodeName"] == "n1"
    assert kube.mig["phase"] == mg.RUNNING


def test_a_domain_gone_everywhere_is_reported_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    target(monkeypatch, "absent")
    kube = Kube()
    migrator(kube)._finish_failed(kube.vm, MIG, "MigrationFailed", "boom")
    assert "migration" not in kube.vm["status"] and kube.vm["status"]["phase"] == "Failed"
    assert kube.mig["phase"] == mg.FAILED and "is NOT running on n1" in kube.mig["message"]


def test_a_failure_with_the_domain_still_here_does_not_ask_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    target(monkeypatch, "down")  # would raise OutcomeUnknown if asked
    kube = Kube()
    migrator(kube, Dom())._finish_failed(kube.vm, MIG, "MigrationFailed", "target refused")
    assert kube.vm["status"]["phase"] == "Running" and kube.vm["status"]["nodeName"] == "n1"
    assert kube.mig["phase"] == mg.FAILED and "keeps running on n1" in kube.mig["message"]


@pytest.mark.parametrize(("where", "outcome", "node"), [
    ("running", "migration-succeeded", "n2"),
    ("down", "migration-outcome-unknown", "n1"),
    ("absent", "migration-failed", "n1"),
])
def test_recovery_after_an_agent_restart(monkeypatch: pytest.MonkeyPatch, where: str, outcome: str,
                                         node: str) -> None:
    target(monkeypatch, where)
    kube = Kube()
    out = migrator(kube)._recover(kube.vm, MIG, None)
    assert out.action == outcome and kube.vm["status"]["nodeName"] == node
    if where == "down":
        assert out.requeue_after and kube.vm["status"]["migration"]["state"] == mg.RUNNING
        assert kube.events == ["MigrationOutcomeUnknown"]


def test_a_deleted_target_node_means_the_domain_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    target(monkeypatch, "down")
    kube = Kube(nodes={})
    assert migrator(kube)._recover(kube.vm, MIG, None).action == "migration-failed"


class NoTouchDM:
    """The source domain must not even be looked up: the migration was not taken."""

    def lookup(self, name: str) -> Any:
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
    kube = Kube()
    if vm_migration is None:
        kube.vm["status"].pop("migration")
        kube.vm["status"]["phase"] = "Running"
    else:
        kube.vm["status"]["migration"] = vm_migration
    kube.mig = {"phase": mg.FAILED, "reason": "SourceAgentUnresponsive"}
    before = dict(kube.vm["status"])
    ctx = AgentContext(node="n1", kube=kube, dm=NoTouchDM(), storage_roots=[],  # type: ignore[arg-type]
                       sysfs_root=Path("/nonexistent"))
    stale = {**vm(), "status": {**vm()["status"], "migration": {**MIG, "state": mg.TARGET_READY}}}
    migrate.Migrator(ctx)._migrate(stale)
    assert kube.vm["status"] == before and kube.mig["phase"] == mg.FAILED and kube.events == []


def test_recording_a_completed_transfer_is_retried_and_never_becomes_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate.time, "sleep", lambda _s: None)
    target(monkeypatch, "running")
    kube = Kube(fail_status_writes=2)
    m = migrator(kube)
    monkeypatch.setattr(m, "_migrate", lambda v: m._record_success(v, MIG, {}, 1.0))  # after migrateToURI3
    m._run(kube.vm)
    assert kube.vm["status"]["nodeName"] == "n2" and kube.mig["phase"] == mg.SUCCEEDED

    # The API keeps refusing: the VM stays locked (no failure, no restart on the source) and the
    # next reconcile's recovery records the success.
    kube = Kube(fail_status_writes=migrate.RECORD_ATTEMPTS)
    m = migrator(kube)
    monkeypatch.setattr(m, "_migrate", lambda v: m._record_success(v, MIG, {}, 1.0))  # after migrateToURI3
    m._run(kube.vm)
    assert kube.vm["status"]["migration"]["state"] == mg.RUNNING and kube.mig["phase"] == mg.RUNNING
    assert kube.events == ["MigrationOutcomeUnknown"]
    assert m._recover(kube.vm, MIG, None).action == "migration-succeeded"
    assert kube.vm["status"]["nodeName"] == "n2"



# -- FailoverReady checked again just before the transfer ------------------------------------------
class ProbeDM(DM):
    def __init__(self, probe: Any) -> None:
        super().__init__(Dom())
        self.probe = probe

    def failover_probe(self, _dom: Any) -> Any:
        if isinstance(self.probe, Exception):
            raise self.probe
        return self.probe


def mig_obj(policy: str | None, recorded: str) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": mg.RUNNING, "conditions": [{"type": "FailoverReady", "status": recorded}]}
    if policy:
        st["failoverPolicy"] = policy
    return {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"}, "status": st}


def recheck(probe: Any, policy: str | None, recorded: str) -> tuple[str, Kube]:
    kube = Kube()
    kube.mig = dict(mig_obj(policy, recorded)["status"])
    m = migrator(kube)
    m.ctx.dm = ProbeDM(probe)  # type: ignore[assignment]
    return m._recheck_failover(kube.vm, mig_obj(policy, recorded), Dom()), kube


def test_recheck_passes_a_negotiated_guest_without_writing() -> None:
    why, kube = recheck(FailoverProbe(offered=True, negotiated=True, driver_ok=True), mg.POLICY_REQUIRE, "True")
    assert why == "" and kube.events == [] and not kube.mig.get("warnings")


def test_recheck_refuses_under_require_when_the_guest_lost_failover() -> None:
    """The controller saw True; the guest rebooted into an OS without net_failover since."""
    why, _ = recheck(FailoverProbe(offered=True, negotiated=False, driver_ok=True), mg.POLICY_REQUIRE, "True")
    assert "just before the transfer" in why and "refused because requireFailoverReady is set" in why
    why, _ = recheck(libvirt.libvirtError("monitor gone"), mg.POLICY_REQUIRE, "True")
    assert "could not query" in why and "refused" in why  # unknown is not ready


def test_recheck_warns_once_under_warn() -> None:
    lost = FailoverProbe(offered=True, negotiated=False, driver_ok=True)
    why, kube = recheck(lost, mg.POLICY_WARN, "True")
    assert why == ""
    assert kube.mig["conditions"][0]["status"] == "False" and "just before the transfer" in kube.mig["warnings"][0]
    assert kube.events == ["FailoverNotNegotiated", "FailoverNotNegotiated"]  # on the migration and the VM
    # Already known not ready when the controller accepted it: nothing new to say.
    why, kube = recheck(lost, mg.POLICY_WARN, "False")
    assert why == "" and kube.events == [] and not kube.mig.get("warnings")
    # A migration created before the policy was recorded counts as Warn.
    assert recheck(lost, None, "True")[0] == ""
