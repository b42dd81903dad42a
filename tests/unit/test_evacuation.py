"""Evacuation sweeps start exactly one migration per VM, even when several run at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import kopf
import pytest

from failovervm import labels
from failovervm import migration as mg
from failovervm.controller import evacuation, main, migrations, sweeps
from tests.fakes import FakeKube
from tests.unit.conftest import MakeControllerContext


def vm(name: str = "vm", uid: str = "u1", node: str = "n1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid,
                         "labels": {"failovervm.io/node": node}},
            "spec": {}, "status": {"phase": "Running", "nodeName": node}}


def test_evacuation_name_is_stable_and_skips_taken_names() -> None:
    first = mg.evacuation_name(vm(), "n1", [])
    assert first == mg.evacuation_name(vm(), "n1", ["other"])
    assert first.startswith("evac-vm-") and len(first) == len("evac-vm-") + 8
    second = mg.evacuation_name(vm(), "n1", [first])
    assert second != first and second.startswith("evac-vm-")
    # A gap left by a deleted migration is reused rather than colliding with a later one.
    assert mg.evacuation_name(vm(), "n1", [second]) == first
    # Another node, another VM incarnation (uid): other names.
    assert mg.evacuation_name(vm(), "n2", []) != first
    assert mg.evacuation_name(vm(uid="u2"), "n1", []) != first


@pytest.mark.parametrize("name", ["a" * 63, "a" * 47 + ".b-c.d" + "e" * 10, "x." + "y" * 60])
def test_evacuation_name_is_a_valid_object_name(name: str) -> None:
    out = mg.evacuation_name(vm(name=name), "n1", [])
    assert len(out) <= 63
    for label in out.split("."):
        assert label and label[0].isalnum() and label[-1].isalnum(), out


class SlowKube(FakeKube):
    """VMs a and b on n1 (cordoned). Lists of migrations are slow, so two unserialised sweeps would
    both see no migration and both create one; `conflicts` counts the creates that found the name taken."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0
        self.add(vms=[vm("a", "ua"), vm("b", "ub")], nodes=[node()])

    def list_migrations(self, namespace: str | None = None) -> list[dict[str, Any]]:
        snapshot = super().list_migrations(namespace)
        time.sleep(0.05)
        return snapshot

    def create_migration_once(self, body: dict[str, Any]) -> dict[str, Any] | None:
        created = super().create_migration_once(body)
        self.conflicts += created is None
        return created


