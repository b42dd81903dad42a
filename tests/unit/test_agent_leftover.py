"""A copy of a VM's domain on a node that does not run it (reconcile._leftover_copy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

from failovervm.agent import reconcile as rc


class FakeDom:
    def __init__(self, state: int, reason: int = 0) -> None:
        self._state, self._reason = state, reason

    def name(self) -> str:
        return "fvm_ns_vm"

    def state(self) -> tuple[int, int]:
        return self._state, self._reason


class FakeDM:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def destroy(self, _dom: Any) -> None:
        self.calls.append("destroy")

    def undefine(self, _dom: Any) -> None:
        self.calls.append("undefine")


class FakeKube:
    def __init__(self, fresh: dict[str, Any] | None) -> None:
        self.fresh = fresh
        self.events: list[str] = []

    def get_vm(self, _ns: str, _name: str) -> dict[str, Any] | None:
        return self.fresh

    def event(self, _obj: Any, reason: str, _message: str, **_kw: Any) -> None:
        self.events.append(reason)


def vm(node: str | None = "n2", migration: dict[str, Any] | None = None, uid: str = "u") -> dict[str, Any]:
    status: dict[str, Any] = {"nodeName": node}
    if migration:
        status["migration"] = migration
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": uid}, "status": status}


def run(obj: dict[str, Any], state: int, fresh: dict[str, Any] | None = None,
        reason: int = 0) -> tuple[str, FakeDM, FakeKube]:
    dm, kube = FakeDM(), FakeKube(obj if fresh is None else fresh)
    ctx = rc.AgentContext(node="n1", kube=kube, dm=dm, storage_roots=[], sysfs_root=Path("/nonexistent"))  # type: ignore[arg-type]
    return rc._leftover_copy(ctx, obj, FakeDom(state, reason)).action, dm, kube


def test_paused_copy_without_a_migration_here_is_removed() -> None:
    action, dm, kube = run(vm(), libvirt.VIR_DOMAIN_PAUSED)
    assert action == "stale-removed" and dm.calls == ["destroy", "undefine"]
    assert kube.events == ["StaleDomainRemoved"]


def test_incoming_migration_copy_is_left_alone() -> None:
    incoming = vm(migration={"name": "m", "state": "Running", "targetNode": "n1"})
    action, dm, _ = run(incoming, libvirt.VIR_DOMAIN_PAUSED)
    assert action == "not-ours" and dm.calls == []


def test_a_migration_scheduled_meanwhile_wins_the_re_read() -> None:
    now_incoming = vm(migration={"name": "m", "state": "TargetReady", "targetNode": "n1"})
    action, dm, _ = run(vm(), libvirt.VIR_DOMAIN_PAUSED, fresh=now_incoming)
    assert action == "not-ours" and dm.calls == []
    action, dm, _ = run(vm(), libvirt.VIR_DOMAIN_PAUSED, fresh=vm(uid="other"))
    assert action == "not-ours" and dm.calls == []


def test_running_copy_is_reported_never_killed() -> None:
    action, dm, kube = run(vm(), libvirt.VIR_DOMAIN_RUNNING)
    assert action == "duplicate-domain" and dm.calls == [] and kube.events == ["DuplicateDomain"]

def test_a_copy_still_starting_up_is_removed_too() -> None:
    """No guest code has run in it yet; an incoming migration cut short by a libvirtd restart
    also stays in this state."""
    for reason in (libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                   libvirt.VIR_DOMAIN_PAUSED_USER):
        action, dm, _ = run(vm(), libvirt.VIR_DOMAIN_PAUSED, reason=reason)
        assert action == "stale-removed" and dm.calls == ["destroy", "undefine"]
