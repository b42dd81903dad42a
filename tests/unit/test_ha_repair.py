"""#13: the controller's HA settings, level-triggered repair (a VM's label and agent finalizer follow
its status; a Running migration nobody owns is finished from the VM's status), sweep isolation,
the eviction webhook never waiting on a sweep, and the agent's slow shutdowns off its slots."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from failovervm import conditions, labels, repair
from failovervm import migration as mg
from failovervm.agent.slots import Slots
from failovervm.controller import evacuation, ha, repairs, sweeps
from failovervm.controller import migrations as cm
from tests.fakes import FakeKube
from tests.unit.conftest import MakeControllerContext

# -- HA ---------------------------------------------------------------------------------------------


def test_the_oldest_replica_has_the_highest_priority_and_ties_are_broken() -> None:
    first = ha.peering_priority(1_800_000_000.0, tiebreak=0)
    later = ha.peering_priority(1_800_000_000.001, tiebreak=999)
    assert first > later  # a replica that starts later never preempts the active one
    assert ha.peering_priority(1_800_000_000.0, tiebreak=1) != first
    assert 0 < later < first < 2**53  # exact in every JSON reader
    assert ha.takeover_bound() <= 15


# -- repair: pure -----------------------------------------------------------------------------------
PLACED = {"nodeName": "n1", "phase": "Scheduled"}


def meta(**kw: Any) -> dict[str, Any]:
    return {"name": "vm", "namespace": "ns", "uid": "u1", **kw}


def test_a_placed_vm_without_its_label_and_finalizer_gets_both() -> None:
    assert repair.vm_metadata_patch(meta(), PLACED) == {
        "labels": {labels.VM_NODE: "n1"}, "finalizers": [labels.AGENT_FINALIZER]}
    done = meta(labels={labels.VM_NODE: "n1"}, finalizers=[labels.AGENT_FINALIZER])
    assert repair.vm_metadata_patch(done, PLACED) is None


def test_the_label_follows_a_moved_status_and_goes_when_unplaced() -> None:
    moved = meta(labels={labels.VM_NODE: "n1"}, finalizers=["x", labels.AGENT_FINALIZER])
    assert repair.vm_metadata_patch(moved, {"nodeName": "n2"}) == {"labels": {labels.VM_NODE: "n2"}}
    assert repair.vm_metadata_patch(moved, {"phase": "Pending"}) == {"labels": {labels.VM_NODE: None}}


def test_a_deleting_vm_gets_its_label_but_no_finalizer() -> None:
    deleting = meta(deletionTimestamp="2026-11-29T20:00:00Z")
    assert repair.vm_metadata_patch(deleting, PLACED) == {"labels": {labels.VM_NODE: "n1"}}


def running_mig(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "m1", "namespace": "ns"}, "spec": {"vmName": "vm"},
            "status": {"phase": mg.RUNNING, "sourceNode": "n1", "targetNode": "n2",
                       "targetVF": {"pciAddress": "0000:3b:02.1", "claimName": "n2.c"}, **status}}


def vm_on(node: str, **status: Any) -> dict[str, Any]:
    return {"metadata": meta(), "status": {"nodeName": node, "phase": "Running",
                                           "vf": {"claimName": f"{node}.c"}, **status}}


def test_an_orphaned_migration_takes_its_outcome_from_the_vm() -> None:
    assert repair.orphaned_migration_outcome(running_mig(), vm_on("n2")).phase == mg.SUCCEEDED  # type: ignore[union-attr]
    failed = repair.orphaned_migration_outcome(running_mig(), vm_on("n1"))
    assert failed is not None and failed.phase == mg.FAILED and failed.reason == repair.ORPHANED
    gone = repair.orphaned_migration_outcome(running_mig(), None)
    assert gone is not None and gone.phase == mg.FAILED
    # Still owned: the VM names it (its source agent records the outcome, or finds it after a restart).
    owned = vm_on("n1", migration={"name": "m1", "state": mg.RUNNING})
    assert repair.orphaned_migration_outcome(running_mig(), owned) is None
    # Other phases are the controller's own.
    assert repair.orphaned_migration_outcome(running_mig(phase=mg.TARGET_READY), vm_on("n2")) is None


# -- repair: the controller -------------------------------------------------------------------------


def test_repair_vms_completes_a_placement_cut_after_its_status_write(controller_ctx: MakeControllerContext) -> None:
    kube = FakeKube()
    kube.add_vm({"metadata": meta(), "spec": {}, "status": dict(PLACED)})
    kube.add_vm({"metadata": meta(name="ok", uid="u2", labels={labels.VM_NODE: "n1"},
                                  finalizers=[labels.AGENT_FINALIZER]), "spec": {}, "status": dict(PLACED)})
    ctx = controller_ctx(kube)
    assert repairs.repair_vms(ctx) == ["ns/vm"]
    m = kube.vms["ns", "vm"]["metadata"]
    assert m["labels"][labels.VM_NODE] == "n1" and labels.AGENT_FINALIZER in m["finalizers"]
    assert "MetadataRepaired" in kube.reasons()
    assert repairs.repair_vms(ctx) == []  # converged: nothing more to write


def test_repair_reads_the_status_again_after_a_conflict(controller_ctx: MakeControllerContext) -> None:
    """The status moved (a migration recorded) between the list and the patch: the label follows
    the status as it is now, never the one listed."""
    kube = FakeKube()
    kube.add_vm({"metadata": meta(labels={labels.VM_NODE: "n1"}, finalizers=[labels.AGENT_FINALIZER]),
                 "spec": {}, "status": {"nodeName": "n2"}})
    listed = kube.list_vms()[0]
    kube.update_vm_status("ns", "vm", lambda st: {**st, "nodeName": "n3"})
    repairs.repair_vm(controller_ctx(kube), listed)
    assert kube.vms["ns", "vm"]["metadata"]["labels"][labels.VM_NODE] == "n3"


def orphan_cluster(vm_node: str) -> FakeKube:
    kube = FakeKube()
    kube.add_vm({"metadata": meta(labels={labels.VM_NODE: "n1"}, finalizers=[labels.AGENT_FINALIZER]),
                 "spec": {}, "status": {"nodeName": vm_node, "phase": "Running",
                                        "vf": {"node": vm_node, "claimName": f"{vm_node}.c"}}})
    kube.add_migration(running_mig())
    return kube.add(claims=[{"metadata": {"name": name, "uid": name}, "spec": {"owner": {"uid": "u1"},
                                                                               "purpose": purpose}}
                            for name, purpose in (("n1.c", "Running"), ("n2.c", "MigrationTarget"))])


@pytest.mark.parametrize(("vm_node", "phase", "kept"), [("n2", mg.SUCCEEDED, "n2.c"), ("n1", mg.FAILED, "n1.c")])
def test_a_migration_left_running_by_a_killed_agent_is_finished_after_the_grace(
        vm_node: str, phase: str, kept: str, controller_ctx: MakeControllerContext,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent moved (or unlocked) the VM and was killed before it wrote the migration: after the
    grace the controller records the outcome the VM shows, and cleans up (the VF that is not used
    is released, so the node's outbound limit is free again)."""
    kube = orphan_cluster(vm_node)
    ctx = controller_ctx(kube)
    clock = [100.0]
    monkeypatch.setattr(repairs.time, "monotonic", lambda: clock[0])
    assert cm.advance(ctx, "ns", "m1") == mg.RUNNING  # first seen: the agent may be between two writes
    clock[0] += repairs.ORPHAN_GRACE_SECONDS
    assert cm.advance(ctx, "ns", "m1") == phase
    st = kube.migrations["ns", "m1"]["status"]
    assert st["phase"] == phase and conditions.is_true(st["conditions"], "CleanedUp")
    assert list(kube.claims) == [kept]
    assert "OrphanedMigrationFinished" in kube.reasons()
    repairs.repair_vms(ctx)
    assert kube.vms["ns", "vm"]["metadata"]["labels"][labels.VM_NODE] == vm_node