def node() -> dict[str, Any]:
    return {"metadata": {"name": "n1", "uid": "node-uid", "labels": {}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            "spec": {"unschedulable": True, "taints": [{"key": "node.kubernetes.io/unschedulable",
                                                        "effect": "NoSchedule"}]}}


def test_concurrent_sweeps_start_one_migration_per_vm(controller_ctx: MakeControllerContext) -> None:
    kube = SlowKube()
    ctx = controller_ctx(kube)
    threads = [threading.Thread(target=evacuation.reconcile_node, args=(ctx, "n1")) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(m["spec"]["vmName"] for m in kube.migrations.values()) == ["a", "b"], list(kube.migrations)
    assert kube.conflicts == 0  # serialised: later sweeps saw the migrations and did not even try


def test_a_second_controller_with_the_same_view_gets_a_conflict(
        monkeypatch: pytest.MonkeyPatch, controller_ctx: MakeControllerContext) -> None:
    """The per-node lock is per process; a standby replica's admission webhook is another process.
    The fixed name makes its create collide instead of starting a second migration."""
    kube = SlowKube()
    ctx = controller_ctx(kube)
    stale = kube.list_migrations()
    evacuation.reconcile_node(ctx, "n1")
    monkeypatch.setattr(kube, "list_migrations", lambda namespace=None: stale)
    evacuation._reconcile_node(ctx, node())  # what another process, which holds no lock of ours, would do
    assert len(kube.migrations) == 2 and kube.conflicts == 2


def test_a_sweep_with_a_copy_from_before_the_cordon_keeps_the_evacuation(
        controller_ctx: MakeControllerContext) -> None:
    """A node event or a node list taken before `kubectl drain` cordoned the node reaches the
    sweep after the evacuation started (it waited for the node's lock). Acting on that copy took
    the node for uncordoned and deleted the evacuation's migrations (seen in CI: the drain test
    found no migration at all)."""
    kube = SlowKube()
    ctx = controller_ctx(kube)
    evacuation.reconcile_node(ctx, "n1")
    assert len(kube.migrations) == 2
    uncordoned = node()
    uncordoned["spec"] = {}
    main.on_node_event(type="MODIFIED", name="n1", body=uncordoned, memo=kopf.Memo(ctx=ctx))  # the old event's body
    assert sorted(m["spec"]["vmName"] for m in kube.migrations.values()) == ["a", "b"]


# -- retries and history ---------------------------------------------------------------------------
def mig(name: str, phase: str, ended: str, vm_name: str = "vm", node: str | None = "n1",
        cleaned: bool = True) -> dict[str, Any]:
    lbls = {labels.EVACUATION_LABEL: node, labels.VM_LABEL: vm_name} if node else {}
    conds = [{"type": "CleanedUp", "status": "True"}] if cleaned else []
    return {"metadata": {"name": name, "namespace": "ns", "labels": lbls,
                         "creationTimestamp": f"2026-11-{ended}T00:00:00Z"},
            "spec": {"vmName": vm_name},
            "status": {"phase": phase, "endTimestamp": f"2026-11-{ended}T00:01:00Z", "conditions": conds}}


NOW = mg.dt.datetime(2026, 11, 30, tzinfo=mg.dt.UTC)
LIMITS = mg.Limits()


def test_failures_of_an_earlier_drain_do_not_count_after_a_success() -> None:
    old = [mig(f"f{i}", mg.FAILED, "01") for i in range(5)] + [mig("ok", mg.SUCCEEDED, "02", node="n1")]
    assert mg.retry_state("vm", "ns", old, "n1", LIMITS, NOW) == (True, "")
    assert mg.failed_attempts("vm", "ns", [*old, mig("f9", mg.FAILED, "03")], "n1") == [mig("f9", mg.FAILED, "03")]
    # A success by a manual migration (no evacuation label) also starts afresh.
    manual = mig("by-hand", mg.SUCCEEDED, "02", node=None)
    assert mg.retry_state("vm", "ns", [*old[:5], manual], "n1", LIMITS, NOW) == (True, "")


def test_giving_up_names_the_way_out() -> None:
    failed = [mig(f"f{i}", mg.FAILED, f"2{i}") for i in range(5)]
    ok, why = mg.retry_state("vm", "ns", failed, "n1", LIMITS, NOW)
    assert not ok and why.startswith(mg.GAVE_UP)
    assert "kubectl -n ns delete fvmm -l failovervm.io/evacuation=n1,failovervm.io/vm=vm" in why


def test_history_keeps_the_newest_per_vm() -> None:
    migs = [mig(f"s{i}", mg.SUCCEEDED, f"1{i}") for i in range(8)] + [mig("other", mg.SUCCEEDED, "01", vm_name="b")]
    out = mg.history_to_delete(migs, {("ns", "vm"), ("ns", "b")}, keep=5, evacuating_nodes=set())
    assert sorted(out) == [("ns", "s0"), ("ns", "s1"), ("ns", "s2")]
    assert mg.history_to_delete(migs, {("ns", "vm"), ("ns", "b")}, keep=0, evacuating_nodes=set()) == [
        ("ns", "other"), *[("ns", f"s{i}") for i in reversed(range(8))]]


def test_history_of_a_deleted_vm_goes_and_unfinished_migrations_stay() -> None:
    migs = [mig("gone1", mg.FAILED, "10", vm_name="gone"), mig("gone2", mg.SUCCEEDED, "11", vm_name="gone"),
            mig("running", mg.RUNNING, "12", vm_name="gone"),
            mig("uncleaned", mg.FAILED, "13", vm_name="gone", cleaned=False)]
    assert sorted(mg.history_to_delete(migs, set(), keep=5, evacuating_nodes=set())) == [
        ("ns", "gone1"), ("ns", "gone2")]


def test_history_keeps_the_retry_ledger_of_an_ongoing_evacuation() -> None:
    migs = [mig("old-fail", mg.FAILED, "01"), mig("ok", mg.SUCCEEDED, "02"),
            mig("f1", mg.FAILED, "10"), mig("f2", mg.FAILED, "11"), mig("f3", mg.FAILED, "12")]
    # n1 is being drained: its 3 failures since the last success stay even with keep=1; the
    # success and the failure before it go (they no longer count).
    out = mg.history_to_delete(migs, {("ns", "vm")}, keep=1, evacuating_nodes={"n1"})
    assert sorted(out) == [("ns", "ok"), ("ns", "old-fail")]
    remaining = [m for m in migs if ("ns", m["metadata"]["name"]) not in out]
    assert len(mg.failed_attempts("vm", "ns", remaining, "n1")) == 3  # the retry count did not change
    # Once n1 is no longer drained they are ordinary history.
    assert sorted(mg.history_to_delete(migs, {("ns", "vm")}, keep=1, evacuating_nodes=set())) == [
        ("ns", "f1"), ("ns", "f2"), ("ns", "ok"), ("ns", "old-fail")]


def deleted(kube: FakeKube) -> list[str]:
    """namespace/name of the migrations deleted through the API, in order."""
    return [f"{ns}/{name}" for ns, name in kube.calls_of("delete_migration")]


def test_collect_history_deletes_through_the_api(controller_ctx: MakeControllerContext) -> None:
    n2 = {"metadata": {"name": "n2", "uid": "u2", "labels": {}}, "spec": {}}
    kube = FakeKube().add(vms=[vm()], nodes=[node(), n2], migrations=[
        mig("f1", mg.FAILED, "10"), mig("f2", mg.FAILED, "11"),
        mig("s", mg.SUCCEEDED, "05", node="n2"), mig("x", mg.SUCCEEDED, "05", vm_name="gone")])
    ctx = controller_ctx(kube, migration_history=0)
    assert sweeps.collect_history(ctx) == deleted(kube) == ["ns/x", "ns/s"]  # n1 (cordoned) keeps its ledger


def _evac(vm_name: str, node: str = "n1", phase: str | None = None) -> dict[str, Any]:
    return {"apiVersion": labels.API_GROUP_VERSION, "kind": "FailoverVMMigration",
            "metadata": {"name": f"evac-{vm_name}", "namespace": "ns",
                         "labels": {labels.EVACUATION_LABEL: node, labels.VM_LABEL: vm_name}},
            "spec": {"vmName": vm_name},
            "status": {"phase": phase, "sourceNode": node} if phase else {}}


def test_evacuation_start_limit_counts_started_evacuations_only() -> None:
    limits = mg.Limits(per_cluster=3, per_node_outbound=2)
    me = _evac("c")
    user = {**_evac("u", phase=mg.RUNNING), "metadata": {"name": "u", "namespace": "ns"}}
    started = [_evac("a", phase=mg.SCHEDULING), _evac("b", phase=mg.RUNNING)]
    assert mg.evacuation_start_limit(me, "n1", [me, user, _evac("p"), started[0]], limits) is None
    assert "node limit of 2" in (mg.evacuation_start_limit(me, "n1", [me, *started], limits) or "")
    assert mg.evacuation_start_limit(me, "n2", [me, *started], limits) is None  # another node's
    done = [_evac("a", phase=mg.SUCCEEDED), started[1]]
    assert mg.evacuation_start_limit(me, "n1", done, limits) is None
    others = [_evac(f"o{i}", node=f"n{i + 2}", phase=mg.RUNNING) for i in range(3)]
    assert "cluster limit of 3" in (mg.evacuation_start_limit(me, "n1", [me, *others], limits) or "")
    assert mg.evacuation_start_limit(user, "n1", [*started, *others], limits) is None  # users' never wait


def test_evacuations_created_over_the_limit_by_two_replicas_start_within_it(
        controller_ctx: MakeControllerContext) -> None:
    """#13: a standby's eviction webhook and the active replica's node sweep each hold only their
    own process's node lock, so they may create one evacuation migration too many. The active
    replica starts them one at a time under one lock, counting those started: at most the node's
    limit leaves Pending, even when every migration's timer runs at once (lists are slow here)."""
    kube = SlowKube()
    kube.add(vms=[vm("c", "uc")])
    for name in ("a", "b", "c"):
        kube.add_migration(_evac(name))
    ctx = controller_ctx(kube, limits=mg.Limits(per_node_outbound=2))
    threads = [threading.Thread(target=migrations.advance, args=(ctx, "ns", f"evac-{n}")) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phases = sorted(mg.phase(m) for m in kube.migrations.values())
    assert phases == [mg.PENDING, mg.SCHEDULING, mg.SCHEDULING], phases
    waiting = next(m for m in kube.migrations.values() if mg.phase(m) == mg.PENDING)
    assert waiting["status"]["message"] == "waiting: node limit of 2 outbound migrations reached"
    locked = [v["metadata"]["name"] for v in kube.vms.values() if (v.get("status") or {}).get("migration")]
    assert len(locked) == 2 and waiting["spec"]["vmName"] not in locked
    # A slot frees: the waiting one starts on its next pass.
    first = next(m for m in kube.migrations.values() if mg.phase(m) == mg.SCHEDULING)
    kube.migrations[("ns", first["metadata"]["name"])]["status"]["phase"] = mg.FAILED
    assert migrations.advance(ctx, "ns", waiting["metadata"]["name"]) == mg.SCHEDULING
