"""TargetReady hands a migration to the source node's agent; the controller takes it back (handover
timeout, or the migration deleted) only while the agent has not taken it.

The agent's commit is its write of Running into VM.status.migration; the controller's release is a
write of the same status. Both go through update_status with the VM's resourceVersion, so exactly
one wins. The shared FakeKube applies mutations the way kube.update_status does (a declined
mutation writes nothing, a stale resourceVersion costs a conflict) and lets "the agent" write just
before the controller's write lands (`before("update_vm_status", ...)`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from failovervm import conditions
from failovervm import migration as mg
from failovervm.controller import migrations as cm
from failovervm.controller import sweeps
from failovervm.controller.context import ControllerContext
from tests.fakes import FakeKube
from tests.unit.conftest import MakeControllerContext

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def iso(seconds_ago: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def mig(phase: str = mg.TARGET_READY, reserved_ago: float | None = 200, started_ago: float = 210) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, "sourceNode": "n1", "targetNode": "n2", "startTimestamp": iso(started_ago),
                          "targetVF": {"pciAddress": "0000:3b:02.1", "claimName": "n2.0000-3b-02.1"}}
    if reserved_ago is not None:
        st["conditions"] = [{"type": mg.TARGET_RESERVED, "status": "True", "reason": "VFClaimed", "message": "",
                             "lastTransitionTime": iso(reserved_ago)}]
    return {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"}, "status": st}


def test_handover_is_overdue_only_in_target_ready_after_the_timeout() -> None:
    assert mg.handover_overdue(mig(reserved_ago=130), NOW, 120) == pytest.approx(130)
    assert mg.handover_overdue(mig(reserved_ago=60), NOW, 120) is None
    assert mg.handover_overdue(mig(reserved_ago=130), NOW, 0) is None  # 0: wait forever
    for phase in (mg.PENDING, mg.SCHEDULING, mg.RUNNING, mg.FAILED):
        assert mg.handover_overdue(mig(phase=phase, reserved_ago=1000), NOW, 120) is None
    # A migration that reached TargetReady before the condition existed: its start counts.
    assert mg.handover_overdue(mig(reserved_ago=None, started_ago=300), NOW, 120) == pytest.approx(300)
    # Scheduling may take long (no free VF); only the time since the reservation counts.
    assert mg.handover_overdue(mig(reserved_ago=10, started_ago=3600), NOW, 120) is None


VM = {"metadata": {"name": "vm", "namespace": "ns", "uid": "u1"}}
CLAIMS = {"n1.0000-3b-02.0": "Running", "n2.0000-3b-02.1": "MigrationTarget"}


def cluster(vm_state: str = mg.TARGET_READY, migration: bool = True) -> FakeKube:
    """VM ns/vm on n1, locked by migration m1 (in `vm_state`; the migration object only if
    `migration`) onto a reserved VF of n2."""
    kube = FakeKube()
    kube.add_vm({**VM, "status": {
        "phase": "Running", "nodeName": "n1",
        "vf": {"node": "n1", "pciAddress": "0000:3b:02.0", "claimName": "n1.0000-3b-02.0"},
        "migration": {"name": "m1", "state": vm_state, "sourceNode": "n1", "targetNode": "n2",
                      "targetClaim": "n2.0000-3b-02.1"}}})
    if migration:
        kube.add_migration(mig())
    return kube.add(claims=[{"metadata": {"name": name, "uid": name},
                             "spec": {"owner": {"uid": "u1"}, "purpose": purpose}} for name, purpose in CLAIMS.items()])


def agent_takes_it(kube: FakeKube) -> None:
    """The source agent's commit: Running written into the VM's lock (through the API)."""
    kube.update_vm_status("ns", "vm", lambda st: {**st, "phase": "Migrating",
                                                  "migration": {**st["migration"], "state": mg.RUNNING}})


def vm_status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.vms["ns", "vm"]["status"])


def mig_status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.migrations["ns", "m1"]["status"])


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    monkeypatch.setattr(cm, "_now", lambda: NOW)
    return cluster()


@pytest.fixture
def ctx(kube: FakeKube, controller_ctx: MakeControllerContext) -> ControllerContext:
    return controller_ctx(kube, handover_timeout_seconds=120.0)


def test_an_untaken_migration_fails_after_the_timeout_and_releases_the_target(kube: FakeKube,
                                                                             ctx: ControllerContext) -> None:
    assert cm.advance(ctx, "ns", "m1") == mg.FAILED
    st = mig_status(kube)
    assert st["phase"] == mg.FAILED and st["reason"] == mg.SOURCE_AGENT_UNRESPONSIVE
    assert "did not take the migration" in st["message"] and "keeps running on n1" in st["message"]
    assert conditions.is_true(st["conditions"], "CleanedUp")
    assert "migration" not in vm_status(kube) and vm_status(kube)["nodeName"] == "n1"
    assert list(kube.claims) == ["n1.0000-3b-02.0"]  # the target's reservation is gone, the running VF kept
    assert mg.SOURCE_AGENT_UNRESPONSIVE in kube.reasons() and "MigrationFailed" in kube.reasons()


def test_within_the_timeout_nothing_happens(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_migration(mig(reserved_ago=5))
    assert cm.advance(ctx, "ns", "m1") == mg.TARGET_READY
    assert vm_status(kube)["migration"]["state"] == mg.TARGET_READY and len(kube.claims) == 2


def test_a_migration_the_agent_took_is_never_timed_out(kube: FakeKube, ctx: ControllerContext) -> None:
    agent_takes_it(kube)  # Running on the VM; the migration object not updated yet
    assert cm.advance(ctx, "ns", "m1") == mg.TARGET_READY
    assert vm_status(kube)["migration"]["state"] == mg.RUNNING and len(kube.claims) == 2
    assert mig_status(kube)["phase"] == mg.TARGET_READY and kube.reasons() == []


def test_the_agent_taking_it_during_the_release_wins(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.before("update_vm_status", lambda: agent_takes_it(kube))  # lands just before the controller's write
    assert cm.advance(ctx, "ns", "m1") == mg.TARGET_READY
    assert vm_status(kube)["migration"]["state"] == mg.RUNNING and len(kube.claims) == 2
    assert mig_status(kube)["phase"] == mg.TARGET_READY


def test_deleting_an_untaken_migration_aborts_it_at_once(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.add_migration(mig(reserved_ago=5))
    cm.on_delete(ctx, "ns", "m1")
    assert mig_status(kube)["phase"] == mg.ABORTED and "migration" not in vm_status(kube)
    assert list(kube.claims) == ["n1.0000-3b-02.0"]


def test_deleting_a_migration_the_agent_takes_meanwhile_asks_it_to_abort(kube: FakeKube,
                                                                          ctx: ControllerContext) -> None:
    """Before, the release cleared the VM's lock whatever its state: the agent kept migrating an
    unlocked VM onto a released target VF."""
    kube.add_migration(mig(reserved_ago=5))
    kube.before("update_vm_status", lambda: agent_takes_it(kube))  # lands just before the controller's write
    with pytest.raises(cm.WaitForAgent):
        cm.on_delete(ctx, "ns", "m1")
    assert vm_status(kube)["migration"]["state"] == mg.ABORTING and len(kube.claims) == 2
    assert mig_status(kube)["phase"] == mg.TARGET_READY


def test_a_vm_locked_by_another_migration_does_not_block_the_timeout(kube: FakeKube, ctx: ControllerContext) -> None:
    kube.update_vm_status("ns", "vm", lambda st: {**st, "migration": {"name": "other", "state": mg.RUNNING}})
    assert cm.advance(ctx, "ns", "m1") == mg.FAILED
    assert vm_status(kube)["migration"]["name"] == "other"  # never touched


# -- a lock whose migration vanished ---------------------------------------------------------------
def locked(name: str, state: str, lock: str = "m1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}"},
            "status": {"phase": "Running", "migration": {"name": lock, "state": state}}}


def test_stale_locks_are_the_untaken_ones_of_vanished_migrations() -> None:
    vms = [locked("a", mg.SCHEDULING), locked("b", mg.TARGET_READY), locked("c", mg.RUNNING),
           locked("d", mg.ABORTING), locked("e", mg.SCHEDULING, lock="alive"),
           {"metadata": {"name": "f", "namespace": "ns"}, "status": {"phase": "Running"}}]
    alive = [{"metadata": {"name": "alive", "namespace": "ns"}}, {"metadata": {"name": "m1", "namespace": "other"}}]
    assert [(vm["metadata"]["name"], name) for vm, name in mg.stale_locks(vms, alive)] == [("a", "m1"), ("b", "m1")]


def test_a_vanished_migration_s_lock_is_released(controller_ctx: MakeControllerContext) -> None:
    """Seen in CI: an evacuation migration deleted before Kopf's finalizer was on it left its VM
    locked, and the drain then waited forever with no migration at all."""
    kube = cluster(mg.SCHEDULING, migration=False)
    ctx = controller_ctx(kube)
    assert sweeps.release_stale_locks(ctx, kube.list_vms(), []) == ["ns/vm"]
    assert "migration" not in vm_status(kube) and kube.reasons() == ["StaleMigrationLockReleased"]
    # Nothing left to release: no second event.
    assert sweeps.release_stale_locks(ctx, kube.list_vms(), []) == [] and len(kube.events) == 1


def test_a_lock_of_a_migration_created_after_the_list_is_kept(controller_ctx: MakeControllerContext) -> None:
    kube = cluster(mg.SCHEDULING)
    ctx = controller_ctx(kube)
    assert sweeps.release_stale_locks(ctx, kube.list_vms(), []) == []
    assert vm_status(kube)["migration"]["name"] == "m1" and kube.reasons() == []


def test_a_lock_the_agent_takes_meanwhile_is_kept(controller_ctx: MakeControllerContext) -> None:
    kube = cluster(mg.SCHEDULING, migration=False)
    ctx = controller_ctx(kube)
    stale_view = kube.list_vms()
    agent_takes_it(kube)
    assert sweeps.release_stale_locks(ctx, stale_view, []) == []
    assert vm_status(kube)["migration"]["state"] == mg.RUNNING