def test_an_owned_running_migration_is_left_to_its_agent(controller_ctx: MakeControllerContext) -> None:
    kube = orphan_cluster("n1")
    kube.update_vm_status("ns", "vm", lambda st: {**st, "migration": {"name": "m1", "state": mg.RUNNING}})
    ctx = controller_ctx(kube)
    for _ in range(3):
        assert cm.advance(ctx, "ns", "m1") == mg.RUNNING
    assert not ctx.orphans


# -- isolation --------------------------------------------------------------------------------------


def test_one_failing_node_does_not_stop_the_sweep(controller_ctx: MakeControllerContext,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    kube.add(nodes=[{"metadata": {"name": n}} for n in ("n1", "n2", "n3")])
    swept: list[str] = []

    def reconcile(ctx: Any, name: str) -> dict[str, Any]:
        if name == "n2":
            raise RuntimeError("the API refused")
        swept.append(name)
        return {}

    monkeypatch.setattr(evacuation, "reconcile_node", reconcile)
    sweeps.tick(controller_ctx(kube))
    assert swept == ["n1", "n3"]


def test_the_eviction_webhook_does_not_wait_for_a_slow_sweep(controller_ctx: MakeControllerContext) -> None:
    kube = FakeKube()
    kube.add(nodes=[{"metadata": {"name": "n1"}}])
    ctx = controller_ctx(kube)
    vm = {"metadata": meta(), "spec": {}, "status": {"nodeName": "n1", "phase": "Running"}}
    with ctx.locks.node("n1"):  # a sweep of n1 that takes long
        t0 = time.monotonic()
        why = evacuation.evict_vm(ctx, vm, "n1", "fvm-vm", lock_timeout=0.2)
        assert time.monotonic() - t0 < 1.0
    assert "sweep is running" in why


def test_admission_and_eviction_have_their_own_threads(controller_ctx: MakeControllerContext) -> None:
    ctx = controller_ctx(FakeKube())
    assert ctx.admission is not ctx.eviction


def test_a_slow_shutdown_gives_its_slot_back() -> None:
    """Two slots; two reconciles stuck in graceful shutdowns; a third VM's reconcile still runs."""

    async def scenario() -> list[str]:
        slots = Slots(2)
        release = threading.Event()
        done: list[str] = []
        loop = asyncio.get_running_loop()

        def slow_stop(key: str) -> None:
            with slots.slow():
                release.wait(5)
            done.append(key)

        async def run(key: str, fn: Any) -> None:
            await slots.acquire()
            try:
                await loop.run_in_executor(None, fn, key)
            finally:
                slots.release()

        stuck = [asyncio.create_task(run(k, slow_stop)) for k in ("a", "b")]
        await asyncio.sleep(0.2)
        await asyncio.wait_for(run("c", done.append), timeout=2)  # not held up by a and b
        release.set()
        await asyncio.gather(*stuck)
        return done

    assert asyncio.run(scenario())[0] == "c"


def test_cleanup_never_frees_a_vf_another_migration_just_reserved(controller_ctx: MakeControllerContext,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """m1 ended (its target VF goes); m2 has created its target claim but not yet written it on the
    VM: m1's cleanup leaves it (the orphaned-claim sweep looks at it after its grace)."""
    kube = orphan_cluster("n1")
    kube.add(claims=[{"metadata": {"name": "n3.c", "uid": "n3.c"},
                      "spec": {"owner": {"uid": "u1"}, "purpose": "MigrationTarget", "migration": "m2"}}])
    kube.update_migration_status("ns", "m1", lambda st: {**st, "phase": mg.FAILED})
    cm.advance(controller_ctx(kube), "ns", "m1")
    assert sorted(kube.claims) == ["n1.c", "n3.c"]
    assert repair.claim_released_by_cleanup({"metadata": {"name": "x"}, "spec": {"purpose": "MigrationTarget",
                                                                                  "migration": "m1"}}, "m1", set())


def test_a_target_claim_made_by_a_pass_that_died_is_taken_up_again() -> None:
    vm = {"metadata": meta()}
    claim = {"metadata": {"name": "n2.c"}, "spec": {"owner": {"uid": "u1"}, "node": "n2", "purpose": "MigrationTarget",
                                                    "migration": "m1", "pciAddress": "0000:3b:02.1"}}
    assert repair.own_claim([claim], vm, "n2", "MigrationTarget", "m1") is claim
    assert repair.own_claim([claim], vm, "n2", "MigrationTarget", "m2") is None  # another migration's
    assert repair.own_claim([claim], vm, "n3", "MigrationTarget", "m1") is None


def test_a_start_refused_by_qemu_image_locking_is_reported_as_disk_locked() -> None:
    err = ('internal error: process exited while connecting to monitor: qemu-system-x86_64: -blockdev ...: '
           'Failed to get "write" lock\nIs another process using the image [/images/d.raw]?')
    reason, message = repair.start_failure(err)
    assert reason == "DiskLocked" and "second copy" in message and err in message
    assert repair.start_failure("no such file") == ("StartFailed", "no such file")


def test_a_lost_hand_over_write_is_made_again(controller_ctx: MakeControllerContext) -> None:
    """Failpoint migration.after-target-ready: the migration says TargetReady, the VM's lock still
    Scheduling (the source agent would never see it). The next pass writes the lock from the
    migration's status."""
    kube = FakeKube()
    kube.add_vm({"metadata": meta(labels={labels.VM_NODE: "n1"}), "spec": {},
                 "status": {"nodeName": "n1", "phase": "Running",
                            "migration": {"name": "m1", "state": mg.SCHEDULING, "sourceNode": "n1"}}})
    kube.add_migration(running_mig(phase=mg.TARGET_READY, conditions=[
        {"type": mg.TARGET_RESERVED, "status": "True", "reason": "VFClaimed", "message": "",
         "lastTransitionTime": conditions.now_iso()}]))
    assert cm.advance(controller_ctx(kube), "ns", "m1") == mg.TARGET_READY
    lock = kube.vms["ns", "vm"]["status"]["migration"]
    assert lock == {"name": "m1", "state": mg.TARGET_READY, "sourceNode": "n1", "targetNode": "n2",
                    "targetPciAddress": "0000:3b:02.1", "targetClaim": "n2.c"}


def test_repair_reads_the_watch_cache_not_a_list(controller_ctx: MakeControllerContext) -> None:
    """The 30 s repair sweep decides from the cached summaries (they keep the node label, the
    operator's finalizers, status.nodeName): no LIST of every VM; it patches only what needs it."""
    from failovervm.controller.cache import IndexedCache

    kube = FakeKube()
    kube.add_vm({"metadata": meta(), "spec": {}, "status": dict(PLACED)})
    ok = meta(name="ok", uid="u2", labels={labels.VM_NODE: "n1"}, finalizers=[labels.AGENT_FINALIZER, "other.io/x"])
    kube.add_vm({"metadata": ok, "spec": {}, "status": dict(PLACED)})
    ctx = controller_ctx(kube)
    ctx.cache = IndexedCache(kube.live_indexes())
    kube.calls.clear()
    assert repairs.repair_vms(ctx) == ["ns/vm"]
    assert kube.calls_of("list_vms") == [] and kube.calls_of("get_vm") == []
    assert labels.AGENT_FINALIZER in kube.vms["ns", "vm"]["metadata"]["finalizers"]
