"""A copy of a VM's domain on a node that does not run it (reconcile._leftover_copy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from failovervm.agent import reconcile as rc
from failovervm.agent.domains import DomainState, PausedReason
from tests.fakes import FakeDomainManager, FakeKube


def vm(node: str | None = "n2", migration: dict[str, Any] | None = None, uid: str = "u") -> dict[str, Any]:
    status: dict[str, Any] = {"nodeName": node}
    if migration:
        status["migration"] = migration
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": uid}, "status": status}


def run(obj: dict[str, Any], state: DomainState, fresh: dict[str, Any] | None = None,
        reason: int = 0) -> tuple[str, FakeDomainManager, FakeKube]:
    """`obj` as the agent saw it; `fresh` (default: `obj`) what reading it again returns."""
    dm, kube = FakeDomainManager(), FakeKube()
    kube.add_vm(obj if fresh is None else fresh)
    dom = dm.add("fvm_ns_vm", state, reason)
    ctx = rc.AgentContext(node="n1", kube=kube, dm=dm, storage_roots=[], sysfs_root=Path("/nonexistent"))
    return rc._leftover_copy(ctx, obj, dom).action, dm, kube


def test_paused_copy_without_a_migration_here_is_removed() -> None:
    action, dm, kube = run(vm(), DomainState.PAUSED)
    assert action == "stale-removed" and dm.calls == ["destroy", "undefine"]
    assert kube.reasons() == ["StaleDomainRemoved"]


def test_incoming_migration_copy_is_left_alone() -> None:
    incoming = vm(migration={"name": "m", "state": "Running", "targetNode": "n1"})
    action, dm, _ = run(incoming, DomainState.PAUSED)
    assert action == "not-ours" and dm.calls == []


def test_a_migration_scheduled_meanwhile_wins_the_re_read() -> None:
    now_incoming = vm(migration={"name": "m", "state": "TargetReady", "targetNode": "n1"})
    action, dm, _ = run(vm(), DomainState.PAUSED, fresh=now_incoming)
    assert action == "not-ours" and dm.calls == []
    action, dm, _ = run(vm(), DomainState.PAUSED, fresh=vm(uid="other"))
    assert action == "not-ours" and dm.calls == []


def test_running_copy_is_reported_never_killed() -> None:
    action, dm, kube = run(vm(), DomainState.RUNNING)
    assert action == "duplicate-domain" and dm.calls == [] and kube.reasons() == ["DuplicateDomain"]

def test_a_copy_still_starting_up_is_removed_too() -> None:
    """No guest code has run in it yet; an incoming migration cut short by a libvirtd restart
    also stays in this state."""
    for reason in (PausedReason.STARTING_UP, PausedReason.MIGRATION, PausedReason.USER):
        action, dm, _ = run(vm(), DomainState.PAUSED, reason=reason)
        assert action == "stale-removed" and dm.calls == ["destroy", "undefine"]


FENCED = {"type": "FencedDuringMigration", "status": "True", "reason": "WaitingForTarget", "message": ""}


def test_the_target_answers_for_a_vm_whose_source_was_fenced_mid_migration() -> None:
    """#13: running here (the migration completed): status, VF and label move here."""
    asked = vm(migration={"name": "m", "state": "Running", "targetNode": "n1", "targetClaim": "c1",
                          "targetPciAddress": "0000:3b:02.1"})
    asked["status"]["conditions"] = [dict(FENCED)]
    action, dm, kube = run(asked, DomainState.RUNNING)
    assert action == "arrived-from-fenced-source" and dm.calls == []
    stored = kube.vms["ns", "vm"]
    st = stored["status"]
    assert st["nodeName"] == "n1" and "migration" not in st and st["vf"]["claimName"] == "c1"
    assert next(c for c in st["conditions"] if c["type"] == "FencedDuringMigration")["status"] == "False"
    assert stored["metadata"]["labels"]["failovervm.io/node"] == "n1"
    # Paused (the migration did not complete): no answer, the VM stays locked.
    action, dm, kube = run(asked, DomainState.PAUSED)
    assert action == "not-ours" and kube.vms["ns", "vm"]["status"]["nodeName"] == "n2"
